"""Who is calling: bearer-token dependencies for the routes.

Every route but ``/healthz``, ``/readyz`` and the dashboard's static files needs a token
(``Authorization: Bearer …``): none or an unknown or revoked one is 401, a token whose
role does not allow the route is 403. The role check is :func:`asvat.auth.allows`.

A valid token's look-up is kept for :data:`TOKEN_CACHE_S` seconds, so a busy screen does
not ask the database on every request: a token revoked through this process is refused at
once, one revoked elsewhere (``asvat token revoke``, another API process) within that time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from asvat.auth import AuthUnavailable, Principal, Role, allows, lookup

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `asvat token create --role ROLE` (or POST /v1/tokens).",
)
UNAUTHORISED = {"WWW-Authenticate": 'Bearer realm="asvat"'}
TOKEN_CACHE_S = 5.0
_known: dict[tuple[int, str], tuple[float, Principal]] = {}
_known_lock = threading.Lock()


def forget_tokens() -> None:
    """Drop every cached look-up (after a revocation)."""
    with _known_lock:
        _known.clear()


def _known_principal(engine: Engine, token: str) -> Principal | None:
    """The cached look-up of ``token`` if still fresh (no database, no thread), else None."""
    with _known_lock:
        hit = _known.get((id(engine), token))
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return None


def _cached_lookup(engine: Engine, token: str) -> Principal | None:
    key = (id(engine), token)
    now = time.monotonic()
    known = _known_principal(engine, token)
    if known is not None:
        return known
    principal = lookup(engine, token)
    with _known_lock:
        if principal is None:
            _known.pop(key, None)
        else:
            if len(_known) > 10_000:
                _known.clear()
            _known[key] = (now + TOKEN_CACHE_S, principal)
    return principal


@dataclass(frozen=True, slots=True)
class Caller:
    """The principal of a request and where it came from (for the audit trail)."""

    principal: Principal
    client_ip: str | None
    user_agent: str | None

    @property
    def name(self) -> str:
        return self.principal.name


async def authenticate(engine: Engine, token: str | None) -> Principal:
    """The principal of ``token``; raises 401 (no or bad token) or 503 (no database)."""
    if not token:
        raise HTTPException(401, "a bearer token is required", headers=UNAUTHORISED)
    # A token seen within TOKEN_CACHE_S is answered here; a look-up takes a thread.
    principal = _known_principal(engine, token)
    try:
        if principal is None:
            principal = await run_in_threadpool(_cached_lookup, engine, token)
    except AuthUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    if principal is None:
        raise HTTPException(401, "unknown or revoked token", headers=UNAUTHORISED)
    return principal


def require(role: Role) -> object:
    """A dependency: the caller, when their token's role allows ``role``."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        engine: Engine = request.app.state.api.engine
        principal = await authenticate(engine, credentials.credentials if credentials else None)
        if not allows(principal.role, role):
            raise HTTPException(
                403, f"the token's role {principal.role!r} does not allow this (needs {role})"
            )
        return Caller(
            principal=principal,
            client_ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
        )

    return Depends(dependency)


Viewer = Annotated[Caller, require("viewer")]
Operator = Annotated[Caller, require("operator")]
Supervisor = Annotated[Caller, require("supervisor")]
Admin = Annotated[Caller, require("admin")]
