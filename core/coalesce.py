"""Coalescing bursts of webhook events for one document into one write.

A burst of events for one document (20 edits of an issue in a minute, each with the whole issue
in its payload) would otherwise become 20 jobs, each a write of a version that the next one
replaces. Instead:

- **On enqueue** (a broker middleware, so every process that enqueues does it: the receiver, the
  retry policy), each ref that carries a webhook payload and an event time registers its
  version, ``(event_at, seen_at)``, under its document in Redis, if it is newer than the one
  registered (``REGISTER``, atomic). It runs after the message is durably queued: a registered
  version always has a message behind it.
- **In the worker**, before the pipeline runs, ``screen`` reads the registered versions of the
  job's payload refs (one MGET): a ref whose document has a *newer* version registered is
  dropped (``superseded``): that version's own message is queued, or has run, and writes it.
  So a backlog of 20 events for one issue is one write, whatever the worker's concurrency.

**Ties.** GitHub stamps ``updated_at`` to the second, and deliveries can arrive out of order: two
events of one second cannot be ordered by their payloads. A registration that meets another
version with the same ``event_at`` marks the document *ambiguous*, and ``screen`` strips the
payload from the ref that goes ahead: the worker fetches the truth instead of trusting either.

Losing this state loses nothing but the saving: a failed registration or an expired key means
the ref is processed as before, and the pipeline's own rule (newest ``updated_at`` wins) still
orders what is written (workers/sync.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import redis
from dramatiq import Middleware

from core.documents import Ref

log = logging.getLogger("vector_sync.coalesce")

#: Redis key prefix of a document's newest registered version.
PREFIX = "vector-sync:latest:"
#: Seconds a registered version is kept (a burst is seconds long; this bounds the keys kept).
TTL = 3600

#: KEYS: one per ref; ARGV: ttl, then (event_at, seen_at) per key. A key holds
#: "<event_at> <seen_at> <ambiguous 0|1>"; a version replaces it when newer (event_at, then
#: seen_at); the same event_at from another read marks it ambiguous.
REGISTER = """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local u, s = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local cur = redis.call('GET', key)
  if not cur then
    redis.call('SET', key, ARGV[2 * i] .. ' ' .. ARGV[2 * i + 1] .. ' 0', 'EX', ttl)
  else
    local cu, cs, ca = string.match(cur, '^(%S+) (%S+) (%S+)$')
    cu, cs = tonumber(cu), tonumber(cs)
    if u > cu then
      redis.call('SET', key, ARGV[2 * i] .. ' ' .. ARGV[2 * i + 1] .. ' 0', 'EX', ttl)
    elseif u == cu and s ~= cs then
      local top = s > cs and ARGV[2 * i + 1] or string.match(cur, '^%S+ (%S+)')
      redis.call('SET', key, ARGV[2 * i] .. ' ' .. top .. ' 1', 'EX', ttl)
    end
  end
end
return #KEYS
"""


def key(document_id: str) -> str:
    return PREFIX + document_id


def _version(ref: Ref) -> tuple[float, float] | None:
    """The version a payload ref registers, or None when it takes no part (no payload or no
    event time: a ref that is fetched anyway is never dropped)."""
    if ref.payload is None or ref.op != "sync" or ref.event_at is None:
        return None
    return float(ref.event_at), float(ref.seen_at)


def register_call(refs: Sequence[Ref]) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of ``REGISTER`` for ``refs`` (no keys: nothing to register), for a
    caller that folds the registration into a script of its own (one round trip)."""
    versions = [(ref.document_id, v) for ref in refs if (v := _version(ref)) is not None]
    args: list[Any] = [TTL]
    for _, (u, s) in versions:
        args += [repr(u), repr(s)]
    return [key(d) for d, _ in versions], args


def register(client: redis.Redis, refs: Sequence[Ref]) -> int:
    """Register the versions of ``refs`` (those with a payload and an event time); returns how
    many. Raises redis errors."""
    keys, args = register_call(refs)
    if keys:
        client.eval(REGISTER, len(keys), *keys, *args)
    return len(keys)


@dataclasses.dataclass
class Screened:
    #: The refs to run (a payload stripped from those whose version is ambiguous).
    refs: list[Ref]
    #: Refs dropped because their document has a newer version registered.
    superseded: int = 0
    #: Payload refs that will fetch the truth instead (a tie of event times).
    ambiguous: int = 0


def screen(client: redis.Redis, refs: Sequence[Ref]) -> Screened:
    """Drop the payload refs whose document has a newer version registered; strip the payload
    from those whose version ties with another read. Never raises: when Redis cannot answer,
    every ref goes ahead (the pipeline's version check still orders what is written)."""
    candidates = [(n, v) for n, ref in enumerate(refs) if (v := _version(ref)) is not None]
    if not candidates:
        return Screened(list(refs))
    try:
        raw = client.mget([key(refs[n].document_id) for n, _ in candidates])
    except redis.RedisError as exc:
        log.warning("could not read registered versions (%s); running every ref", exc)
        return Screened(list(refs))
    out = Screened([])
    drop: set[int] = set()
    strip: set[int] = set()
    for (n, (u, s)), value in zip(candidates, raw, strict=True):
        if value is None:
            continue
        try:
            cu, cs, ambiguous = (value.decode() if isinstance(value, bytes) else value).split()
            cu_f, cs_f = float(cu), float(cs)
        except ValueError:
            continue
        if (cu_f, cs_f) > (u, s):
            drop.add(n)
        elif ambiguous == "1" and cu_f == u:
            strip.add(n)
    for n, ref in enumerate(refs):
        if n in drop:
            out.superseded += 1
        elif n in strip:
            out.ambiguous += 1
            out.refs.append(dataclasses.replace(ref, payload=None))
        else:
            out.refs.append(ref)
    return out


class Register(Middleware):
    """Registers the versions of a message's payload refs once the message is queued."""

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        try:
            batch = message.args[0] if message.args else []
            refs = [Ref.from_dict(r) for r in batch if isinstance(r, dict) and r.get("payload")]
        except (KeyError, TypeError, ValueError, IndexError):
            return
        if not refs:
            return
        try:
            register(broker.client, refs)
        except redis.RedisError as exc:
            # The message is queued: only the saving is lost, never the event.
            log.warning("could not register %d payload version(s): %s", len(refs), exc)


__all__ = ["PREFIX", "REGISTER", "Register", "Screened", "TTL", "key", "register", "register_call", "screen"]
