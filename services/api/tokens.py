"""Making, listing and revoking bearer tokens (the ``api_tokens`` table).

Used by ``asvat token …`` and by the admin routes. The token itself is returned once, by
:func:`create`; only its SHA-256 is stored (see :mod:`asvat.auth`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from asvat.auth import ROLES, hash_token, new_token
from services.api.models import ApiToken

MAX_NAME = 200


class TokenError(ValueError):
    """A request about tokens that cannot be met; the message says why."""


def create(
    *, session: Session, role: str, name: str | None = None, created_by: str | None = None
) -> tuple[ApiToken, str]:
    """A new token of ``role``: its row, and the token (shown once, never stored)."""
    if role not in ROLES:
        raise TokenError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    token = new_token()
    token_id = "tok_" + secrets.token_hex(6)
    label = (name or "").strip() or f"{role}-{token_id[4:]}"
    if len(label) > MAX_NAME:
        raise TokenError(f"name: at most {MAX_NAME} characters")
    row = ApiToken(
        token_id=token_id,
        name=label,
        role=role,
        token_hash=hash_token(token),
        created_at=datetime.now(tz=UTC),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row, token


def list_tokens(*, session: Session, include_revoked: bool = True) -> Sequence[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.token_id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return session.scalars(query).all()


def revoke(*, session: Session, which: str, revoked_by: str | None = None) -> ApiToken:
    """Revoke the token with id ``which`` (or the only unrevoked one named ``which``)."""
    row = session.get(ApiToken, which)
    if row is None:
        named = session.scalars(
            select(ApiToken).where(ApiToken.name == which, ApiToken.revoked_at.is_(None))
        ).all()
        if len(named) > 1:
            ids = ", ".join(t.token_id for t in named)
            raise TokenError(f"{len(named)} tokens are named {which!r} ({ids}): give the id")
        row = named[0] if named else None
    if row is None:
        raise TokenError(f"no token with id or name {which!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(tz=UTC)
        row.revoked_by = revoked_by
    return row


def describe(row: ApiToken) -> dict[str, str | None]:
    return {
        "token_id": row.token_id,
        "name": row.name,
        "role": row.role,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "revoked_by": row.revoked_by,
    }
