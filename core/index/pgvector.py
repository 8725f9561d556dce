"""The pgvector index, in the same Postgres as the state: HNSW, cosine distance.

One table per dimension (``vectors_1536``), created on first use, so switching embedders
with different dimensions never mixes vectors. Metadata is JSONB; filters use containment,
which is what the HNSW scan is post-filtered by.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from psycopg_pool import ConnectionPool

from core import metrics
from core.errors import UpsertMismatch
from core.index.base import Match, Vector

#: Rows per INSERT statement: large enough to amortise round trips, small enough for memory.
BATCH = 500

#: Reciprocal-rank fusion constant (Cormack et al. 2009): damps the weight of the very top ranks.
RRF_K = 60


def vector_literal(values: list[float]) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in values) + "]"


class PgvectorIndex:
    def __init__(self, pool: ConnectionPool, dimensions: int = 1536) -> None:
        self.pool = pool
        self.dimensions = dimensions
        self.table = f"vectors_{dimensions}"
        self.writes = 0
        self._ensure_table()

    def _ensure_table(self) -> None:
        with self.pool.connection() as conn, conn.transaction():
            # Several processes may start at once: serialise the DDL (the lock lasts until the
            # transaction ends, so it must be a real transaction, not autocommit).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.table} (
                    id text PRIMARY KEY,
                    document_id text NOT NULL,
                    embedding vector({self.dimensions}) NOT NULL,
                    metadata jsonb NOT NULL DEFAULT '{{}}'
                )"""
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} "
                "USING hnsw (embedding vector_cosine_ops)"
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_doc ON {self.table} (document_id)"
            )
            # Full-text search over the title and chunk text, for hybrid retrieval: the
            # 'simple' configuration keeps identifiers (SUBS-652, acme/api) and names as typed,
            # without stemming or stop words.
            conn.execute(
                f"""ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS tsv tsvector
                    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig,
                        coalesce(metadata ->> 'title', '') || ' ' || coalesce(metadata ->> 'text', '')))
                    STORED"""
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_tsv ON {self.table} USING gin (tsv)"
            )

    @metrics.index_call("pgvector", "upsert")
    def upsert(self, vectors: list[Vector]) -> int:
        stored = 0
        for start in range(0, len(vectors), BATCH):
            batch = vectors[start : start + BATCH]
            with self.pool.connection() as conn:
                with conn.cursor() as cur:
                    cur.executemany(
                        f"""INSERT INTO {self.table} (id, document_id, embedding, metadata)
                            VALUES (%s, %s, %s::vector, %s::jsonb)
                            ON CONFLICT (id) DO UPDATE
                            SET document_id = excluded.document_id,
                                embedding = excluded.embedding,
                                metadata = excluded.metadata""",
                        [
                            (
                                v.id,
                                str(v.metadata.get("document_id", v.id.rsplit("#", 1)[0])),
                                vector_literal(v.values),
                                json.dumps(dict(v.metadata)),
                            )
                            for v in batch
                        ],
                    )
                    count = cur.execute(
                        f"SELECT count(*) FROM {self.table} WHERE id = ANY(%s)",
                        ([v.id for v in batch],),
                    ).fetchone()
            self.writes += 1
            got = int(count[0]) if count else 0
            if got != len(batch):
                raise UpsertMismatch(f"pgvector stored {got} of {len(batch)} vectors")
            stored += got
        return stored

    @metrics.index_call("pgvector", "update_metadata")
    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        if not metadata:
            return
        with self.pool.connection() as conn:
            with conn.cursor() as cur:
                cur.executemany(
                    f"UPDATE {self.table} SET metadata = %s::jsonb WHERE id = %s",
                    [(json.dumps(dict(m)), vid) for vid, m in metadata.items()],
                )
        self.writes += 1

    @metrics.index_call("pgvector", "delete")
    def delete(self, ids: list[str]) -> None:
        if not ids:
            return
        with self.pool.connection() as conn:
            conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (list(ids),))
        self.writes += 1

    @metrics.index_call("pgvector", "delete_documents")
    def delete_documents(self, document_ids: list[str], keep: Collection[str] = ()) -> int:
        if not document_ids:
            return 0
        with self.pool.connection() as conn:
            cur = conn.execute(
                f"DELETE FROM {self.table} WHERE document_id = ANY(%s) AND NOT (id = ANY(%s))",
                (list(document_ids), list(keep)),
            )
            deleted = cur.rowcount
        self.writes += 1
        return deleted

    @metrics.index_call("pgvector", "fetch")
    def fetch(self, ids: list[str]) -> dict[str, Mapping[str, Any]]:
        if not ids:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT id, metadata FROM {self.table} WHERE id = ANY(%s)", (list(ids),)
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    @metrics.index_call("pgvector", "query")
    def query(
        self, vector: list[float], top_k: int, filter: Mapping[str, Any] | None = None
    ) -> list[Match]:
        where, params = _where(filter or {})
        literal = vector_literal(vector)
        sql = f"""SELECT id, 1 - (embedding <=> %s::vector) AS score, metadata
                  FROM {self.table} {where}
                  ORDER BY embedding <=> %s::vector LIMIT %s"""
        args = (literal, *params, literal, top_k)
        with self.pool.connection() as conn, conn.transaction():
            # The HNSW scan visits ef_search candidates and filters them afterwards, so a
            # selective filter can come back short although more matches exist. Ask wide first;
            # if a filtered query still comes back short, answer with an exact scan instead:
            # a short answer must mean there is no more, never that the index gave up.
            conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(1000, top_k * 4))}")
            rows = conn.execute(sql, args).fetchall()
            if where and len(rows) < top_k:
                conn.execute("SET LOCAL enable_indexscan = off")
                rows = conn.execute(sql, args).fetchall()
        return [Match(id=r[0], score=float(r[1]), metadata=r[2]) for r in rows]

    @metrics.index_call("pgvector", "text_query")
    def text_query(
        self, text: str, top_k: int, filter: Mapping[str, Any] | None = None
    ) -> list[Match]:
        """The ``top_k`` chunks that best match ``text`` by full-text search (any of its words;
        the whole phrase in order ranks far higher), under the same filter as :meth:`query`.
        Scores are Postgres text ranks, not cosine similarities."""
        where, params = _where(filter or {})
        where = f"{where} AND tsv @@ q.any_word" if where else "WHERE tsv @@ q.any_word"
        # The query's own lexemes (the same parser as the column), OR-ed: a chunk matching more
        # of them ranks higher; NULL (no words at all) matches nothing.
        sql = f"""WITH q AS (
                      SELECT (SELECT string_agg(quote_literal(w), ' | ')
                              FROM unnest(tsvector_to_array(to_tsvector('simple'::regconfig, %s))) AS w
                             )::tsquery AS any_word,
                             phraseto_tsquery('simple'::regconfig, %s) AS phrase)
                  SELECT id, ts_rank(tsv, q.any_word)
                             + CASE WHEN tsv @@ q.phrase THEN 1.0 ELSE 0.0 END AS score, metadata
                  FROM {self.table}, q {where}
                  ORDER BY score DESC, id LIMIT %s"""
        with self.pool.connection() as conn:
            rows = conn.execute(sql, (text, text, *params, top_k)).fetchall()
        return [Match(id=r[0], score=float(r[1]), metadata=r[2]) for r in rows]

    @metrics.index_call("pgvector", "hybrid_query")
    def hybrid_query(
        self, vector: list[float], text: str, top_k: int, filter: Mapping[str, Any] | None = None,
        *, depth: int | None = None,
    ) -> list[Match]:
        """Vector similarity and full-text search fused by reciprocal rank (k = 60): each list
        contributes 1 / (60 + rank). A chunk both lists rank high comes first; an exact
        identifier that embeddings blur still surfaces through the text list."""
        depth = depth or max(top_k, 50)
        by_vector = self.query(vector, depth, filter)
        by_text = self.text_query(text, depth, filter)
        fused: dict[str, float] = {}
        found: dict[str, Match] = {}
        for ranked in (by_vector, by_text):
            for rank, match in enumerate(ranked, start=1):
                fused[match.id] = fused.get(match.id, 0.0) + 1.0 / (RRF_K + rank)
                found.setdefault(match.id, match)
        order = sorted(fused, key=lambda vid: (-fused[vid], vid))[:top_k]
        return [Match(id=vid, score=fused[vid], metadata=found[vid].metadata) for vid in order]

    @metrics.index_call("pgvector", "list_ids")
    def list_ids(self, prefix: str) -> list[str]:
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT id FROM {self.table} WHERE id LIKE %s ORDER BY id COLLATE \"C\"", (like,)
            ).fetchall()
        return [r[0] for r in rows]

    @metrics.index_call("pgvector", "count")
    def count(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        return None


def _where(filter: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A Pinecone-language filter as SQL over the JSONB metadata.

    Supported: field equality (``{"f": v}``, ``$eq``), ``$in``, ``$gt``/``$gte``/``$lt``/``$lte``
    on numbers, and ``$and``/``$or`` of such clauses. As in Pinecone, a list field matches
    ``$eq``/``$in`` when any of its elements does.
    """
    sql, params = _clause(filter)
    return ("WHERE " + sql) if filter else "", params


_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _clause(filter: Mapping[str, Any]) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for key, condition in filter.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                raise ValueError(f"{key} needs a non-empty list of filters")
            parts = [_clause(part) for part in condition]
            joiner = " AND " if key == "$and" else " OR "
            clauses.append("(" + joiner.join(sql for sql, _ in parts) + ")")
            params.extend(p for _, ps in parts for p in ps)
            continue
        if key.startswith("$"):
            raise ValueError(f"unsupported filter operator {key!r}")
        ops = condition if isinstance(condition, Mapping) else {"$eq": condition}
        for op, arg in ops.items():
            if op in ("$eq", "$in"):
                values = [arg] if op == "$eq" else list(arg)
                if not values:
                    clauses.append("false")
                    continue
                ors = []
                for value in values:
                    # A scalar, or a list holding it (JSONB containment: an array never contains
                    # a bare scalar below the top level, so both shapes are asked for).
                    ors.append("metadata @> %s::jsonb OR metadata @> %s::jsonb")
                    params += [json.dumps({key: value}), json.dumps({key: [value]})]
                clauses.append("(" + " OR ".join(ors) + ")")
            elif op in _RANGE:
                if isinstance(arg, bool) or not isinstance(arg, int | float):
                    raise ValueError(f"{op} on {key!r} needs a number")
                clauses.append(
                    f"(jsonb_typeof(metadata -> %s) = 'number' AND (metadata ->> %s)::float8 {_RANGE[op]} %s)"
                )
                params += [key, key, float(arg)]
            else:
                raise ValueError(f"unsupported filter on {key!r}: {op!r}")
    return (" AND ".join(clauses) if clauses else "true"), params
