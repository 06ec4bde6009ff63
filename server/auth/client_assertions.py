"""SMART Backend Services client authentication (`private_key_jwt`): a system
client proves who it is with a short-lived JWT signed by a private key whose
public half it registered (SMART App Launch 2.x, "client-confidential-
asymmetric"; RFC 7523 sections 2.2 and 3). No shared secret crosses the wire
or sits in the server's database.

Checking is in two steps. `claimed_client` reads the assertion unverified,
for what may be said about it without knowing the client (its form, its
algorithm, its audience, its times): those refusals name their reason.
`verified` then checks the signature with the client's registered keys;
what fails there (unknown client, unknown key, bad signature) is refused
without a reason, so that no answer tells which client ids exist.
"""

import json
from dataclasses import dataclass
from typing import Any

import jwt

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# What SMART asks servers to support; nothing weaker is taken.
ALGORITHMS = ("RS384", "ES384")
# SMART: `exp` no more than five minutes after the assertion is made.
MAX_LIFETIME_SECONDS = 300
# For clocks that differ a little between the client and this server.
_LEEWAY_SECONDS = 60
_MAX_KEY_SET_BYTES = 64 * 1024
_MAX_KEYS = 16
_MAX_ID_LENGTH = 256
_MIN_RSA_BITS = 2048
# Members that only a private key has (RFC 7518 6.2.2, 6.3.2; `k`: a symmetric key).
_PRIVATE_MEMBERS = frozenset(("d", "p", "q", "dp", "dq", "qi", "oth", "k"))


class InvalidAssertion(Exception):
    """An assertion refused (HTTP 401 invalid_client). `public`: its message
    may be told to the client, because it depends on nothing the server knows
    of clients."""

    def __init__(self, message: str, public: bool) -> None:
        super().__init__(message)
        self.public = public


class InvalidKeySet(ValueError):
    """A JWK Set that cannot be registered as a client's public keys."""


@dataclass(frozen=True)
class Claimed:
    """What an assertion says before its signature is checked."""

    client_id: str
    key_id: str
    algorithm: str


@dataclass(frozen=True)
class Assertion:
    """An assertion whose signature held: its `jti` must not be taken again before `expires`."""

    client_id: str
    jti: str
    expires: int


def claimed_client(assertion: str, token_url: str, now: int) -> Claimed:
    """The client an assertion claims to come from and the key it names.
    Raises InvalidAssertion, with a reason the client may be told."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as error:
        raise InvalidAssertion(f"the client assertion is not a JWT: {error}", public=True) from error
    algorithm, key_id = header.get("alg"), header.get("kid")
    if algorithm not in ALGORITHMS:
        raise InvalidAssertion(f"the client assertion must be signed with {' or '.join(ALGORITHMS)}", public=True)
    if not _short_text(key_id):
        raise InvalidAssertion("the client assertion's header must name its key (kid)", public=True)
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not _short_text(issuer) or issuer != subject:
        raise InvalidAssertion("the client assertion's iss and sub must both be the client id", public=True)
    if not _short_text(claims.get("jti")):
        raise InvalidAssertion("the client assertion needs a jti", public=True)
    audiences = claims.get("aud")
    if token_url not in (audiences if isinstance(audiences, list) else [audiences]):
        raise InvalidAssertion(f"the client assertion's aud must be this token endpoint, {token_url}", public=True)
    expires = claims.get("exp")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise InvalidAssertion("the client assertion needs exp, in seconds since the epoch", public=True)
    if expires <= now - _LEEWAY_SECONDS:
        raise InvalidAssertion("the client assertion has expired", public=True)
    if expires > now + MAX_LIFETIME_SECONDS + _LEEWAY_SECONDS:
        raise InvalidAssertion(
            f"the client assertion's exp is more than {MAX_LIFETIME_SECONDS} seconds away", public=True
        )
    return Claimed(issuer, key_id, algorithm)


def verified(assertion: str, claimed: Claimed, key_set_json: str, token_url: str) -> Assertion:
    """The assertion, once its signature holds with the client's key that
    `claimed` names. Raises InvalidAssertion, with no reason to tell."""
    jwk = next((key for key in json.loads(key_set_json)["keys"] if key["kid"] == claimed.key_id), None)
    if jwk is None or _algorithm_of(jwk) != claimed.algorithm:
        raise InvalidAssertion(f"client {claimed.client_id} has no {claimed.algorithm} key {claimed.key_id}", False)
    try:
        claims = jwt.decode(
            assertion, jwt.PyJWK(jwk, claimed.algorithm).key, algorithms=[claimed.algorithm], audience=token_url,
            issuer=claimed.client_id, leeway=_LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "sub", "aud", "jti"]},
        )
    except jwt.PyJWTError as error:
        raise InvalidAssertion(f"client {claimed.client_id}'s assertion does not verify: {error}", False) from error
    # Kept as long as it is taken: past its exp by the leeway, or it could be sent again meanwhile.
    return Assertion(claimed.client_id, claims["jti"], claims["exp"] + _LEEWAY_SECONDS)


def public_key_set(text: str) -> str:
    """A client's JWK Set as it is kept (compact JSON), once checked: public
    keys only, each with its own `kid`, each usable with RS384 (RSA of 2048
    bits or more) or ES384 (P-384). Raises InvalidKeySet saying what is wrong."""
    if len(text.encode()) > _MAX_KEY_SET_BYTES:
        raise InvalidKeySet(f"a key set is at most {_MAX_KEY_SET_BYTES} bytes")
    try:
        key_set = json.loads(text)
    except ValueError as error:
        raise InvalidKeySet(f"the key set is not JSON: {error}") from error
    keys = key_set.get("keys") if isinstance(key_set, dict) else None
    if not isinstance(keys, list) or not keys or len(keys) > _MAX_KEYS:
        raise InvalidKeySet(f'a key set is a JSON object whose "keys" holds 1 to {_MAX_KEYS} keys (RFC 7517 5)')
    seen: set[str] = set()
    for jwk in keys:
        _check_key(jwk, seen)
    return json.dumps({"keys": keys}, separators=(",", ":"), sort_keys=True)


def _check_key(jwk: Any, seen: set[str]) -> None:
    if not isinstance(jwk, dict):
        raise InvalidKeySet("each key of a key set is a JSON object (a JWK)")
    key_id = jwk.get("kid")
    if not _short_text(key_id) or key_id in seen:
        raise InvalidKeySet("each key needs a kid of its own: an assertion names the key that signed it")
    seen.add(key_id)
    if _PRIVATE_MEMBERS & jwk.keys():
        raise InvalidKeySet(f"key {key_id} holds private key material: register the public key only")
    if jwk.get("use", "sig") != "sig" or "verify" not in jwk.get("key_ops", ["verify"]):
        raise InvalidKeySet(f"key {key_id} is not for verifying signatures (use, key_ops)")
    algorithm = _algorithm_of(jwk)
    if algorithm is None or jwk.get("alg", algorithm) != algorithm:
        raise InvalidKeySet(f"key {key_id} is neither an RSA key for RS384 nor a P-384 key for ES384")
    try:
        key = jwt.PyJWK(jwk, algorithm).key
    except (jwt.PyJWTError, ValueError, TypeError) as error:
        raise InvalidKeySet(f"key {key_id} is not a usable key: {error}") from error
    if algorithm == "RS384" and key.key_size < _MIN_RSA_BITS:
        raise InvalidKeySet(f"key {key_id} has {key.key_size} bits: an RSA key has at least {_MIN_RSA_BITS}")


def _algorithm_of(jwk: dict[str, Any]) -> str | None:
    """The one algorithm of ALGORITHMS that the key can verify, if any."""
    if jwk.get("kty") == "RSA":
        return "RS384"
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-384":
        return "ES384"
    return None


def _short_text(value: Any) -> bool:
    # No NUL: no client id has one, and PostgreSQL's text holds none (looking one up was a 500).
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID_LENGTH and "\x00" not in value
