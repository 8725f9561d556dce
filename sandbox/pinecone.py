"""Pinecone data-plane simulator: one serverless, dense, cosine index on its own host.

Endpoints (research/saas-apis.md §7; request/response shapes checked against the official
``pinecone`` SDK, which must be able to drive every one of them):

- ``POST /vectors/upsert`` -> ``{"upsertedCount": N}``; at most 1,000 vectors (400) and 2 MB
  of request body (413, which is what the SDK's halve-and-resend logic keys on), metadata at
  most 40 KB (40,960 bytes of compact JSON) per record, no nulls, no nested objects, values
  matching the index dimension with at least one non-zero value.
- ``POST /query`` (``vector`` or ``id``; ``topK`` <= 10,000; metadata ``filter``).
- ``GET /vectors/fetch?ids=..&namespace=`` (<= 1,000 ids).
- ``POST /vectors/delete`` (``ids`` <= 1,000 | ``deleteAll`` | ``filter``) -> ``{}``.
- ``POST /vectors/update`` (``id`` with ``values`` / ``setMetadata``; or ``filter`` with
  ``setMetadata`` -> ``matchedRecords``).
- ``GET /vectors/list`` (``prefix``, ``limit`` 1..100 default 100, ``paginationToken``; ids in
  byte order; the last page has no ``pagination``).
- ``GET|POST /describe_index_stats``.

Errors use the data plane's body ``{"code": <gRPC code>, "message": ..., "details": []}``.
``Api-Key`` must match (401 otherwise). ``""`` and ``"__default__"`` are the same namespace
(stats list it as ``"__default__"``, as the SDK documents).

Knobs: ``rate_limit`` requests/second for the whole host (None = 100/s, Pinecone's documented
per-namespace figure; 0 = unlimited) -> 429 with ``Retry-After``; ``consistency_delay`` seconds
before a write is visible to query/fetch/list/stats. Fault injection through the control API:
``PUT /_sandbox/faults {"upsert_drop": k, "times": n}`` makes the next ``n`` upserts silently
store (and report) ``k`` fewer vectors than sent, the failure vector-sync must catch.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Knobs, Simulator, TokenBucket

API_KEY = "pcsk_sandbox_pinecone"
DEFAULT_DIMENSION = 1536
DEFAULT_NAMESPACE = "__default__"

MAX_UPSERT_VECTORS = 1000
#: Request body cap for upsert. Pinecone says "2MB"; the stricter reading (10^6) is enforced.
MAX_UPSERT_BYTES = 2_000_000
MAX_METADATA_BYTES = 40 * 1024
MAX_IDS = 1000
MAX_TOP_K = 10_000
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 100
MAX_ID_LENGTH = 512
DEFAULT_RATE = 100.0

# gRPC status codes the data plane puts in its error bodies.
INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE, UNAUTHENTICATED = 3, 5, 8, 14, 16


class ApiError(Exception):
    """An error answer: HTTP status plus the data plane's JSON body."""

    def __init__(self, status: int, message: str, code: int = INVALID_ARGUMENT,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}

    def response(self) -> JSONResponse:
        body = {"code": self.code, "message": str(self), "details": []}
        return JSONResponse(body, self.status, headers=self.headers)


def bad(message: str) -> ApiError:
    return ApiError(400, message)


def metadata_size(metadata: dict[str, Any]) -> int:
    """Bytes of the compact UTF-8 JSON encoding: how this simulator measures the 40 KB limit."""
    return len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())


def normalise_namespace(namespace: Any) -> str:
    """``""``/missing and ``"__default__"`` are one namespace, stored under ``__default__``."""
    if namespace is None or namespace == "":
        return DEFAULT_NAMESPACE
    if not isinstance(namespace, str):
        raise bad("namespace must be a string")
    return namespace


# --- metadata filters ---------------------------------------------------------------------
def matches_filter(metadata: dict[str, Any], flt: dict[str, Any]) -> bool:
    """Pinecone's filter language over one record's metadata (validated beforehand)."""
    for key, cond in flt.items():
        if key == "$and":
            if not all(matches_filter(metadata, sub) for sub in cond):
                return False
        elif key == "$or":
            if not any(matches_filter(metadata, sub) for sub in cond):
                return False
        elif not _field_matches(metadata.get(key), key in metadata, cond):
            return False
    return True


def _field_matches(value: Any, present: bool, cond: Any) -> bool:
    if not isinstance(cond, dict):
        cond = {"$eq": cond}  # implicit equality
    return all(_op(op, value, present, arg) for op, arg in cond.items())


def _op(op: str, value: Any, present: bool, arg: Any) -> bool:
    # A list value (list of strings) matches $eq/$in when any element does, and $ne/$nin when
    # none does. A missing field matches only the negative operators ($ne, $nin) and
    # {"$exists": false}. UNCONFIRMED for Pinecone; this is MongoDB's rule, which its docs follow.
    values = value if isinstance(value, list) else [value]
    if op == "$exists":
        return present == bool(arg)
    if op in ("$ne", "$nin"):
        targets = arg if op == "$nin" else [arg]
        return not present or not any(_equal(v, t) for v in values for t in targets)
    if not present:
        return False
    if op in ("$eq", "$in"):
        targets = arg if op == "$in" else [arg]
        return any(_equal(v, t) for v in values for t in targets)
    compare: dict[str, Callable[[float, float], bool]] = {
        "$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b,
    }
    return any(_number(v) and compare[op](v, arg) for v in values)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    # Pinecone stores numbers as floats, so 1 == 1.0; a bool is not a number.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


_OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"}


def validate_filter(flt: Any, where: str = "filter") -> None:
    """Raise 400 for a filter Pinecone would refuse."""
    if not isinstance(flt, dict):
        raise bad(f"Invalid {where}: must be an object")
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise bad(f"Invalid {where}: {key} requires a non-empty array")
            for sub in cond:
                validate_filter(sub, where)
        elif key.startswith("$"):
            raise bad(f"Invalid {where}: unknown operator {key}")
        elif isinstance(cond, dict):
            _validate_condition(key, cond, where)
        elif not _scalar(cond):
            raise bad(f"Invalid {where}: value for {key} must be a string, number or boolean")


def _validate_condition(key: str, cond: dict[str, Any], where: str) -> None:
    if not cond:
        raise bad(f"Invalid {where}: empty condition for {key}")
    for op, arg in cond.items():
        if op not in _OPERATORS:
            raise bad(f"Invalid {where}: unknown operator {op}")
        if op in ("$in", "$nin"):
            if not isinstance(arg, list) or not all(_scalar(a) for a in arg):
                raise bad(f"Invalid {where}: {op} requires an array of strings, numbers or booleans")
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            if not _number(arg):
                raise bad(f"Invalid {where}: {op} requires a number")
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise bad(f"Invalid {where}: $exists requires a boolean")
        elif not _scalar(arg):
            raise bad(f"Invalid {where}: {op} requires a string, number or boolean")


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


# --- records and eventual consistency -----------------------------------------------------
@dataclass
class Record:
    values: list[float]
    metadata: dict[str, Any]
    norm: float = 0.0  # cached Euclidean norm of ``values``, for cosine scores

    def __post_init__(self) -> None:
        self.norm = math.hypot(*self.values)


@dataclass
class PendingWrite:
    """A write accepted but not yet visible to reads (``knobs.consistency_delay``)."""

    visible_at: float
    apply: Callable[[], None]


@dataclass
class Stats:
    """Counts for tests: requests per operation and what they carried."""

    requests: dict[str, int] = field(default_factory=dict)
    upserted_vectors: int = 0
    upsert_batches: list[int] = field(default_factory=list)
    upsert_bytes: list[int] = field(default_factory=list)
    dropped_vectors: int = 0
    rate_limited: int = 0
    unauthorized: int = 0
    rejected: int = 0


class PineconeSimulator(Simulator):
    name = "pinecone"

    def __init__(self, knobs: Knobs | None = None, *, dimension: int = DEFAULT_DIMENSION,
                 api_key: str = API_KEY) -> None:
        super().__init__(knobs)
        self.api_key = api_key
        self.dimension = dimension
        self.namespaces: dict[str, dict[str, Record]] = {}
        self.pending: list[PendingWrite] = []
        self.stats = Stats()
        self.upsert_drop = 0
        self.upsert_drop_times = 0
        #: ``PUT /_sandbox/faults {"status": 503, "times": n, "op": "upsert"}``.
        self.fail_status = 0
        self.fail_times = 0
        self.fail_op = ""
        self._bucket: TokenBucket | None = None
        self._bucket_rate: float | None = -1.0

    # --- wiring -----------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        def api(op: str, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                return await self._handle(op, handler, request)
            return endpoint

        return [
            Route("/vectors/upsert", api("upsert", self.upsert), methods=["POST"]),
            Route("/query", api("query", self.query), methods=["POST"]),
            Route("/vectors/fetch", api("fetch", self.fetch), methods=["GET"]),
            Route("/vectors/delete", api("delete", self.delete), methods=["POST"]),
            Route("/vectors/update", api("update", self.update), methods=["POST"]),
            Route("/vectors/list", api("list", self.list_vectors), methods=["GET"]),
            Route("/describe_index_stats", api("stats", self.describe_index_stats),
                  methods=["GET", "POST"]),
        ]

    def control_routes(self) -> list[BaseRoute]:
        return [
            Route("/stats", self._get_stats, methods=["GET"]),
            Route("/stats", self._reset_stats, methods=["DELETE"]),
            Route("/faults", self._put_faults, methods=["PUT"]),
            Route("/index", self._put_index, methods=["PUT"]),
            Route("/vectors", self._get_vectors, methods=["GET"]),
        ]

    def env(self, base_url: str) -> dict[str, str]:
        return {"PINECONE_HOST": base_url, "PINECONE_API_KEY": self.api_key}

    async def _handle(self, op: str, handler: Callable[[Request], Any],
                      request: Request) -> Response:
        self.stats.requests[op] = self.stats.requests.get(op, 0) + 1
        try:
            if self.fail_times > 0 and self.fail_op in ("", op):
                self.fail_times -= 1
                raise ApiError(self.fail_status, f"sandbox fault {self.fail_status}", UNAVAILABLE,
                               headers={"Retry-After": "1"} if self.fail_status == 503 else None)
            self._authenticate(request)
            self._rate_limit()
            return JSONResponse(await handler(request))
        except ApiError as exc:
            if exc.status == 429:
                self.stats.rate_limited += 1
            elif exc.status == 401:
                self.stats.unauthorized += 1
            else:
                self.stats.rejected += 1
            return exc.response()

    def _authenticate(self, request: Request) -> None:
        key = request.headers.get("api-key")
        if not key or key != self.api_key:
            # UNCONFIRMED body: the data plane answers 401; the gRPC-style body is our choice.
            raise ApiError(401, "Invalid API Key", UNAUTHENTICATED)

    def _rate_limit(self) -> None:
        rate = self.knobs.rate_limit
        if rate != self._bucket_rate:
            self._bucket_rate = rate
            self._bucket = None if rate == 0 else TokenBucket(DEFAULT_RATE if rate is None else rate)
        wait = self._bucket.take() if self._bucket else 0.0
        if wait > 0:
            raise ApiError(
                429, "TOO_MANY_REQUESTS: request rate limit exceeded for this namespace; "
                "back off and retry.", RESOURCE_EXHAUSTED,
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def _json(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            raise bad("Invalid request body: malformed JSON") from None
        if not isinstance(body, dict):
            raise bad("Invalid request body: expected a JSON object")
        return body

    # --- consistency ------------------------------------------------------------------
    def _write(self, apply: Callable[[], None]) -> None:
        """Apply now, or queue until ``consistency_delay`` has passed."""
        delay = self.knobs.consistency_delay
        if delay <= 0 and not self.pending:
            apply()
        else:
            self.pending.append(PendingWrite(time.monotonic() + max(0.0, delay), apply))
            self.settle()

    def settle(self) -> None:
        """Apply every queued write whose time has come, in the order written."""
        now = time.monotonic()
        while self.pending and self.pending[0].visible_at <= now:
            self.pending.pop(0).apply()

    def _space(self, namespace: str) -> dict[str, Record]:
        return self.namespaces.setdefault(namespace, {})

    # --- upsert -----------------------------------------------------------------------
    async def upsert(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_UPSERT_BYTES:
            raise ApiError(
                413, f"Request size {len(raw) / 1_000_000:.1f}MB exceeds the maximum supported "
                f"size of {MAX_UPSERT_BYTES // 1_000_000}MB", INVALID_ARGUMENT,
            )
        body = await self._json(request)
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise bad("Invalid request: vectors must be a non-empty array")
        if len(vectors) > MAX_UPSERT_VECTORS:
            raise bad(f"Invalid request: batch size {len(vectors)} exceeds the maximum of "
                      f"{MAX_UPSERT_VECTORS} vectors per upsert")
        namespace = normalise_namespace(body.get("namespace"))
        records = [(v.get("id"), self._record(v)) for v in vectors]
        stored = records[: len(records) - self._take_drop(len(records))]
        self.stats.upserted_vectors += len(stored)
        self.stats.upsert_batches.append(len(vectors))
        self.stats.upsert_bytes.append(len(raw))

        def apply() -> None:
            self._space(namespace).update(stored)

        self._write(apply)
        return {"upsertedCount": len(stored)}

    def _take_drop(self, count: int) -> int:
        if self.upsert_drop_times <= 0 or self.upsert_drop <= 0:
            return 0
        self.upsert_drop_times -= 1
        dropped = min(count, self.upsert_drop)
        self.stats.dropped_vectors += dropped
        return dropped

    def _record(self, vector: Any) -> Record:
        if not isinstance(vector, dict):
            raise bad("Invalid request: each vector must be an object")
        vid = vector.get("id")
        _check_id(vid)
        values = self._values(vector.get("values"), f"vector {vid}")
        metadata = vector.get("metadata") or {}
        check_metadata(metadata, vid)
        return Record(values, dict(metadata))

    def _values(self, values: Any, what: str) -> list[float]:
        if not isinstance(values, list) or not all(_number(v) for v in values):
            raise bad(f"Invalid request: values of {what} must be an array of numbers")
        if len(values) != self.dimension:
            raise bad(f"Vector dimension {len(values)} does not match the dimension of the "
                      f"index {self.dimension}")
        if not any(values):
            raise bad(f"Dense vectors must contain at least one non-zero value ({what})")
        return [float(v) for v in values]

    # --- query ------------------------------------------------------------------------
    async def query(self, request: Request) -> dict[str, Any]:
        body = await self._json(request)
        namespace_in = body.get("namespace", "")
        top_k = body.get("topK")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise bad(f"Invalid request: topK must be an integer between 1 and {MAX_TOP_K}")
        flt = body.get("filter")
        if flt is not None:
            validate_filter(flt)
        self.settle()
        space = self.namespaces.get(normalise_namespace(namespace_in), {})
        target = self._query_vector(body, space)
        matches = self._rank(target, space, flt, top_k) if target else []
        include_values = bool(body.get("includeValues"))
        include_metadata = bool(body.get("includeMetadata"))
        return {
            "matches": [
                {"id": vid, "score": score,
                 "values": rec.values if include_values else [],
                 **({"metadata": rec.metadata} if include_metadata and rec.metadata else {})}
                for vid, score, rec in matches
            ],
            "namespace": namespace_in or "",
            "usage": {"readUnits": max(1, math.ceil(len(space) / 10_000))},
        }

    def _query_vector(self, body: dict[str, Any], space: dict[str, Record]) -> list[float] | None:
        has_vector, has_id = "vector" in body, "id" in body
        if has_vector == has_id:
            raise bad("Invalid request: exactly one of vector or id must be provided")
        if has_id:
            _check_id(body["id"])
            record = space.get(body["id"])
            return record.values if record else None
        return self._values(body["vector"], "the query")

    @staticmethod
    def _rank(target: list[float], space: dict[str, Record], flt: dict[str, Any] | None,
              top_k: int) -> list[tuple[str, float, Record]]:
        t_norm = math.hypot(*target)
        scored = []
        for vid, rec in space.items():
            if flt and not matches_filter(rec.metadata, flt):
                continue
            dot = sum(a * b for a, b in zip(target, rec.values))
            scored.append((vid, dot / (t_norm * rec.norm), rec))
        scored.sort(key=lambda item: (-item[1], item[0]))
        return scored[:top_k]

    # --- fetch ------------------------------------------------------------------------
    async def fetch(self, request: Request) -> dict[str, Any]:
        ids = request.query_params.getlist("ids")
        if not ids:
            raise bad("Invalid request: ids must be provided")
        if len(ids) > MAX_IDS:
            raise bad(f"Invalid request: cannot fetch more than {MAX_IDS} ids at once, got "
                      f"{len(ids)}")
        namespace_in = request.query_params.get("namespace", "")
        self.settle()
        space = self.namespaces.get(normalise_namespace(namespace_in), {})
        vectors = {}
        for vid in ids:
            rec = space.get(vid)
            if rec is not None:
                vectors[vid] = {"id": vid, "values": rec.values,
                                **({"metadata": rec.metadata} if rec.metadata else {})}
        return {"vectors": vectors, "namespace": namespace_in,
                "usage": {"readUnits": max(1, math.ceil(len(ids) / 10))}}

    # --- delete -----------------------------------------------------------------------
    async def delete(self, request: Request) -> dict[str, Any]:
        body = await self._json(request)
        namespace = normalise_namespace(body.get("namespace"))
        ids, delete_all, flt = body.get("ids"), body.get("deleteAll", False), body.get("filter")
        chosen = sum(1 for x in (ids is not None, bool(delete_all), flt is not None) if x)
        if chosen != 1:
            raise bad("Invalid request: exactly one of ids, deleteAll or filter must be provided")
        if ids is not None:
            if not isinstance(ids, list) or not ids:
                raise bad("Invalid request: ids must be a non-empty array")
            if len(ids) > MAX_IDS:
                raise bad(f"Invalid request: cannot delete more than {MAX_IDS} ids at once, got "
                          f"{len(ids)}")
            for vid in ids:
                _check_id(vid)
        if flt is not None:
            if not flt:
                raise bad("Delete with empty metadata filter is not allowed")
            validate_filter(flt)
        self._write(lambda: self._delete_now(namespace, ids, bool(delete_all), flt))
        return {}

    def _delete_now(self, namespace: str, ids: list[str] | None, delete_all: bool,
                    flt: dict[str, Any] | None) -> None:
        space = self.namespaces.get(namespace)
        if space is None:
            return
        if delete_all:
            space.clear()
        elif ids is not None:
            for vid in ids:
                space.pop(vid, None)
        else:
            for vid in [v for v, rec in space.items() if matches_filter(rec.metadata, flt or {})]:
                del space[vid]

    # --- update -----------------------------------------------------------------------
    async def update(self, request: Request) -> dict[str, Any]:
        body = await self._json(request)
        namespace = normalise_namespace(body.get("namespace"))
        vid, flt = body.get("id"), body.get("filter")
        if (vid is None) == (flt is None):
            raise bad("Invalid request: exactly one of id or filter must be provided")
        values = body.get("values")
        if values is not None:
            values = self._values(values, f"vector {vid}")
        set_metadata = body.get("setMetadata")
        if set_metadata is not None:
            check_metadata(set_metadata, vid or "filter")
        if vid is not None:
            _check_id(vid)
            self._check_merged(namespace, vid, set_metadata)
            self._write(lambda: self._update_one(namespace, vid, values, set_metadata))
            return {}
        if not flt:
            raise bad("Update with empty metadata filter is not allowed")
        validate_filter(flt)
        self.settle()
        space = self.namespaces.get(namespace, {})
        matched = [v for v, rec in space.items() if matches_filter(rec.metadata, flt)]
        for one in matched:
            self._write(lambda one=one: self._update_one(namespace, one, None, set_metadata))
        return {"matchedRecords": len(matched)}

    def _check_merged(self, namespace: str, vid: str,
                      set_metadata: dict[str, Any] | None) -> None:
        """400 when merging ``set_metadata`` into the visible record would pass 40 KB."""
        self.settle()
        record = self.namespaces.get(namespace, {}).get(vid)
        if record is not None and set_metadata:
            check_metadata({**record.metadata, **set_metadata}, vid)

    def _update_one(self, namespace: str, vid: str, values: list[float] | None,
                    set_metadata: dict[str, Any] | None) -> None:
        # Updating an id that does not exist is a silent no-op (UNCONFIRMED: serverless has
        # answered both 200 and 404 over time; the quieter behaviour is the harder one to test).
        record = self.namespaces.get(namespace, {}).get(vid)
        if record is None:
            return
        if values is not None:
            record.values, record.norm = values, math.hypot(*values)
        if set_metadata:
            merged = {**record.metadata, **set_metadata}
            if metadata_size(merged) <= MAX_METADATA_BYTES:
                record.metadata = merged

    # --- list -------------------------------------------------------------------------
    async def list_vectors(self, request: Request) -> dict[str, Any]:
        params = request.query_params
        namespace_in = params.get("namespace", "")
        prefix = params.get("prefix", "")
        limit = _list_limit(params.get("limit"))
        after = _decode_token(params.get("paginationToken"))
        self.settle()
        space = self.namespaces.get(normalise_namespace(namespace_in), {})
        # C collation: compare the UTF-8 bytes, not Python's code-point order of str.
        ids = sorted((v for v in space if v.startswith(prefix)), key=lambda v: v.encode())
        if after is not None:
            ids = [v for v in ids if v.encode() > after.encode()]
        page = ids[:limit]
        answer: dict[str, Any] = {
            "vectors": [{"id": v} for v in page],
            "namespace": namespace_in,
            "usage": {"readUnits": 1},
        }
        if len(ids) > limit:
            answer["pagination"] = {"next": _encode_token(page[-1])}
        return answer

    # --- stats ------------------------------------------------------------------------
    async def describe_index_stats(self, request: Request) -> dict[str, Any]:
        if request.method == "POST":
            body = await self._json(request)
            if body.get("filter"):
                raise bad("Serverless and starter indexes do not support describing index "
                          "stats with metadata filtering")
        self.settle()
        namespaces = {ns: {"vectorCount": len(space)}
                      for ns, space in sorted(self.namespaces.items()) if space}
        return {
            "namespaces": namespaces,
            "dimension": self.dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()),
            "metric": "cosine",
            "vectorType": "dense",
        }

    # --- control API ------------------------------------------------------------------
    async def _get_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats.__dict__ | {"pending_writes": len(self.pending)})

    async def _reset_stats(self, request: Request) -> Response:
        self.stats = Stats()
        return JSONResponse(self.stats.__dict__)

    async def _put_faults(self, request: Request) -> Response:
        """``{"upsert_drop": k, "times": n}``: the next n upserts store and report k fewer."""
        body = await request.json()
        self.upsert_drop = int(body.get("upsert_drop", 0))
        self.upsert_drop_times = int(body.get("times", 1)) if self.upsert_drop else 0
        self.fail_status = int(body.get("status") or 0)
        self.fail_times = int(body.get("times", 1)) if self.fail_status else 0
        self.fail_op = str(body.get("op") or "")
        return JSONResponse({"upsert_drop": self.upsert_drop, "times": self.upsert_drop_times,
                             "status": self.fail_status, "fail_times": self.fail_times,
                             "op": self.fail_op})

    async def _put_index(self, request: Request) -> Response:
        """``{"dimension": N}``: recreate the index empty with another dimension."""
        body = await request.json()
        self.dimension = int(body.get("dimension", self.dimension))
        self.namespaces.clear()
        self.pending.clear()
        return JSONResponse({"dimension": self.dimension})

    async def _get_vectors(self, request: Request) -> Response:
        """Ground truth (including writes not yet visible): ids and metadata per namespace."""
        self.settle()
        return JSONResponse({
            "namespaces": {ns: {vid: rec.metadata for vid, rec in sorted(space.items())}
                           for ns, space in self.namespaces.items()},
            "pending_writes": len(self.pending),
        })


def _check_id(vid: Any) -> None:
    if not isinstance(vid, str) or not 1 <= len(vid) <= MAX_ID_LENGTH:
        raise bad(f"Invalid request: vector id must be a string of 1 to {MAX_ID_LENGTH} "
                  "characters")
    if not vid.isascii() or "\x00" in vid:
        raise bad(f"Invalid request: vector id {vid!r} must be ASCII without NUL characters")


def check_metadata(metadata: Any, vid: Any) -> None:
    """400 unless ``metadata`` is flat, null-free and at most 40 KB."""
    if not isinstance(metadata, dict):
        raise bad(f"Invalid request: metadata of vector {vid} must be an object")
    for key, value in metadata.items():
        if value is None:
            raise bad(f"Invalid request: metadata field '{key}' of vector {vid} is null; "
                      "null metadata values are not supported")
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise bad(f"Invalid request: metadata field '{key}' of vector {vid} must be a "
                          "list of strings")
        elif not _scalar(value):
            raise bad(f"Invalid request: metadata field '{key}' of vector {vid} must be a "
                      "string, number, boolean or list of strings")
    size = metadata_size(metadata)
    if size > MAX_METADATA_BYTES:
        raise bad(f"metadata size is {size} bytes, which exceeds the limit of "
                  f"{MAX_METADATA_BYTES} bytes per vector")


def _list_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIST_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise bad(f"Invalid request: limit must be an integer, got {raw!r}") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise bad(f"Invalid request: limit must be between 1 and {MAX_LIST_LIMIT}")
    return limit


def _encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode()


def _decode_token(token: str | None) -> str | None:
    if not token:
        return None
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (ValueError, KeyError, TypeError):
        raise bad("Invalid request: malformed paginationToken") from None
    if not isinstance(after, str):
        raise bad("Invalid request: malformed paginationToken")
    return after


def create(knobs: Knobs | None = None) -> PineconeSimulator:
    return PineconeSimulator(knobs)
