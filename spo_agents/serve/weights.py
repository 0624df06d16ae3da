"""Weight reloads of `spo-agents serve`: from where, which files, and which versions.

Why a module of its own: `POST /v1/load_weights` makes the server open a file named by the client
and swap the model for its contents, which makes it the most dangerous endpoint of the server (an
outside audit loaded all-zero weights and moved `policy_version` to 999999 and back). The rules:

- Weights come only from one folder the operator configured (`--weights-dir`). A requested path
  (absolute, or relative to that folder) is resolved with its symlinks and must stay inside the
  folder; each file is then opened with `O_NOFOLLOW | O_NONBLOCK` and the path of the open
  descriptor is checked again, so a symlink or FIFO swapped in after the check is refused too.
- A path that does not exist, cannot be read, or lies outside the folder all get the same answer,
  so the endpoint is no oracle for what exists on the server's disk.
- Only safetensors files are read (a folder: its `model.safetensors`, else its `*.safetensors`
  shards); anything else is a 400 that names the problem.
- Versions only go up: a load must carry a version above the server's current one (the first load
  may repeat it, so a learner can sync its initial weights as version 0).

Who may call the endpoint (the API key) is checked before the request reaches this module; see
`spo_agents.serve.guards`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["WeightsFolder", "WeightsRejected", "check_version", "load_safetensors_weights"]

_PROC_FD = Path("/proc/self/fd")


class WeightsRejected(Exception):
    """A load request refused before the model was touched (HTTP `status`, OpenAI-style body)."""

    def __init__(self, status: int, message: str, param: str | None = "path") -> None:
        super().__init__(message)
        self.status, self.param = status, param


def _parse(source: str | Path, display: str) -> dict[str, Any]:
    """The tensors of one safetensors file; a file in another format is a WeightsRejected(400)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(source))
    except (SafetensorError, ValueError, OSError) as exc:
        raise WeightsRejected(400, f"{display} is not a valid safetensors file ({exc})") from exc


def load_safetensors_weights(path: str | Path) -> dict[str, Any]:
    """A state dict from a `.safetensors` file, or from a folder's `model.safetensors` / `*.safetensors`.

    Unconfined (no folder rule): for callers that trust the path. The server uses `WeightsFolder`.
    """
    path = Path(path)
    if path.is_dir():
        single = path / "model.safetensors"
        files = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
    else:
        files = [path] if path.is_file() else []
    if not files:
        raise FileNotFoundError(f"no safetensors weights at {path}")
    state: dict[str, Any] = {}
    for file in files:
        state.update(_parse(file, file.name))
    return state


class WeightsFolder:
    """The one folder the server loads weights from (see the module docstring for the rules)."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"weights folder {str(root)!r} does not exist or is not a folder")
        self.root = root.resolve()

    def _unreadable(self, requested: str) -> WeightsRejected:
        # one message for missing, unreadable and outside: the answer must not say which it was
        return WeightsRejected(400, f"no readable safetensors weights at {requested!r} inside the server's weights "
                               "folder (a .safetensors file, or a folder with model.safetensors or *.safetensors; "
                               "clients must write into the server's --weights-dir)")

    def _inside(self, path: str | Path) -> bool:
        return Path(path).is_relative_to(self.root)

    def files(self, requested: str) -> list[Path]:
        """The real paths of the safetensors files `requested` names, all inside the folder."""
        try:
            path = Path(os.path.realpath(self.root / requested))
            if not self._inside(path):
                raise self._unreadable(requested)
            if path.is_dir():
                single = path / "model.safetensors"
                names = [single] if single.is_file() else sorted(p for p in path.iterdir() if p.suffix == ".safetensors")
                files = [Path(os.path.realpath(p)) for p in names]
            else:
                files = [path] if path.is_file() else []
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
            raise self._unreadable(requested) from exc
        if not files or not all(self._inside(f) and f.is_file() for f in files):
            raise self._unreadable(requested)
        return files

    def load(self, requested: str) -> dict[str, Any]:
        """The state dict `requested` names (see `files`); WeightsRejected for anything refused."""
        state: dict[str, Any] = {}
        for file in self.files(requested):
            state.update(self._load_confined(file, requested))
        return state

    def _load_confined(self, file: Path, requested: str) -> dict[str, Any]:
        try:
            fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise self._unreadable(requested) from exc
        try:
            info = os.fstat(fd)
            via_fd = _PROC_FD / str(fd)
            opened = Path(os.readlink(via_fd)) if _PROC_FD.is_dir() else file
            if not stat.S_ISREG(info.st_mode) or not self._inside(opened):
                raise self._unreadable(requested)
            # read through the descriptor just checked, so nothing swapped in since can be read instead
            return _parse(via_fd if _PROC_FD.is_dir() else file, file.name)
        finally:
            os.close(fd)


def check_version(version: int, current: int, loaded_before: bool) -> None:
    """Versions only go up; the first load may repeat the current one (a learner's initial sync)."""
    if version < current or (version == current and loaded_before):
        raise WeightsRejected(
            409, f"version {version} is not newer than the server's policy version {current}: versions only go up "
            "(restart the server to start again from lower versions)", "version")
