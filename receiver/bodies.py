"""Request bodies: a size-capped read, and the one safe JSON parse every route's body goes
through (nesting depth checked before parsing, NaN/Infinity and characters Postgres cannot
store refused; see :mod:`core.jsonsafe`). Each refusal is a 4xx with a message."""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from core import jsonsafe

#: Admin, key and search bodies are small: a list of keys, a query, a few fields.
MAX_JSON_BODY = 64 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


async def read_body(request: Request, limit: int) -> bytes | JSONResponse:
    """The raw body, or a 413 as soon as it is over ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return _error(413, f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return _error(413, f"body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        return _error(400, "client disconnected")
    return b"".join(chunks)


async def json_object(request: Request, limit: int = MAX_JSON_BODY) -> dict[str, Any] | JSONResponse:
    """A JSON object body (an empty body is ``{}``), or the 4xx saying what is wrong with it."""
    raw = await read_body(request, limit)
    if isinstance(raw, JSONResponse):
        return raw
    if not raw.strip():
        return {}
    try:
        body = jsonsafe.loads(raw)  # NUL and lone surrogates refused: keys and ids are stored
    except jsonsafe.BadJSON as exc:
        return _error(400, str(exc))
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    return body
