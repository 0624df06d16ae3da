"""Running `env.reset` / `env.step` off the event loop.

A slow tool must never block generation for the other slots, so every environment call runs
outside the asyncio loop, with a wall-clock limit:
- `ThreadEnvRunner`: the env lives in this process; calls run in a shared thread pool.
- `ProcessEnvRunner`: the env lives in its own spawned process (one per slot); calls go over a
  pipe. This isolates environments that hold the GIL for long or may crash the interpreter.
A call that exceeds its limit raises `EnvTimeout`; the engine then discards the runner (a
thread cannot be killed, so the stuck call is abandoned and its env never reused; a process is
killed) and makes a fresh one for the slot.

Environments are made only through `gymnasium.make(env_id, **kwargs)`: the rollout layer never
imports an environment module.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium


class EnvTimeout(Exception):
    """An environment call exceeded its wall-clock limit."""


class EnvCrashed(Exception):
    """The environment process died."""


def make_env(env_id: str, env_kwargs: dict[str, Any]) -> gymnasium.Env:
    import spo_agents  # noqa: F401  (registers built-in and plugin environments)

    return gymnasium.make(env_id, **env_kwargs)


class ThreadEnvRunner:
    def __init__(self, env_id: str, env_kwargs: dict[str, Any], pool: ThreadPoolExecutor, timeout_s: float):
        self.env = make_env(env_id, env_kwargs)
        self.pool, self.timeout_s = pool, timeout_s

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.pool, lambda: getattr(self.env, method)(*args, **kwargs))
        try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            raise EnvTimeout(f"env.{method} took longer than {self.timeout_s:g} s") from None

    def close(self, abandoned: bool = False) -> None:
        if not abandoned:  # an abandoned env may still be running in its thread
            self.env.close()


def _env_process_main(conn, env_id: str, env_kwargs: dict[str, Any]) -> None:
    env = make_env(env_id, env_kwargs)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request is None:
            break
        method, args, kwargs = request
        try:
            conn.send(("ok", getattr(env, method)(*args, **kwargs)))
        except Exception as exc:  # sent back and raised in the engine: ends one episode
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    env.close()


class ProcessEnvRunner:
    def __init__(self, env_id: str, env_kwargs: dict[str, Any], pool: ThreadPoolExecutor, timeout_s: float):
        context = mp.get_context("spawn")  # never fork a process that holds torch and threads
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_env_process_main, args=(child, env_id, env_kwargs), daemon=True)
        self.process.start()
        child.close()
        self.pool, self.timeout_s = pool, timeout_s

    def _roundtrip(self, request: tuple) -> Any:
        self.conn.send(request)
        if not self.conn.poll(self.timeout_s):
            raise EnvTimeout(f"env.{request[0]} took longer than {self.timeout_s:g} s")
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise EnvCrashed(f"environment process exited with code {self.process.exitcode}") from None
        if status == "error":
            raise RuntimeError(payload)
        return payload

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._roundtrip, (method, args, kwargs))

    def close(self, abandoned: bool = False) -> None:
        if abandoned or not self.process.is_alive():
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()
