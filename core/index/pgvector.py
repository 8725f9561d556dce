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

from core.errors import UpsertMismatch
from core.index import Match, Vector

#: Rows per INSERT statement: large enough to amortise round trips, small enough for memory.
BATCH = 500


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

    def delete(self, ids: list[str]) -> None:
        if not ids:
            return
        with self.pool.connection() as conn:
            conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (list(ids),))
        self.writes += 1

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

    def fetch(self, ids: list[str]) -> dict[str, Mapping[str, Any]]:
        if not ids:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT id, metadata FROM {self.table} WHERE id = ANY(%s)", (list(ids),)
            ).fetchall()
        return {row[0]: row[1] for row in rows}

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

    def list_ids(self, prefix: str) -> list[str]:
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT id FROM {self.table} WHERE id LIKE %s ORDER BY id COLLATE \"C\"", (like,)
            ).fetchall()
        return [r[0] for r in rows]

    def count(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        return None


def _where(filter: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Pinecone-style equality / $in filters as JSONB containment."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, condition in filter.items():
        if isinstance(condition, Mapping):
            if "$eq" in condition:
                values = [condition["$eq"]]
            elif "$in" in condition:
                values = list(condition["$in"])
            else:
                raise ValueError(f"unsupported filter on {key!r}: {condition!r}")
        else:
            values = [condition]
        if not values:
            clauses.append("false")
            continue
        ors = []
        for value in values:
            ors.append("metadata @> %s::jsonb")
            params.append(json.dumps({key: value}))
        clauses.append("(" + " OR ".join(ors) + ")")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params
