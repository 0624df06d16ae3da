"""What crosses an actor boundary, and how a driver joins or starts a Ray cluster.

Why plain data: a Ray actor may run on another machine, another Python build, or be restarted
from scratch; anything pickled by reference to a live object (an env, a tokenizer, a lock)
breaks or silently diverges there. So every value sent to or returned from our actors is
reduced to str / int / float / bool / None, lists, tuples, str-keyed dicts and numpy arrays
(`to_plain`), and an unsupported object fails loudly with the path where it was found instead
of being pickled. Model weights are the one bulky payload: they travel as numpy arrays (zero-copy
out of Ray's object store), bfloat16 reinterpreted as int16 since numpy has no bfloat16.

`init_ray` is the one place that calls `ray.init`: it joins an existing cluster when asked to
(`address="auto"` or `RAY_ADDRESS`), otherwise starts a private local one bound to 127.0.0.1
without the dashboard.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

PLAIN_SCALARS = (str, int, float, bool, type(None))


def to_plain(value: Any, path: str = "value") -> Any:
    """`value` as plain data; raises TypeError naming `path` for anything else."""
    if isinstance(value, PLAIN_SCALARS):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{path}: key {key!r} of type {type(key).__name__} is not plain data")
            out[key] = to_plain(item, f"{path}[{key!r}]")
        return out
    if isinstance(value, tuple):
        return tuple(to_plain(item, f"{path}[{i}]") for i, item in enumerate(value))
    if isinstance(value, list):
        return [to_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name), f"{path}.{f.name}") for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):  # a pydantic model
        return to_plain(value.model_dump(mode="json"), path)
    raise TypeError(f"{path}: {type(value).__module__}.{type(value).__qualname__} is not plain data "
                    "(an env that runs on Ray must return str/int/float/bool/None, lists and dicts)")


# ---------------------------------------------------------------------------- weights
def weights_to_arrays(weights: Any) -> dict[str, tuple[str, np.ndarray]]:
    """A state dict (or a module) as {name: (torch dtype name, numpy array)} on the CPU."""
    import torch

    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else dict(weights)
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype == torch.bfloat16:
            out[name] = (dtype, tensor.view(torch.int16).numpy())
        else:
            out[name] = (dtype, tensor.numpy())
    return out


def arrays_to_weights(arrays: Mapping[str, tuple[str, np.ndarray]]) -> dict[str, Any]:
    """The inverse of `weights_to_arrays` (copies out of read-only object-store buffers)."""
    import torch

    out = {}
    for name, (dtype, array) in arrays.items():
        tensor = torch.from_numpy(np.array(array, copy=True))
        if dtype == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        out[name] = tensor
    return out


# ---------------------------------------------------------------------------- the cluster
def init_ray(address: str | None = None, *, num_cpus: int | None = None, temp_dir: str | None = None,
             log_to_driver: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Join or start a Ray cluster once per driver process; returns the cluster's resources.

    `address`: None starts a local cluster unless `RAY_ADDRESS` is set; `"auto"` or
    `"host:6379"` joins one started with `ray start`. A local cluster binds to 127.0.0.1, runs no
    dashboard and keeps its files under `temp_dir` (Ray needs a short path: unix sockets).
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address and address != "local":
            ray.init(address=address, log_to_driver=log_to_driver, **kwargs)
        else:
            ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, _temp_dir=temp_dir,
                     _node_ip_address="127.0.0.1", log_to_driver=log_to_driver, **kwargs)
    return dict(ray.cluster_resources())
