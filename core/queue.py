"""The job queue: Dramatiq on Redis, reached by actor name so the receiver and the reconciler
never import the workers.

One job does all the work: ``sync_refs(refs)`` brings the referenced documents up to date
(workers/actors.py). It is declared twice: on the live queue, and on the bulk queue at a lower
priority, so backfills and first full passes never delay webhooks. A message carries ids and hints, not payloads, except documents pushed
through the API (their content exists nowhere else), listing pages that already returned
whole documents and webhooks that carried theirs (``Ref.payload``), so a rate-limited API is not
asked twice. A broker middleware registers each webhook payload's version so a burst for one
document is written once (``core.coalesce``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from core import coalesce
from core.documents import Ref

log = logging.getLogger("vector_sync.queue")

#: Live work: webhooks, the push API, incremental reconcile passes, deletes. Kept apart from
#: bulk work so a backfill never puts thousands of jobs ahead of a fresh webhook.
QUEUE = "sync"
ACTOR = "sync_refs"
#: Bulk work: backfills and first full passes. The same job, at a lower priority.
BULK_QUEUE = "bulk"
BULK_ACTOR = "sync_refs_bulk"
QUEUES = (QUEUE, BULK_QUEUE)
NAMESPACE = "dramatiq"
#: Refs per message: a listing page becomes one message, embedded in one batch.
MAX_REFS_PER_MESSAGE = 100
#: Dramatiq keeps dead-lettered messages this long (ms): a week, to be listed and replayed.
DEAD_MESSAGE_TTL_MS = 7 * 86400 * 1000


#: Seconds between two recovery sweeps by each worker (``requeue_dead_workers``).
RECOVERY_INTERVAL = 10.0


def make_broker(redis_url: str, *, middleware: list[Any] | None = None,
                recovery_after: float = 30.0) -> RedisBroker:
    """The Redis broker. ``recovery_after``: seconds a worker may be silent on the broker before
    it is presumed dead and its unacknowledged messages are put back on their queues.

    Dramatiq's broker writes a heartbeat for itself on every command (fetches included, every
    half second when idle) and on a random 0.1 % of commands runs "maintenance", which puts the
    messages of workers silent for ``heartbeat_timeout`` back on the queue being fetched. By
    chance alone, that took 2 to 10 minutes after a ``kill -9``; ``requeue_dead_workers`` runs
    it on purpose every ``RECOVERY_INTERVAL`` seconds, for every queue."""
    broker = RedisBroker(
        url=redis_url,
        namespace=NAMESPACE,
        dead_message_ttl=DEAD_MESSAGE_TTL_MS,
        heartbeat_timeout=int(recovery_after * 1000),
        middleware=middleware,
        socket_timeout=5,
        socket_connect_timeout=5,
    )
    for name in QUEUES:
        broker.declare_queue(name)
    broker.add_middleware(coalesce.Register())  # bursts for one document become one write
    return broker


def requeue_dead_workers(broker: RedisBroker) -> None:
    """Run the broker's maintenance on every queue now: the unacknowledged messages of every
    worker silent for longer than the broker's ``heartbeat_timeout`` go back on their queue.

    This calls dramatiq's own dispatch script with its maintenance flag set and a command it does
    not know (so it does nothing else); the script also records this broker's heartbeat. Raises
    redis errors when Redis is down."""
    dispatch = broker.scripts["dispatch"]
    for name in QUEUES:
        for queue_name in (name, f"{name}.DQ"):
            dispatch(keys=[NAMESPACE], args=[
                "maintenance", int(time.time() * 1000), queue_name, broker.broker_id,
                broker.heartbeat_timeout, broker.dead_message_ttl, 1, broker._max_unpack_size(),
            ])


def unacked(broker: RedisBroker) -> dict[str, int]:
    """Per dramatiq broker id: messages fetched but not yet acknowledged (all queues)."""
    client = _client(broker)
    out: dict[str, int] = {}
    for key in client.scan_iter(match=f"{NAMESPACE}:__acks__.*", count=500):
        name = key.decode() if isinstance(key, bytes) else key
        # dramatiq:__acks__.<broker id (a uuid)>.<queue>
        worker_id = name[len(f"{NAMESPACE}:__acks__."):].split(".", 1)[0]
        out[worker_id] = out.get(worker_id, 0) + int(client.scard(key))
    return {k: v for k, v in out.items() if v}


def ref_messages(refs: Iterable[Ref], *, bulk: bool = False, **options: Any) -> list[Message[Any]]:
    """Split refs into messages of at most MAX_REFS_PER_MESSAGE."""
    batch: list[dict[str, Any]] = []
    messages = []
    for ref in refs:
        batch.append(ref.to_dict())
        if len(batch) == MAX_REFS_PER_MESSAGE:
            messages.append(_message(batch, options, bulk))
            batch = []
    if batch:
        messages.append(_message(batch, options, bulk))
    return messages


def _message(batch: list[dict[str, Any]], options: dict[str, Any], bulk: bool = False) -> Message[Any]:
    return Message(queue_name=BULK_QUEUE if bulk else QUEUE, actor_name=BULK_ACTOR if bulk else ACTOR,
                   args=(batch,), kwargs={}, options=dict(options))


def enqueue(broker: RedisBroker, refs: Iterable[Ref], *, bulk: bool = False, **options: Any) -> int:
    """Durably enqueue refs (on the bulk queue with ``bulk``); returns messages sent.

    Raises redis errors when Redis is down."""
    messages = ref_messages(refs, bulk=bulk, **options)
    for message in messages:
        broker.enqueue(message)
    return len(messages)


def _client(broker: RedisBroker) -> redis.Redis:
    client: redis.Redis = broker.client
    return client


def queue_depths(broker: RedisBroker) -> dict[str, int]:
    """Per queue: messages waiting, in flight (not yet acknowledged) or delayed for a retry."""
    client = _client(broker)
    return {
        name: int(client.hlen(f"{NAMESPACE}:{name}.msgs")) + int(client.hlen(f"{NAMESPACE}:{name}.DQ.msgs"))
        for name in QUEUES
    }


def oldest_waiting_ages(broker: RedisBroker, now: float | None = None) -> dict[str, float | None]:
    """Per queue: seconds since the oldest message waiting to be fetched was enqueued, None when
    none waits (metrics and status). Dramatiq's dispatch script pushes on the right and fetches
    from the left, so the head of the list is the next, and oldest, message: two reads per queue
    whatever the queue's length. Pinned by tests/test_metrics.py."""
    client = _client(broker)
    now_ms = (time.time() if now is None else now) * 1000
    out: dict[str, float | None] = {}
    for name in QUEUES:
        head = client.lindex(f"{NAMESPACE}:{name}", 0)
        data = client.hget(f"{NAMESPACE}:{name}.msgs", head) if head is not None else None
        try:
            stamp = float(json.loads(data)["message_timestamp"]) if data is not None else None
        except (ValueError, KeyError, TypeError):
            stamp = None
        out[name] = None if stamp is None else round(max(0.0, now_ms - stamp) / 1000, 3)
    return out


def queue_depth(broker: RedisBroker) -> int:
    return sum(queue_depths(broker).values())


def drain(broker: RedisBroker, worker: Any, timeout: float = 60.0) -> None:
    """Wait until both queues are empty and ``worker`` (a ``dramatiq.Worker``) has nothing in
    flight; for tests, benchmarks and tools that need the index settled. TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in QUEUES:
            broker.join(name, timeout=int(max(1, deadline - time.monotonic()) * 1000))
        worker.join()
        if queue_depth(broker) == 0:
            return
        time.sleep(0.02)
    raise TimeoutError(f"the queues did not drain within {timeout:g}s")


def bury(broker: RedisBroker, message: Message[Any], error: str) -> None:
    """Put ``message`` in its queue's dead-letter set, as Dramatiq's own ``nack`` does (same keys,
    same score: the time in ms, so ``dead_message_ttl`` expires it), with ``error`` kept in its
    options as ``last_error``: the real last error, for ``dead_letters`` to show.

    The sync actor buries the refs that failed for good itself, so a dead letter holds exactly
    those refs (not their whole job) and the error that finished them."""
    now_ms = int(time.time() * 1000)
    options = {**message.options, "last_error": error[:4000], "requeue_timestamp": now_ms}
    options.pop("redis_message_id", None)
    dead = message.copy(options=options)
    xq = f"{NAMESPACE}:{_canonical(message.queue_name)}.XQ"
    client = _client(broker)
    pipe = client.pipeline()
    pipe.zadd(xq, {dead.message_id: now_ms})
    pipe.hset(f"{xq}.msgs", dead.message_id, dead.encode())
    pipe.execute()


def _canonical(queue_name: str) -> str:
    return queue_name[:-3] if queue_name.endswith(".DQ") else queue_name


def dead_letters(broker: RedisBroker, limit: int = 1000) -> list[dict[str, Any]]:
    """Messages that exhausted their retries (both queues), newest first. ``error`` is the real
    last error (``last_error``, kept by the actor), else the last line of Dramatiq's traceback."""
    client = _client(broker)
    out = []
    for name in QUEUES:
        xq = f"{NAMESPACE}:{name}.XQ"
        ids = client.zrevrange(xq, 0, limit - 1)
        raw = client.hmget(f"{xq}.msgs", ids) if ids else []
        for message_id, data in zip(ids, raw, strict=True):
            if data is None:
                continue
            message = json.loads(data)
            options = message.get("options", {})
            last = options.get("last_error")
            out.append({
                "message_id": message_id.decode() if isinstance(message_id, bytes) else message_id,
                "queue": name,
                "refs": message.get("args", [[]])[0],
                "retries": options.get("retries", 0),
                "waited_s": options.get("waited_s", 0),
                "error": [last] if last else (options.get("traceback") or "").strip().splitlines()[-1:],
                "failed_at": options.get("requeue_timestamp"),
            })
    out.sort(key=lambda letter: letter["failed_at"] or 0, reverse=True)
    return out[:limit]


def dead_letter_count(broker: RedisBroker) -> int:
    client = _client(broker)
    return sum(int(client.zcard(f"{NAMESPACE}:{name}.XQ")) for name in QUEUES)


def replay_dead_letters(broker: RedisBroker, message_ids: list[str] | None = None) -> int:
    """Re-enqueue dead messages (all, or those named) on their own queue, retries reset."""
    client = _client(broker)
    wanted = None if message_ids is None else set(message_ids)
    replayed = 0
    for name in QUEUES:
        xq = f"{NAMESPACE}:{name}.XQ"
        for raw_id in client.zrange(xq, 0, -1):
            message_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if wanted is not None and message_id not in wanted:
                continue
            data = client.hget(f"{xq}.msgs", message_id)
            if data is None:
                continue
            refs = json.loads(data).get("args", [[]])[0]
            broker.enqueue(_message(refs, {}, bulk=name == BULK_QUEUE))
            client.zrem(xq, message_id)
            client.hdel(f"{xq}.msgs", message_id)
            replayed += 1
    return replayed


# --- the receiver's hot path: claim a delivery and enqueue in one round trip ------------------

#: Redis keys of claimed webhook deliveries: ``vector-sync:delivery:<source>:<delivery id>``.
DELIVERY_PREFIX = "vector-sync:delivery:"
#: How long a delivery id is remembered (a sender's retries and manual redeliveries come within
#: days: Slack retries for minutes, Jira for a minute, GitHub redelivers by hand).
DELIVERY_TTL_S = 7 * 86400

#: KEYS: the queue's list, its message hash, and optionally the delivery key to claim.
#: ARGV: the delivery key's TTL in seconds, then (redis message id, encoded message) pairs.
#: Returns -1 when the delivery key exists (a duplicate: nothing written), else the number of
#: messages enqueued. Each message is written exactly as dramatiq's dispatch script's
#: ``enqueue`` writes it (HSET on ``<queue>.msgs``, RPUSH of its redis message id on
#: ``<queue>``), so workers consume it unchanged. The claim is written last and only after
#: every message is in: a script that fails part-way (a wrong-typed key, out of memory) takes
#: back what it wrote and never leaves a claim behind, so the sender's retry goes through.
CLAIM_AND_ENQUEUE_LUA = """
local claim = KEYS[3]
if claim and redis.call('exists', claim) == 1 then
    return -1
end
local written = {}
for i = 2, #ARGV, 2 do
    local pushed = redis.pcall('rpush', KEYS[1], ARGV[i])
    local stored = nil
    if type(pushed) ~= 'table' then
        stored = redis.pcall('hset', KEYS[2], ARGV[i], ARGV[i + 1])
    end
    if type(pushed) == 'table' or type(stored) == 'table' then
        if type(pushed) ~= 'table' then
            redis.pcall('lrem', KEYS[1], -1, ARGV[i])
        end
        for _, id in ipairs(written) do
            redis.pcall('lrem', KEYS[1], -1, id)
            redis.pcall('hdel', KEYS[2], id)
        end
        if type(pushed) == 'table' then
            return pushed
        end
        return stored
    end
    written[#written + 1] = ARGV[i]
end
if claim then
    redis.call('set', claim, '1', 'EX', ARGV[1])
end
return #written
"""


def delivery_key(source: str, delivery_id: str) -> str:
    return f"{DELIVERY_PREFIX}{source}:{delivery_id}"


class FastEnqueuer:
    """The receiver's enqueue over an asyncio Redis client: a webhook's delivery claim and its
    messages in one script call (``CLAIM_AND_ENQUEUE_LUA``), no thread-pool hop.

    ``broker`` supplies the middleware hooks (``before_enqueue``/``after_enqueue`` run as
    ``RedisBroker.enqueue`` runs them) and the namespace; nothing here goes through its
    synchronous client. Raises ``redis.RedisError`` when Redis is down or the script fails."""

    def __init__(self, client: Any, broker: RedisBroker) -> None:
        self.client = client
        self.broker = broker
        self.script = client.register_script(CLAIM_AND_ENQUEUE_LUA)

    async def enqueue(self, refs: Iterable[Ref], *, claim: str | None = None, bulk: bool = False,
                      **options: Any) -> int | None:
        """Enqueue ``refs`` (as ``enqueue`` splits them) and, with ``claim`` (a
        ``delivery_key``), claim it in the same atomic step. None when ``claim`` was already
        claimed (a duplicate: nothing enqueued); else the number of messages sent."""
        refs = list(refs)
        messages = [m.copy(options={"redis_message_id": str(uuid.uuid4())})
                    for m in ref_messages(refs, bulk=bulk, **options)]
        queue_name = BULK_QUEUE if bulk else QUEUE
        args: list[Any] = [DELIVERY_TTL_S]
        for message in messages:
            self.broker.emit_before("enqueue", message, None)
            args += [message.options["redis_message_id"], message.encode()]
        keys = [f"{NAMESPACE}:{queue_name}", f"{NAMESPACE}:{queue_name}.msgs"]
        if claim is not None:
            keys.append(claim)
        sent = int(await self.script(keys=keys, args=args))
        if sent < 0:
            return None
        # The coalescing registration (core.coalesce.Register) would make a synchronous Redis
        # call on the event loop from its after_enqueue: made here over the asyncio client
        # instead, and the other middlewares run as RedisBroker.enqueue runs them.
        await self._register(refs)
        for message in messages:
            for middleware in reversed(self.broker.middleware):
                if isinstance(middleware, coalesce.Register):
                    continue
                try:
                    middleware.after_enqueue(self.broker, message, None)
                except Exception:  # noqa: BLE001 - as dramatiq's emit_after: queued is queued
                    log.critical("after_enqueue of %r failed", middleware, exc_info=True)
        return sent

    async def _register(self, refs: list[Ref]) -> None:
        keys, args = coalesce.register_call([r for r in refs if r.payload])
        if not keys:
            return
        try:
            await self.client.eval(coalesce.REGISTER, len(keys), *keys, *args)
        except redis.RedisError as exc:
            # The messages are queued: only the saving is lost, never the event.
            log.warning("could not register %d payload version(s): %s", len(keys), exc)

    async def release(self, claim: str) -> None:
        """Forget a claimed delivery whose handling failed, so the sender's retry goes through."""
        await self.client.delete(claim)
