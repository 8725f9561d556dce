"""Slack connector: one document per thread (root + replies) or lone message.

Stable id ``{channel}:{thread_ts}`` (the root's ts), scope = channel id. The Web API answers
HTTP 200 with ``{"ok": false, "error": code}`` on failure, so every call goes through
``_call``, which turns error codes into our error tree; ``SourceHTTP`` handles 429 +
``Retry-After``, timeouts and backoff.

Polling: ``conversations.history`` lists parents only, by their own ts. A reply or an edit to
an old thread does not move its root, so ``changes`` reads back ``SLACK_THREAD_LOOKBACK``
(default 7 days) before ``since`` and keeps roots whose thread changed at or after ``since``
(``latest_reply``, ``edited.ts``), and roots whose ``reply_count`` or ``latest_reply`` differ from
what the last indexed fetch of the thread saw (``core.facts``: a deleted reply moves no ts).
With ``SLACK_THREAD_SWEEP=pass`` every pass after the first reads the whole history for those
facts, so a reply added to or deleted from a thread however old is found in one pass; ``prune``
(the default: the whole-history read costs a history call per 200 parents per channel, which a
large workspace's budget cannot pay every 15 minutes) leaves that to the prune pass. An edited reply moves no fact: without its
webhook it is found only by the prune pass, and only within ``SLACK_THREAD_LOOKBACK``.
Pruning reads the whole history, and re-reads old threads whose facts moved and threads active
within the lookback (edited replies show nowhere in history).

Slack's documented ``message_deleted`` names only ``deleted_ts``: a fetch of a ts that is gone
(or names a reply) asks for a sync of the thread that held it, found from the message ts each
fetch remembers (or from the API's answer), through the context's follow-up queue.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from core.documents import Document, Gone, Ref, doc_id
from core.errors import (
    InvalidWebhook,
    MalformedWebhook,
    NotConfigured,
    PermanentSourceError,
    RateLimited,
    SettingsError,
    TransientSourceError,
)
from core.facts import FactStore
from core.http import Limiter, SourceHTTP
from core.settings import SourceSettings, parse_duration
from core.sources.base import Page, Scope, SourceContext, WebhookResult
from core.sources.webhooks import header, hmac_sha256, load_object, obj, text

log = logging.getLogger(__name__)

NAME = "slack"
#: Slack refuses requests whose timestamp is further than this from now, seconds.
MAX_SKEW = 300
#: Messages per history or replies call: Slack's maximum (999). History and replies are Tier 3
#: (50 calls/min), so five times fewer calls than pages of 200 (docs/sources/slack.md).
PAGE_SIZE = 999
#: Channels per conversations.list call (Tier 2, 20 calls/min): Slack's maximum, "under 1000".
CHANNELS_PAGE = 999
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


def thread_facts(root: Mapping[str, Any]) -> dict[str, Any]:
    """What ``conversations.history`` shows of a thread on its parent: compared on each
    listing with what was seen at the last fetch, it reveals deleted and new replies however
    old the thread (a deleted reply moves no timestamp)."""
    return {"reply_count": int(root.get("reply_count") or 0),
            "latest_reply": str(root.get("latest_reply") or "") or None}


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
    if kind in ("member_joined_channel", "member_left_channel"):
        # Who may read a private channel's threads changed: the receiver re-syncs the channel's
        # documents (their access metadata). A public channel's documents are readable by the
        # workspace whoever is in it. Slack's channel_type is "G" for private channels.
        if not isinstance(channel, str) or not channel:
            raise MalformedWebhook(f"slack: {kind} without a channel id")
        if event.get("channel_type") == "C":
            return WebhookResult(note=f"slack: {kind} in a public channel (access unchanged)")
        return WebhookResult(scope_events=[("access", channel)], note=f"slack: {kind}")
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
        result = sync(event.get("thread_ts") or event.get("ts"))
        if event.get("thread_ts") in (None, event.get("ts")) and not event.get("reply_count") and at is not None:
            # A new top-level message is its whole thread: it rides in the ref (from_payload).
            result = WebhookResult(refs=[dataclasses.replace(result.refs[0], payload={"message": dict(event)})])
        return result
    return WebhookResult(note=f"slack: ignored message subtype {subtype} (no content change)")


# --- the connector ------------------------------------------------------------------------


class SlackSource:
    name = NAME
    pushes = True

    def __init__(self, settings: SourceSettings, http: SourceHTTP, *, lookback: float,
                 context: SourceContext | None = None, sweep_every_pass: bool = True) -> None:
        self.settings = settings
        self.http = http
        self.lookback = lookback
        #: Read the whole history on every pass to compare each parent's thread facts, so a
        #: reply added to or deleted from a thread however old is found in one pass
        #: (``SLACK_THREAD_SWEEP=pass``); otherwise only the prune pass compares them.
        self.sweep_every_pass = sweep_every_pass
        #: Where thread facts are remembered and follow-up syncs asked for (None: the listing
        #: alone decides, as without migration 0007).
        self.facts = context if isinstance(context, FactStore) else None
        self._channels: dict[str, tuple[float, dict[str, Any]]] = {}
        self._members: dict[str, tuple[float, list[str]]] = {}
        self._names: dict[str, tuple[float, str]] = {}
        self._emails: dict[str, tuple[float, str]] = {}

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

    async def members(self, channel_id: str, fresh: bool = False) -> list[str]:
        """A channel's member ids (cached unless ``fresh``: a fetch or a membership refresh
        must see a change at once, or a removed member would keep reading)."""
        cached = self._members.get(channel_id)
        if cached and not fresh and time.monotonic() - cached[0] < CACHE_TTL:
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

    async def _access(self, info: Mapping[str, Any], fresh: bool = False) -> list[str]:
        """A private channel's members as emails (the principals search filters on)."""
        if not info.get("is_private"):
            return []
        return await self.emails(await self.members(str(info["id"]), fresh=fresh))

    async def scope_access(self, scope: Scope) -> list[str] | None:
        """The membership refresh (each reconcile pass): a private channel's members as emails,
        read afresh, for the reconciler to compare with what it recorded last; None for a
        public channel (readable by the workspace)."""
        info = await self.channel(scope.key)
        if not info.get("is_private"):
            return None
        return await self._access(info, fresh=True)

    async def emails(self, ids: Iterable[str]) -> list[str]:
        """Members' emails from users.info (``profile.email``, needs the ``users:read.email``
        scope), cached. A member without a visible email keeps its user id: it matches no
        principal, so the document is shown to fewer people, never to more."""
        now = time.monotonic()
        out: list[str] = []
        for uid in sorted(set(ids)):
            cached = self._emails.get(uid)
            if cached is None or now - cached[0] >= CACHE_TTL:
                try:
                    user = (await self._call("users.info", user=uid))["user"]
                    email = str((user.get("profile") or {}).get("email") or "").strip().lower()
                    cached = (now, email or uid)
                except SlackApiError as exc:
                    log.info("slack: no email for %s (%s)", uid, exc.code)
                    cached = (now, uid)
                self._emails[uid] = cached
            out.append(cached[1])
        return sorted(set(out))

    # --- Source protocol ----------------------------------------------------------------
    async def scopes(self) -> list[Scope]:
        """Public channels (joined when needed) and private ones the bot is in; not archived."""
        found: list[Scope] = []
        async for page in self._paged("conversations.list",
                                      types="public_channel,private_channel",
                                      exclude_archived="true", limit=CHANNELS_PAGE):
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
        # Afresh: documents this listing carries must not undo a membership change.
        members = await self._access(info, fresh=True)
        # What the last indexed fetch of each thread saw, read once per pass.
        known = await self.facts.recall(NAME, scope.key) if self.facts is not None else None
        oldest = f"{max(0.0, since - self.lookback):.6f}" if since is not None else None
        if known is not None and self.sweep_every_pass:
            # Parents older than the window still show their thread's reply_count and
            # latest_reply: the whole history is read (parents only, PAGE_SIZE a call) and only
            # roots whose facts moved, or that changed since ``since``, become refs.
            oldest = None
        cursor = checkpoint
        while True:
            data = await self._readable_call("conversations.history", scope.key, limit=PAGE_SIZE,
                                             oldest=oldest, inclusive="true", cursor=cursor)
            refs, high = await self._page_refs(info, members, data.get("messages", []), since, known)
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if not data.get("has_more"):
                cursor = None
            yield Page(refs=refs, checkpoint=cursor, high_water=high)
            if cursor is None:
                return

    async def _page_refs(
        self, info: Mapping[str, Any], members: list[str], messages: list[dict[str, Any]],
        since: float | None, known: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> tuple[list[Ref], float | None]:
        """Refs for the roots on one history page that changed at or after ``since``, or whose
        thread facts (``reply_count``, ``latest_reply``) differ from those seen at their last
        fetch: a deleted reply moves no timestamp."""
        channel_id = str(info["id"])
        refs: list[Ref] = []
        high: float | None = None
        changed: list[dict[str, Any]] = []
        refetch: set[int] = set()  # the facts moved: fetch the thread, whatever the listing holds
        for m in messages:
            is_root = (m.get("thread_ts") or m["ts"]) == m["ts"]
            if known is not None and is_root and self._facts_moved(known, channel_id, m):
                changed.append(m)
                refetch.add(id(m))
            elif since is None or changed_at(m) >= since:
                changed.append(m)
        lone = {id(m): m for m in changed if not m.get("reply_count") and is_content(m)
                and (m.get("thread_ts") or m["ts"]) == m["ts"] and id(m) not in refetch}
        names = await self.names(user_ids(lone.values()))
        for message in changed:
            thread_ts = str(message.get("thread_ts") or message["ts"])
            at = changed_at(message)
            high = at if high is None else max(high, at)
            if id(message) in lone:  # the listing already holds the whole document
                document = to_document(info, [message], names, members)
                refs.append(Ref(NAME, f"{channel_id}:{thread_ts}", channel_id, "sync", at, document))
            elif id(message) in refetch:
                at = self._resync_at(known or {}, channel_id, message)
                refs.append(Ref(NAME, f"{channel_id}:{thread_ts}", channel_id, "sync", at))
            elif is_content(message) or message.get("reply_count") or thread_ts != message["ts"]:
                # A thread (maybe under a tombstone root), or a reply broadcast to the channel:
                # the worker fetches the whole thread.
                refs.append(Ref(NAME, f"{channel_id}:{thread_ts}", channel_id, "sync", at))
        return refs, high

    @staticmethod
    def _facts_moved(known: Mapping[str, Mapping[str, Any]], channel_id: str,
                     root: Mapping[str, Any]) -> bool:
        """True when the thread of ``root`` must be read again: its facts differ from what was
        indexed, or it has replies and nothing indexed is known about them."""
        seen = known.get(doc_id(NAME, f"{channel_id}:{root['ts']}"))
        if seen is None:
            return bool(root.get("reply_count"))
        now = thread_facts(root)
        return {k: seen.get(k) for k in now} != now

    @staticmethod
    def _resync_at(known: Mapping[str, Mapping[str, Any]], channel_id: str,
                   root: Mapping[str, Any]) -> float:
        """The version a re-read thread must at least have: a deleted reply moves no
        timestamp (deleting the newest one even moves ``latest_reply`` back), so the re-read
        version is put just above the one indexed, or it would be ignored as older."""
        seen = known.get(doc_id(NAME, f"{channel_id}:{root['ts']}")) or {}
        return max(changed_at(root), float(seen.get("version") or 0.0) + 0.001)

    async def fetch(self, ref: Ref) -> Document | Gone:
        channel_id, _, thread_ts = ref.id.partition(":")
        if not channel_id or not thread_ts:
            raise PermanentSourceError(NAME, f"not a Slack document id: {ref.id!r}")
        try:
            # Always asked afresh: an archived, deleted or renamed channel changes whether and
            # how the thread is indexed, and a late job must not re-add an archived thread.
            info = await self._fresh_channel(channel_id)
            if info.get("is_archived"):
                return await self._gone(ref)
            messages = await self._thread(channel_id, thread_ts)
        except SlackApiError as exc:
            if exc.code in ("thread_not_found", "message_not_found"):
                # The ts is gone. It may have been a reply (Slack's documented message_deleted
                # carries no thread_ts): the thread that held it is synced too.
                await self._sync_owner(ref, channel_id, thread_ts)
                return await self._gone(ref)
            if exc.code == "channel_not_found":
                return await self._gone(ref)
            raise
        root_ts = str(messages[0].get("thread_ts") or messages[0]["ts"]) if messages else ""
        if root_ts != thread_ts:
            # The ts names a reply, not a root (an event without thread_ts): not a document of
            # its own, but its thread changed.
            if root_ts:
                await self._follow_up(Ref(NAME, f"{channel_id}:{root_ts}", channel_id, "sync",
                                          ref.event_at))
            return Gone(NAME, ref.id)
        names = await self.names(user_ids(messages))
        # Members read afresh: a job after a membership change must index the current list.
        document = to_document(info, messages, names, await self._access(info, fresh=True))
        if document is None:
            return await self._gone(ref)
        if ref.event_at is not None and ref.event_at > document.updated_at:
            # A deletion (its event's ts, or a re-read after the parent's facts moved) is newer
            # than every message left: the version says so, or the shrunk thread would be
            # ignored as older than the one indexed.
            document = dataclasses.replace(document, updated_at=ref.event_at)
        if self.facts is not None:
            await self.facts.remember(doc_id(NAME, ref.id), NAME, channel_id, thread_facts(messages[0]),
                                      [str(m["ts"]) for m in messages], document.updated_at)
        return document

    async def from_payload(self, ref: Ref) -> Document | Gone:
        """A new top-level message from its event (``ref.payload``): its thread is that message
        alone, so ``conversations.replies`` is not asked. The channel (archived, renamed,
        private) and a private channel's members are read afresh as ``fetch`` reads them, so the
        document and its readers are the same. Anything unexpected is fetched instead."""
        message = (ref.payload or {}).get("message")
        channel_id, _, thread_ts = ref.id.partition(":")
        if not isinstance(message, Mapping) or str(message.get("ts") or "") != thread_ts or not channel_id:
            return await self.fetch(ref)
        try:
            info = await self._fresh_channel(channel_id)
        except SlackApiError:
            return await self.fetch(ref)  # it knows what each refusal means
        if info.get("is_archived"):
            return await self._gone(ref)
        messages = [dict(message)]
        names = await self.names(user_ids(messages))
        document = to_document(info, messages, names, await self._access(info, fresh=True))
        if document is None:
            return await self.fetch(ref)
        if ref.event_at is not None and ref.event_at > document.updated_at:
            document = dataclasses.replace(document, updated_at=ref.event_at)  # as fetch does
        if self.facts is not None:
            await self.facts.remember(doc_id(NAME, ref.id), NAME, channel_id, thread_facts(messages[0]),
                                      [str(m["ts"]) for m in messages], document.updated_at)
        return document

    async def _gone(self, ref: Ref) -> Gone:
        if self.facts is not None:
            await self.facts.forget(doc_id(NAME, ref.id))
        return Gone(NAME, ref.id)

    async def _sync_owner(self, ref: Ref, channel_id: str, ts: str) -> None:
        """Sync the thread that held message ``ts``, when it was a reply of a known thread."""
        if self.facts is None:
            return
        owner = await self.facts.owner(NAME, channel_id, ts)
        if owner is not None and owner != doc_id(NAME, ref.id):
            stable = owner.split(":", 1)[1]
            await self._follow_up(Ref(NAME, stable, channel_id, "sync", ref.event_at))

    async def _follow_up(self, ref: Ref) -> None:
        if self.facts is not None:
            log.info("slack: %s changed; syncing its thread %s", ref.scope, ref.id)
            await self.facts.enqueue([ref])

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
        """Every root ts in the channel's whole history. Pruning reads all of it, so this is
        also the sweep over old threads: a thread whose facts (``reply_count``,
        ``latest_reply``) moved since its last fetch, however old, and every thread active
        within ``SLACK_THREAD_LOOKBACK`` (an edited reply shows nowhere in history) are
        enqueued for a re-read; unchanged ones cost the workers one call and no embedding."""
        known = await self.facts.recall(NAME, scope.key) if self.facts is not None else None
        recent = time.time() - self.lookback
        cursor = None
        while True:
            data = await self._readable_call("conversations.history", scope.key, limit=PAGE_SIZE,
                                             cursor=cursor)
            resync: list[Ref] = []
            for message in data.get("messages", []):
                thread_ts = message.get("thread_ts") or message["ts"]
                if thread_ts == message["ts"] and (is_content(message) or message.get("reply_count")):
                    yield f"{scope.key}:{message['ts']}"
                    if known is None:
                        continue
                    if self._facts_moved(known, scope.key, message):
                        resync.append(Ref(NAME, f"{scope.key}:{message['ts']}", scope.key, "sync",
                                          self._resync_at(known, scope.key, message)))
                    elif message.get("reply_count") and changed_at(message) >= recent:
                        resync.append(Ref(NAME, f"{scope.key}:{message['ts']}", scope.key, "sync",
                                          changed_at(message)))
            if resync and self.facts is not None:
                await self.facts.enqueue(resync)
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
    """The Slack connector over the shared client; ``context`` remembers thread facts."""
    http = SourceHTTP(
        NAME, client,
        base_url=settings.get("SLACK_API_URL") or "https://slack.com/api",
        headers={"Authorization": f"Bearer {settings.secret('SLACK_BOT_TOKEN')}"},
        limiter=limiter,
    )
    raw = settings.get("SLACK_THREAD_LOOKBACK")
    try:
        # "all": every pass reads the whole history (small workspaces: old threads' changes
        # within one pass, at parents/200 history calls per channel per pass).
        lookback = math.inf if raw.strip().lower() == "all" else (
            parse_duration(raw) if raw else DEFAULT_LOOKBACK)
    except ValueError:
        raise SettingsError(
            f"SLACK_THREAD_LOOKBACK must be a duration such as 7d, or all, not {raw!r}") from None
    sweep = (settings.get("SLACK_THREAD_SWEEP") or "prune").strip().lower()
    if sweep not in ("pass", "prune"):
        raise SettingsError(f"SLACK_THREAD_SWEEP must be pass or prune, not {sweep!r}")
    return SlackSource(settings, http, lookback=lookback, context=context,
                       sweep_every_pass=sweep == "pass")
