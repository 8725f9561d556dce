"""Errors, named after the condition.

::

    VectorSyncError
    ├── SettingsError            bad configuration: one line naming the variable
    ├── InvalidWebhook           bad signature / stale timestamp → 401, never enqueued
    │   └── MalformedWebhook     unparseable body → 400
    ├── NotConfigured            a source without its secret refuses webhooks (fail closed)
    ├── IndexError_              a vector index write was refused or came back short
    │   └── UpsertMismatch       the index reported fewer vectors upserted than sent
    ├── EmbeddingError           the embedder refused or failed
    └── SourceError(source, detail, status)
        ├── TransientSourceError retried with backoff (5xx, timeouts, connection errors)
        │   ├── RateLimited      retried after ``retry_after`` seconds (429, 503 + Retry-After)
        │   └── NotReady         exists but has no content yet (a transcript being processed):
        │                        deferred, not failed; the next reconcile pass lists it again
        └── PermanentSourceError not retried blindly (revoked auth, 4xx other than 404/429)

A ``Gone`` result (not an error) is how a fetch says "deleted upstream"; a failed fetch is
never a deletion.
"""

from __future__ import annotations


class VectorSyncError(Exception):
    """Base class of every error this product raises on purpose."""


class SettingsError(VectorSyncError):
    """Raised when an environment variable has a bad value; the message is one line."""


class InvalidWebhook(VectorSyncError):
    """Raised when a webhook's signature or timestamp does not verify."""

    status = 401


class MalformedWebhook(InvalidWebhook):
    """Raised when a webhook body cannot be parsed."""

    status = 400


class NotConfigured(VectorSyncError):
    """Raised when a source is asked to do something its configuration does not allow."""


class IndexError_(VectorSyncError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """Raised when a vector index operation fails."""


class UpsertMismatch(IndexError_):
    """Raised when the index reports fewer vectors upserted than were sent."""


class EmbeddingError(VectorSyncError):
    """Raised when the embedder fails."""


class SourceError(VectorSyncError):
    """Raised when a SaaS API call fails. ``status`` is the HTTP status, if any."""

    def __init__(self, source: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail
        self.status = status


class TransientSourceError(SourceError):
    """Raised for failures worth retrying: 5xx, timeouts, connection errors."""


class RateLimited(TransientSourceError):
    """Raised on 429 (or 503 with Retry-After); ``retry_after`` is in seconds."""

    def __init__(self, source: str, detail: str, retry_after: float, status: int = 429) -> None:
        super().__init__(source, detail, status)
        self.retry_after = retry_after


class NotReady(TransientSourceError):
    """Raised when a document exists but its content is not ready yet (never stored empty)."""


class PermanentSourceError(SourceError):
    """Raised for failures that retrying will not fix: bad credentials, bad requests."""
