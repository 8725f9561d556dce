"""Slack connector: one document per thread (root + replies) or lone message.

Stable id ``{channel}:{thread_ts}`` (the root's ts), scope = channel id. The Web API answers
HTTP 200 with ``{"ok": false, "error": code}`` on failure, so every call goes through
``_call``, which turns error codes into our error tree; ``SourceHTTP`` handles 429 +
``Retry-After``, timeouts and backoff.

Polling: ``conversations.history`` lists parents only, by their own ts. A reply or an edit to
an old thread does not move its root, so ``changes`` reads back ``SLACK_THREAD_LOOKBACK``
(default 7 days) before ``since`` and keeps roots whose thread changed at or after ``since``
(``latest_reply``, ``edited.ts``). Older threads are kept fresh by webhooks; a backfill reads all.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from core.documents import Document, Gone, Ref
from core.errors import (
    InvalidWebhook,
    MalformedWebhook,
    NotConfigured,
    PermanentSourceError,
    RateLimited,
    SettingsError,
    TransientSourceError,
)
from core.http import Limiter, SourceHTTP
from core.settings import SourceSettings, parse_duration
from core.sources.base import Page, Scope, SourceContext, WebhookResult
from core.sources.webhooks import header, hmac_sha256, load_object, obj, text

log = logging.getLogger(__name__)

NAME = "slack"
#: Slack refuses requests whose timestamp is further than this from now, seconds.
MAX_SKEW = 300
#: Messages per history page (Slack allows up to 999; 200 keeps pages light).
PAGE_SIZE = 200
#: How long channel info, members and user names are reused before asking again, seconds.
CACHE_TTL = 300.0
DEFAULT_LOOKBACK = 7 * 86400.0

#: Error codes that mean the token itself is wrong: retrying will not help.
AUTH_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked",
               "token_expired", "no_permission", "missing_scope", "not_allowed_token_type"}
#: Error codes that mean Slack had a problem, worth retrying.
TRANSIENT_ERRORS = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
#: Message subtypes that carry content people search for; others (joins, topic changes,
#: ``message_replied`` notices) do not change a thread's text.
CONTENT_SUBTYPES = {None, "", "thread_broadcast", "file_share", "bot_message", "me_message"}
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


class SlackApiError(PermanentSourceError):
    """Slack answered ``ok: false``; ``code`` is Slack's error string."""

    def __init__(self, method: str, code: str) -> None:
        super().__init__(NAME, f"{method}: {code}", 200)
        self.code = code


# --- pure normalisation -------------------------------------------------------------------


def ts_seconds(ts: str | None) -> float:
    """Slack ts ``"1700000000.000100"`` → epoch seconds (0.0 when absent)."""
    try:
        return float(ts) if ts else 0.0
    except ValueError:
        return 0.0


def permalink(channel: str, ts: str, workspace_url: str = "https://slack.com") -> str:
    """``https://slack.com/archives/C1/p1700000000000100``, the shape Slack permalinks take."""
    return f"{workspace_url.rstrip('/')}/archives/{channel}/p{ts.replace('.', '')}"


def is_content(message: Mapping[str, Any]) -> bool:
    return message.get("subtype") in CONTENT_SUBTYPES


def changed_at(message: Mapping[str, Any]) -> float:
    """When a root's thread last changed, epoch seconds: its ts, newest reply, or edit."""
    edited = message.get("edited") or {}
    return max(ts_seconds(message.get("ts")), ts_seconds(message.get("latest_reply")),
               ts_seconds(edited.get("ts")))


def display_name(user: Mapping[str, Any]) -> str:
    """The name Slack shows: display name, else real name, else handle, else the id."""
    profile = user.get("profile") or {}
    for candidate in (profile.get("display_name"), profile.get("real_name"), user.get("real_name"),
                      user.get("name")):
        if candidate:
            return str(candidate)
    return str(user.get("id", ""))


def message_text(text: str, names: Mapping[str, str]) -> str:
    """Readable text: mentions become ``@name``, and blank lines collapse so a message stays
    one paragraph (chunk_text keeps paragraphs whole)."""
    text = _MENTION.sub(lambda m: "@" + names.get(m.group(1), m.group(1)), text or "")
    return re.sub(r"\n\s*\n+", "\n", text).strip()


def _when(ts: str) -> str:
    return datetime.fromtimestamp(ts_seconds(ts), UTC).strftime("%Y-%m-%d %H:%M UTC")


def _author(message: Mapping[str, Any], names: Mapping[str, str]) -> str:
    user = message.get("user")
    if user:
        return names.get(user, user)
    return str(message.get("username") or (message.get("bot_profile") or {}).get("name") or "bot")


def to_document(
    channel: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
    members: Sequence[str] = (),
    *,
    workspace_url: str = "https://slack.com",
) -> Document | None:
    """One thread (root first, then replies) → Document; None when nothing is left to index.

    ``channel`` is a conversations.info object, ``names`` maps user id → display name,
    ``members`` is the member list used as the access list of a private channel.
    """
    if not messages:
        return None
    root = messages[0]
    root_ts = str(root.get("thread_ts") or root["ts"])
    content = [m for m in messages if is_content(m)]
    if not content:
        return None  # a tombstone without replies, or only join notices
    cname = str(channel.get("name") or channel.get("id"))
    paragraphs = [f"#{cname}"] + [
        f"{_author(m, names)} ({_when(m['ts'])}): {message_text(str(m.get('text', '')), names)}"
        for m in content
    ]
    root_deleted = not is_content(root)
    first_line = "(deleted message)" if root_deleted else (
        message_text(str(root.get("text", "")), names).split("\n", 1)[0])
    title = f"#{cname}: {first_line}"[:200]
    participants = list(dict.fromkeys(_author(m, names) for m in content))
    url = permalink(str(channel["id"]), root_ts, workspace_url)
    private = bool(channel.get("is_private"))
    return Document(
        source=NAME,
        id=f"{channel['id']}:{root_ts}",
        scope=str(channel["id"]),
        title=title,
        text="\n\n".join(paragraphs),
        updated_at=max(changed_at(m) for m in messages),
        url=url,
        author="" if root_deleted else _author(root, names),
        metadata={
            "channel": cname,
            "channel_id": str(channel["id"]),
            "thread_ts": root_ts,
            "reply_count": len(content) - (0 if root_deleted else 1),
            "participants": participants,
            "created_at": ts_seconds(root_ts),
            "is_private": private,
        },
        access_type="restricted" if private else "public",
        access_list=tuple(members) if private else (),
    )


def user_ids(messages: Iterable[Mapping[str, Any]]) -> set[str]:
    """Everyone a thread names: authors and ``<@U…>`` mentions."""
    found: set[str] = set()
    for message in messages:
        if message.get("user"):
            found.add(str(message["user"]))
        found.update(_MENTION.findall(str(message.get("text", ""))))
    return found


# --- webhooks (pure) ----------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``v0=`` + hex HMAC-SHA256(secret, ``v0:{timestamp}:{raw body}``)."""
    return "v0=" + hmac_sha256(secret, f"v0:{timestamp}:".encode() + body)


def verify_signature(
    secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> None:
    """Raise InvalidWebhook unless ``X-Slack-Signature`` matches and the timestamp is fresh."""
    stamp = header(headers, "X-Slack-Request-Timestamp")
    given = header(headers, "X-Slack-Signature")
    if not stamp or not given:
        raise InvalidWebhook("slack: missing X-Slack-Signature or X-Slack-Request-Timestamp")
    try:
        sent = int(stamp)
    except ValueError:
        raise InvalidWebhook("slack: X-Slack-Request-Timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - sent) > MAX_SKEW:
        raise InvalidWebhook("slack: request timestamp more than 5 minutes from now (replay?)")
    if not hmac.compare_digest(signature(secret, stamp, body), given):
        raise InvalidWebhook("slack: signature mismatch")


def parse_event(body: bytes) -> WebhookResult:
    """A verified Events API request → refs to sync or delete, a handshake reply, or a note."""
    payload = load_object(body, NAME)
    kind = text(payload, "type", NAME)
    if kind == "url_verification":
        challenge = payload.get("challenge")
        if not isinstance(challenge, str):
            raise MalformedWebhook("slack: url_verification without a challenge")
        return WebhookResult(reply=(200, challenge.encode(), "text/plain"), note="url_verification")
    if kind != "event_callback":
        return WebhookResult(note=f"slack: ignored {kind or 'untyped'} request")
    event = payload.get("event")
    event_id = payload.get("event_id")
    if not isinstance(event, dict) or not isinstance(event_id, str) or not event_id:
        raise MalformedWebhook("slack: event_callback without event or event_id")
    result = _event_result(event, payload.get("event_time"))
    return WebhookResult(refs=result.refs, delivery_id=event_id,
                         scope_events=result.scope_events, note=result.note)


_SCOPE_EVENTS = {
    "channel_archive": "archived", "group_archive": "archived",
    "channel_deleted": "deleted", "group_deleted": "deleted",
}


def _event_result(event: dict[str, Any], event_time: Any) -> WebhookResult:
    kind = text(event, "type", NAME, "event.type")
    channel = event.get("channel")
    if kind in _SCOPE_EVENTS:
        if not isinstance(channel, str):
            raise MalformedWebhook(f"slack: {kind} without a channel id")
        return WebhookResult(scope_events=[(_SCOPE_EVENTS[kind], channel)])
    if kind != "message":
        return WebhookResult(note=f"slack: ignored {kind} event")
    if not isinstance(channel, str) or not channel:
        raise MalformedWebhook("slack: message event without a channel")
    if event.get("channel_type") in ("im", "mpim"):
        return WebhookResult(note="slack: ignored direct message (DMs are not synced)")
    fallback = float(event_time) if isinstance(event_time, int | float) else None
    return _message_result(channel, event, fallback)


def _message_result(channel: str, event: dict[str, Any], fallback: float | None) -> WebhookResult:
    subtype = text(event, "subtype", NAME, "event.subtype")
    at = ts_seconds(text(event, "event_ts", NAME, "event.event_ts") or text(event, "ts", NAME, "event.ts")) or fallback

    def sync(thread_ts: Any) -> WebhookResult:
        if not isinstance(thread_ts, str) or not thread_ts:
            raise MalformedWebhook(f"slack: {subtype or 'message'} event without a ts")
        return WebhookResult(refs=[Ref(NAME, f"{channel}:{thread_ts}", channel, "sync", at)])

    if subtype == "message_changed":
        message = obj(event, "message", NAME, "event.message")
        return sync(message.get("thread_ts") or message.get("ts"))
    if subtype == "message_deleted":
        deleted = event.get("deleted_ts")
        previous = obj(event, "previous_message", NAME, "event.previous_message")
        thread = previous.get("thread_ts")
        if thread and thread != deleted:
            return sync(thread)  # a reply went: the thread document shrinks
        if previous.get("reply_count"):
            return sync(deleted)  # Slack keeps a tombstone while replies remain: refetch
        if not isinstance(deleted, str) or not deleted:
            raise MalformedWebhook("slack: message_deleted without deleted_ts")
        return WebhookResult(refs=[Ref(NAME, f"{channel}:{deleted}", channel, "delete", at)])
    if subtype in CONTENT_SUBTYPES:
        return sync(event.get("thread_ts") or event.get("ts"))
    return WebhookResult(note=f"slack: ignored message subtype {subtype} (no content change)")


# --- the connector ------------------------------------------------------------------------


class SlackSource:
    name = NAME
    pushes = True

    def __init__(self, settings: SourceSettings, http: SourceHTTP, *, lookback: float) -> None:
        self.settings = settings
        self.http = http
        self.lookback = lookback
        self._channels: dict[str, tuple[float, dict[str, Any]]] = {}
        self._members: dict[str, tuple[float, list[str]]] = {}
        self._names: dict[str, tuple[float, str]] = {}

    # --- Web API ------------------------------------------------------------------------
    async def _call(self, method: str, verb: str = "GET", **params: Any) -> dict[str, Any]:
        """One Web API call; ``ok: false`` becomes an error from core.errors."""
        args = {k: v for k, v in params.items() if v is not None}
        if verb == "GET":
            response = await self.http.get(f"/{method}", params=args)
        else:
            response = await self.http.post(f"/{method}", data=args)
        if response.status_code in (404, 410):
            raise PermanentSourceError(NAME, f"{method}: HTTP {response.status_code}", response.status_code)
        try:
            data = response.json()
        except ValueError:
            raise TransientSourceError(NAME, f"{method}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise TransientSourceError(NAME, f"{method}: answer is not a JSON object")
        if data.get("ok"):
            return data
        code = str(data.get("error") or "unknown_error")
        if code == "ratelimited":  # 200 + ratelimited has no Retry-After: wait a minute
            raise RateLimited(NAME, f"{method}: ratelimited", 60.0)
        if code in TRANSIENT_ERRORS:
            raise TransientSourceError(NAME, f"{method}: {code}")
        if code in AUTH_ERRORS:
            raise PermanentSourceError(NAME, f"{method}: {code} (check SLACK_BOT_TOKEN and its scopes)")
        raise SlackApiError(method, code)

    async def _paged(self, method: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        cursor = params.pop("cursor", None)
        while True:
            data = await self._call(method, cursor=cursor, **params)
            yield data
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return

    async def channel(self, channel_id: str) -> dict[str, Any]:
        cached = self._channels.get(channel_id)
        if cached and time.monotonic() - cached[0] < CACHE_TTL:
            return cached[1]
        info = (await self._call("conversations.info", channel=channel_id))["channel"]
        self._channels[channel_id] = (time.monotonic(), info)
        return info

    async def members(self, channel_id: str) -> list[str]:
        cached = self._members.get(channel_id)
        if cached and time.monotonic() - cached[0] < CACHE_TTL:
            return cached[1]
        members: list[str] = []
        async for page in self._paged("conversations.members", channel=channel_id, limit=1000):
            members += page.get("members", [])
        self._members[channel_id] = (time.monotonic(), members)
        return members

    async def names(self, ids: Iterable[str]) -> dict[str, str]:
        """Display names for user ids (cached); an unknown user keeps its id."""
        now = time.monotonic()
        out: dict[str, str] = {}
        for uid in sorted(set(ids)):
            cached = self._names.get(uid)
            if cached is None or now - cached[0] >= CACHE_TTL:
                try:
                    user = (await self._call("users.info", user=uid))["user"]
                    cached = (now, display_name(user))
                except SlackApiError as exc:  # user_not_found, e.g. from another workspace
                    log.info("slack: no name for %s (%s)", uid, exc.code)
                    cached = (now, uid)
                self._names[uid] = cached
            out[uid] = cached[1]
        return out

    async def _join(self, channel_id: str) -> None:
        data = await self._call("conversations.join", "POST", channel=channel_id)
        self._channels[channel_id] = (time.monotonic(), data["channel"])

    async def _readable_call(self, method: str, channel_id: str, **params: Any) -> dict[str, Any]:
        """A history/replies call; a public channel the bot left is joined once, then retried."""
        try:
            return await self._call(method, channel=channel_id, **params)
        except SlackApiError as exc:
            if exc.code != "not_in_channel":
                raise
            info = await self.channel(channel_id)
            if info.get("is_private"):
                raise
            await self._join(channel_id)
            return await self._call(method, channel=channel_id, **params)

    async def _access(self, info: Mapping[str, Any]) -> list[str]:
        return await self.members(str(info["id"])) if info.get("is_private") else []

    # --- Source protocol ----------------------------------------------------------------
    async def scopes(self) -> list[Scope]:
        """Public channels (joined when needed) and private ones the bot is in; not archived."""
        found: list[Scope] = []
        async for page in self._paged("conversations.list",
                                      types="public_channel,private_channel",
                                      exclude_archived="true", limit=200):
            for info in page.get("channels", []):
                if not info.get("is_private") and not info.get("is_member"):
                    await self._try_join(info)
                self._channels[info["id"]] = (time.monotonic(), info)
                found.append(Scope(NAME, info["id"], info.get("name", "")))
        return found

    async def _try_join(self, info: dict[str, Any]) -> None:
        try:
            await self._join(info["id"])
            info["is_member"] = True
        except SlackApiError as exc:
            # Kept as a scope: its history call will fail loudly per channel, not silently.
            log.warning("slack: could not join #%s (%s): %s", info.get("name"), info["id"], exc.code)

    async def changes(
        self, scope: Scope, since: float | None, checkpoint: str | None
    ) -> AsyncIterator[Page]:
        info = await self.channel(scope.key)
        members = await self._access(info)
        oldest = f"{max(0.0, since - self.lookback):.6f}" if since is not None else None
        cursor = checkpoint
        while True:
            data = await self._readable_call("conversations.history", scope.key, limit=PAGE_SIZE,
                                             oldest=oldest, inclusive="true", cursor=cursor)
            refs, high = await self._page_refs(info, members, data.get("messages", []), since)
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if not data.get("has_more"):
                cursor = None
            yield Page(refs=refs, checkpoint=cursor, high_water=high)
            if cursor is None:
                return

    async def _page_refs(
        self, info: Mapping[str, Any], members: list[str], messages: list[dict[str, Any]],
        since: float | None,
    ) -> tuple[list[Ref], float | None]:
        """Refs for the roots on one history page that changed at or after ``since``."""
        channel_id = str(info["id"])
        refs: list[Ref] = []
        high: float | None = None
        changed = [m for m in messages if since is None or changed_at(m) >= since]
        lone = {id(m): m for m in changed if not m.get("reply_count") and is_content(m)
                and (m.get("thread_ts") or m["ts"]) == m["ts"]}
        names = await self.names(user_ids(lone.values()))
        for message in changed:
            thread_ts = str(message.get("thread_ts") or message["ts"])
            at = changed_at(message)
            high = at if high is None else max(high, at)
            if id(message) in lone:  # the listing already holds the whole document
                document = to_document(info, [message], names, members)
                refs.append(Ref(NAME, f"{channel_id}:{thread_ts}", channel_id, "sync", at, document))
            elif is_content(message) or message.get("reply_count") or thread_ts != message["ts"]:
                # A thread (maybe under a tombstone root), or a reply broadcast to the channel:
                # the worker fetches the whole thread.
                refs.append(Ref(NAME, f"{channel_id}:{thread_ts}", channel_id, "sync", at))
        return refs, high

    async def fetch(self, ref: Ref) -> Document | Gone:
        channel_id, _, thread_ts = ref.id.partition(":")
        if not channel_id or not thread_ts:
            raise PermanentSourceError(NAME, f"not a Slack document id: {ref.id!r}")
        try:
            # Always asked afresh: an archived, deleted or renamed channel changes whether and
            # how the thread is indexed, and a late job must not re-add an archived thread.
            info = await self._fresh_channel(channel_id)
            if info.get("is_archived"):
                return Gone(NAME, ref.id)
            messages = await self._thread(channel_id, thread_ts)
        except SlackApiError as exc:
            if exc.code in ("channel_not_found", "thread_not_found", "message_not_found"):
                return Gone(NAME, ref.id)
            raise
        if not messages or str(messages[0].get("thread_ts") or messages[0]["ts"]) != thread_ts:
            return Gone(NAME, ref.id)  # the ts now names a reply, not a root: not a document
        names = await self.names(user_ids(messages))
        document = to_document(info, messages, names, await self._access(info))
        return document if document is not None else Gone(NAME, ref.id)

    async def _fresh_channel(self, channel_id: str) -> dict[str, Any]:
        self._channels.pop(channel_id, None)
        return await self.channel(channel_id)

    async def _thread(self, channel_id: str, thread_ts: str) -> list[dict[str, Any]]:
        """Root then replies, oldest first, over every page (de-duplicated by ts)."""
        by_ts: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            data = await self._readable_call("conversations.replies", channel_id, ts=thread_ts,
                                             limit=PAGE_SIZE, cursor=cursor)
            for message in data.get("messages", []):
                by_ts.setdefault(str(message["ts"]), message)
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not data.get("has_more") or not cursor:
                break
        return sorted(by_ts.values(), key=lambda m: ts_seconds(m["ts"]))

    async def live_ids(self, scope: Scope) -> AsyncIterator[str]:
        cursor = None
        while True:
            data = await self._readable_call("conversations.history", scope.key, limit=PAGE_SIZE,
                                             cursor=cursor)
            for message in data.get("messages", []):
                thread_ts = message.get("thread_ts") or message["ts"]
                if thread_ts == message["ts"] and (is_content(message) or message.get("reply_count")):
                    yield f"{scope.key}:{message['ts']}"
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not data.get("has_more") or not cursor:
                return

    # --- webhooks -----------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = self.settings.secret("SLACK_SIGNING_SECRET")
        if not secret:
            raise NotConfigured("slack: SLACK_SIGNING_SECRET is not set; refusing webhooks")
        verify_signature(secret, headers, body)

    def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        return parse_event(body)


def build(
    settings: SourceSettings,
    client: httpx.AsyncClient,
    limiter: Limiter | None = None,
    context: SourceContext | None = None,
) -> SlackSource:
    """The Slack connector over the shared client; ``context`` is unused (channels are scopes)."""
    http = SourceHTTP(
        NAME, client,
        base_url=settings.get("SLACK_API_URL") or "https://slack.com/api",
        headers={"Authorization": f"Bearer {settings.secret('SLACK_BOT_TOKEN')}"},
        limiter=limiter,
    )
    raw = settings.get("SLACK_THREAD_LOOKBACK")
    try:
        lookback = parse_duration(raw) if raw else DEFAULT_LOOKBACK
    except ValueError:
        raise SettingsError(f"SLACK_THREAD_LOOKBACK must be a duration such as 7d, not {raw!r}") from None
    return SlackSource(settings, http, lookback=lookback)
