"""Errors, named after the condition.

::

    VectorSyncError
    ├── SettingsError            bad configuration: one line naming the variable
    ├── InvalidWebhook           bad signature / stale timestamp → 401, never enqueued
    │   └── MalformedWebhook     unparseable body → 400
    ├── NotConfigured            a source without its secret refuses webhooks (fail closed)
    ├── DocumentInvalid          a document the stores cannot hold (its id has NUL, say): permanent
    ├── IndexError_              a vector index write was refused or came back short
    │   ├── UpsertMismatch       the index reported fewer vectors upserted than sent
    │   ├── IndexRejected        400-class: this request can never succeed (permanent)
    │   ├── IndexRateLimited     429 (a wait)
    │   └── IndexUnavailable     502/503/504 (an outage: a wait)
    ├── EmbeddingError           the embedder failed (500, a malformed answer)
    │   ├── EmbeddingRejected    400: these inputs can never be embedded (permanent, per input)
    │   ├── EmbeddingRefused     401/403/404: the key or the model is wrong (permanent)
    │   ├── EmbeddingRateLimited 429, ``retry_after`` honoured (a wait)
    │   └── EmbeddingUnavailable 502/503/504, connection failures (an outage: a wait)
    └── SourceError(source, detail, status)
        ├── TransientSourceError retried with backoff (500, timeouts)
        │   ├── RateLimited      429 (or the source's reset header): retry after ``retry_after``
        │   ├── SourceUnavailable 502/503/504 or no connection: an outage, not a rate limit
        │   └── NotReady         exists but has no content yet (a transcript being processed):
        │                        deferred, not failed; the next reconcile pass lists it again
        └── PermanentSourceError not retried blindly (revoked auth, 4xx other than 404/429)

Two kinds of error are *waits*, not failures (:func:`wait_of`): a rate limit (``RateLimit``) and
an outage (``Outage``). A job that meets one waits for the service and tries again without
using up ``MAX_RETRIES``; ``MAX_WAIT`` bounds how long (workers/actors.py). Errors with
``permanent = True`` (:func:`is_permanent`) are never retried blindly: they go to the
dead-letter queue at once.

A ``Gone`` result (not an error) is how a fetch says "deleted upstream"; a failed fetch is
never a deletion.
"""

from __future__ import annotations


class VectorSyncError(Exception):
    """Base class of every error this product raises on purpose."""

    #: True when retrying cannot help (bad credentials, an input the service refuses).
    permanent = False


class Wait:
    """Mixin: the service asked us to come back later, or is down. Waiting is not failing.

    ``retry_after`` is seconds (None: the service did not say; the caller backs off).
    """

    retry_after: float | None = None
    #: How the wait is named in logs, status and dead letters.
    kind = "wait"


class RateLimit(Wait):
    kind = "rate limited"


class Outage(Wait):
    kind = "unavailable (outage)"


def wait_of(exc: BaseException) -> Wait | None:
    """The wait ``exc`` stands for, or None when it is a real failure."""
    return exc if isinstance(exc, Wait) else None


def is_permanent(exc: BaseException) -> bool:
    return bool(getattr(exc, "permanent", False))


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

    permanent = True


class DocumentInvalid(VectorSyncError):
    """Raised when a document cannot be stored as it is (its identity has NUL, say)."""

    permanent = True


class IndexError_(VectorSyncError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """Raised when a vector index operation fails. ``status`` is the HTTP status, if any."""

    def __init__(self, detail: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.retry_after = retry_after


class UpsertMismatch(IndexError_):
    """Raised when the index reports fewer vectors upserted than were sent."""


class IndexRejected(IndexError_):
    """Raised when the index refuses a request as invalid (400): retrying cannot help."""

    permanent = True


class IndexRateLimited(IndexError_, RateLimit):
    """Raised when the index answers 429."""


class IndexUnavailable(IndexError_, Outage):
    """Raised when the index answers 502/503/504: an outage."""


class EmbeddingError(VectorSyncError):
    """Raised when the embedder fails. ``status`` is the HTTP status, if any."""

    def __init__(self, detail: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.retry_after = retry_after


class EmbeddingRejected(EmbeddingError):
    """Raised when the embedder refuses the inputs themselves (400): permanent, per input.

    The pipeline splits the batch to find which inputs, so one bad input fails alone."""

    permanent = True


class EmbeddingRefused(EmbeddingError):
    """Raised when the embedder refuses us (401, 403, 404: key or model): permanent."""

    permanent = True


class EmbeddingRateLimited(EmbeddingError, RateLimit):
    """Raised when the embedder answers 429; ``retry_after`` is honoured."""


class EmbeddingUnavailable(EmbeddingError, Outage):
    """Raised when the embedder answers 502/503/504 or cannot be reached: an outage."""


class SourceError(VectorSyncError):
    """Raised when a SaaS API call fails. ``status`` is the HTTP status, if any."""

    def __init__(self, source: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail
        self.status = status


class TransientSourceError(SourceError):
    """Raised for failures worth retrying: 5xx, timeouts, connection errors."""


class RateLimited(TransientSourceError, RateLimit):
    """Raised on 429 (or the source's own reset signal); ``retry_after`` is in seconds."""

    def __init__(self, source: str, detail: str, retry_after: float, status: int = 429) -> None:
        super().__init__(source, detail, status)
        self.retry_after = retry_after


class SourceUnavailable(TransientSourceError, Outage):
    """Raised on 502/503/504 (with or without Retry-After) or when the source cannot be reached:
    an outage. ``retry_after`` is the source's own hint in seconds, or None."""

    def __init__(self, source: str, detail: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(source, detail, status)
        self.retry_after = retry_after


class NotReady(TransientSourceError):
    """Raised when a document exists but its content is not ready yet (never stored empty)."""


class PermanentSourceError(SourceError):
    """Raised for failures that retrying will not fix: bad credentials, bad requests."""

    permanent = True
