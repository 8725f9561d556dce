"""The job queue: Dramatiq on Redis, reached by actor name so the receiver and the reconciler
never import the workers.

One actor does all the work: ``sync_refs(refs)`` brings the referenced documents up to date
(workers/actors.py). A message carries ids and hints, not payloads, except documents pushed
through the API (their content exists nowhere else) and listing pages that already returned
whole documents (so a rate-limited API is not asked twice).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from core.documents import Ref

QUEUE = "sync"
ACTOR = "sync_refs"
NAMESPACE = "dramatiq"
#: Refs per message: a listing page becomes one message, embedded in one batch.
MAX_REFS_PER_MESSAGE = 100
#: Dramatiq keeps dead-lettered messages this long (ms): a week, to be listed and replayed.
DEAD_MESSAGE_TTL_MS = 7 * 86400 * 1000


def make_broker(redis_url: str, *, middleware: list[Any] | None = None) -> RedisBroker:
    broker = RedisBroker(
        url=redis_url,
        namespace=NAMESPACE,
        dead_message_ttl=DEAD_MESSAGE_TTL_MS,
        middleware=middleware,
        socket_timeout=5,
        socket_connect_timeout=5,
    )
    broker.declare_queue(QUEUE)
    return broker


def ref_messages(refs: Iterable[Ref], **options: Any) -> list[Message[Any]]:
    """Split refs into messages of at most MAX_REFS_PER_MESSAGE."""
    batch: list[dict[str, Any]] = []
    messages = []
    for ref in refs:
        batch.append(ref.to_dict())
        if len(batch) == MAX_REFS_PER_MESSAGE:
            messages.append(_message(batch, options))
            batch = []
    if batch:
        messages.append(_message(batch, options))
    return messages


def _message(batch: list[dict[str, Any]], options: dict[str, Any]) -> Message[Any]:
    return Message(queue_name=QUEUE, actor_name=ACTOR, args=(batch,), kwargs={}, options=dict(options))


def enqueue(broker: RedisBroker, refs: Iterable[Ref], **options: Any) -> int:
    """Durably enqueue refs; returns messages sent. Raises redis errors when Redis is down."""
    messages = ref_messages(refs, **options)
    for message in messages:
        broker.enqueue(message)
    return len(messages)


def _client(broker: RedisBroker) -> redis.Redis:
    client: redis.Redis = broker.client
    return client


def queue_depth(broker: RedisBroker) -> int:
    """Messages waiting or in flight (not yet acknowledged) in the sync queue."""
    client = _client(broker)
    total = int(client.hlen(f"{NAMESPACE}:{QUEUE}.msgs"))
    total += int(client.hlen(f"{NAMESPACE}:{QUEUE}.DQ.msgs"))  # delayed retries
    return total


def dead_letters(broker: RedisBroker, limit: int = 1000) -> list[dict[str, Any]]:
    """Messages that exhausted their retries, newest first."""
    client = _client(broker)
    xq = f"{NAMESPACE}:{QUEUE}.XQ"
    ids = client.zrevrange(xq, 0, limit - 1)
    if not ids:
        return []
    raw = client.hmget(f"{xq}.msgs", ids)
    out = []
    for message_id, data in zip(ids, raw, strict=True):
        if data is None:
            continue
        message = json.loads(data)
        out.append(
            {
                "message_id": message_id.decode() if isinstance(message_id, bytes) else message_id,
                "refs": message.get("args", [[]])[0],
                "retries": message.get("options", {}).get("retries", 0),
                "error": (message.get("options", {}).get("traceback") or "").strip().splitlines()[-1:],
                "failed_at": message.get("options", {}).get("requeue_timestamp"),
            }
        )
    return out


def dead_letter_count(broker: RedisBroker) -> int:
    return int(_client(broker).zcard(f"{NAMESPACE}:{QUEUE}.XQ"))


def replay_dead_letters(broker: RedisBroker, message_ids: list[str] | None = None) -> int:
    """Re-enqueue dead messages (all, or those named) with their retry count reset."""
    client = _client(broker)
    xq = f"{NAMESPACE}:{QUEUE}.XQ"
    ids = [i.decode() if isinstance(i, bytes) else i for i in client.zrange(xq, 0, -1)]
    if message_ids is not None:
        ids = [i for i in ids if i in set(message_ids)]
    replayed = 0
    for message_id in ids:
        data = client.hget(f"{xq}.msgs", message_id)
        if data is None:
            continue
        refs = json.loads(data).get("args", [[]])[0]
        broker.enqueue(_message(refs, {}))
        client.zrem(xq, message_id)
        client.hdel(f"{xq}.msgs", message_id)
        replayed += 1
    return replayed
