"""One module per SaaS source, each exposing ``build(settings, client, limiter) -> Source``.

Modules are imported lazily by name so a process only loads the connectors it uses.
"""

from __future__ import annotations

import importlib

import httpx

from core.http import Limiter
from core.settings import SOURCE_NAMES, SourceSettings
from core.sources.base import (
    Page,
    Scope,
    Source,
    SourceContext,
    StaticContext,
    WebhookResult,
)

__all__ = [
    "SOURCE_NAMES", "Page", "Scope", "Source", "SourceContext", "StaticContext", "WebhookResult",
    "build_source",
]


def build_source(
    settings: SourceSettings,
    client: httpx.AsyncClient,
    limiter: Limiter | None = None,
    context: SourceContext | None = None,
) -> Source:
    """Build the connector for ``settings.name`` around a shared async HTTP client."""
    module = importlib.import_module(f"core.sources.{settings.name}")
    source: Source = module.build(settings, client, limiter, context)
    return source
