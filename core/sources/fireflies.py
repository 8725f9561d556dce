"""Fireflies.ai connector: meeting transcripts, polled by meeting date and pushed by webhook.

One account scope. ``changes`` lists transcripts by *meeting* date (Fireflies has no update-time
filter) from ``since - LIST_OVERLAP``: a transcript appears hours after its meeting, so the window
reaches 48 h back; later arrivals come by webhook (``meeting.transcribed``). Listings emit refs
only; ``fetch`` reads one transcript whole. A transcript whose ``sentences`` are still null is not
processed yet: ``fetch`` raises :class:`NotProcessedYet` (transient, retried), never an empty
document and never Gone. Only a missing transcript (``object_not_found`` or a null result) is Gone.

Errors arrive in the GraphQL ``errors`` array, possibly with HTTP 200: ``too_many_requests`` is
turned into a wait (``extensions.metadata.retryAfter``) through SourceHTTP's ``reset_after`` hook,
``auth_failed``/``forbidden`` are permanent, 5xx statuses transient.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import Any

import httpx

from core.documents import Document, Gone, Ref, doc_id
from core.errors import (
    MalformedWebhook,
    NotConfigured,
    NotReady,
    PermanentSourceError,
    SettingsError,
    TransientSourceError,
)
from core.facts import FactStore
from core.http import Limiter, SourceHTTP
from core.settings import SourceSettings, parse_duration
from core.sources.base import Page, Scope, SourceContext, WebhookResult
from core.sources.webhooks import check_sha256_signature, load_object, number
from core.sources.webhooks import text as text_field

log = logging.getLogger(__name__)

NAME = "fireflies"
SCOPE = Scope(NAME, "account", "Fireflies account")
#: Largest page Fireflies serves for ``transcripts``.
PAGE_SIZE = 50
#: Seconds the listing window reaches before ``since``: transcripts appear hours after the meeting.
LIST_OVERLAP = 48 * 3600
#: Default ``FIREFLIES_RECHECK_WINDOW``: how far back each pass re-lists meetings (id, date,
#: title: one request per 50) to catch renames, which send no webhook and move no date.
DEFAULT_RECHECK = 14 * 86400
#: Events meaning "this transcript (or its summary) is ready".
SYNC_EVENTS = {"meeting.transcribed", "meeting.summarized"}
V1_EVENTS = {"Transcription completed"}
#: Characters per speaker-turn paragraph: under the default chunk (512 tokens ≈ 1,536 chars), so
#: the chunker keeps each one whole with its speaker's name.
MAX_TURN_CHARS = 1200
#: Seconds; the least we wait after ``too_many_requests``.
MIN_RETRY_WAIT = 0.25

LIST_QUERY = """
query Transcripts($fromDate: DateTime, $toDate: DateTime, $limit: Int, $skip: Int) {
  transcripts(fromDate: $fromDate, toDate: $toDate, limit: $limit, skip: $skip) { id date title }
}"""

TRANSCRIPT_QUERY = """
query Transcript($id: String!) {
  transcript(id: $id) {
    id title date duration organizer_email participants transcript_url
    speakers { id name }
    sentences { index text speaker_name start_time end_time }
    summary { overview action_items keywords short_summary }
  }
}"""


class NotProcessedYet(NotReady):
    """Raised when a transcript exists but Fireflies has not finished processing it."""


def build(
    settings: SourceSettings,
    client: httpx.AsyncClient,
    limiter: Limiter | None = None,
    context: SourceContext | None = None,
) -> FirefliesSource:
    raw = settings.get("FIREFLIES_RECHECK_WINDOW")
    try:
        recheck = parse_duration(raw) if raw else DEFAULT_RECHECK
    except ValueError:
        raise SettingsError(
            f"FIREFLIES_RECHECK_WINDOW must be a duration such as 14d (or 0), not {raw!r}") from None
    return FirefliesSource(settings, client, limiter, context, recheck=recheck)


class FirefliesSource:
    name = NAME
    pushes = True

    def __init__(
        self,
        settings: SourceSettings,
        client: httpx.AsyncClient,
        limiter: Limiter | None = None,
        context: SourceContext | None = None,
        *,
        recheck: float = DEFAULT_RECHECK,
    ) -> None:
        self.settings = settings
        self.context = context
        self.recheck = recheck
        #: Remembers each transcript's title at fetch, to spot renames (None: no recheck).
        self.facts = context if isinstance(context, FactStore) else None
        self.http = SourceHTTP(
            NAME,
            client,
            base_url=settings.get("FIREFLIES_API_URL"),
            headers={"Authorization": f"Bearer {settings.secret('FIREFLIES_API_KEY')}"},
            limiter=limiter,
            reset_after=quota_wait,
        )

    # --- polling ----------------------------------------------------------------------------
    async def scopes(self) -> list[Scope]:
        return [SCOPE]

    async def changes(
        self, scope: Scope, since: float | None, checkpoint: str | None
    ) -> AsyncIterator[Page]:
        """Pages of refs to transcripts whose meeting date is at or after ``since - 48 h``, and
        to older ones within ``FIREFLIES_RECHECK_WINDOW`` whose title is not the one indexed.

        Fireflies has no update-time filter and sends no webhook for a rename, and the meeting
        date never moves: the listing reaches back over the recheck window (id, date and title,
        one request per 50 meetings) and compares each title with the one its last fetch saw.
        The checkpoint pins the window (``to`` = when the listing began, so meetings added
        meanwhile do not shift the pages), the ``skip`` reached, and where "new" begins.
        """
        if checkpoint:
            state = json.loads(checkpoint)
        else:
            state = _window(since, time.time())
            state["new_from"] = None if since is None else since - LIST_OVERLAP
            if since is not None and self.facts is not None and self.recheck > 0:
                start = min(since - LIST_OVERLAP, time.time() - self.recheck)
                state["from"] = _iso_z(start)
        new_from = state.get("new_from")
        known = await self.facts.recall(NAME, scope.key) if self.facts is not None and new_from else None
        while True:
            items = await self._list(state["from"], state["to"], state["skip"])
            state = {**state, "skip": state["skip"] + len(items)}
            refs = []
            for t in items:
                at = _seconds(t.get("date"))
                if new_from is None or at is None or at >= new_from or _renamed(known, t):
                    refs.append(Ref(NAME, t["id"], scope.key, event_at=at))
            dates = [r.event_at for r in refs if r.event_at is not None]
            last = len(items) < PAGE_SIZE
            yield Page(refs, None if last else json.dumps(state), max(dates, default=None))
            if last:
                return

    async def live_ids(self, scope: Scope) -> AsyncIterator[str]:
        """Every transcript id in the account (no date filter)."""
        skip = 0
        while True:
            items = await self._list(None, None, skip)
            for item in items:
                yield item["id"]
            if len(items) < PAGE_SIZE:
                return
            skip += len(items)

    async def fetch(self, ref: Ref) -> Document | Gone:
        data = await self._query(TRANSCRIPT_QUERY, {"id": ref.id}, allow_not_found=True)
        raw = data.get("transcript") if data else None
        if raw is None:
            return Gone(NAME, ref.id)
        if raw.get("sentences") is None:
            raise NotProcessedYet(NAME, f"transcript {ref.id} is not processed yet")
        projects = await self.context.active_scopes("jira") if self.context else []
        document = _to_document(raw, projects)
        if self.facts is not None:
            await self.facts.remember(doc_id(NAME, ref.id), NAME, SCOPE.key,
                                      {"title": raw.get("title")}, version=document.updated_at)
        return document

    async def _list(self, start: str | None, end: str | None, skip: int) -> list[dict[str, Any]]:
        variables = {"fromDate": start, "toDate": end, "limit": PAGE_SIZE, "skip": skip}
        data = await self._query(LIST_QUERY, variables)
        items = data.get("transcripts") if data else None
        if not isinstance(items, list):
            raise TransientSourceError(NAME, "transcripts listing came back without a list")
        return items

    async def _query(
        self, query: str, variables: dict[str, Any], allow_not_found: bool = False
    ) -> dict[str, Any] | None:
        """POST one GraphQL request; returns ``data``, or None for an allowed not-found."""
        response = await self.http.post("", json={"query": query, "variables": variables})
        try:
            body = response.json()
        except ValueError:
            raise TransientSourceError(
                NAME, f"non-JSON answer ({response.status_code})", response.status_code
            ) from None
        errors = (body.get("errors") or []) if isinstance(body, dict) else []
        if any(_code(e) == "object_not_found" for e in errors) and allow_not_found:
            return None
        if errors:
            raise _error(errors[0], response.status_code)
        if response.status_code >= 400:
            raise PermanentSourceError(NAME, f"HTTP {response.status_code}", response.status_code)
        data = body.get("data")
        return data if isinstance(data, dict) else None

    # --- webhooks ---------------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Check ``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``.

        The ``sha256=`` prefix is required (documented for Webhooks V2); a bare hex digest is
        refused because no Fireflies document says it is sent.
        """
        secret = self.settings.secret("FIREFLIES_WEBHOOK_SECRET")
        if not secret:
            raise NotConfigured("FIREFLIES_WEBHOOK_SECRET is not set; refusing Fireflies webhooks")
        check_sha256_signature(headers, body, secret=secret, header_name="X-Hub-Signature", source=NAME)

    def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        return parse_event(body)


# --- pure helpers ---------------------------------------------------------------------------
def parse_event(body: bytes) -> WebhookResult:
    """Turn a V2 (``event``/``meeting_id``) or V1 (``meetingId``/``eventType``) body into refs.

    Fireflies sends no delivery id, so one is derived from (event, meeting id, timestamp).
    """
    payload = load_object(body, "Fireflies")
    if "event" in payload:
        event = text_field(payload, "event", NAME)
        meeting, stamp = text_field(payload, "meeting_id", NAME), number(payload, "timestamp", NAME)
    elif "eventType" in payload:
        event, meeting, stamp = text_field(payload, "eventType", NAME), text_field(payload, "meetingId", NAME), None
    else:
        raise MalformedWebhook("Fireflies webhook has neither 'event' nor 'eventType'")
    if event not in SYNC_EVENTS and event not in V1_EVENTS:
        return WebhookResult(note=f"ignored Fireflies event {event!r}")
    if not meeting:
        raise MalformedWebhook(f"Fireflies {event!r} webhook has no meeting id")
    event_at = stamp / 1000 if stamp is not None else None
    delivery = f"{event}:{meeting}:{stamp if stamp is not None else 'v1'}"
    return WebhookResult(refs=[Ref(NAME, meeting, SCOPE.key, event_at=event_at)],
                         delivery_id=delivery)


def _to_document(raw: Mapping[str, Any], projects: list[Scope]) -> Document:
    """A processed transcript as a Document: header, summary, then one paragraph per turn."""
    summary = raw.get("summary") or {}
    title = (raw.get("title") or "Untitled meeting").strip()
    participants = [p for p in raw.get("participants") or [] if isinstance(p, str)]
    organizer = raw.get("organizer_email") or ""
    date = _iso(raw.get("date"))
    header = [title, f"Date: {date}", f"Duration: {raw.get('duration') or 0:g} min"]
    if participants:
        header.append("Participants: " + ", ".join(participants))
    parts = ["\n".join(header), *_summary_paragraphs(summary), *_turns(raw.get("sentences") or [])]
    access = sorted({e.strip().lower() for e in [*participants, organizer] if e and e.strip()})
    return Document(
        source=NAME,
        id=str(raw["id"]),
        scope=SCOPE.key,
        title=title,
        text="\n\n".join(p for p in parts if p),
        updated_at=_seconds(raw.get("date")) or 0.0,
        url=raw.get("transcript_url") or "",
        author=organizer,
        metadata={
            "date": date,
            "duration_minutes": float(raw.get("duration") or 0),
            "organizer_email": organizer,
            "participants": participants,
            "speakers": [s.get("name", "") for s in raw.get("speakers") or []],
            "keywords": [k for k in summary.get("keywords") or [] if isinstance(k, str)],
            "project_tags": project_tags(title, summary, projects),
        },
        access_type="restricted",
        access_list=tuple(access),
    )


def project_tags(title: str, summary: Mapping[str, Any], projects: list[Scope]) -> list[str]:
    """Keys of the given Jira projects whose key (as a word) or name appears in title/summary."""
    texts = [title, summary.get("overview") or "", summary.get("short_summary") or "",
             _flatten(summary.get("action_items")), " ".join(summary.get("keywords") or [])]
    haystack = "\n".join(texts)
    tags = []
    for project in projects:
        by_key = re.search(rf"(?<![A-Za-z0-9]){re.escape(project.key)}(?![A-Za-z0-9])", haystack)
        by_name = project.name and re.search(
            rf"(?<!\w){re.escape(project.name)}(?!\w)", haystack, re.IGNORECASE)
        if by_key or by_name:
            tags.append(project.key)
    return sorted(set(tags))


def _summary_paragraphs(summary: Mapping[str, Any]) -> list[str]:
    out = []
    if summary.get("overview"):
        out.append("Overview: " + _one_paragraph(summary["overview"]))
    items = _flatten(summary.get("action_items")).strip()
    if items:
        lines = [line.strip() for line in items.splitlines() if line.strip()]
        out.append("Action items:\n" + "\n".join(lines))
    keywords = [k for k in summary.get("keywords") or [] if isinstance(k, str)]
    if keywords:
        out.append("Keywords: " + ", ".join(keywords))
    return out


def _turns(sentences: list[Mapping[str, Any]]) -> list[str]:
    """Consecutive sentences of one speaker merged into one paragraph "Name: …"."""
    turns: list[tuple[str, list[str]]] = []
    for sentence in sorted(sentences, key=lambda s: s.get("index") or 0):
        speaker = (sentence.get("speaker_name") or "Unknown speaker").strip()
        text = _one_paragraph(sentence.get("text") or "")
        if not text:
            continue
        if turns and turns[-1][0] == speaker:
            turns[-1][1].append(text)
        else:
            turns.append((speaker, [text]))
    return [para for speaker, texts in turns for para in _turn_paragraphs(speaker, texts)]


def _turn_paragraphs(speaker: str, texts: list[str]) -> list[str]:
    """One turn as paragraphs of at most MAX_TURN_CHARS, each starting with the speaker's name,
    so a chunk cut from a long monologue still says who spoke."""
    paragraphs, current = [], f"{speaker}:"
    for text in texts:
        if len(current) + 1 + len(text) > MAX_TURN_CHARS and current != f"{speaker}:":
            paragraphs.append(current)
            current = f"{speaker} (continued):"
        current = f"{current} {text}"
    paragraphs.append(current)
    return paragraphs


def _one_paragraph(text: str) -> str:
    # Blank lines would split a turn into paragraphs the chunker may separate from the name.
    return " ".join(str(text).split())


def _flatten(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value or "")


def _renamed(known: dict[str, dict[str, Any]] | None, listed: Mapping[str, Any]) -> bool:
    """True when a listed transcript's title is not the one its last indexed fetch saw (or
    nothing indexed is known of it): it must be fetched again."""
    if known is None:
        return False
    seen = known.get(doc_id(NAME, str(listed.get("id"))))
    return seen is None or seen.get("title") != listed.get("title")


def _window(since: float | None, now: float) -> dict[str, Any]:
    start = None if since is None else _iso_z(since - LIST_OVERLAP)
    return {"from": start, "to": _iso_z(now), "skip": 0}


def _iso_z(epoch: float) -> str:
    """Epoch seconds as Fireflies' DateTime (``2024-05-01T09:00:00.000Z``)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _seconds(ms: Any) -> float | None:
    return float(ms) / 1000 if isinstance(ms, (int, float)) else None


def _iso(ms: Any) -> str:
    seconds = _seconds(ms)
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _code(error: Any) -> str:
    if not isinstance(error, dict):
        return ""
    return str(error.get("code") or (error.get("extensions") or {}).get("code") or "")


def _error(error: Any, status: int) -> Exception:
    code = _code(error)
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    ext_status = (error.get("extensions") or {}).get("status") if isinstance(error, dict) else None
    status = ext_status if isinstance(ext_status, int) else status
    detail = f"{code or 'error'}: {message}"
    if status >= 500 or code in ("internal_server_error", "service_unavailable"):
        return TransientSourceError(NAME, detail, status)
    return PermanentSourceError(NAME, detail, status)


def quota_wait(response: httpx.Response) -> float | None:
    """Seconds to wait when the body says ``too_many_requests`` (any HTTP status), else None.

    ``extensions.metadata.retryAfter`` is read as epoch ms when it is that large, else as
    seconds (its unit is UNCONFIRMED); without it, 60 s (one window of the Business plan).
    """
    if response.status_code != 429 and b"too_many_requests" not in response.content[:2000]:
        return None
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return 60.0 if response.status_code == 429 else None
    for error in errors:
        if _code(error) == "too_many_requests":
            retry = ((error.get("extensions") or {}).get("metadata") or {}).get("retryAfter")
            return _retry_seconds(retry)
    return 60.0 if response.status_code == 429 else None


def _retry_seconds(retry: Any, now: float | None = None) -> float:
    if not isinstance(retry, (int, float)):
        return 60.0
    if retry > 1e11:  # epoch milliseconds
        retry = retry / 1000 - (time.time() if now is None else now)
    # A small floor: a zero wait would spend the retry attempts in a tight loop.
    return max(MIN_RETRY_WAIT, float(retry))
