"""Environment workers as Ray actors: the `ray` env executor of the rollout engine.

Why: on one machine the engine runs `env.reset/step` in threads or one process per slot; a
cluster has many more CPU cores (and sandboxes) than the trainer's node. Here each `EnvWorker`
is a Ray actor, i.e. one Python process somewhere in the cluster, hosting the environments of
several slots (each env addressed by a string handle). Every worker process has its own sandbox
pool, since pools are per process. `RayEnvPool` starts the workers and assigns each slot's
runner to the least-loaded worker (round-robin among equals, so slot s lands on worker
s mod W at start). `RayEnvRunner` has the interface of `ThreadEnvRunner`: `await call(method,
*args, **kwargs)` and `close(abandoned)`, so the engine treats all executors alike.

Workers are threaded actors (`max_concurrency`): a slow tool in one env does not block the
other envs of its worker; CPU-bound tools scale with the number of workers, not of threads.

Faults, never a hang:
- an env call past `timeout_s` raises `EnvTimeout`; the engine abandons that env (its stuck
  thread stays behind, as with the thread executor) and the slot gets a fresh env;
- a worker that dies (an env calling `os._exit`, a segfault in a tool, `ray.kill`, a lost node)
  fails its in-flight calls with `EnvCrashed`; Ray restarts it (`max_restarts`, unlimited by
  default: the constructor does no work that could fail); envs it hosted are gone, so their next
  `step` also ends with `EnvCrashed`, while a `reset` makes a new env transparently; episodes
  on other workers continue untouched.
- an exception inside the env comes back as a `RemoteEnvError` (a RuntimeError) named like the
  original and ends one episode with the same error text as the thread executor.

`engine_runner(engine, slot)` is the `ray` env executor (registered by name in `spo_agents/__init__.py`):
it makes one pool per engine (`env_workers` actors, default min(num_slots, cluster CPUs)) that
is shut down when the engine closes its runners (or, failing that, when the engine is garbage
collected); `bind_pool(engine, pool)` supplies your own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import weakref
from typing import Any

try:
    import ray
except ImportError as exc:  # an optional dependency
    raise ImportError("the ray env executor needs Ray: pip install 'spo-agents[ray]'") from exc
from ray.exceptions import NodeDiedError, ObjectLostError, OutOfMemoryError, RayActorError, WorkerCrashedError

from spo_agents.distributed.transport import init_ray, to_plain
from spo_agents.rollout.env_runner import EnvCrashed, EnvTimeout, make_env

WORKER_DIED = (RayActorError, WorkerCrashedError, OutOfMemoryError, ObjectLostError, NodeDiedError)
ALLOWED_METHODS = ("reset", "step")


class EnvWorker:
    """A Ray actor hosting environments by handle (wrapped with `ray.remote` by the pool)."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any]):
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.envs: dict[str, Any] = {}
        self.started_at = time.time()

    def info(self) -> dict[str, Any]:
        """pid, host and hosted env count: plain data for health checks and tests."""
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "envs": len(self.envs),
                "started_at": self.started_at}

    def call(self, handle: str, method: str, args: tuple, kwargs: dict[str, Any]) -> tuple[str, Any]:
        """("ok", result) | ("error", (type name, message)) | ("lost", why): never raises for env faults."""
        if method not in ALLOWED_METHODS:
            return "error", ("ValueError", f"env method {method!r} is not callable through Ray")
        env = self.envs.get(handle)
        if env is None and method != "reset":
            return "lost", f"env {handle} is not on this worker (the worker restarted after it was made)"
        try:
            if env is None:
                env = self.envs[handle] = make_env(self.env_id, self.env_kwargs)
            return "ok", to_plain(getattr(env, method)(*args, **kwargs), f"env.{method}()")
        except Exception as exc:  # sent back and raised on the driver: ends one episode
            return "error", (type(exc).__name__, str(exc))

    def close(self, handle: str, abandoned: bool = False) -> None:
        env = self.envs.pop(handle, None)
        if env is not None and not abandoned:  # an abandoned env may still run in a stuck thread
            env.close()

    def close_all(self) -> int:
        envs, self.envs = list(self.envs.values()), {}
        for env in envs:
            try:
                env.close()
            except Exception:  # closing is best effort at shutdown
                pass
        return len(envs)


class RayEnvPool:
    """`num_workers` env actors for `env_id`; hands out runners, least-loaded first.

    `num_cpus` per actor defaults to min(1, available CPUs / num_workers) so a pool never waits
    for resources it cannot get; give `resources` (e.g. {"sandbox": 1}) to pin workers to CPU
    nodes that advertise them. Workers are spread over the nodes (`scheduling_strategy`
    "SPREAD"; "DEFAULT" packs them). `max_concurrency` bounds the env calls one worker runs at once.
    """

    def __init__(self, num_workers: int, env_id: str, env_kwargs: dict[str, Any] | None = None, *,
                 num_cpus: float | None = None, max_restarts: int = -1, max_concurrency: int = 64,
                 resources: dict[str, float] | None = None, scheduling_strategy: str = "SPREAD",
                 address: str | None = None, owned_by_engine: bool = False):
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        init_ray(address)
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        if num_cpus is None:
            available = float(ray.available_resources().get("CPU", 0.0))
            num_cpus = max(0.0, min(1.0, int(available / num_workers * 100) / 100))
        options = dict(num_cpus=num_cpus, max_restarts=max_restarts, max_task_retries=0,
                       max_concurrency=max_concurrency, resources=resources or {},
                       scheduling_strategy=scheduling_strategy)
        worker_cls = ray.remote(EnvWorker)
        self.workers = [worker_cls.options(**options).remote(env_id, self.env_kwargs) for _ in range(num_workers)]
        self._load = [0] * num_workers
        self._turn = 0
        self._handles = itertools.count()
        self._live: set[str] = set()
        self.owned_by_engine = owned_by_engine
        self.closed = False
        self.stats = {"calls": 0, "errors": 0, "timeouts": 0, "crashes": 0, "lost": 0}

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def ready(self, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Block until every worker answers; its `info()` each (raises GetTimeoutError)."""
        return ray.get([w.info.remote() for w in self.workers], timeout=timeout_s)

    def runner(self, timeout_s: float, startup_grace_s: float = 120.0) -> "RayEnvRunner":
        """A runner on the least-loaded worker (ties: the next in round-robin order)."""
        if self.closed:
            raise RuntimeError("the env pool is shut down")
        order = [(self._turn + k) % self.num_workers for k in range(self.num_workers)]
        index = min(order, key=lambda i: self._load[i])
        self._turn = (index + 1) % self.num_workers
        self._load[index] += 1
        handle = f"env-{next(self._handles)}"
        self._live.add(handle)
        return RayEnvRunner(self, index, handle, timeout_s, startup_grace_s)

    def _release(self, runner: "RayEnvRunner", abandoned: bool) -> None:
        if runner.handle not in self._live:
            return
        self._live.discard(runner.handle)
        self._load[runner.worker_index] -= 1
        if not self.closed:
            close_ref = self.workers[runner.worker_index].close.remote(runner.handle, abandoned)
            if not abandoned:  # wait a little so sandboxes are torn down in order; never hang
                try:
                    ray.get(close_ref, timeout=10)
                except Exception:  # a dead or restarting worker has nothing left to close
                    pass
        if self.owned_by_engine and not abandoned and not self._live:
            self.shutdown()

    def kill_worker(self, index: int, restart: bool = True) -> None:
        """Kill one worker process (Ray restarts it when `restart`): for operators and tests."""
        ray.kill(self.workers[index], no_restart=not restart)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Close every env (sandboxes end cleanly), then end the worker processes."""
        if self.closed:
            return
        self.closed = True
        if not ray.is_initialized():  # the cluster (and with it every worker) is already gone
            return
        try:
            ray.get([w.close_all.remote() for w in self.workers], timeout=timeout_s)
        except Exception:  # a worker that is dead or stuck is killed below anyway
            pass
        for worker in self.workers:
            ray.kill(worker, no_restart=True)

    def __enter__(self) -> "RayEnvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class RayEnvRunner:
    """One slot's environment on a pool worker; the engine's runner interface."""

    def __init__(self, pool: RayEnvPool, worker_index: int, handle: str, timeout_s: float,
                 startup_grace_s: float = 120.0):
        self.pool, self.worker_index, self.handle = pool, worker_index, handle
        self.timeout_s, self.startup_grace_s = timeout_s, startup_grace_s
        self._answered = False  # the first call may wait for the worker process to (re)start

    @property
    def worker(self) -> Any:
        return self.pool.workers[self.worker_index]

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        stats = self.pool.stats
        stats["calls"] += 1
        limit = self.timeout_s + (0.0 if self._answered else self.startup_grace_s)
        ref = self.worker.call.remote(self.handle, method, args, kwargs)
        try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            async with asyncio.timeout(limit):
                status, payload = await asyncio.wrap_future(ref.future())
        except TimeoutError:
            stats["timeouts"] += 1
            _cancel(ref)
            raise EnvTimeout(f"env.{method} took longer than {limit:g} s on Ray worker {self.worker_index}") from None
        except WORKER_DIED as exc:
            stats["crashes"] += 1
            raise EnvCrashed(f"Ray env worker {self.worker_index} died during env.{method}: "
                             f"{type(exc).__name__}") from None
        self._answered = True
        if status == "lost":
            stats["lost"] += 1
            raise EnvCrashed(f"Ray env worker {self.worker_index}: {payload}")
        if status == "error":
            stats["errors"] += 1
            raise remote_env_error(*payload)
        return payload

    def close(self, abandoned: bool = False) -> None:
        self.pool._release(self, abandoned)


class RemoteEnvError(RuntimeError):
    """An exception raised by an env inside a Ray worker, re-raised on the driver.

    Its subclasses carry the remote exception's type name, and `str()` is the remote message,
    so `f"{type(exc).__name__}: {exc}"` (the engine's episode error) reads exactly as with the
    thread executor.
    """


_REMOTE_ERROR_TYPES: dict[str, type[RemoteEnvError]] = {}


def remote_env_error(type_name: str, message: str) -> RemoteEnvError:
    cls = _REMOTE_ERROR_TYPES.get(type_name)
    if cls is None:
        cls = _REMOTE_ERROR_TYPES[type_name] = type(type_name, (RemoteEnvError,), {"__module__": "ray-env-worker"})
    return cls(message)


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref)  # a queued call is dropped; a running one only gets a flag
    except Exception:  # the call may have just finished or its worker died
        pass


# ---------------------------------------------------------------------------- engine integration
_ENGINE_POOLS: "weakref.WeakKeyDictionary[Any, RayEnvPool]" = weakref.WeakKeyDictionary()


def bind_pool(engine: Any, pool: RayEnvPool) -> None:
    """Use `pool` for `engine`'s slots (call before the engine plays its first episode).

    A bound pool is not shut down with the engine: its owner shuts it down.
    """
    if pool.env_id != engine.env_id:
        raise ValueError(f"pool is for {pool.env_id!r}, engine plays {engine.env_id!r}")
    _ENGINE_POOLS[engine] = pool


def pool_for(engine: Any) -> RayEnvPool:
    """The engine's pool, made on first use from its RolloutConfig."""
    pool = _ENGINE_POOLS.get(engine)
    if pool is None or pool.closed:
        config = engine.config
        init_ray()
        num_workers = config.env_workers or max(1, min(config.num_slots, int(ray.cluster_resources().get("CPU", 1))))
        pool = RayEnvPool(num_workers, engine.env_id, engine.env_kwargs, owned_by_engine=True)
        _ENGINE_POOLS[engine] = pool
        weakref.finalize(engine, pool.shutdown)  # if its last runner was abandoned, not closed
    return pool


def engine_runner(engine: Any, slot: int) -> RayEnvRunner:
    """The runner for one slot of a `RolloutEngine` with `env_executor="ray"`."""
    return pool_for(engine).runner(engine.config.env_step_timeout_s)
