"""The dashboard at ``/``: the status report at a glance, for people.

One self-contained page (``static/dashboard.html``: inline CSS and JS, no CDN, no build step)
that fetches ``GET /api/status`` every few seconds and renders it. All report values are put in
the page as text, never as markup; as a second line of defence the page is served with a
Content-Security-Policy that only allows its own inline script and style (by hash) and requests
to this origin, so injected markup could not run a script or call elsewhere.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@functools.cache
def _page(name: str = "dashboard.html") -> tuple[str, str]:
    """A page and its Content-Security-Policy (hashes of its inline script and style)."""
    html = (resources.files("receiver") / "static" / name).read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _BLOCK.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
        hashes[tag].append(f"'sha256-{digest}'")
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {' '.join(hashes['script']) or chr(39) + 'none' + chr(39)}",
        f"style-src {' '.join(hashes['style']) or chr(39) + 'none' + chr(39)}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])
    return html, csp


async def page(request: Request) -> Response:
    html, csp = _page()
    return HTMLResponse(html, headers={
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    })


async def search_page(request: Request) -> Response:
    """A search box (asks for a search key; see receiver/static/search.html)."""
    html, csp = _page("search.html")
    return HTMLResponse(html, headers={
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    })


def routes() -> list[BaseRoute]:
    return [Route("/", page), Route("/search", search_page)]
