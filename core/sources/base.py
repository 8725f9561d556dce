"""The connector interface every SaaS source implements, reused unchanged by every path.

- The receiver calls ``verify`` then ``parse`` (pure, no I/O) on a webhook's raw bytes.
- Workers call ``fetch`` for the current truth of one document (webhooks are notifications).
- The reconciler calls ``scopes``, ``changes`` (incremental listing from a cursor, resumable
  from a checkpoint) and ``live_ids`` (id-only listing, for pruning).

A source module exposes ``build(settings, client, limiter, context=None) -> Source``: it wraps
the shared ``httpx.AsyncClient`` in a ``core.http.SourceHTTP``, which applies timeouts, the shared
request budget, Retry-After and backoff, so connector code only says what to ask and how to read
the answer. ``context`` (a ``SourceContext``) answers questions about our own state that a
connector needs, such as which Jira projects are active (Tempo and Fireflies filter on them).

A pushing source whose webhooks carry whole documents may also define
``async from_payload(ref) -> Document | Gone``: ``parse`` puts the webhook's own object in
``Ref.payload``, and the worker calls this instead of ``fetch``; it asks only for what the
payload lacks and returns the document ``fetch`` would (docs/architecture.md).

A pushing source with an unsigned handshake (Notion's first request) may also define
``handshake(headers, body) -> str | None``: the receiver calls it before ``verify`` and, when it
returns a token, records it for the operator and answers 200 with nothing enqueued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from core.documents import Document, Gone, Ref


@dataclass(frozen=True)
class Scope:
    """A unit the reconciler polls: a Jira project, Slack channel, GitHub repo, or the account.

    ``key`` is stable (project key or id, channel id, ``owner/repo``, ``account``); ``name`` is
    for people.
    """

    source: str
    key: str
    name: str = ""


@dataclass(frozen=True)
class Page:
    """One page of a listing.

    ``refs`` are documents to (re)sync; a ref may carry its whole ``document`` when the listing
    already returned it. ``checkpoint`` resumes the listing after this page (None on the last
    page). ``high_water`` is the newest source ``updated_at`` (epoch seconds) seen on this page;
    the reconciler advances its cursor to the highest one once every page was enqueued.
    """

    refs: list[Ref]
    checkpoint: str | None = None
    high_water: float | None = None


@dataclass(frozen=True)
class WebhookResult:
    """What a verified webhook means.

    ``refs`` to enqueue (op ``sync`` or ``delete``); ``delivery_id`` for de-duplication (None
    when the provider has none); ``reply`` is a handshake answer the receiver sends back as-is
    (status, body, content type), with nothing enqueued; ``scope_events`` are lifecycle changes
    such as ``("archived", scope_key)`` or ``("deleted", scope_key)``; ``note`` explains an
    ignored event in logs.
    """

    refs: list[Ref] = field(default_factory=list)
    delivery_id: str | None = None
    reply: tuple[int, bytes, str] | None = None
    scope_events: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""


class SourceContext(Protocol):
    async def active_scopes(self, source: str) -> list[Scope]:
        """The scopes of ``source`` that are active in our state (e.g. Jira projects)."""
        ...


@dataclass
class StaticContext:
    """A SourceContext over a fixed mapping, for tests and tools."""

    scopes: dict[str, list[Scope]] = field(default_factory=dict)

    async def active_scopes(self, source: str) -> list[Scope]:
        return list(self.scopes.get(source, []))


@runtime_checkable
class Source(Protocol):
    name: str
    #: True when the source pushes webhooks to the receiver.
    pushes: bool

    async def scopes(self) -> list[Scope]:
        """Every scope the credentials can see (the reconciler filters by configuration)."""
        ...

    def changes(
        self, scope: Scope, since: float | None, checkpoint: str | None
    ) -> AsyncIterator[Page]:
        """Pages of documents changed at or after ``since`` (epoch s; None = from the start),
        resuming after ``checkpoint`` when it is given."""
        ...

    async def fetch(self, ref: Ref) -> Document | Gone:
        """The current truth of one document, or Gone if deleted upstream.

        Raises SourceError subclasses on failure; a failure is never reported as Gone."""
        ...

    def live_ids(self, scope: Scope) -> AsyncIterator[str]:
        """Every stable id (not document id) that exists in the scope now."""
        ...

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise InvalidWebhook unless the signature over the raw body checks out.

        Raise NotConfigured when the secret is not set (fail closed). Pure, no I/O."""
        ...

    def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        """Turn a verified webhook into refs. Raise MalformedWebhook on a bad body."""
        ...
