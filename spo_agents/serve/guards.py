"""What `spo-agents serve` checks before a request body is read: the API key and the body size.

Both run as ASGI middleware, before FastAPI parses the JSON body, so a client without the key or
with a 100 MB body costs the server no parsing and no tokenizing.

- API key: with a key configured, every `/v1/...` route needs `Authorization: Bearer <key>`
  (as vLLM's `--api-key`); `/health` stays open for load balancers. The comparison is
  constant-time. A wrong and a missing key get the same 401. Starlette's AuthenticationMiddleware
  does the plumbing; `BearerKey` is the rule.
- Body size: bodies over `max_bytes` get a 413 naming the limit, whether the size is declared
  (`Content-Length`) or only seen while the body streams in (chunked transfer). Why our own
  middleware: FastAPI's `max_body_size` exists only in recent releases (the project supports
  fastapi>=0.110) and answers in plain text, while every error of this server is OpenAI-shaped.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, SimpleUser
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BearerKey", "BodyTooLarge", "BodySizeLimit", "error_response", "install", "is_loopback"]


def error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: may resolve to anything
        return False


class BearerKey(AuthenticationBackend):
    """Requires `Authorization: Bearer <key>` on `/v1/...` routes (`key=None`: nothing is required)."""

    def __init__(self, key: str | None) -> None:
        self._key = key.encode() if key else None

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        if self._key is None or not conn.url.path.startswith("/v1/"):
            return None
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise AuthenticationError("missing or wrong API key: send the header `Authorization: Bearer <key>`")
        return AuthCredentials(["authenticated"]), SimpleUser("client")

    @staticmethod
    def on_error(_: HTTPConnection, exc: Exception) -> JSONResponse:
        response = error_response(401, str(exc), "authentication_error")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response


class BodyTooLarge(HTTPException):
    """Raised while a body streams in past the limit (an HTTPException, so FastAPI passes it through)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over the server's limit of {max_bytes} bytes (--max-body-mb)")


class BodySizeLimit:
    """Refuses request bodies over `max_bytes` with a 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            await error_response(413, error.detail, "invalid_request_error")(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


def install(app: Any, *, api_key: str | None, max_body_bytes: int) -> None:
    """Add both guards to a Starlette/FastAPI app (the key check runs first)."""
    from starlette.middleware.authentication import AuthenticationMiddleware

    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(AuthenticationMiddleware, backend=BearerKey(api_key), on_error=BearerKey.on_error)
