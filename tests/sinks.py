"""A webhook sink for tests: a tiny simulator that records every POST it is sent."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Simulator


class Sink(Simulator):
    """Records each POST to ``/hook`` (headers, raw body) and answers the queued ``statuses``
    in turn (200 once they run out), so tests can make a sender retry."""

    name = "sink"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []

    def routes(self) -> list[BaseRoute]:
        return [Route("/hook", self.hook, methods=["POST"])]

    def events(self) -> list[dict[str, Any]]:
        """The JSON bodies received, in order."""
        return [json.loads(body) for _, body in self.received]

    async def hook(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        return JSONResponse({}, self.statuses.pop(0) if self.statuses else 200)
