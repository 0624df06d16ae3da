"""Running the serve app: in a background thread (tests, notebooks) or in the foreground (the CLI).

Why a thread runner: the HTTP backend is tested against a real server on loopback, and starting a
subprocess per test module would load the model twice and make failures hard to see. uvicorn's
`Server` runs happily in a non-main thread (it skips signal handlers there); we bind the socket
ourselves so port 0 gives an ephemeral port whose number is known before the server starts.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

__all__ = ["ServerThread", "serve_forever"]


class ServerThread:
    """An ASGI app served by uvicorn on `host:port` from a daemon thread.

    `port=0` picks a free port; `url` is the base URL once started. Use as a context manager, or
    call `start()` / `stop()`. `stop()` waits up to `graceful_timeout` seconds for requests in flight.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning",
                 graceful_timeout: float = 5.0) -> None:
        self.host = host
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=graceful_timeout)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"spo-serve-{self.port}", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._socket])
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the server thread exited before starting: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_forever(app: Any, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve `app` in the foreground until interrupted (Ctrl-C / SIGTERM)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
