"""SMART Backend Services: a system client registers its public keys (a JWK
Set) and gets tokens with assertions it signs (`private_key_jwt`, RS384 or
ES384), over real HTTP, as a backend service of an EHR or a bulk data client
does. Each assertion is taken once; what cannot be verified is refused
without saying whether the client exists."""

import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.auth.identities import IdentityError
from server.cli import main
from tests.conftest import served

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPES = "system/DiagnosticReport.rs system/ImagingStudy.rs"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _jwk(private_key, kid: str) -> dict:  # type: ignore[no-untyped-def]
    is_rsa = isinstance(private_key, rsa.RSAPrivateKey)
    algorithm = jwt.algorithms.RSAAlgorithm if is_rsa else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid}


def _key_set(*keys: dict) -> str:
    return json.dumps({"keys": list(keys)})


def _assertion(private_key, kid: str, client_id: str, audience: str, **changes) -> str:  # type: ignore[no-untyped-def]
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "exp": now + 240, "jti": str(uuid.uuid4())}
    claims.update(changes)
    claims = {name: value for name, value in claims.items() if value is not None}
    algorithm = "RS384" if isinstance(private_key, rsa.RSAPrivateKey) else "ES384"
    return jwt.encode(claims, private_key, algorithm=algorithm, headers={"kid": kid})


def _token(base: str, assertion: str, **extra: str) -> httpx.Response:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion, **extra}
    return httpx.post(f"{base}/auth/token", data=form)


@pytest.fixture
def backend(app, services):  # type: ignore[no-untyped-def]
    """The app on real HTTP, and a client registered with an RSA and a P-384 key."""
    rsa_key, ec_key = _rsa_key(), _ec_key()
    client_id, secret = services.auth.identities.add_client(
        "bulk", SCOPES, _key_set(_jwk(rsa_key, "rsa-1"), _jwk(ec_key, "ec-1"))
    )
    assert secret is None
    with served(app) as base:
        yield base, client_id, {"rsa-1": rsa_key, "ec-1": ec_key}


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
def test_a_signed_assertion_gets_a_token_that_reads_fhir(backend, kid):
    base, client_id, keys = backend
    response = _token(base, _assertion(keys[kid], kid, client_id, f"{base}/auth/token"), scope="system/ImagingStudy.rs")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/ImagingStudy.rs"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{base}/fhir/ImagingStudy", headers=headers).status_code == 200
    assert httpx.get(f"{base}/fhir/DiagnosticReport", headers=headers).status_code == 403  # not asked for


def test_an_assertion_is_taken_once(backend):
    base, client_id, keys = backend
    assertion = _assertion(keys["ec-1"], "ec-1", client_id, f"{base}/auth/token")
    assert _token(base, assertion).status_code == 200
    again = _token(base, assertion)
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"


@pytest.mark.parametrize(("changes", "reason"), [
    ({"aud": "https://elsewhere.example/token"}, "aud must be this token endpoint"),
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"exp": int(time.time()) + 3600}, "more than 300 seconds away"),
    ({"sub": "someone-else"}, "iss and sub"),
    ({"jti": None}, "needs a jti"),
])
def test_claims_a_server_must_refuse_are_refused_with_their_reason(backend, changes, reason):
    base, client_id, keys = backend
    response = _token(base, _assertion(keys["rsa-1"], "rsa-1", client_id, f"{base}/auth/token", **changes))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client" and reason in response.json()["error_description"]


@pytest.mark.parametrize(("claim", "reason"), [("iss", "iss and sub"), ("jti", "needs a jti")])
def test_a_claim_with_a_nul_character_is_refused_not_a_500(backend, claim, reason):
    """PostgreSQL's text holds no NUL: looking such a client id up, or keeping such a jti, failed."""
    base, client_id, keys = backend
    changes = {"iss": f"{client_id}\x00", "sub": f"{client_id}\x00"} if claim == "iss" else {"jti": "a\x00b"}
    response = _token(base, _assertion(keys["rsa-1"], "rsa-1", client_id, f"{base}/auth/token", **changes))
    assert response.status_code == 401, response.text
    assert reason in response.json()["error_description"]


def test_what_does_not_verify_is_refused_alike_whoever_the_client(backend, services):
    base, client_id, keys = backend
    audience = f"{base}/auth/token"
    stranger = _ec_key()
    other_id, _ = services.auth.identities.add_client("secret-only", SCOPES)
    refusals = [
        _token(base, _assertion(stranger, "ec-1", client_id, audience)),  # another key, the registered kid
        _token(base, _assertion(keys["ec-1"], "ec-9", client_id, audience)),  # a kid the client does not have
        _token(base, _assertion(keys["ec-1"], "ec-1", "no-such-client", audience)),
        _token(base, _assertion(keys["ec-1"], "ec-1", other_id, audience)),  # a client with a secret and no keys
    ]
    assert [response.status_code for response in refusals] == [401] * 4
    assert len({response.json()["error_description"] for response in refusals}) == 1


def test_weak_or_unsigned_algorithms_are_refused(backend):
    base, client_id, _ = backend
    claims = {"iss": client_id, "sub": client_id, "aud": f"{base}/auth/token", "exp": int(time.time()) + 60,
              "jti": "x"}
    for assertion in (jwt.encode(claims, "a shared secret of some length", algorithm="HS256",
                                 headers={"kid": "rsa-1"}),
                      jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"})):
        response = _token(base, assertion)
        assert response.status_code == 401 and "RS384 or ES384" in response.json()["error_description"]


def test_a_disabled_client_and_mixed_authentication_are_refused(backend, services):
    base, client_id, keys = backend
    audience = f"{base}/auth/token"
    both = _token(base, _assertion(keys["rsa-1"], "rsa-1", client_id, audience), client_secret="anything")
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"
    other = _token(base, _assertion(keys["rsa-1"], "rsa-1", client_id, audience), client_id="not-the-issuer")
    assert other.status_code == 400
    wrong_type = httpx.post(f"{base}/auth/token", data={"grant_type": "client_credentials",
                                                        "client_assertion_type": "urn:example:saml",
                                                        "client_assertion": "x"})
    assert wrong_type.status_code == 400
    services.auth.identities.disable_client(client_id)
    disabled = _token(base, _assertion(keys["rsa-1"], "rsa-1", client_id, audience))
    assert disabled.status_code == 401


def test_a_client_with_keys_has_no_secret_to_guess(backend):
    base, client_id, _ = backend
    for secret in ("", "None", "null"):
        response = httpx.post(f"{base}/auth/token", data={"grant_type": "client_credentials"},
                              auth=(client_id, secret or "x"))
        assert response.status_code == 401
    assert httpx.get(f"{base}/fhir/ImagingStudy", auth=(client_id, "x")).status_code == 401


def test_new_keys_replace_the_old(backend, services):
    base, client_id, keys = backend
    audience = f"{base}/auth/token"
    newer = _ec_key()
    services.auth.identities.set_client_keys(client_id, _key_set(_jwk(newer, "ec-2")))
    assert _token(base, _assertion(newer, "ec-2", client_id, audience)).status_code == 200
    assert _token(base, _assertion(keys["ec-1"], "ec-1", client_id, audience)).status_code == 401


@pytest.mark.parametrize(("key_set", "complaint"), [
    ("not json", "not JSON"),
    ('{"keys": []}', '"keys" holds 1 to'),
    (_key_set({**_jwk(_ec_key(), "a")}, {**_jwk(_ec_key(), "a")}), "kid of its own"),
    (_key_set({k: v for k, v in _jwk(_ec_key(), "a").items() if k != "kid"}), "kid of its own"),
    (_key_set(jwt.algorithms.ECAlgorithm.to_jwk(_ec_key(), as_dict=True) | {"kid": "p"}), "private key material"),
    (_key_set(_jwk(ec.generate_private_key(ec.SECP256R1()), "p256")), "P-384 key for ES384"),
    (_key_set(_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024), "small")), "at least 2048"),
    (_key_set({**_jwk(_ec_key(), "enc"), "use": "enc"}), "not for verifying"),
    (_key_set({"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}), "private key material"),
])
def test_a_key_set_that_cannot_serve_is_refused_at_registration(services, key_set, complaint):
    with pytest.raises(IdentityError, match=complaint):
        services.auth.identities.add_client("bad-keys", SCOPES, key_set)


def test_smart_configuration_and_the_capability_statement_name_the_token_endpoint(client):
    smart = client.get("/.well-known/smart-configuration").json()
    assert "private_key_jwt" in smart["token_endpoint_auth_methods_supported"]
    assert set(smart["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert "client-confidential-asymmetric" in smart["capabilities"]
    [rest] = client.get("/fhir/metadata").json()["rest"]
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    [uris] = rest["security"]["extension"]
    assert uris["extension"] == [{"url": "token", "valueUri": smart["token_endpoint"]},
                                 {"url": "authorize", "valueUri": smart["authorization_endpoint"]}]


def test_the_command_line_registers_and_replaces_keys(tmp_path, database_url, monkeypatch, capsys):
    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.setenv("MEDAIFLOW_DATABASE_URL", database_url)
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(_key_set(_jwk(_ec_key(), "one")))
    second.write_text(_key_set(_jwk(_rsa_key(), "two")))
    assert main(["clients", "add", "registry", "--scopes", SCOPES, "--jwks", str(first)]) == 0
    printed = capsys.readouterr().out
    assert "secret" not in printed
    client_id = printed.split("client id: ")[1].split()[0]
    assert main(["clients", "keys", client_id, str(second)]) == 0
    assert main(["clients", "keys", client_id, str(tmp_path / "missing.json")]) == 2
    assert "cannot read the key set" in capsys.readouterr().err
    first.write_text('{"keys": []}')
    assert main(["clients", "keys", client_id, str(first)]) == 2
    assert "1 to 16 keys" in capsys.readouterr().err
    assert main(["clients", "list"]) == 0
    assert capsys.readouterr().out.split() == [client_id, "enabled", "keys", *SCOPES.split()]


def test_an_assertion_past_its_exp_but_within_the_clock_leeway_is_still_taken_once(backend):
    """Its jti was forgotten at exp while the assertion stayed acceptable a minute longer: replayed meanwhile, it got
    another token."""
    base, client_id, keys = backend
    assertion = _assertion(keys["ec-1"], "ec-1", client_id, f"{base}/auth/token", exp=int(time.time()) + 1)
    assert _token(base, assertion).status_code == 200
    time.sleep(2.1)  # past its exp, within the leeway for clocks that differ
    again = _token(base, assertion)
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"


def test_bad_assertions_naming_a_client_do_not_lock_it_out(backend):
    """A secret can be guessed, so failures count against its name; a private
    key cannot, so assertions that anyone sends naming a client count only
    against the address they come from."""
    base, client_id, keys = backend
    audience = f"{base}/auth/token"
    stranger = _ec_key()
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as elsewhere:
        refused = [
            elsewhere.post(f"{base}/auth/token", data={
                "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": _assertion(stranger, "ec-1", client_id, audience),
            }).status_code
            for _ in range(6)
        ]
    assert refused == [401] * 5 + [429]  # that address is held back
    assert _token(base, _assertion(keys["ec-1"], "ec-1", client_id, audience)).status_code == 200  # the client is not


def test_a_good_assertion_does_not_clear_its_addresss_failed_logins(backend):
    """Only its own attempt is given back: passwords guessed from an address
    stay counted there when a client of that address then logs in with its key
    (the address was cleared, so guessing went on without limit)."""
    base, client_id, keys = backend
    audience = f"{base}/auth/token"
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3")) as guesser:

        def guess(name: str) -> int:
            form = {"grant_type": "password", "username": name, "password": "a wrong password"}
            return guesser.post(f"{base}/auth/token", data=form).status_code

        assert [guess(f"user-{number}") for number in range(4)] == [400] * 4
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": _assertion(keys["ec-1"], "ec-1", client_id, audience)}
        assert guesser.post(f"{base}/auth/token", data=form).status_code == 200
        assert [guess(f"user-{number}") for number in range(4, 6)] == [400, 429]
