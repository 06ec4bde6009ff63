"""SMART App Launch, standalone (authorization code with PKCE, RFC 6749 4.1
and RFC 7636), kept in the database so that every server process knows
what another one issued.

Three secrets, each random (256 bits) and kept as its SHA-256 only: the key
of an authorization asked for and waiting for its login (10 minutes), the
code given to the app once the user logged in (60 seconds, used once), and
refresh tokens (used once each, then replaced: a family of tokens that
starts with its code). A code or a refresh token sent a second time means
that someone else holds it too: the family is revoked. Access tokens are
stateless JWTs: those already issued stay valid until they expire (minutes),
nothing here can recall them.
"""

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Engine, Row, delete, func, insert, or_, select, update

from server.auth.identities import Identities
from server.auth.scopes import PATIENT_CONTEXT, PATIENT_REACH, Grant
from server.db import reading, write_connection
from server.tables import authorization_codes, authorization_requests, launch_contexts, refresh_tokens

# A PKCE verifier (RFC 7636 4.1); its S256 challenge is the base64url of 32 bytes, unpadded (4.2): 43 characters,
# the last of which holds 4 bits.
PKCE_TEXT = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
REQUEST_SECONDS = 600
CODE_SECONDS = 60
# SMART: offline_access lasts beyond the user's session; this server has no
# session to tie online_access to, so it lasts a working day.
REFRESH_SECONDS = {"offline_access": 30 * 86400, "online_access": 12 * 3600}
_USED_CODES_KEPT_SECONDS = 86400  # a code sent again within a day still revokes its family
# Anyone may ask for an authorization, and each waits as a row for its login: at most so many wait at once, so
# that asking without end cannot fill the database (an address asks a few at a time: see authorize.py).
PENDING_LIMIT = 10_000
# The scope that asks, in a standalone launch, for the user to pick a patient (SMART scopes-and-launch-context),
# and the one that goes with the `launch` parameter of an EHR launch, whose context names the patient.
LAUNCH_PATIENT = "launch/patient"
EHR_LAUNCH = "launch"
LAUNCH_CONTEXT_SECONDS = 300


@dataclass(frozen=True)
class Pending:
    """An authorization asked for, waiting for the user's login."""

    client_id: str
    redirect_uri: str
    scope: str  # as asked
    state: str | None
    code_challenge: str
    user_name: str | None = None  # who logged in, once the user picks the launch's patient
    patient: str | None = None  # the patient of an EHR launch, known from the start


@dataclass(frozen=True)
class Granted:
    """What a code or a refresh token stands for."""

    family: str
    client_id: str
    user_name: str
    scope: str  # resource scopes granted, and offline_access or online_access if a refresh token goes with them
    patient: str | None = None  # the Patient id of the launch context: the one the user picked
    refresh_token: str | None = None  # the family's next


@dataclass(frozen=True)
class LaunchContext:
    """An EHR launch context not yet used."""

    patient: str
    client_id: str | None  # the one app that may use it; None: any

    def allows(self, client_id: str) -> bool:
        return self.client_id in (None, client_id)


class Spent(Exception):
    """The EHR launch context was taken by another authorization (or expired) meanwhile."""


class Crowded(Exception):
    """PENDING_LIMIT authorizations wait for their login already."""


class Refused(Exception):
    """A code or refresh token that gives nothing (invalid_grant); the message says why, for the log and the app."""


class OutOfScope(Exception):
    """A refresh that asks for none of what its token grants (invalid_scope); the token is not spent."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def pkce_challenge(verifier: str) -> str:
    """S256 (RFC 7636 4.2): BASE64URL(SHA256(verifier)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def refresh_kind(scope: str) -> str | None:
    """offline_access or online_access, when the scope asks for a refresh token."""
    words = scope.split()
    return next((kind for kind in REFRESH_SECONDS if kind in words), None)


class Launches:
    def __init__(self, engine: Engine, identities: Identities) -> None:
        self.engine = engine
        self.identities = identities

    def ask(self, pending: Pending, launch: str | None = None) -> str:
        """The key of a new pending authorization (for its login form), which
        takes the EHR launch context `launch` (of `pending.patient`), in the
        same transaction: a context is used once. Raises Crowded, or Spent
        when another authorization took the context first."""
        key = secrets.token_urlsafe(32)
        now = int(time.time())
        with write_connection(self.engine, bookkeeping=True) as connection:
            connection.execute(delete(authorization_requests).where(authorization_requests.c.expires_at < now))
            waiting = connection.execute(select(func.count()).select_from(authorization_requests)).scalar_one()
            if waiting >= PENDING_LIMIT:
                raise Crowded()
            if launch is not None and not connection.execute(delete(launch_contexts).where(
                launch_contexts.c.launch_hash == _digest(launch), launch_contexts.c.expires_at >= now,
                launch_contexts.c.patient == pending.patient,
                or_(launch_contexts.c.client_id.is_(None), launch_contexts.c.client_id == pending.client_id),
            )).rowcount:
                raise Spent()
            connection.execute(insert(authorization_requests).values(
                key_hash=_digest(key), client_id=pending.client_id, redirect_uri=pending.redirect_uri,
                scope=pending.scope, state=pending.state, code_challenge=pending.code_challenge,
                expires_at=now + REQUEST_SECONDS, patient=pending.patient,
            ))
        return key

    def pending(self, key: str) -> Pending | None:
        with reading(self.engine) as connection:
            row = connection.execute(select(authorization_requests).where(
                authorization_requests.c.key_hash == _digest(key),
                authorization_requests.c.expires_at >= int(time.time()),
            )).first()
        if row is None:
            return None
        return Pending(row.client_id, row.redirect_uri, row.scope, row.state, row.code_challenge, row.user_name,
                       row.patient)

    def open_context(self, patient: str, created_by: str, client_id: str | None = None) -> str:
        """The opaque `launch` value of a new EHR launch context for
        `patient`, for the app `client_id` alone when given."""
        launch = secrets.token_urlsafe(32)
        now = int(time.time())
        with write_connection(self.engine, bookkeeping=True) as connection:
            connection.execute(delete(launch_contexts).where(launch_contexts.c.expires_at < now))
            connection.execute(insert(launch_contexts).values(
                launch_hash=_digest(launch), patient=patient, created_by=created_by,
                expires_at=now + LAUNCH_CONTEXT_SECONDS, client_id=client_id,
            ))
        return launch

    def context(self, launch: str) -> LaunchContext | None:
        """The EHR launch context `launch`; None when unknown, expired or used."""
        with reading(self.engine) as connection:
            row = connection.execute(select(launch_contexts.c.patient, launch_contexts.c.client_id).where(
                launch_contexts.c.launch_hash == _digest(launch), launch_contexts.c.expires_at >= int(time.time()),
            )).first()
        return None if row is None else LaunchContext(row.patient, row.client_id)

    def log_in(self, key: str, user_name: str) -> bool:
        """The user who logged in to the pending authorization `key`, which
        waits on for the patient the user picks; False when it ended already."""
        with write_connection(self.engine, bookkeeping=True) as connection:
            return bool(connection.execute(update(authorization_requests).where(
                authorization_requests.c.key_hash == _digest(key),
                authorization_requests.c.expires_at >= int(time.time()),
            ).values(user_name=user_name)).rowcount)

    def end(self, key: str) -> None:
        """The pending authorization `key` ends without a code (denied, nothing to grant)."""
        with write_connection(self.engine, bookkeeping=True) as connection:
            connection.execute(delete(authorization_requests).where(authorization_requests.c.key_hash == _digest(key)))

    def code(self, key: str, user_name: str, scope: str, patient: str | None = None) -> str | None:
        """A code for the user who logged in to the pending authorization
        `key`, which ends, with the patient the user picked; None when it
        ended already (used, expired)."""
        code = secrets.token_urlsafe(32)
        now = int(time.time())
        with write_connection(self.engine, bookkeeping=True) as connection:
            row = connection.execute(delete(authorization_requests).where(
                authorization_requests.c.key_hash == _digest(key), authorization_requests.c.expires_at >= now,
            ).returning(*authorization_requests.c)).first()
            if row is None:
                return None
            connection.execute(delete(authorization_codes).where(
                authorization_codes.c.expires_at < now - _USED_CODES_KEPT_SECONDS))
            connection.execute(insert(authorization_codes).values(
                code_hash=_digest(code), client_id=row.client_id, redirect_uri=row.redirect_uri,
                code_challenge=row.code_challenge, user_name=user_name, scope=scope, expires_at=now + CODE_SECONDS,
                used=False, patient=patient,
            ))
        return code

    def redeem(self, code: str, client_id: str, redirect_uri: str, verifier: str) -> Granted:
        """What the code grants, once, with the first refresh token of its
        family when one was granted: a code sent again revokes the refresh
        tokens issued from it. Raises Refused."""
        family = _digest(code)
        now = int(time.time())
        with write_connection(self.engine, bookkeeping=True) as connection:
            row = connection.execute(
                select(authorization_codes).where(authorization_codes.c.code_hash == family)).first()
            if row is None:
                raise Refused("the code is unknown or expired")
            # Used now, whatever else is wrong: a code is tried once (a stolen one must not be worked on).
            taken = connection.execute(update(authorization_codes).where(
                authorization_codes.c.code_hash == family, authorization_codes.c.used == False  # noqa: E712
            ).values(used=True)).rowcount
            refusal = _code_refusal(row, taken, now, client_id, redirect_uri, verifier)
            if not taken:
                connection.execute(delete(refresh_tokens).where(refresh_tokens.c.family == family))
            granted = Granted(family, row.client_id, row.user_name, row.scope, row.patient)
            if refusal is None:
                # In the transaction that spends the code: a second use, even at once, revokes this token too.
                granted = _with_refresh_token(connection, granted, None)
        if refusal is not None:
            raise Refused(refusal)
        return granted

    def use_refresh_token(self, token: str, client_id: str, asked: Grant | None = None) -> Granted:
        """What the refresh token grants, once, with the next token of its
        family, which lasts no longer than its first; one sent again revokes
        its family. Raises Refused, or OutOfScope (before the token is spent:
        the app may ask again) when `asked` narrows it to nothing."""
        now = int(time.time())
        with write_connection(self.engine, bookkeeping=True) as connection:
            row = connection.execute(
                select(refresh_tokens).where(refresh_tokens.c.token_hash == _digest(token))).first()
            if row is None or row.expires_at < now:
                raise Refused("the refresh token is unknown, revoked or expired")
            if row.client_id != client_id:
                raise Refused("the refresh token was issued to another client")
            if asked is not None and not Grant.parse(row.scope).narrowed_to(asked).scopes:
                raise OutOfScope(f"none of the scopes asked for was granted with this refresh token ({row.scope})")
            taken = connection.execute(update(refresh_tokens).where(
                refresh_tokens.c.token_hash == row.token_hash, refresh_tokens.c.used == False  # noqa: E712
            ).values(used=True)).rowcount
            if taken:
                used = Granted(row.family, row.client_id, row.user_name, row.scope, row.patient)
                granted = _with_refresh_token(connection, used, row.expires_at)
            else:
                connection.execute(delete(refresh_tokens).where(refresh_tokens.c.family == row.family))
        if not taken:
            raise Refused("the refresh token was used already: its family is revoked")
        return granted


def _code_refusal(row: Row, taken: int, now: int, client_id: str, redirect_uri: str, verifier: str) -> str | None:
    if not taken:
        return "the code was used already: the refresh tokens issued from it are revoked"
    if row.expires_at < now:
        return "the code has expired"
    if row.client_id != client_id:
        return "the code was issued to another client"
    if row.redirect_uri != redirect_uri:
        return "redirect_uri is not the one the code was asked with"
    if not secrets.compare_digest(pkce_challenge(verifier), row.code_challenge):
        return "code_verifier does not match the code_challenge"
    return None


def _with_refresh_token(connection: Connection, granted: Granted, expires_at: int | None) -> Granted:
    """`granted` with a new refresh token of its family, when its scope asks
    for one; lasting until `expires_at`, or the kind's time for a new family."""
    kind = refresh_kind(granted.scope)
    if kind is None:
        return granted
    token = secrets.token_urlsafe(32)
    now = int(time.time())
    connection.execute(delete(refresh_tokens).where(refresh_tokens.c.expires_at < now))
    connection.execute(insert(refresh_tokens).values(
        token_hash=_digest(token), family=granted.family, client_id=granted.client_id, user_name=granted.user_name,
        scope=granted.scope, expires_at=expires_at or now + REFRESH_SECONDS[kind], used=False, patient=granted.patient,
    ))
    return replace(granted, refresh_token=token)


def granted_scope(asked: str, client: Grant, user: Grant) -> str:
    """What a user grants an app: the user/ scopes asked for, and with
    launch/patient (standalone launch: the user picks the patient after the
    login) or launch (EHR launch: its context names the patient, and
    /auth/authorize has checked that it does) the patient/ ones, within PATIENT_REACH, each narrowed to the
    client's registered scopes of its context and to the user's role;
    launch/patient or launch kept with the patient/ scopes granted,
    offline_access or online_access when asked (and some resource scope is
    granted). openid and fhirUser are not offered: left out."""
    asked_grant = Grant.parse(asked)
    resources = asked_grant.in_context("user").narrowed_to(client.in_context("user")).narrowed_to(user)
    launch = next((word for word in (LAUNCH_PATIENT, EHR_LAUNCH) if word in asked.split()), None)
    if launch is not None:
        patient = asked_grant.in_context(PATIENT_CONTEXT).narrowed_to(client.in_context(PATIENT_CONTEXT))
        resources = Grant(resources.scopes + patient.narrowed_to(PATIENT_REACH).narrowed_to(user).scopes)
    if not resources.scopes:
        return ""
    return scope_text(resources, [launch] if launch is not None else [], refresh_kind(asked))


def scope_text(resources: Grant, launches: list[str], kind: str | None) -> str:
    """A granted scope as the token response says it: the resource scopes,
    the launch scopes granted while patient/ scopes are among them, and the
    refresh kind."""
    launched = launches if resources.in_context(PATIENT_CONTEXT).scopes else []
    return " ".join([str(resources), *launched, *([kind] if kind else [])])


def needs_patient(scope: str) -> bool:
    """Whether a granted scope reaches a patient, whom the user then picks."""
    return bool(Grant.parse(scope).in_context(PATIENT_CONTEXT).scopes)
