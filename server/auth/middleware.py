"""Every request but the public ones is authenticated, then authorized.

Credentials: `Authorization: Bearer <token>` (from /auth/token) or HTTP
Basic (user name and password, or client id and secret, as PACS send them).
A WebSocket handshake (the UPS Watch channel) brings them the same way, or,
as a browser cannot set its headers, the token as `access_token` in its query
(RFC 6750 §2.3); a refused one gets the HTTP answer a request would, where
the server can send one (the ASGI denial response), else close code 1008.
Argon2 runs only when a Basic credential is first seen: a verified one is
kept for a minute under the SHA-256 of the header, so that it costs a
dictionary lookup afterwards; failures count against the login limits.

401 (with WWW-Authenticate) when the credentials are missing or bad (429
instead once their address has had too many, `UnauthenticatedRefusals`), 403
when the identity lacks the permission; an OperationOutcome under /fhir, a
JSON message elsewhere. The principal goes into the request state for the
handlers (a Bundle's entries are authorized one by one).
"""

import asyncio
import functools
import hashlib
import threading
import time

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from server.auth.access import (
    BUNDLE,
    Principal,
    basic_credentials,
    current_principal,
    is_public,
    required_permission,
)
from server.auth.identities import Identity
from server.auth.limits import limited_address
from server.auth.scopes import Grant
from server.auth.service import AuthService
from server.auth.tokens import InvalidToken
from server.errors import error_response

_CHALLENGE = 'Bearer realm="medaiflow", Basic realm="medaiflow"'
_BASIC_SECONDS = 60.0
_BASIC_CACHE_LIMIT = 10_000


class _Refused(Exception):
    def __init__(self, status: int, message: str, challenge: str | None = None, retry_after: int | None = None,
                 of_credentials: bool = False) -> None:
        super().__init__(message)
        self.status = status
        # Missing or bad credentials (every 401, and the 429 of too many failed logins), not a lacking permission.
        self.of_credentials = of_credentials or status == 401
        self.message = message
        self.challenge = challenge
        self.retry_after = retry_after


class AuthMiddleware:
    def __init__(self, app: ASGIApp, auth: AuthService) -> None:
        self.app = app
        self.auth = auth
        self._basic: dict[bytes, tuple[float, Principal]] = {}
        # Credentials being checked now: requests that bring the same ones wait for that check.
        self._checking: dict[bytes, asyncio.Future[Principal | None]] = {}  # None: the check failed, not refused
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")  # a WebSocket handshake is a GET
        if scope["type"] not in ("http", "websocket") or is_public(method, scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._authenticate(scope)
            # Known before it is judged: the audit records a refusal under its name.
            scope.setdefault("state", {})["principal"] = principal
            rate = self.auth.request_rate
            wait = rate.take(principal.name) if rate is not None else None
            if wait is not None:
                raise _Refused(429, f"{principal.name} has made too many requests; try again later", retry_after=wait)
            _require_permission(principal, method, scope["path"])
        except _Refused as refusal:
            refused = self._over_limit(refusal, scope) if refusal.of_credentials else refusal
            headers = {}
            if refused.challenge:
                headers["WWW-Authenticate"] = refused.challenge
            if refused.retry_after:
                headers["Retry-After"] = str(refused.retry_after)
            if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
                await send({"type": "websocket.close", "code": 1008, "reason": refused.message[:120]})
                return
            request = Request(scope) if scope["type"] == "http" else None
            response = error_response(refused.status, refused.message, headers, request)
            await response(scope, receive, send)
            return
        scope["state"]["authorized"] = True
        if scope["type"] == "websocket":
            scope["state"]["still_admitted"] = functools.partial(self._still_admitted, scope)
        principal_set = current_principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(principal_set)

    def _over_limit(self, refused: _Refused, scope: Scope) -> _Refused:
        """A refusal of credentials counts against its address; over the limit, the 429 to answer instead."""
        wait = self.auth.over_unauthenticated_limit(scope)
        if wait is None:
            return refused
        return _Refused(429, "too many requests without valid credentials from this address; try again later",
                        retry_after=max(wait, refused.retry_after or 0))

    async def _still_admitted(self, scope: Scope) -> str | None:
        """Why the credentials a WebSocket opened with no longer admit it (None
        while they do): a channel outlives its handshake, not its token, its
        key or its permission."""
        try:
            _require_permission(await self._authenticate(scope), "GET", scope["path"])
        except _Refused as refused:
            return refused.message
        return None

    async def _authenticate(self, scope: Scope) -> Principal:
        header = Headers(scope=scope).get("authorization", "")
        token = HTTPConnection(scope).query_params.get("access_token") if scope["type"] == "websocket" else None
        if not header and token:
            header = f"Bearer {token}"
        kind, _, credentials = header.partition(" ")
        if kind.lower() == "bearer" and credentials:
            try:
                claims = self.auth.issuer.verify(credentials.strip())
            except InvalidToken as error:
                description = error.args[0].replace('"', "'")  # a quoted-string may not hold quotes
                raise _Refused(401, error.args[0], f'Bearer realm="medaiflow", error="invalid_token", '
                                                  f'error_description="{description}"') from error
            return Principal(claims.subject, claims.role or None, Grant.parse(claims.scope), claims.client, claims.app,
                             claims.patient)
        if kind.lower() == "basic" and credentials:
            return await self._basic_principal(credentials.strip(), scope)
        raise _Refused(401, "authentication is required (a Bearer token from /auth/token, or HTTP Basic)", _CHALLENGE)

    async def _basic_principal(self, credentials: str, scope: Scope) -> Principal:
        key = hashlib.sha256(credentials.encode()).digest()
        while True:
            now = time.monotonic()
            with self._lock:
                cached = self._basic.get(key)
                checking = self._checking.get(key)
                if checking is None and (cached is None or cached[0] <= now):
                    self._checking[key] = asyncio.get_running_loop().create_future()
            if cached is not None and cached[0] > now:
                return cached[1]
            if checking is None:
                return await self._lead_check(credentials, key, now, scope)
            # A PACS sends its requests in parallel: one check of its password, not one each (each
            # counted as an attempt until it is done, so that they could refuse one another).
            principal = await asyncio.shield(checking)
            if principal is not None:
                return principal
            # That check failed for a reason of its own (a dropped connection): check again.

    async def _lead_check(self, credentials: str, key: bytes, now: float, scope: Scope) -> Principal:
        """The one check of these credentials; requests that bring the same wait for its outcome."""
        future = self._checking[key]
        try:
            principal = await self._check_basic_login(credentials, key, now, scope)
        except _Refused as refused:
            future.set_exception(refused)
            future.exception()  # retrieved: nobody may be waiting
            raise
        except BaseException:
            future.set_result(None)
            raise
        else:
            future.set_result(principal)
            return principal
        finally:
            with self._lock:
                self._checking.pop(key, None)

    async def _check_basic_login(self, credentials: str, key: bytes, now: float, scope: Scope) -> Principal:
        parsed = basic_credentials(credentials)
        if parsed is None:
            raise _Refused(401, "the Basic credentials are not base64 of name:password", _CHALLENGE)
        name, secret = parsed
        keys = (f"name:{name}", f"address:{limited_address(scope)}")
        wait = self.auth.failed_logins.attempt(*keys)
        if wait is not None:
            raise _Refused(429, "too many failed logins; try again later", retry_after=wait, of_credentials=True)
        identity: Identity | None = await run_in_threadpool(self._check_basic, name, secret)
        # A password was checked: a login, which the audit records as one (not so for the cached ones).
        scope.setdefault("state", {})["basic_login"] = (name, identity is not None)
        if identity is None:
            raise _Refused(401, "the user name or the password is wrong", _CHALLENGE)
        self.auth.failed_logins.succeeded(*keys, afresh=keys[0])
        principal = Principal(identity.name, identity.role.value if identity.role else None, identity.grant, identity.client)
        with self._lock:
            if len(self._basic) >= _BASIC_CACHE_LIMIT:
                self._basic.clear()
            self._basic[key] = (now + _BASIC_SECONDS, principal)
        return principal

    def _check_basic(self, name: str, secret: str) -> Identity | None:
        return self.auth.identities.authenticate_user(name, secret) or self.auth.identities.authenticate_client(name, secret)


def _require_permission(principal: Principal, method: str, path: str) -> None:
    permission = required_permission(method, path)
    if permission is not None and permission is not BUNDLE and not principal.may(permission):
        raise _Refused(403, f"{principal.name} may not {_verb(permission.letter)} {permission.resource_type}")


def _verb(letter: str) -> str:
    return {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}.get(letter, "use")
