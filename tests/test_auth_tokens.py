"""Identities and tokens: users and clients with Argon2id hashes, the OAuth 2.0
token endpoint (password and client_credentials), ES256 JWTs verifiable with
the published JWKS, rotation, scope narrowing to the role, failed-login
limits, and the command line."""

import base64
import time

import jwt
import pytest
from argon2 import PasswordHasher

from server.app import build_services
from server.auth.identities import Identities, IdentityError
from server.auth.scopes import Grant, Role, role_grant
from server.auth.tokens import InvalidToken, TokenIssuer
from server.cli import main
from server.settings import load_settings

PASSWORD = "correct horse battery staple"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _token(client, **form: str):  # type: ignore[no-untyped-def]
    return client.post("/auth/token", content="&".join(f"{key}={value}" for key, value in form.items()), headers=FORM)


def test_a_user_gets_a_token_that_the_published_keys_verify(services, client):
    services.auth.identities.add_user("ana", Role.CLINICIAN, PASSWORD)
    response = _token(client, grant_type="password", username="ana", password=PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["scope"] == "user/*.rs"
    assert response.headers["cache-control"] == "no-store"
    (key,) = client.get("/.well-known/jwks.json").json()["keys"]
    assert key["kty"] == "EC" and key["alg"] == "ES256"
    public = jwt.algorithms.ECAlgorithm.from_jwk(key)
    claims = jwt.decode(body["access_token"], public, algorithms=["ES256"], audience="medaiflow")
    assert claims["sub"] == "ana" and claims["role"] == "clinician"
    smart = client.get("/.well-known/smart-configuration").json()
    assert smart["token_endpoint"].endswith("/auth/token") and "client_credentials" in smart["grant_types_supported"]


def test_asked_scopes_are_narrowed_to_the_role(services, client):
    services.auth.identities.add_user("op", Role.AI_OPERATOR, PASSWORD)
    narrowed = _token(client, grant_type="password", username="op", password=PASSWORD,
                      scope="user/Task.cruds user/DiagnosticReport.cruds user/AuditEvent.rs openid").json()
    assert narrowed["scope"] == "user/Task.cruds user/DiagnosticReport.rs"
    refused = _token(client, grant_type="password", username="op", password=PASSWORD, scope="user/AuditEvent.rs")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


def test_wrong_passwords_and_unknown_users_look_the_same_and_are_limited(services, client):
    services.auth.identities.add_user("bo", Role.CLINICIAN, PASSWORD)
    wrong = _token(client, grant_type="password", username="bo", password="not the password")
    unknown = _token(client, grant_type="password", username="nobody", password="not the password")
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.json() == unknown.json() == {"error": "invalid_grant", "error_description": "the user name or the password is wrong"}
    for _ in range(3):
        _token(client, grant_type="password", username="bo", password="still wrong")
    limited = _token(client, grant_type="password", username="bo", password=PASSWORD)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_a_disabled_user_gets_no_token(services, client):
    services.auth.identities.add_user("cy", Role.CLINICIAN, PASSWORD)
    services.auth.identities.disable_user("cy")
    assert _token(client, grant_type="password", username="cy", password=PASSWORD).status_code == 400


def test_a_system_client_authenticates_with_basic_or_the_form(services, client):
    client_id, secret = services.auth.identities.add_client("ehr", "system/DiagnosticReport.rs system/Observation.rs")
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    response = client.post("/auth/token", content="grant_type=client_credentials",
                           headers={**FORM, "Authorization": f"Basic {basic}"})
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/DiagnosticReport.rs system/Observation.rs"
    claims = services.auth.issuer.verify(response.json()["access_token"])
    assert claims.client and claims.subject == client_id
    posted = _token(client, grant_type="client_credentials", client_id=client_id, client_secret=secret,
                    scope="system/DiagnosticReport.r")
    assert posted.json()["scope"] == "system/DiagnosticReport.r"
    bad = client.post("/auth/token", content="grant_type=client_credentials",
                      headers={**FORM, "Authorization": "Basic " + base64.b64encode(f"{client_id}:wrong".encode()).decode()})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert bad.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("form, status, error", [
    ({"grant_type": "password", "username": "a\x00b", "password": "not the password"}, 400, "invalid_grant"),
    ({"grant_type": "client_credentials", "client_id": "a\x00b", "client_secret": "not it"}, 401, "invalid_client"),
])
def test_a_name_with_a_nul_character_is_a_wrong_name_not_a_500(client, form, status, error):
    """PostgreSQL's text holds no NUL: looking such a name up failed."""
    response = client.post("/auth/token", data=form)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


@pytest.mark.parametrize("form, status, error", [
    ("grant_type=implicit&client_id=x", 400, "unsupported_grant_type"),
    ("grant_type=authorization_code&code=x", 401, "invalid_client"),  # no client named
    ("grant_type=password&username=a", 400, "invalid_request"),
    ("grant_type=client_credentials", 401, "invalid_client"),
])
def test_malformed_token_requests(client, form, status, error):
    response = client.post("/auth/token", content=form, headers=FORM)
    assert response.status_code == status and response.json()["error"] == error
    assert client.post("/auth/token", json={"grant_type": "password"}).status_code == 400


def test_tokens_survive_a_rotation_and_bad_tokens_are_refused(tmp_path):
    issuer = TokenIssuer(tmp_path / "keys", "https://pacs.example/medaiflow", lifetime_seconds=60)
    before, _ = issuer.issue("ana", "clinician", "user/*.rs", client=False)
    issuer.rotate()
    after, _ = issuer.issue("ana", "clinician", "user/*.rs", client=False)
    assert jwt.get_unverified_header(before)["kid"] != jwt.get_unverified_header(after)["kid"]
    assert issuer.verify(before).subject == issuer.verify(after).subject == "ana"
    assert len(issuer.jwks()["keys"]) == 2

    other = TokenIssuer(tmp_path / "other-keys", "https://pacs.example/medaiflow")
    forged, _ = other.issue("ana", "admin", "user/*.cruds", client=False)
    with pytest.raises(InvalidToken, match="key this server does not have"):
        issuer.verify(forged)
    newest = issuer._keys()[-1]
    for claims, message in [
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"aud": "someone-else"}, "another audience"),
    ]:
        payload = {"iss": issuer.issuer, "aud": "medaiflow", "sub": "ana", "exp": int(time.time()) + 60, **claims}
        token = jwt.encode(payload, newest.private, algorithm="ES256", headers={"kid": newest.kid})
        with pytest.raises(InvalidToken, match=message):
            issuer.verify(token)
    with pytest.raises(InvalidToken, match="not a JWT"):
        issuer.verify("not-a-token")
    tampered = after[:-4] + ("AAAA" if after[-4:] != "AAAA" else "BBBB")
    with pytest.raises(InvalidToken):
        issuer.verify(tampered)
    # Retiring a key (removing its file) ends its tokens at once, verified before or not.
    assert issuer.verify(before).subject == "ana"
    (tmp_path / "keys" / f"{jwt.get_unverified_header(before)['kid']}.pem").unlink()
    with pytest.raises(InvalidToken, match="key this server does not have"):
        issuer.verify(before)
    assert issuer.verify(after).subject == "ana"
    # With every key retired, the next token is signed by a new one (it was a 500).
    for key_file in (tmp_path / "keys").glob("*.pem"):
        key_file.unlink()
    fresh, _ = issuer.issue("ana", "clinician", "user/*.rs", client=False)
    assert issuer.verify(fresh).subject == "ana"
    with pytest.raises(InvalidToken):
        issuer.verify(after)


def test_hashes_made_with_old_parameters_are_replaced_at_login(services):
    weak = Identities(services.engine, PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    weak.add_user("dee", Role.AUDITOR, PASSWORD)
    current = services.auth.identities
    assert current.authenticate_user("dee", PASSWORD) is not None
    stored = [name for name, _, _ in current.users()]
    assert stored == ["dee"]
    from sqlalchemy import select

    from server.tables import users

    with services.engine.connect() as connection:
        rehashed = connection.execute(select(users.c.password_hash)).scalar_one()
    assert not current.hasher.check_needs_rehash(rehashed)
    with pytest.raises(IdentityError, match="at least 12"):
        current.add_user("eve", Role.CLINICIAN, "short")
    with pytest.raises(IdentityError, match="exists already"):
        current.add_user("dee", Role.CLINICIAN, PASSWORD)


@pytest.mark.parametrize("name", ["a:b", "", "two words", "50%", 'quo"te', "x" * 65])
def test_names_http_basic_cannot_carry_are_refused(services, name):
    identities = services.auth.identities
    with pytest.raises(IdentityError, match="printable characters"):
        identities.add_user(name, Role.CLINICIAN, PASSWORD)
    with pytest.raises(IdentityError, match="printable characters"):
        identities.add_client(name, "system/*.rs")


@pytest.mark.parametrize("name", ["anonymous", "medaiflow", "Anonymous"])
def test_names_the_audit_trail_gives_to_nobody_and_to_the_server_are_reserved(services, name):
    identities = services.auth.identities
    with pytest.raises(IdentityError, match="reserved"):
        identities.add_user(name, Role.CLINICIAN, PASSWORD)
    with pytest.raises(IdentityError, match="reserved"):
        identities.add_client(name, "system/*.rs")


def test_a_user_and_a_client_never_share_a_name(services, monkeypatch):
    """The audit trail and the permissions know an agent by its name alone."""
    identities = services.auth.identities
    client_id, _ = identities.add_client("ehr", "system/*.rs")
    with pytest.raises(IdentityError, match="name of a client already"):
        identities.add_user(client_id, Role.CLINICIAN, PASSWORD)
    identities.add_user("lab-00000000", Role.CLINICIAN, PASSWORD)
    monkeypatch.setattr("secrets.token_hex", lambda size: "0" * 2 * size)
    with pytest.raises(IdentityError, match="name of a user already"):
        identities.add_client("lab", "system/*.rs")
    assert [name for name, _, _ in identities.users() if name == client_id] == []


def test_patient_scopes_reach_nothing_without_a_launch_context(services, fhir):
    assert not Grant.parse("patient/*.rs").allows("ImagingStudy", "r")
    # In one, they reach the compartment's types and the Patient, read and searched, and write studies (STOW and
    # DELETE, which keep to the compartment), no more.
    in_context = Grant.parse("patient/*.cruds")
    assert in_context.allows("ImagingStudy", "r", True) and in_context.allows("Patient", "s", True)
    assert in_context.allows("ImagingStudy", "c", True) and in_context.allows("ImagingStudy", "d", True)
    assert not in_context.allows("ImagingStudy", "u", True) and not in_context.allows("Task", "r", True)
    assert not any(in_context.allows(resource_type, letter, True) for resource_type in ("Patient", "Observation")
                   for letter in "cud")
    assert not Grant.parse("patient/*.cruds").allows("ImagingStudy", "c")
    assert not in_context.allows("AuditEvent", "r", True)  # a wildcard never reaches the audit trail
    with pytest.raises(IdentityError, match="picks when launching an app"):
        services.auth.identities.add_client("ehr-patient", "patient/*.rs")
    services.auth.identities.add_user("nina", Role.CLINICIAN, PASSWORD)
    asked = fhir.post("/auth/token", content=f"grant_type=password&username=nina&password={PASSWORD}&scope=patient/*.rs",
                      headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": ""})
    assert asked.status_code == 400 and asked.json()["error"] == "invalid_scope"


def test_scope_grammar_and_role_ceilings():
    assert str(Grant.parse("user/Observation.read system/Task.write patient/*.* launch")) == (
        "user/Observation.rs system/Task.cud patient/*.cruds"
    )
    clinician = role_grant(Role.CLINICIAN)
    assert clinician.allows("ImagingStudy", "r") and not clinician.allows("ImagingStudy", "c")
    modality = role_grant(Role.MODALITY)
    assert modality.allows("ImagingStudy", "c") and not modality.allows("ImagingStudy", "r")
    # A wildcard never reaches the audit trail, whether the role's ceiling has it or the client asks for it:
    # an admin asking for `user/*.rs` got the audit trail with the rest.
    assert Grant.parse("user/*.cruds").narrowed_to(role_grant(Role.AUDITOR)).scopes == ()
    assert str(Grant.parse("user/*.rs").narrowed_to(role_grant(Role.ADMIN))) == "user/*.rs"
    assert Grant.parse("user/AuditEvent.rs").narrowed_to(role_grant(Role.CLINICIAN)).scopes == ()
    assert str(Grant.parse("user/AuditEvent.cruds").narrowed_to(role_grant(Role.ADMIN))) == "user/AuditEvent.rs"


def test_users_and_clients_from_the_command_line(tmp_path, database_url, monkeypatch, capsys):
    import io

    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.setenv("MEDAIFLOW_DATABASE_URL", database_url)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["users", "add", "fay", "--role", "auditor"]) == 0
    assert "shown once" not in capsys.readouterr().out
    assert main(["users", "list"]) == 0
    assert "fay" in capsys.readouterr().out
    assert main(["users", "add", "fay", "--role", "auditor"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["clients", "add", "pacs", "--scopes", "system/ImagingStudy.c"]) == 0
    output = capsys.readouterr().out
    assert "client id: pacs-" in output and "secret (shown once)" in output
    client_id = output.split("client id: ")[1].split()[0]
    secret = output.split("secret (shown once): ")[1].split()[0]
    assert main(["clients", "list"]) == 0
    assert capsys.readouterr().out.split() == [client_id, "enabled", "secret", "system/ImagingStudy.c"]
    assert main(["clients", "disable", client_id]) == 0
    assert main(["clients", "disable", "nobody"]) == 2
    capsys.readouterr()
    assert main(["clients", "list"]) == 0
    assert capsys.readouterr().out.split()[1] == "disabled"
    services = build_services(load_settings())
    try:
        assert services.auth.identities.authenticate_client(client_id, secret) is None
    finally:
        services.engine.dispose()
    assert main(["users", "disable", "fay"]) == 0
    assert main(["users", "disable", "nobody"]) == 2
    keys = tmp_path / "cli-data" / "jwt-keys"
    assert len(list(keys.glob("*.pem"))) == 1
    assert main(["keys", "rotate"]) == 0
    assert len(list(keys.glob("*.pem"))) == 2


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
def test_a_token_request_larger_than_any_form_is_refused_unread(client, streamed):
    """The endpoint needs no credentials: a body of any size was held whole in memory before it was judged."""
    body = b"grant_type=password&username=nurse&password=secret&padding=" + b"x" * 200_000

    def chunks():  # type: ignore[no-untyped-def]
        yield from (body[start:start + 8192] for start in range(0, len(body), 8192))

    answer = client.post("/auth/token", content=chunks() if streamed else body,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413
    assert answer.json()["error"] == "invalid_request"


@pytest.mark.parametrize("content", ["empty", "not a key", "another curve"])
def test_a_key_file_that_holds_no_signing_key_fails_nothing_else(services, client, content):
    """An empty one is what a rotation's file is until its key is written: every request answered 500 meanwhile."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other_curve = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    written = {"empty": b"", "not a key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n", "another curve": other_curve}[content]
    (services.settings.data_dir / "jwt-keys" / "ffffffffffffffffff.pem").write_bytes(written)  # sorts last: "newest"
    assert client.get("/fhir/Task").status_code == 200
    assert len(client.get("/.well-known/jwks.json").json()["keys"]) == 1
    services.auth.identities.add_user("ana", Role.CLINICIAN, PASSWORD)
    token = _token(client, grant_type="password", username="ana", password=PASSWORD).json()["access_token"]
    assert client.get("/fhir/Task", headers={"Authorization": f"Bearer {token}"}).status_code == 200
