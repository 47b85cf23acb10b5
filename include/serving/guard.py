"""The request guard: an ASGI middleware in front of the service's endpoints (`add_asgi_middleware`).

It refuses, before BentoML parses anything, what the service never accepts:

* a body that is not JSON: `Content-Type` missing or other than `application/json` → 415 (BentoML
  would parse a missing or unknown type as JSON, and a malformed multipart body crashes its form
  parser with a 500);
* a body over `max_body_bytes` → 413, decided from `Content-Length` when it is declared and by
  counting the bytes as they arrive otherwise, so no more than the limit is ever held in memory.
  The rest of such a body is read and thrown away (up to `DRAIN_FACTOR` times the limit) before
  the answer: a server that answers and closes with unread request bytes makes the kernel reset
  the connection, and a proxy still writing the body (Traefik) then turns the 413 into a 502.
  A body declared larger than that is refused without being read;
* a body that has not fully arrived after `body_seconds` (a client that declared more than it
  sends, or trickles it) → 408, before the service's own timeout would answer 504.

Everything else goes through unchanged (the body is replayed to the app as it came). Requests
without a body (GET, HEAD, OPTIONS) are not touched: `/livez`, `/readyz`, `/metrics` and
`/docs.json` answer as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON = "application/json"
DRAIN_FACTOR = 8
"""How much of a body over the limit is read (and dropped) so the 413 reaches the client."""


class RequestGuard:
    def __init__(self, app: Any, max_body_bytes: int, body_seconds: float):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_seconds = body_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != JSON:
            got = f"got {media_type!r}" if media_type else "none given"
            await _refuse(send, 415, f"Content-Type must be {JSON} ({got})")
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            if int(length) <= DRAIN_FACTOR * self.max_body_bytes:
                await self._drain(receive, 0)
            await _refuse(send, 413, self._too_large())
            return
        body = bytearray()
        more = True
        try:
            async with asyncio.timeout(self.body_seconds):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client left; there is no one to answer
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > self.max_body_bytes:
                        if more:
                            await self._drain(receive, len(body))
                        await _refuse(send, 413, self._too_large())
                        return
        except TimeoutError:
            await _refuse(send, 408, f"the request body did not arrive within {self.body_seconds:g} s ({len(body)} bytes came)")
            return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _drain(self, receive: Any, seen: int) -> None:
        """Read and drop the rest of the body: until it ends, the client leaves, `DRAIN_FACTOR`
        times the limit has come, or `body_seconds` have passed."""
        try:
            async with asyncio.timeout(self.body_seconds):
                while seen <= DRAIN_FACTOR * self.max_body_bytes:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    seen += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return
        except TimeoutError:
            return

    def _too_large(self) -> str:
        return f"request body over {self.max_body_bytes} bytes (LOOP_SERVING_MAX_BODY_BYTES): send fewer records per request"


def _replay(body: bytes, receive: Any):
    """A `receive` that yields the body read so far, then waits on the client (a disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Any, status: int, error: str) -> None:
    payload = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class ClientErrorsInOneLine(logging.Filter):
    """BentoML logs every request its input model refuses (a 400) as an ERROR with the whole
    traceback: about 30 lines per bad request, so a misbehaving client fills the disk with them.
    This filter, on BentoML's HTTP logger, turns those records into one INFO line naming the
    path and the error count; a real failure (any other exception, a 5xx) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            path, method = (record.args or ("?", "?"))[:2]
            record.msg, record.args = (
                "refused %s [%s] with 400: %d validation error(s) for %s",
                (path, method, exc.error_count(), exc.title),
            )
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"
"""The logger BentoML's `log_exception` writes to."""
