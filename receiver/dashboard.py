"""The dashboard at ``/``: the status report at a glance, for people."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route


async def page(request: Request) -> Response:
    html = (resources.files("receiver") / "static" / "dashboard.html").read_text()
    return HTMLResponse(html)


def routes() -> list[BaseRoute]:
    return [Route("/", page)]
