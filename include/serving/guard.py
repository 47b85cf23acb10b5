"""The request guard: an ASGI middleware in front of the service's endpoints (`add_asgi_middleware`).

It refuses, before BentoML parses anything, what the service never accepts:

* a body that is not JSON: `Content-Type` missing or other than `application/json` → 415 (BentoML
  would parse a missing or unknown type as JSON, and a malformed multipart body crashes its form
  parser with a 500);
* a body over `max_body_bytes` → 413. `Content-Length` refuses it before reading; the bytes are
  counted as they arrive too, so a chunked body is cut off at the limit instead of being held
  whole in memory;
* a body that has not fully arrived after `body_seconds` (a client that declared more than it
  sends, or trickles it) → 408, before the service's own timeout would answer 504.

Everything else goes through unchanged (the body is replayed to the app as it came). Requests
without a body (GET, HEAD, OPTIONS) are not touched: `/livez`, `/readyz`, `/metrics` and
`/docs.json` answer as before.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON = "application/json"


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
                        await _refuse(send, 413, self._too_large())
                        return
        except TimeoutError:
            await _refuse(send, 408, f"the request body did not arrive within {self.body_seconds:g} s ({len(body)} bytes came)")
            return
        await self.app(scope, _replay(bytes(body), receive), send)

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
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": payload})
