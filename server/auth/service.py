"""The identity side's parts, built once per process by `build_auth`."""

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from starlette.types import Scope

from server.audit.middleware import note_unrecorded_refusals
from server.auth.identities import Identities
from server.auth.launch import Launches
from server.auth.limits import FailedLogins, RequestRate, UnauthenticatedRefusals, limited_address
from server.auth.tokens import TokenIssuer


@dataclass(frozen=True)
class AuthService:
    identities: Identities
    issuer: TokenIssuer
    failed_logins: FailedLogins
    request_rate: RequestRate | None  # None: no limit
    launches: Launches
    unauthenticated: UnauthenticatedRefusals
    # Pages of GET /auth/authorize for one address, anonymous, each a pending authorization: always limited,
    # whatever `request_rate` says, to 60 at once then one every 2 seconds (a user asks for one a login; many
    # users behind one NAT, a few a minute): no one address takes all of PENDING_LIMIT.
    authorize_rate: RequestRate = field(default_factory=lambda: RequestRate(0.5, 60))

    def over_unauthenticated_limit(self, scope: Scope) -> int | None:
        """Count a request refused for missing or bad credentials against its
        address: None while the address is within its limit; else the
        seconds it waits, and the 429 it gets instead is left out of the
        audit trail but for the first of each window."""
        over = self.unauthenticated.refused(limited_address(scope))
        if over is None:
            return None
        note_unrecorded_refusals(scope, over.recorded, over.unrecorded)
        return over.wait


def build_auth(engine: Engine, data_dir: Path, issuer: str, token_seconds: int,
               requests_per_second: float, request_burst: int) -> AuthService:
    rate = RequestRate(requests_per_second, request_burst) if requests_per_second > 0 else None
    identities = Identities(engine)
    return AuthService(identities, TokenIssuer(data_dir / "jwt-keys", issuer, token_seconds), FailedLogins(), rate,
                       Launches(engine, identities), UnauthenticatedRefusals())
