"""Users and system clients, with Argon2id-hashed passwords and secrets.

A failed login never says whether the name exists: an unknown name is
checked against a dummy hash, so that both take the time of one Argon2
verification. Hashes made with older parameters are replaced at login.
"""

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Column, Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from server.auth.client_assertions import Claimed, InvalidAssertion, InvalidKeySet, public_key_set, verified
from server.auth.scopes import PATIENT_CONTEXT, Grant, Role, role_grant
from server.db import advisory_locks, reading, write_connection
from server.tables import client_assertions, clients, users

_NAME_LIMIT = 64
# Agents the audit trail names that are nobody's account: a user or client
# with one of these names would be indistinguishable from them there.
ANONYMOUS = "anonymous"  # whoever sent a request that no credential identified
SERVER_AGENT = "medaiflow"  # the server itself, making its own changes
_RESERVED_NAMES = frozenset((ANONYMOUS, SERVER_AGENT))


class IdentityError(ValueError):
    """A user or client that cannot be made or changed as asked."""


@dataclass(frozen=True)
class Identity:
    name: str  # the user name, or the client id
    role: Role | None  # a person's role; a client has its scopes instead
    grant: Grant  # the widest scopes this identity may hold
    client: bool


@dataclass(frozen=True)
class LaunchClient:
    """An app that logs users in (SMART App Launch)."""

    client_id: str
    name: str
    grant: Grant  # the widest scopes it may ask for
    redirect_uris: tuple[str, ...]
    public: bool


@dataclass(frozen=True)
class ClientListing:
    client_id: str
    scopes: str
    disabled: bool
    proof: str  # how it proves who it is: "secret", "keys" (signed assertions) or "public" (PKCE only)
    redirect_uris: tuple[str, ...]  # where a SMART app's users are sent back; none for a system


def _redirect_uris(stored: str | None) -> tuple[str, ...]:
    return tuple(stored.split("\n")) if stored else ()


def _now() -> int:
    return time.time_ns() // 1000


class Identities:
    def __init__(self, engine: Engine, hasher: PasswordHasher | None = None) -> None:
        self.engine = engine
        self.hasher = hasher or PasswordHasher()  # Argon2id, the library's current parameters
        self._dummy: str | None = None
        # Told of every user and client change, in its transaction (the audit trail).
        self.on_change: Callable[[Connection, str, str], None] | None = None

    # --- users -------------------------------------------------------------------
    def add_user(self, name: str, role: Role, password: str | None = None) -> str:
        """The password (generated when not given, to be shown once)."""
        _require_name(name, "user name")
        password = password or secrets.token_urlsafe(18)
        _require_strength(password)
        now = _now()
        try:
            with write_connection(self.engine) as connection:
                _claim_name(connection, name, "user")
                connection.execute(insert(users).values(name=name, role=role.value, password_hash=self.hasher.hash(password),
                                                        disabled=False, created_at=now, updated_at=now))
                self._changed(connection, name, f"user {name} added with role {role.value}")
        except IntegrityError as error:
            raise IdentityError(f"user {name!r} exists already") from error
        return password

    def users(self) -> list[tuple[str, Role, bool]]:
        with reading(self.engine) as connection:
            rows = connection.execute(select(users.c.name, users.c.role, users.c.disabled).order_by(users.c.name)).all()
        return [(row.name, Role(row.role), row.disabled) for row in rows]

    def any_user(self) -> bool:
        with reading(self.engine) as connection:
            return connection.execute(select(users.c.id).limit(1)).first() is not None

    def disable_user(self, name: str) -> None:
        self._change_user(name, f"user {name} disabled", disabled=True)

    def set_password(self, name: str, password: str) -> None:
        _require_strength(password)
        self._change_user(name, f"password of user {name} changed", password_hash=self.hasher.hash(password))

    def _change_user(self, name: str, description: str | None, **values: object) -> None:
        self._change(users.c.name, name, "user", description, **values, updated_at=_now())

    def _change(self, key: Column, value: str, kind: str, description: str | None, **values: object) -> None:
        """Update the user or client whose `key` is `value`; `description` goes to the audit trail."""
        with write_connection(self.engine) as connection:
            changed = connection.execute(update(key.table).where(key == value).values(**values)).rowcount
            if changed and description is not None:
                self._changed(connection, value, description)
        if not changed:
            raise IdentityError(f"there is no {kind} {value!r}")

    def _changed(self, connection: Connection, name: str, description: str) -> None:
        if self.on_change is not None:
            self.on_change(connection, name, description)

    def authenticate_user(self, name: str, password: str) -> Identity | None:
        with reading(self.engine) as connection:
            row = connection.execute(select(users).where(users.c.name == name)).first()
        stored = row.password_hash if row is not None else self._dummy_hash()
        if not self._verifies(stored, password) or row is None or row.disabled:
            return None
        if self.hasher.check_needs_rehash(stored):  # the same password, stronger hash: no security change
            self._change_user(name, None, password_hash=self.hasher.hash(password))
        role = Role(row.role)
        return Identity(row.name, role, role_grant(role, "user"), client=False)

    # --- system clients --------------------------------------------------------------
    def add_client(self, name: str, scopes: str, key_set: str | None = None, redirect_uris: Sequence[str] = (),
                   public: bool = False) -> tuple[str, str | None]:
        """(client id, secret): the secret is shown once and kept only hashed.
        A client registered with a JWK Set (`key_set`: its public keys, for
        SMART Backend Services) gets no secret: it signs its assertions. An
        app that logs users in (SMART App Launch) has `redirect_uris`; a
        `public` one (in a browser, on a phone: it could keep no secret) gets
        none either, and proves itself with PKCE alone."""
        _require_name(name, "client name")
        grant = Grant.parse(scopes)
        if not grant.scopes:
            raise IdentityError(f"{scopes!r} names no SMART scope (e.g. system/DiagnosticReport.rs)")
        launched = grant.in_context(PATIENT_CONTEXT).scopes
        if launched and not redirect_uris:
            raise IdentityError("patient/ scopes reach the patient a user picks when launching an app: "
                                "give the client a redirect URI, or use system/ scopes")
        for uri in redirect_uris:
            _require_redirect_uri(uri)
        if redirect_uris and not (launched or grant.in_context("user").scopes):
            raise IdentityError("an app that logs users in acts for them: give it user/ or patient/ scopes")
        if public and not redirect_uris:
            raise IdentityError("a public client is an app that logs users in: give it a redirect URI")
        if public and key_set is not None:
            raise IdentityError("a public client has no secret and no keys: --public and --jwks exclude each other")
        if redirect_uris and key_set is not None:
            raise IdentityError("an app that logs users in authenticates with a secret, or is public "
                                "(private_key_jwt at the token endpoint is for client_credentials only)")
        keys = _checked_key_set(key_set) if key_set is not None else None
        client_id = f"{name[:40]}-{secrets.token_hex(4)}"
        secret = None if keys is not None or public else secrets.token_urlsafe(32)
        with write_connection(self.engine) as connection:
            _claim_name(connection, client_id, "client")
            connection.execute(insert(clients).values(
                client_id=client_id, name=name[:_NAME_LIMIT], secret_hash=self.hasher.hash(secret) if secret else None,
                scopes=str(grant), disabled=False, created_at=_now(), jwks_json=keys,
                redirect_uris="\n".join(dict.fromkeys(redirect_uris)) or None, public=public,
            ))
            how = "public keys" if keys is not None else "no secret (public)" if public else "a secret"
            uris = f" and redirect URIs {' '.join(redirect_uris)}" if redirect_uris else ""
            self._changed(connection, client_id, f"client {client_id} added with {how}, scopes {grant}{uris}")
        return client_id, secret

    def launch_client(self, client_id: str) -> LaunchClient | None:
        """The app `client_id`, if it is one that logs users in and is enabled."""
        with reading(self.engine) as connection:
            row = connection.execute(select(clients).where(clients.c.client_id == client_id)).first()
        if row is None or row.disabled or not row.redirect_uris:
            return None
        return LaunchClient(row.client_id, row.name, Grant.parse(row.scopes), _redirect_uris(row.redirect_uris),
                            row.public)

    def set_client_keys(self, client_id: str, key_set: str) -> None:
        """Replace a client's public keys (a rotation: its assertions are then
        checked with these only)."""
        self._change(clients.c.client_id, client_id, "client", f"client {client_id} given new public keys",
                     jwks_json=_checked_key_set(key_set))

    def clients(self) -> list[ClientListing]:
        with reading(self.engine) as connection:
            rows = connection.execute(select(
                clients.c.client_id, clients.c.scopes, clients.c.disabled, clients.c.public, clients.c.redirect_uris,
                clients.c.jwks_json.is_not(None).label("has_keys"),
            ).order_by(clients.c.client_id)).all()
        return [ClientListing(
            row.client_id, row.scopes, row.disabled,
            "public" if row.public else "keys" if row.has_keys else "secret", _redirect_uris(row.redirect_uris),
        ) for row in rows]

    def disable_client(self, client_id: str) -> None:
        """Refuse the client's secret from now on (a leaked one, say)."""
        self._change(clients.c.client_id, client_id, "client", f"client {client_id} disabled", disabled=True)

    def authenticate_client(self, client_id: str, secret: str) -> Identity | None:
        with reading(self.engine) as connection:
            row = connection.execute(select(clients).where(clients.c.client_id == client_id)).first()
        stored = row.secret_hash if row is not None and row.secret_hash is not None else self._dummy_hash()
        if not self._verifies(stored, secret) or row is None or row.secret_hash is None or row.disabled:
            return None
        return Identity(row.client_id, None, Grant.parse(row.scopes), client=True)

    def authenticate_assertion(self, claimed: Claimed, assertion: str, token_url: str) -> Identity:
        """The client whose registered key signed `assertion` (`claimed`: what
        it says unverified). Each assertion is taken once: its `jti` is kept
        until it expires. Raises InvalidAssertion."""
        with reading(self.engine) as connection:
            row = connection.execute(select(clients).where(clients.c.client_id == claimed.client_id)).first()
        if row is None or row.disabled or row.jwks_json is None:
            raise InvalidAssertion(f"client {claimed.client_id} is unknown, disabled or has no public keys", False)
        accepted = verified(assertion, claimed, row.jwks_json, token_url)
        try:
            with write_connection(self.engine, bookkeeping=True) as connection:
                expired = client_assertions.c.expires_at < _now() // 1_000_000
                connection.execute(delete(client_assertions).where(expired))
                connection.execute(insert(client_assertions).values(
                    client_id=accepted.client_id, jti=accepted.jti, expires_at=accepted.expires,
                ))
        except IntegrityError as error:
            raise InvalidAssertion(f"client {accepted.client_id} sent assertion {accepted.jti} again", False) from error
        return Identity(row.client_id, None, Grant.parse(row.scopes), client=True)

    def active_user(self, name: str) -> Identity | None:
        """The user `name` as it is now; None once disabled or gone."""
        with reading(self.engine) as connection:
            row = connection.execute(select(users.c.role, users.c.disabled).where(users.c.name == name)).first()
        if row is None or row.disabled:
            return None
        return Identity(name, Role(row.role), role_grant(Role(row.role), "user"), client=False)

    def current_grant(self, name: str, client: bool, connection: Connection | None = None) -> Grant | None:
        """The widest scopes the user or client `name` holds now; None once it
        is disabled or gone. What it did with a token is held to this later
        (a Subscription's notifications): a token's scopes are never wider."""
        with reading(self.engine, connection) as session:
            if client:
                row = session.execute(
                    select(clients.c.scopes, clients.c.disabled).where(clients.c.client_id == name)
                ).first()
                return None if row is None or row.disabled else Grant.parse(row.scopes)
            row = session.execute(select(users.c.role, users.c.disabled).where(users.c.name == name)).first()
            return None if row is None or row.disabled else role_grant(Role(row.role), "user")

    def _dummy_hash(self) -> str:
        """Made on first need (hashing takes a noticeable time, so not in the constructor)."""
        if self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    def _verifies(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False


def _claim_name(connection: Connection, name: str, kind: str) -> None:
    """Users and clients share one namespace: the audit trail and the
    permissions know an agent by its name alone, so a user named as a
    client (or the reverse) would be indistinguishable from it."""
    advisory_locks(connection, [f"identity:{name}"])
    other, key = (clients, clients.c.client_id) if kind == "user" else (users, users.c.name)
    if connection.execute(select(key).where(key == name)).first() is not None:
        raise IdentityError(f"{name!r} is the name of a {'client' if kind == 'user' else 'user'} already")


def _checked_key_set(key_set: str) -> str:
    try:
        return public_key_set(key_set)
    except InvalidKeySet as error:
        raise IdentityError(str(error)) from error


def _require_redirect_uri(uri: str) -> None:
    """An absolute https URL without a fragment (RFC 6749 3.1.2); plain http
    only on this machine's loopback, where nothing on the way can read the code."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError:
        host = None
    if host is None or len(uri) > 2048 or not uri.isprintable() or " " in uri or parts.fragment or "#" in uri:
        raise IdentityError(f"{uri!r} is no absolute URL without a fragment, as a redirect URI is")
    if parts.scheme != "https" and not (parts.scheme == "http" and host in ("127.0.0.1", "localhost", "::1")):
        raise IdentityError(f"{uri!r}: a redirect URI is https, or http on the loopback (127.0.0.1, localhost, [::1])")


def _require_strength(password: str) -> None:
    if len(password) < 12:
        raise IdentityError("a password has at least 12 characters")


def _require_name(name: str, what: str) -> None:
    """A name HTTP Basic can carry: no colon, which ends the name there (RFC 7617 2),
    and nothing a URL or a log line would need escaped."""
    if not name or len(name) > _NAME_LIMIT or not name.isprintable() or any(char in name for char in ' :%"\\'):
        raise IdentityError(f"a {what} is 1 to {_NAME_LIMIT} printable characters, without spaces, ':', '%', '\"' or '\\'")
    if name.lower() in _RESERVED_NAMES:
        reserved = " and ".join(sorted(_RESERVED_NAMES))
        raise IdentityError(f"{name!r} is reserved: the audit trail names {reserved} itself")
