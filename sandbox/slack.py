"""Slack simulator: the Web API methods vector-sync uses, and signed Events API webhooks.

Web API (``GET|POST /api/<method>``, query, form or JSON arguments, ``Authorization: Bearer``):
``auth.test``, ``conversations.list|info|history|replies|join|members``, ``users.info``.
Like Slack, every answer is HTTP 200 with ``{"ok": false, "error": code}`` on failure, except a
throttled call: HTTP 429 with ``Retry-After`` (seconds) and ``{"ok": false, "error": "ratelimited"}``.

Rate limits are per method, by Slack's tiers (Tier 2 = 20/min, Tier 3 = 50/min, Tier 4 =
100/min, each with a burst of one minute's worth). ``knobs.rate_limit`` overrides them: 0 means
unlimited, a positive value gives every method that many requests per second.

Control API (under ``/_sandbox/``; each change fires the Events API webhook Slack would send):

- ``POST channels`` ``{"name", "is_private"?, "members"?, "bot_member"?}``
- ``POST messages`` ``{"channel", "user"?, "text", "thread_ts"?}`` (a reply when thread_ts is set)
- ``PATCH messages`` ``{"channel", "ts", "text"}`` and ``DELETE messages?channel=&ts=``
- ``POST channels/{id}/archive``, ``DELETE channels/{id}``
- ``POST channels/{id}/members`` ``{"user", "inviter"?}`` and ``DELETE channels/{id}/members/{user}``
  (fire ``member_joined_channel`` / ``member_left_channel``)
- ``GET channels/{id}/truth`` (every thread as Slack holds it), ``GET truth`` (all channels)
- ``POST url_verification`` (sends the signed handshake and reports whether it was echoed)
- ``PUT config`` ``{"retry_delays": [s, s, s], "ack_timeout": s, "event_shape": "full"|"documented",
  "app_distribution": "internal"|"non_marketplace", "limited_window": s}`` (``non_marketplace``:
  Slack's 2025 limits for commercially distributed non-Marketplace apps, history and replies at
  1 request per ``limited_window`` (60 s) and 15 messages per call)
  (``PATCH messages`` ``{"shape"}`` and ``DELETE messages?shape=`` choose the shape per call)

Webhook deliveries that get no 2xx within ``ack_timeout`` (3 s) are resent with the same body
and ``event_id``, re-signed, with ``X-Slack-Retry-Num`` 1..3 after ``retry_delays`` (Slack: about
0 s, 1 min, 5 min; tests shrink them).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import copy
import hashlib
import hmac
import json
import math
import random
import string
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Delivery, Knobs, Simulator, TokenBucket

TEAM_ID = "T05SANDBX"
APP_ID = "A05VECSYNC"
BOT_USER = "U05BOTSYNC"
BOT_ID = "B05BOTSYNC"
BOT_TOKEN = "xoxb-5000000001-5000000002-sandboxvectorsyncbot"
SIGNING_SECRET = "8f742231b10e8888abcd99edabcd00d1"
#: The bot token's OAuth scopes (``PUT /_sandbox/slack/config {"scopes": [...]}`` changes them).
#: Every Web API answer carries them in ``x-oauth-scopes``, and a method whose scope is missing
#: answers ``missing_scope`` with ``needed`` and ``provided``, as Slack does.
BOT_SCOPES = ("channels:history", "channels:join", "channels:read", "groups:history", "groups:read",
              "users:read", "users:read.email")
#: The scope each method needs (for a private channel, the ``groups:`` one instead).
METHOD_SCOPES = {
    "conversations.list": "channels:read", "conversations.info": "channels:read",
    "conversations.history": "channels:history", "conversations.replies": "channels:history",
    "conversations.join": "channels:join", "conversations.members": "channels:read",
    "users.info": "users:read",
}
VERIFICATION_TOKEN = "sandboxVerificationToken"

#: Rate-limit tier of each method (api.slack.com/docs/rate-limits); requests per minute by tier.
METHOD_TIERS = {
    "auth.test": 4,
    "conversations.list": 2,
    "conversations.info": 3,
    "conversations.history": 3,
    "conversations.replies": 3,
    "conversations.join": 3,
    "conversations.members": 4,
    "users.info": 4,
}
TIER_PER_MINUTE = {2: 20, 3: 50, 4: 100}
#: Slack's 2025 limits for commercially distributed apps not on the Marketplace (new apps since
#: 2025-05-29, existing installs since 2026-03-03): these methods allow 1 request a minute, and
#: ``limit`` defaults to and is capped at 15 messages.
NON_MARKETPLACE_METHODS = ("conversations.history", "conversations.replies")
NON_MARKETPLACE_LIMIT = 15
NON_MARKETPLACE_WINDOW = 60.0

#: Slack's retry schedule for failed event deliveries, seconds after the previous attempt.
DEFAULT_RETRY_DELAYS = (0.0, 60.0, 300.0)
#: Slack gives the receiver this long to answer 2xx, seconds.
DEFAULT_ACK_TIMEOUT = 3.0

TOMBSTONE_TEXT = "This message was deleted."


def ts_to_micro(ts: str) -> int:
    """``"1700000000.000100"`` → 1700000000000100 (microseconds), ValueError if malformed."""
    seconds, _, fraction = ts.partition(".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError(ts)
    return int(seconds) * 1_000_000 + int((fraction or "0").ljust(6, "0")[:6])


def micro_to_ts(micro: int) -> str:
    return f"{micro // 1_000_000}.{micro % 1_000_000:06d}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 signature over ``v0:{timestamp}:{raw body}``."""
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return "v0=" + digest.hexdigest()


class SlackError(Exception):
    """A Web API failure, answered as HTTP 200 ``{"ok": false, "error": code}``."""

    def __init__(self, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


@dataclass
class Channel:
    """One conversation. ``roots`` holds root-message timestamps (µs) in ascending order."""

    id: str
    name: str
    is_private: bool
    created: int
    creator: str
    members: list[str]
    is_archived: bool = False
    topic: str = ""
    purpose: str = ""
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # ts → message
    roots: list[int] = field(default_factory=list)
    threads: dict[str, list[str]] = field(default_factory=dict)  # root ts → reply ts, ascending
    last_micro: int = 0

    def next_ts(self) -> str:
        """A new ts, unique in this channel and later than every earlier one."""
        self.last_micro = max(int(time.time() * 1_000_000), self.last_micro + 1)
        return micro_to_ts(self.last_micro)

    def info(self, viewer: str = BOT_USER) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "name_normalized": self.name,
            "is_channel": not self.is_private, "is_group": False, "is_im": False, "is_mpim": False,
            "is_private": self.is_private, "created": self.created, "creator": self.creator,
            "is_archived": self.is_archived, "is_general": self.name == "general",
            "is_shared": False, "is_ext_shared": False, "is_org_shared": False,
            "context_team_id": TEAM_ID, "is_member": viewer in self.members,
            "num_members": len(self.members),
            "topic": {"value": self.topic, "creator": self.creator, "last_set": self.created},
            "purpose": {"value": self.purpose, "creator": self.creator, "last_set": self.created},
        }

    def render(self, ts: str) -> dict[str, Any]:
        """A message as the Web API shows it, with thread fields computed from the replies."""
        message = copy.deepcopy(self.messages[ts])
        replies = self.threads.get(ts)
        if replies:
            users = list(dict.fromkeys(self.messages[r]["user"] for r in replies))
            message.update(
                thread_ts=ts, reply_count=len(replies), reply_users=users[:5],
                reply_users_count=len(users), latest_reply=replies[-1],
                is_locked=False, subscribed=False,
            )
        return message

    def add_root(self, message: dict[str, Any]) -> None:
        self.messages[message["ts"]] = message
        bisect.insort(self.roots, ts_to_micro(message["ts"]))

    def add_reply(self, root_ts: str, message: dict[str, Any]) -> None:
        self.messages[message["ts"]] = message
        self.threads.setdefault(root_ts, []).append(message["ts"])

    def remove_root(self, ts: str) -> None:
        del self.messages[ts]
        self.roots.remove(ts_to_micro(ts))
        self.threads.pop(ts, None)


def _cursor(prefix: str, value: str) -> str:
    return base64.b64encode(f"{prefix}:{value}".encode()).decode()


def _uncursor(prefix: str, cursor: str) -> str:
    try:
        raw = base64.b64decode(cursor.encode(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise SlackError("invalid_cursor") from None
    head, _, value = raw.partition(":")
    if head != prefix or not value:
        raise SlackError("invalid_cursor")
    return value


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _limit(args: dict[str, Any], default: int, maximum: int) -> int:
    raw = args.get("limit")
    if raw in (None, "", "0", 0):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SlackError("invalid_limit") from None
    if value < 1:
        raise SlackError("invalid_limit")
    return min(value, maximum)


def _ts_arg(args: dict[str, Any], name: str) -> int | None:
    raw = args.get(name)
    if raw in (None, ""):
        return None
    try:
        return ts_to_micro(str(raw))
    except ValueError:
        raise SlackError("invalid_ts_" + name) from None


class SlackSimulator(Simulator):
    name = "slack"

    def __init__(self, knobs: Knobs | None = None) -> None:
        super().__init__(knobs)
        self.channels: dict[str, Channel] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
        self.ack_timeout = DEFAULT_ACK_TIMEOUT
        #: Shape of ``message_changed`` / ``message_deleted`` events: ``full`` (what Slack sends
        #: in practice: ``previous_message``, a reply's ``thread_ts``, ``event_ts``,
        #: ``channel_type``) or ``documented`` (exactly the fields of Slack's documented
        #: examples: no ``previous_message``, so no ``thread_ts`` for a deleted reply).
        self.event_shape = "full"
        self.scopes: set[str] = set(BOT_SCOPES)
        #: ``internal`` (or Marketplace: the published tiers) or ``non_marketplace`` (a
        #: commercially distributed app off the Marketplace: history and replies at 1 request per
        #: ``limited_window`` seconds, 15 messages per call, whatever ``knobs.rate_limit`` says).
        self.app_distribution = "internal"
        self.limited_window = NON_MARKETPLACE_WINDOW
        self._buckets: dict[str, TokenBucket] = {}
        self._bucket_setting: float | None = None
        self._add_user(BOT_USER, "vector-sync", "vector-sync", is_bot=True)

    # --- wiring -------------------------------------------------------------------------
    def env(self, base_url: str) -> dict[str, str]:
        return {
            "SLACK_API_URL": f"{base_url}/api",
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        }

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/{method}", self._api, methods=["GET", "POST"])]

    def control_routes(self) -> list[BaseRoute]:
        return [
            Route("/channels", self._c_create_channel, methods=["POST"]),
            Route("/channels/{id}/archive", self._c_archive, methods=["POST"]),
            Route("/channels/{id}", self._c_delete_channel, methods=["DELETE"]),
            Route("/channels/{id}/members", self._c_add_member, methods=["POST"]),
            Route("/channels/{id}/members/{user}", self._c_remove_member, methods=["DELETE"]),
            Route("/channels/{id}/truth", self._c_channel_truth, methods=["GET"]),
            Route("/truth", self._c_truth, methods=["GET"]),
            Route("/messages", self._c_post_message, methods=["POST"]),
            Route("/messages", self._c_edit_message, methods=["PATCH"]),
            Route("/messages", self._c_delete_message, methods=["DELETE"]),
            Route("/url_verification", self._c_url_verification, methods=["POST"]),
            Route("/config", self._c_config, methods=["PUT"]),
        ]

    # --- Web API ------------------------------------------------------------------------
    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        args = await self._arguments(request)
        if isinstance(args, Response):
            return args
        token = self._token(request, args)
        if not token:
            return JSONResponse({"ok": False, "error": "not_authed"})
        if not hmac.compare_digest(token, BOT_TOKEN):
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        handler = self._methods().get(method)
        if handler is None:
            return JSONResponse({"ok": False, "error": "unknown_method"})
        wait = self._bucket(method).take()
        if wait > 0:
            return JSONResponse(
                {"ok": False, "error": "ratelimited"}, 429,
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        headers = {"x-oauth-scopes": ",".join(sorted(self.scopes)),
                   "x-accepted-oauth-scopes": METHOD_SCOPES.get(method, "")}
        needed = self._needed_scope(method, args)
        if needed and needed not in self.scopes:
            return JSONResponse({"ok": False, "error": "missing_scope", "needed": needed,
                                 "provided": ",".join(sorted(self.scopes))}, headers=headers)
        try:
            result = handler(args)
        except SlackError as exc:
            return JSONResponse({"ok": False, "error": exc.code, **exc.extra}, headers=headers)
        return JSONResponse({"ok": True, **result}, headers=headers)

    def _needed_scope(self, method: str, args: dict[str, Any]) -> str | None:
        needed = METHOD_SCOPES.get(method)
        if needed is None or not needed.startswith("channels:"):
            return needed
        private = method == "conversations.list" and "private_channel" in str(args.get("types") or "")
        channel = self.channels.get(str(args.get("channel") or ""))
        if channel is not None and channel.is_private:
            private = True
        if private and method != "conversations.list":
            return needed.replace("channels:", "groups:")
        if private and "groups:read" not in self.scopes:
            return "groups:read"
        return needed

    async def _arguments(self, request: Request) -> dict[str, Any] | Response:
        """Query string merged with a form or JSON body, as Slack accepts either."""
        args: dict[str, Any] = dict(request.query_params)
        if request.method != "POST":
            return args
        raw = await request.body()
        ctype = request.headers.get("content-type", "")
        if not raw:
            return args
        if ctype.startswith("application/json"):
            try:
                body = json.loads(raw)
            except ValueError:
                return JSONResponse({"ok": False, "error": "invalid_json"})
            if not isinstance(body, dict):
                return JSONResponse({"ok": False, "error": "invalid_json"})
            args.update(body)
        else:
            form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
            args.update({k: v[-1] for k, v in form.items()})
        return args

    @staticmethod
    def _token(request: Request, args: dict[str, Any]) -> str:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return str(args.get("token") or "")

    def _bucket(self, method: str) -> TokenBucket:
        setting = self.knobs.rate_limit
        if setting != self._bucket_setting:  # knobs changed at run time: start afresh
            self._buckets.clear()
            self._bucket_setting = setting
        bucket = self._buckets.get(method)
        if bucket is None:
            if self._non_marketplace(method):
                bucket = TokenBucket(1.0 / self.limited_window, burst=1.0)
            elif setting is None:
                per_minute = TIER_PER_MINUTE[METHOD_TIERS.get(method, 3)]
                bucket = TokenBucket(per_minute / 60.0, burst=per_minute)
            else:
                bucket = TokenBucket(float(setting), burst=max(1.0, float(setting)))
            self._buckets[method] = bucket
        return bucket

    def _non_marketplace(self, method: str) -> bool:
        return self.app_distribution == "non_marketplace" and method in NON_MARKETPLACE_METHODS

    def _methods(self) -> dict[str, Any]:
        return {
            "auth.test": self.auth_test,
            "conversations.list": self.conversations_list,
            "conversations.info": self.conversations_info,
            "conversations.history": self.conversations_history,
            "conversations.replies": self.conversations_replies,
            "conversations.join": self.conversations_join,
            "conversations.members": self.conversations_members,
            "users.info": self.users_info,
        }

    def auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://sandbox.slack.com/", "team": "Sandbox", "user": "vector-sync",
            "team_id": TEAM_ID, "user_id": BOT_USER, "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _visible(self, args: dict[str, Any]) -> Channel:
        """The channel named by ``channel``; private channels exist only for their members."""
        channel_id = args.get("channel")
        if not channel_id:
            raise SlackError("channel_not_found")
        channel = self.channels.get(str(channel_id))
        if channel is None or (channel.is_private and BOT_USER not in channel.members):
            raise SlackError("channel_not_found")
        return channel

    def _readable(self, args: dict[str, Any]) -> Channel:
        channel = self._visible(args)
        if BOT_USER not in channel.members:
            raise SlackError("not_in_channel")
        return channel

    def conversations_list(self, args: dict[str, Any]) -> dict[str, Any]:
        types = {t.strip() for t in str(args.get("types") or "public_channel").split(",")}
        unknown = types - {"public_channel", "private_channel", "mpim", "im"}
        if unknown:
            raise SlackError("invalid_types")
        exclude_archived = _flag(args.get("exclude_archived"))
        limit = _limit(args, 100, 1000)
        listed = [
            c for c in self.channels.values()
            if (("private_channel" in types and c.is_private and BOT_USER in c.members)
                or ("public_channel" in types and not c.is_private))
            and not (exclude_archived and c.is_archived)
        ]
        start = 0
        if args.get("cursor"):
            after = _uncursor("team", str(args["cursor"]))
            ids = [c.id for c in listed]
            if after not in ids:
                raise SlackError("invalid_cursor")
            start = ids.index(after)
        page = listed[start : start + limit]
        more = start + limit < len(listed)
        next_cursor = _cursor("team", listed[start + limit].id) if more else ""
        return {
            "channels": [c.info() for c in page],
            "response_metadata": {"next_cursor": next_cursor},
        }

    def conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"channel": self._visible(args).info()}

    def conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._visible(args)
        limit = _limit(args, 100, 1000)
        start = int(_uncursor("offset", str(args["cursor"]))) if args.get("cursor") else 0
        members = channel.members[start : start + limit]
        more = start + limit < len(channel.members)
        return {
            "members": members,
            "response_metadata": {"next_cursor": _cursor("offset", str(start + limit)) if more else ""},
        }

    def conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._readable(args)
        limit = (_limit(args, NON_MARKETPLACE_LIMIT, NON_MARKETPLACE_LIMIT)
                 if self._non_marketplace("conversations.history") else _limit(args, 100, 999))
        inclusive = _flag(args.get("inclusive"))
        oldest = _ts_arg(args, "oldest") or 0
        latest = _ts_arg(args, "latest")
        # Bounds over the ascending root list; newest first is read from the top down.
        low = bisect.bisect_left(channel.roots, oldest) if inclusive else bisect.bisect_right(
            channel.roots, oldest
        )
        if latest is None:
            high = len(channel.roots)
        else:
            high = (bisect.bisect_right if inclusive else bisect.bisect_left)(channel.roots, latest)
        if args.get("cursor"):
            start_at = ts_to_micro(_uncursor("next_ts", str(args["cursor"])))
            high = min(high, bisect.bisect_right(channel.roots, start_at))
        picked = channel.roots[max(low, high - limit) : high][::-1]
        has_more = high - limit > low
        result: dict[str, Any] = {
            "messages": [channel.render(micro_to_ts(m)) for m in picked],
            "has_more": has_more,
            "pin_count": 0,
        }
        if has_more:
            next_ts = micro_to_ts(channel.roots[high - limit - 1])
            result["response_metadata"] = {"next_cursor": _cursor("next_ts", next_ts)}
        return result

    def conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._readable(args)
        ts = str(args.get("ts") or "")
        if not ts:
            raise SlackError("invalid_arguments", response_metadata={"messages": ["[ERROR] missing required field: ts"]})
        message = channel.messages.get(ts)
        if message is None:
            raise SlackError("thread_not_found")
        root = message.get("thread_ts", ts)  # a reply's ts names its whole thread
        thread = [root, *channel.threads.get(root, [])]
        limit = (_limit(args, NON_MARKETPLACE_LIMIT, NON_MARKETPLACE_LIMIT)
                 if self._non_marketplace("conversations.replies") else _limit(args, 1000, 1000))
        oldest = _ts_arg(args, "oldest") or 0
        latest = _ts_arg(args, "latest")
        thread = [t for t in thread if ts_to_micro(t) >= oldest and (latest is None or ts_to_micro(t) <= latest)]
        start = 0
        if args.get("cursor"):
            after = _uncursor("next_ts", str(args["cursor"]))
            if after not in thread:
                raise SlackError("invalid_cursor")
            start = thread.index(after)
        page = thread[start : start + limit]
        more = start + limit < len(thread)
        result: dict[str, Any] = {"messages": [channel.render(t) for t in page], "has_more": more}
        result["response_metadata"] = {
            "next_cursor": _cursor("next_ts", thread[start + limit]) if more else ""
        }
        return result

    def conversations_join(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._visible(args)
        if channel.is_private:
            raise SlackError("method_not_supported_for_channel_type")
        if channel.is_archived:
            raise SlackError("is_archived")
        if BOT_USER in channel.members:
            return {
                "channel": channel.info(), "warning": "already_in_channel",
                "response_metadata": {"warnings": ["already_in_channel"]},
            }
        channel.members.append(BOT_USER)
        return {"channel": channel.info()}

    def users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("user") or ""))
        if user is None:
            raise SlackError("user_not_found")
        return {"user": copy.deepcopy(user)}

    # --- state changes (each fires its event) -------------------------------------------
    def _add_user(self, uid: str, name: str, real_name: str, *, is_bot: bool = False) -> None:
        self.users[uid] = {
            "id": uid, "team_id": TEAM_ID, "name": name, "real_name": real_name,
            "deleted": False, "is_bot": is_bot, "tz": "Europe/London",
            "profile": {"display_name": name, "real_name": real_name, "team": TEAM_ID},
        }
        if not is_bot:  # what users.info shows an app with the users:read.email scope
            self.users[uid]["profile"]["email"] = f"{name}@example.com"

    def _new_channel_id(self) -> str:
        while True:
            cid = "C0" + "".join(self.rng.choices(string.ascii_uppercase + string.digits, k=9))
            if cid not in self.channels:
                return cid

    def create_channel(
        self, name: str, *, is_private: bool = False, members: list[str] | None = None,
        bot_member: bool = True, creator: str | None = None,
    ) -> Channel:
        if any(c.name == name for c in self.channels.values()):
            raise SlackError("name_taken")
        people = list(members if members is not None else list(self._people())[:3])
        if bot_member and BOT_USER not in people:
            people.append(BOT_USER)
        creator = creator or (people[0] if people else BOT_USER)
        channel = Channel(
            id=self._new_channel_id(), name=name, is_private=is_private,
            created=int(time.time()), creator=creator, members=people,
        )
        self.channels[channel.id] = channel
        if not is_private:
            self._fire({"type": "channel_created", "channel": {
                "id": channel.id, "name": name, "created": channel.created, "creator": creator}})
        return channel

    def _people(self) -> list[str]:
        return [u for u, info in self.users.items() if not info["is_bot"]]

    def _channel(self, channel_id: str) -> Channel:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise SlackError("channel_not_found")
        return channel

    def post_message(
        self, channel_id: str, text: str, *, user: str | None = None, thread_ts: str | None = None
    ) -> dict[str, Any]:
        channel = self._channel(channel_id)
        if channel.is_archived:
            raise SlackError("is_archived")
        user = user or self._people()[0]
        if user not in self.users:
            raise SlackError("user_not_found")
        ts = channel.next_ts()
        message: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts, "team": TEAM_ID}
        if thread_ts:
            root = channel.messages.get(thread_ts)
            if root is None or root.get("thread_ts", thread_ts) != thread_ts:
                raise SlackError("thread_not_found")
            message.update(thread_ts=thread_ts, parent_user_id=root["user"])
            channel.add_reply(thread_ts, message)
        else:
            channel.add_root(message)
        self._fire_message(channel, dict(message, event_ts=ts))
        return channel.render(ts)

    def edit_message(self, channel_id: str, ts: str, text: str, *, shape: str | None = None) -> dict[str, Any]:
        shape = self._shape(shape)
        channel = self._channel(channel_id)
        message = channel.messages.get(ts)
        if message is None or message.get("subtype") == "tombstone":
            raise SlackError("message_not_found")
        previous = channel.render(ts)
        edit_ts = channel.next_ts()
        message["text"] = text
        message["edited"] = {"user": message["user"], "ts": edit_ts}
        self._fire_changed(channel, edit_ts, channel.render(ts), previous, shape)
        return channel.render(ts)

    def delete_message(self, channel_id: str, ts: str, *, shape: str | None = None) -> None:
        """Deletes a message, firing what Slack fires.

        A root that still has replies stays as a tombstone and Slack announces that as a
        ``message_changed`` whose message is the tombstone; when the last reply of such a thread
        goes, the tombstone goes too, with its own ``message_deleted``. ``shape`` picks the
        events' shape (``event_shape`` when None).
        """
        shape = self._shape(shape)
        channel = self._channel(channel_id)
        message = channel.messages.get(ts)
        if message is None or message.get("subtype") == "tombstone":
            raise SlackError("message_not_found")
        previous = channel.render(ts)
        root = message.get("thread_ts", ts)
        if root == ts and channel.threads.get(ts):
            channel.messages[ts] = {
                "type": "message", "subtype": "tombstone", "hidden": True, "user": "USLACKBOT",
                "text": TOMBSTONE_TEXT, "ts": ts, "thread_ts": ts, "parent_user_id": "USLACKBOT",
                "team": TEAM_ID,
            }
            self._fire_changed(channel, channel.next_ts(), channel.render(ts), previous, shape)
            return
        if root != ts:
            channel.threads[root].remove(ts)
            del channel.messages[ts]
        else:
            channel.remove_root(ts)
        self._fire_deleted(channel, ts, previous, shape)
        if root != ts and not channel.threads[root]:
            del channel.threads[root]
            if channel.messages[root].get("subtype") == "tombstone":
                tombstone = channel.render(root) | {"reply_count": 0, "reply_users": [],
                                                    "reply_users_count": 0}
                channel.remove_root(root)  # the last reply of a deleted thread: all gone
                self._fire_deleted(channel, root, tombstone, shape)

    def _shape(self, shape: str | None) -> str:
        shape = shape or self.event_shape
        if shape not in ("full", "documented"):
            raise SlackError("invalid_shape")
        return shape

    def _fire_deleted(self, channel: Channel, ts: str, previous: dict[str, Any],
                      shape: str | None = None) -> None:
        event_ts = channel.next_ts()
        if self._shape(shape) == "documented":
            # docs.slack.dev/reference/events/message/message_deleted: these fields only.
            self._fire({"type": "message", "subtype": "message_deleted", "hidden": True,
                        "channel": channel.id, "ts": event_ts, "deleted_ts": ts}, channel)
            return
        self._fire_message(channel, {
            "type": "message", "subtype": "message_deleted", "hidden": True, "ts": event_ts,
            "event_ts": event_ts, "deleted_ts": ts, "previous_message": previous,
        })

    def _fire_changed(self, channel: Channel, event_ts: str, message: dict[str, Any],
                      previous: dict[str, Any], shape: str | None = None) -> None:
        if self._shape(shape) == "documented":
            # docs.slack.dev/reference/events/message/message_changed: the message object
            # carries type, user, text, ts and edited; no previous_message, no thread_ts.
            trimmed = {k: message[k] for k in ("type", "subtype", "user", "text", "ts", "edited")
                       if k in message}
            self._fire({"type": "message", "subtype": "message_changed", "hidden": True,
                        "channel": channel.id, "ts": event_ts, "message": trimmed}, channel)
            return
        self._fire_message(channel, {
            "type": "message", "subtype": "message_changed", "hidden": True, "ts": event_ts,
            "event_ts": event_ts, "message": message, "previous_message": previous,
        })

    def archive_channel(self, channel_id: str, user: str | None = None) -> None:
        channel = self._channel(channel_id)
        if channel.is_archived:
            raise SlackError("already_archived")
        channel.is_archived = True
        kind = "group_archive" if channel.is_private else "channel_archive"
        self._fire({"type": kind, "channel": channel.id, "user": user or channel.creator,
                    "event_ts": channel.next_ts()}, channel)

    def add_member(self, channel_id: str, user: str, inviter: str | None = None) -> None:
        """Slack's conversations.invite: fires ``member_joined_channel``."""
        channel = self._channel(channel_id)
        if user not in self.users:
            raise SlackError("user_not_found")
        if user in channel.members:
            raise SlackError("already_in_channel")
        channel.members.append(user)
        self._fire({"type": "member_joined_channel", "user": user, "channel": channel.id,
                    "channel_type": "G" if channel.is_private else "C", "team": TEAM_ID,
                    "inviter": inviter or channel.creator, "event_ts": channel.next_ts()}, channel)

    def remove_member(self, channel_id: str, user: str) -> None:
        """Slack's conversations.kick: fires ``member_left_channel``."""
        channel = self._channel(channel_id)
        if user not in channel.members:
            raise SlackError("not_in_channel")
        channel.members.remove(user)
        self._fire({"type": "member_left_channel", "user": user, "channel": channel.id,
                    "channel_type": "G" if channel.is_private else "C", "team": TEAM_ID,
                    "event_ts": channel.next_ts()}, channel)

    def delete_channel(self, channel_id: str) -> None:
        channel = self._channel(channel_id)
        del self.channels[channel_id]
        kind = "group_deleted" if channel.is_private else "channel_deleted"
        self._fire({"type": kind, "channel": channel.id, "event_ts": channel.next_ts()}, channel)

    # --- Events API ---------------------------------------------------------------------
    def _fire_message(self, channel: Channel, event: dict[str, Any]) -> None:
        event = {"type": "message", "channel": channel.id, **event,
                 "channel_type": "group" if channel.is_private else "channel"}
        self._fire(event, channel)

    def _fire(self, event: dict[str, Any], channel: Channel | None = None) -> None:
        """Send the event_callback Slack would send; only for channels the app is in."""
        if channel is not None and BOT_USER not in channel.members:
            return  # message.channels/groups events only reach apps that are members
        envelope = {
            "token": VERIFICATION_TOKEN, "team_id": TEAM_ID, "api_app_id": APP_ID,
            "event": event, "type": "event_callback",
            "event_id": "Ev0" + "".join(self.rng.choices(string.ascii_uppercase + string.digits, k=9)),
            "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": TEAM_ID, "user_id": BOT_USER,
                                "is_bot": True, "is_enterprise_install": False}],
            "is_ext_shared_channel": False,
            "event_context": "4-" + base64.b64encode(json.dumps(event.get("channel", "")).encode()).decode(),
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        try:
            self.webhooks.send_soon(body, self.signed_headers(body), timeout=self.ack_timeout,
                                    retry=self._retry_policy(body))
        except RuntimeError:
            pass  # no running loop (seeding, direct calls from a test thread): nothing to send

    def signed_headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "Content-Type": "application/json",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign(SIGNING_SECRET, stamp, body),
        }

    def _retry_policy(self, body: bytes) -> Any:
        async def retry(delivery: Delivery) -> None:
            for attempt, delay in enumerate(self.retry_delays, start=1):
                if delivery.dropped or (delivery.status is not None and 200 <= delivery.status < 300):
                    return
                await asyncio.sleep(delay)
                # Same body and event_id; signed afresh so the timestamp is current.
                headers = self.signed_headers(body) | {
                    "X-Slack-Retry-Num": str(attempt),
                    "X-Slack-Retry-Reason": _retry_reason(delivery),
                }
                delivery = await self.webhooks.send(body, headers, timeout=self.ack_timeout)

        return retry

    async def url_verification(self) -> dict[str, Any]:
        challenge = "".join(self.rng.choices(string.ascii_letters + string.digits, k=48))
        body = json.dumps({"token": VERIFICATION_TOKEN, "challenge": challenge,
                           "type": "url_verification"}).encode()
        headers = self.signed_headers(body)
        delivery = Delivery(url=self.webhooks.target or "", headers=headers, body=body)
        self.webhooks.deliveries.append(delivery)
        if not self.webhooks.target:
            delivery.dropped = True
            return {"challenge": challenge, "status": None, "verified": False, "error": "no webhook target"}
        try:
            async with httpx.AsyncClient(timeout=self.ack_timeout) as client:
                response = await client.post(self.webhooks.target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
            return {"challenge": challenge, "status": None, "verified": False, "error": delivery.error}
        delivery.status = response.status_code
        return {"challenge": challenge, "status": response.status_code,
                "verified": response.status_code == 200 and _echoes(response, challenge)}

    # --- control API --------------------------------------------------------------------
    async def _c_create_channel(self, request: Request) -> Response:
        body = await _json(request)
        name = str(body.get("name") or "").strip()
        if not name:
            return _bad("name is required")
        try:
            channel = self.create_channel(
                name, is_private=bool(body.get("is_private")), members=body.get("members"),
                bot_member=body.get("bot_member", True) is not False,
            )
        except SlackError as exc:
            return _bad(exc.code)
        return JSONResponse(channel.info(), 201)

    async def _c_post_message(self, request: Request) -> Response:
        body = await _json(request)
        if not body.get("channel") or not isinstance(body.get("text"), str):
            return _bad("channel and text are required")
        try:
            message = self.post_message(str(body["channel"]), body["text"], user=body.get("user"),
                                        thread_ts=body.get("thread_ts"))
        except SlackError as exc:
            return _bad(exc.code)
        return JSONResponse(message, 201)

    async def _c_edit_message(self, request: Request) -> Response:
        body = await _json(request)
        try:
            message = self.edit_message(str(body.get("channel")), str(body.get("ts")), str(body.get("text", "")),
                                        shape=body.get("shape"))
        except SlackError as exc:
            return _bad(exc.code, 404)
        return JSONResponse(message)

    async def _c_delete_message(self, request: Request) -> Response:
        args = request.query_params
        try:
            self.delete_message(str(args.get("channel")), str(args.get("ts")), shape=args.get("shape"))
        except SlackError as exc:
            return _bad(exc.code, 404)
        return Response(status_code=204)

    async def _c_archive(self, request: Request) -> Response:
        try:
            self.archive_channel(request.path_params["id"])
        except SlackError as exc:
            return _bad(exc.code, 404 if exc.code == "channel_not_found" else 400)
        return JSONResponse(self.channels[request.path_params["id"]].info())

    async def _c_add_member(self, request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body.get("user"), str):
            return _bad("user is required")
        try:
            self.add_member(request.path_params["id"], body["user"], inviter=body.get("inviter"))
        except SlackError as exc:
            return _bad(exc.code, 404 if exc.code in ("channel_not_found", "user_not_found") else 400)
        return JSONResponse({"members": list(self.channels[request.path_params["id"]].members)})

    async def _c_remove_member(self, request: Request) -> Response:
        try:
            self.remove_member(request.path_params["id"], request.path_params["user"])
        except SlackError as exc:
            return _bad(exc.code, 404 if exc.code == "channel_not_found" else 400)
        return JSONResponse({"members": list(self.channels[request.path_params["id"]].members)})

    async def _c_delete_channel(self, request: Request) -> Response:
        try:
            self.delete_channel(request.path_params["id"])
        except SlackError as exc:
            return _bad(exc.code, 404)
        return Response(status_code=204)

    async def _c_channel_truth(self, request: Request) -> Response:
        channel = self.channels.get(request.path_params["id"])
        if channel is None:
            return _bad("channel_not_found", 404)
        return JSONResponse(self.truth(channel))

    async def _c_truth(self, request: Request) -> Response:
        return JSONResponse({cid: self.truth(c) for cid, c in self.channels.items()})

    def truth(self, channel: Channel) -> dict[str, Any]:
        """Every thread of ``channel``: root first, then replies, oldest first."""
        threads = {}
        for micro in channel.roots:
            ts = micro_to_ts(micro)
            threads[ts] = [channel.render(ts)] + [channel.render(r) for r in channel.threads.get(ts, [])]
        return {"channel": channel.info(), "members": list(channel.members), "threads": threads}

    async def _c_url_verification(self, request: Request) -> Response:
        return JSONResponse(await self.url_verification())

    async def _c_config(self, request: Request) -> Response:
        body = await _json(request)
        try:
            if "retry_delays" in body:
                self.retry_delays = tuple(float(d) for d in body["retry_delays"])
            if "ack_timeout" in body:
                self.ack_timeout = float(body["ack_timeout"])
        except (TypeError, ValueError):
            return _bad("retry_delays must be a list of seconds, ack_timeout seconds")
        if "event_shape" in body:
            if body["event_shape"] not in ("full", "documented"):
                return _bad("event_shape must be 'full' or 'documented'")
            self.event_shape = body["event_shape"]
        if "app_distribution" in body:
            if body["app_distribution"] not in ("internal", "non_marketplace"):
                return _bad("app_distribution must be 'internal' or 'non_marketplace'")
            self.app_distribution = body["app_distribution"]
            self._buckets.clear()
        if "limited_window" in body:
            try:
                window = float(body["limited_window"])
            except (TypeError, ValueError):
                window = 0.0
            if window <= 0:
                return _bad("limited_window must be a positive number of seconds")
            self.limited_window = window
            self._buckets.clear()
        if "scopes" in body:
            if not isinstance(body["scopes"], list) or not all(isinstance(x, str) for x in body["scopes"]):
                return _bad("scopes must be a list of OAuth scope names")
            self.scopes = set(body["scopes"])
        return JSONResponse({"retry_delays": list(self.retry_delays), "ack_timeout": self.ack_timeout,
                             "event_shape": self.event_shape, "scopes": sorted(self.scopes),
                             "app_distribution": self.app_distribution,
                             "limited_window": self.limited_window})

    # --- seeding ------------------------------------------------------------------------
    def seed(self, profile: str, rng: random.Random, world: dict[str, Any]) -> None:
        if profile == "empty":
            return
        for uid, name, real in _PEOPLE:
            self._add_user(uid, name, real)
        if profile == "scale":
            self._seed_scale(rng)
        else:
            self._seed_small(rng)
        world["slack"] = {"channels": {c.id: c.name for c in self.channels.values()}}

    def _seed_small(self, rng: random.Random) -> None:
        people = [p[0] for p in _PEOPLE]
        start = int(time.time()) - 14 * 86400
        layout = [  # name, private, bot member, archived, messages
            ("general", False, True, False, 8),
            ("engineering", False, True, False, 8),
            ("random", False, False, False, 4),
            ("leadership", True, True, False, 5),
            ("old-launch", False, True, True, 3),
            ("hr-private", True, False, False, 2),
        ]
        for name, private, bot, archived, count in layout:
            members = rng.sample(people, 4) if private else list(people)
            channel = self._seeded_channel(name, private, members + ([BOT_USER] if bot else []), start)
            _fill(channel, rng, count, start, 14 * 86400, thread_share=0.35, members=members)
            channel.is_archived = archived

    def _seed_scale(self, rng: random.Random) -> None:
        people = [p[0] for p in _PEOPLE]
        start = int(time.time()) - 60 * 86400
        for i in range(40):
            private = i % 8 == 7
            members = rng.sample(people, 5) if private else list(people)
            channel = self._seeded_channel(f"{_TOPICS[i % len(_TOPICS)]}-{i:02d}", private,
                                           members + [BOT_USER], start)
            # 500 messages per channel: roots plus replies, 20,000 in all.
            _fill(channel, rng, 500, start, 60 * 86400, thread_share=0.1, members=members, total=True)

    def _seeded_channel(self, name: str, private: bool, members: list[str], start: int) -> Channel:
        channel = Channel(id=self._new_channel_id(), name=name, is_private=private, created=start - 86400,
                          creator=members[0], members=members, purpose=f"Talk about {name}")
        self.channels[channel.id] = channel
        return channel

    async def trickle(self, rng: random.Random) -> None:
        """One live edit in a channel the app is in: a new message, a thread reply, or an edit.
        Same state changes and Events API deliveries as the control API."""
        channels = [c for c in self.channels.values() if not c.is_archived and BOT_USER in c.members]
        if not channels:
            return
        channel = rng.choice(channels)
        people = [u for u in channel.members if u in self.users and not self.users[u]["is_bot"]]
        if not people:
            return
        user = rng.choice(people)
        roots = [ts for ts, m in channel.messages.items()
                 if "thread_ts" not in m or m.get("thread_ts") == ts]
        roots = [ts for ts in roots if channel.messages[ts].get("subtype") != "tombstone"]
        roll = rng.random()
        if roll < 0.45 or not roots:
            self.post_message(channel.id, _sentence(rng), user=user)
        elif roll < 0.8:
            recent = sorted(roots)[-5:]
            self.post_message(channel.id, _sentence(rng), user=user, thread_ts=rng.choice(recent))
        else:
            ts = max(roots)
            text = channel.messages[ts]["text"]
            self.edit_message(channel.id, ts, f"{text} Edit: {_sentence(rng)}")


def _fill(
    channel: Channel, rng: random.Random, count: int, start: int, span: int, *,
    thread_share: float, members: list[str], total: bool = False,
) -> None:
    """Seed ``count`` roots (or ``count`` messages in all when ``total``), some threaded.

    Timestamps are in the past (``start`` .. ``start + span`` seconds), unique per channel: the
    fraction is a per-channel sequence number, so two messages never collide.
    """
    made = 0
    seq = 0
    gap = (span - 86400) / max(1, count)  # leave a day so replies stay in the past
    roots = 0
    while made < count if total else roots < count:
        seq += 1
        at = start + int(roots * gap + rng.random() * gap * 0.5)
        root = {"type": "message", "user": rng.choice(members), "text": _sentence(rng),
                "ts": micro_to_ts(at * 1_000_000 + seq), "team": TEAM_ID}
        channel.add_root(root)
        made += 1
        roots += 1
        if rng.random() < thread_share:
            for n in range(rng.randint(1, 5)):
                if total and made >= count:
                    break
                seq += 1
                reply_at = at + (n + 1) * rng.randint(60, 1800)
                channel.add_reply(root["ts"], {
                    "type": "message", "user": rng.choice(members), "text": _sentence(rng),
                    "ts": micro_to_ts(reply_at * 1_000_000 + seq), "team": TEAM_ID,
                    "thread_ts": root["ts"], "parent_user_id": root["user"]})
                made += 1
        if rng.random() < 0.05:
            channel.messages[root["ts"]]["edited"] = {"user": root["user"],
                                                     "ts": micro_to_ts((at + 120) * 1_000_000 + seq)}
    all_ts = [ts_to_micro(ts) for ts in channel.messages]
    channel.last_micro = max(all_ts, default=0)


def _sentence(rng: random.Random) -> str:
    return (f"{rng.choice(_OPENERS)} {rng.choice(_SUBJECTS)} {rng.choice(_PREDICATES)}"
            f"{rng.choice(_TAILS)}")


def _retry_reason(delivery: Delivery) -> str:
    if "Timeout" in delivery.error:
        return "http_timeout"
    if delivery.error:
        return "connection_failed"
    return "http_error"


def _echoes(response: httpx.Response, challenge: str) -> bool:
    """Slack accepts the challenge as plain text, as JSON ``{"challenge"}`` or as a form field."""
    text = response.text.strip()
    if text == challenge:
        return True
    try:
        data = response.json()
    except ValueError:
        return parse_qs(text).get("challenge", [""])[0] == challenge
    return isinstance(data, dict) and data.get("challenge") == challenge


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _bad(message: str, status: int = 400) -> Response:
    return JSONResponse({"error": message}, status)


_PEOPLE = [
    ("U05ALICE01", "alice", "Alice Okafor"),
    ("U05BOBBY02", "bob", "Bob Lindqvist"),
    ("U05CARLA03", "carla", "Carla Mendes"),
    ("U05DEVIN04", "devin", "Devin Park"),
    ("U05ERIKA05", "erika", "Erika Novak"),
    ("U05FARID06", "farid", "Farid Haddad"),
    ("U05GRACE07", "grace", "Grace Liu"),
    ("U05HENRY08", "henry", "Henry Adeyemi"),
]
_TOPICS = ["billing", "platform", "mobile", "search", "infra", "design", "support", "data"]
_OPENERS = ["Heads up:", "Quick update -", "FYI", "Question:", "Decision:", "Reminder:", "Status:"]
_SUBJECTS = ["the SUBS billing migration", "the Q3 roadmap", "the on-call rota", "the search reindex",
             "the mobile release", "the Postgres upgrade", "the customer escalation from Acme",
             "the API rate-limit change", "the design review", "the vector index backfill"]
_PREDICATES = ["is blocked on legal review", "ships on Thursday", "needs another reviewer",
               "slipped by a week", "was approved by finance", "is rolled back for now",
               "moves to the platform team", "passed QA in staging"]
_TAILS = [".", " - see the ticket for details.", ", please shout if that is a problem.",
          ". Retro notes to follow.", " after the incident review.", "."]


def create(knobs: Knobs | None = None) -> SlackSimulator:
    return SlackSimulator(knobs)
