"""Bearer tokens and roles, shared by the API and the ingest service.

A token is 256 random bits, shown once when it is made; the database keeps only its
SHA-256 (a fast hash is enough for a high-entropy secret: there is nothing to guess).
Tokens live in the API database's ``api_tokens`` table (created by the API's migrations);
this module only *reads* it, so that ingest needs nothing but a read-only look-up.

Roles, each allowing what the ones before it allow (``ingest`` stands apart):

============  ==============================================================
``viewer``     read escalations, incidents, areas, queues, alerts
``operator``   and acknowledge, assign and note escalations
``supervisor`` and close escalations and sign off reviews
``admin``      and make, list and revoke tokens
``ingest``     post incidents to the ingest service, nothing else
============  ==============================================================
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, column, create_engine, event, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

Role = Literal["viewer", "operator", "supervisor", "admin", "ingest"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "supervisor", "admin", "ingest")
#: The staff roles in order: each allows everything the earlier ones allow.
_STAFF: tuple[Role, ...] = ("viewer", "operator", "supervisor", "admin")
TOKEN_PREFIX = "asvat_"

#: The columns a look-up reads (the table itself is the API's: ``services/api/models.py``).
TOKENS = table(
    "api_tokens",
    column("token_id"),
    column("name"),
    column("role"),
    column("token_hash"),
    column("revoked_at"),
)


class AuthUnavailable(RuntimeError):
    """The token database did not answer; the request cannot be authorised now."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's id, its name (for the audit trail) and its role."""

    token_id: str
    name: str
    role: Role


def new_token() -> str:
    """A fresh random token (``asvat_`` and 43 URL-safe characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Lowercase hex SHA-256 of the token: what the database stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def allows(role: str, required: Role) -> bool:
    """Whether a token of ``role`` may do what needs ``required``."""
    if required == "ingest" or role == "ingest":
        return role == required
    if role not in _STAFF:
        return False
    return _STAFF.index(role) >= _STAFF.index(required)  # type: ignore[arg-type]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        return None
    return value


def lookup_engine(url: str) -> Engine:
    """A read-only engine on the token database (``ASVAT_DATABASE_URL``), for services that
    only check tokens: its sessions cannot write (``query_only`` on SQLite, read-only
    transactions on PostgreSQL)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, object] = {}
    if backend == "sqlite":
        connect_args = {"check_same_thread": False, "timeout": 5}
    elif backend == "postgresql":
        connect_args = {"connect_timeout": 5}
    engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)

    @event.listens_for(engine, "connect")
    def read_only(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        try:
            if backend == "sqlite":
                cursor.execute("PRAGMA query_only = ON")
            elif backend == "postgresql":
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                dbapi_connection.commit()  # type: ignore[attr-defined]
        finally:
            cursor.close()

    return engine


def lookup(engine: Engine, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token, else None.

    Raises :class:`AuthUnavailable` when the database does not answer (or has no tokens
    table yet: the API creates it at start-up, ``asvat db upgrade`` too).
    """
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    query = select(TOKENS.c.token_id, TOKENS.c.name, TOKENS.c.role, TOKENS.c.token_hash).where(
        TOKENS.c.token_hash == digest, TOKENS.c.revoked_at.is_(None)
    )
    try:
        with engine.connect() as connection:
            row = connection.execute(query).first()
    except SQLAlchemyError as exc:
        first = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:200]
        raise AuthUnavailable(
            f"the token database does not answer ({type(exc).__name__}: {first}); "
            "is ASVAT_DATABASE_URL right, and has `asvat db upgrade` run?"
        ) from exc
    # Constant-time comparison, although the index look-up already matched the digest.
    if row is None or not hmac.compare_digest(str(row.token_hash), digest):
        return None
    if row.role not in ROLES:
        return None
    return Principal(token_id=str(row.token_id), name=str(row.name), role=row.role)
