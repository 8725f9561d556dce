"""API keys with roles, stored hashed.

Two roles: ``admin`` (every route) and ``search`` (search and read documents only). A search
key is bound to a principal (the bot's own identity, an email), or ``trusted`` to search on
behalf of a user (``as_user``), or both.

A token is ``vsk_`` + 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). Only
its SHA-256 is stored: for a secret that cannot be guessed, a fast hash is as safe as a slow
password hash, and it resolves a request with one indexed lookup. The token is shown once, at
creation; a lost token is revoked and replaced, never recovered.

``ADMIN_API_KEY`` from the environment is an admin key too (compared in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg_pool import ConnectionPool

from core import state

Role = Literal["admin", "search"]
ROLES: tuple[Role, ...] = ("admin", "search")
TOKEN_PREFIX = "vsk_"
#: ``last_used_at`` is written at most this often per key (seconds), not on every request.
TOUCH_EVERY = 60


@dataclass(frozen=True)
class ApiKey:
    """Who is calling: the resolved key (never holds the token)."""

    id: str
    role: Role
    principal: str | None = None
    trusted: bool = False
    name: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


#: The key from ``ADMIN_API_KEY``.
ENV_ADMIN = ApiKey(id="env", role="admin", name="ADMIN_API_KEY")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_principal(principal: str | None) -> str | None:
    if principal is None:
        return None
    principal = principal.strip().lower()
    return principal or None


def create_key(
    pool: ConnectionPool, role: str, principal: str | None = None, *, trusted: bool = False,
    name: str = "",
) -> tuple[ApiKey, str]:
    """A new key and its token (the only time the token exists outside the caller)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if "\x00" in (principal or "") or "\x00" in name:
        raise ValueError("principal and name must not contain NUL characters")
    principal = normalise_principal(principal)
    if principal is not None and ("@" not in principal or len(principal) > 320):
        raise ValueError("principal must be an email address")
    if role == "search" and principal is None and not trusted:
        raise ValueError("a search key needs a principal (--principal EMAIL) or --trusted")
    key_id = "key_" + secrets.token_hex(6)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO api_keys (id, token_hash, role, principal, trusted, name)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            (key_id, token_hash(token), role, principal, trusted, name[:200]),
        )
    return ApiKey(key_id, role, principal, trusted, name[:200]), token  # type: ignore[arg-type]


def resolve(pool: ConnectionPool, token: str, env_admin_key: str | None = None) -> ApiKey | None:
    """The live key a token names, or None (unknown or revoked)."""
    if not token:
        return None
    if env_admin_key and hmac.compare_digest(token.encode(), env_admin_key.encode()):
        return ENV_ADMIN
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200 or "\x00" in token:
        return None
    with pool.connection() as conn:
        row = conn.execute(
            """SELECT id, role, principal, trusted, name,
                      last_used_at IS NULL OR last_used_at < now() - make_interval(secs => %s)
               FROM api_keys WHERE token_hash = %s AND revoked_at IS NULL""",
            (TOUCH_EVERY, token_hash(token)),
        ).fetchone()
        if row is None:
            return None
        if row[5]:
            conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (row[0],))
    return ApiKey(row[0], row[1], row[2], bool(row[3]), row[4])


def list_keys(pool: ConnectionPool, include_revoked: bool = False) -> list[dict[str, Any]]:
    """Every key's description (never a token, never a hash)."""
    with state.dict_cursor(pool) as cur:
        cur.execute(
            """SELECT id, role, principal, trusted, name, created_at, last_used_at, revoked_at
               FROM api_keys WHERE %s OR revoked_at IS NULL ORDER BY created_at, id""",
            (include_revoked,),
        )
        return [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
            for row in cur.fetchall()
        ]


def revoke(pool: ConnectionPool, key_id: str) -> bool:
    """Revoke a key at once; False when no live key has that id."""
    if "\x00" in key_id or len(key_id) > 100:
        return False
    with pool.connection() as conn:
        cur = conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,)
        )
        return cur.rowcount == 1


def any_keys(pool: ConnectionPool) -> bool:
    with pool.connection() as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)").fetchone()
    return bool(row and row[0])
