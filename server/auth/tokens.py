"""Short-lived signed access tokens (JWT, ES256) and the keys that sign them.

Keys are P-256 key pairs written into `<data>/jwt-keys/` on first start; the
newest signs, every key in the folder verifies (so tokens signed before a
rotation stay valid until they expire), and all of them are published at
/.well-known/jwks.json. Retiring a key is removing its file.
"""

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger(__name__)
ALGORITHM = "ES256"
_VERIFIED_LIMIT = 10_000
AUDIENCE = "medaiflow"


class InvalidToken(Exception):
    """Malformed, expired, wrongly signed or for another audience (HTTP 401)."""


@dataclass(frozen=True)
class Claims:
    subject: str  # user name, or client id
    role: str
    scope: str
    client: bool  # a system client rather than a person
    expires: int
    app: str | None = None  # the client id of the app a user logged in to (SMART App Launch)
    patient: str | None = None  # the Patient id of its launch context (SMART App Launch)


@dataclass(frozen=True)
class _Key:
    kid: str
    private: ec.EllipticCurvePrivateKey


class TokenIssuer:
    def __init__(self, key_dir: Path, issuer: str, lifetime_seconds: int = 300) -> None:
        self.key_dir = key_dir
        self.issuer = issuer
        self.lifetime_seconds = lifetime_seconds
        self._cached: tuple[int, list[_Key]] | None = None
        # Tokens already verified, until they expire: a client sends the same
        # token with every request. Emptied whenever the key set changes.
        self._verified: dict[str, tuple[int, Claims]] = {}  # token -> (key-set stamp, claims)
        if not list(key_dir.glob("*.pem")):
            self.rotate()

    def rotate(self) -> str:
        """A new signing key; older ones keep verifying until their files are removed."""
        self.key_dir.mkdir(parents=True, exist_ok=True)
        private = ec.generate_private_key(ec.SECP256R1())
        kid = f"{time.time_ns():x}"
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        # Written under another name, then renamed: a running server reads
        # the folder at any moment, and must never find the key half written.
        partial = self.key_dir / f"{kid}.pem.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as key_file:
            key_file.write(pem)
            key_file.flush()
            os.fsync(key_file.fileno())
        os.rename(partial, self.key_dir / f"{kid}.pem")
        return kid

    def _keys(self) -> list[_Key]:
        """Read again only when the folder changed (a rotation, a retired key)."""
        changed = self.key_dir.stat().st_mtime_ns
        if self._cached is None or self._cached[0] != changed:
            self._cached = (changed, self._load())
        return self._cached[1]

    def _load(self) -> list[_Key]:
        keys = []
        for path in sorted(self.key_dir.glob("*.pem")):
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
                private = None
            if not (isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1)):
                # Not one of ours (put there by hand): its tokens are refused, everyone else's still verify.
                log.warning("%s is no P-256 private key: left out of the signing keys", path)
                continue
            keys.append(_Key(path.stem, private))
        return keys

    def issue(self, subject: str, role: str, scope: str, client: bool, app: str | None = None,
              patient: str | None = None) -> tuple[str, int]:
        """The token and its lifetime in seconds; `app`: the client a user's
        token was issued to (its `client_id` claim, RFC 9068 2.2); `patient`:
        the Patient of its launch context (a `patient` claim, as the token
        response names it). With every key retired, a new one is made, as on
        first start."""
        keys = self._keys()
        if not keys:
            self.rotate()
            keys = self._keys()
        newest = keys[-1]
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + self.lifetime_seconds,
                  "role": role, "scope": scope, "client": client, **({"client_id": app} if app else {}),
                  **({"patient": patient} if patient else {})}
        return jwt.encode(claims, newest.private, algorithm=ALGORITHM, headers={"kid": newest.kid}), self.lifetime_seconds

    def verify(self, token: str) -> Claims:
        keys = self._keys()
        assert self._cached is not None
        stamp = self._cached[0]
        known = self._verified.get(token)
        # Only a verification made with the current key set counts: retiring a key ends its tokens at once.
        if known is not None and known[0] == stamp and known[1].expires > time.time():
            return known[1]
        claims = self._verify(token, keys)
        if len(self._verified) >= _VERIFIED_LIMIT:
            self._verified = {}
        self._verified[token] = (stamp, claims)
        return claims

    def _verify(self, token: str, keys: list[_Key]) -> Claims:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as error:
            raise InvalidToken("the token is not a JWT") from error
        key = next((key for key in keys if key.kid == kid), None)
        if key is None:
            raise InvalidToken("the token is signed with a key this server does not have")
        try:
            claims = jwt.decode(token, key.private.public_key(), algorithms=[ALGORITHM], audience=AUDIENCE,
                                issuer=self.issuer, options={"require": ["exp", "sub", "aud", "iss"]})
        except jwt.ExpiredSignatureError as error:
            raise InvalidToken("the token has expired") from error
        except jwt.InvalidAudienceError as error:
            raise InvalidToken("the token is for another audience") from error
        except jwt.PyJWTError as error:
            raise InvalidToken(f"the token is not valid: {error}") from error
        app, patient = claims.get("client_id"), claims.get("patient")
        return Claims(str(claims["sub"]), str(claims.get("role", "")), str(claims.get("scope", "")),
                      bool(claims.get("client")), int(claims["exp"]), str(app) if app else None,
                      str(patient) if patient else None)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for key in self._keys():
            public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.private.public_key()))
            keys.append({**public, "kid": key.kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": keys}
