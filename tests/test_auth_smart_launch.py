"""SMART App Launch, standalone: an app (httpx here, as a browser and as the
app's back end) sends the user to /auth/authorize, the user logs in on its
page, the app trades the code and its PKCE verifier for tokens at
/auth/token, and reads FHIR with them. A real HTTP server throughout."""

import base64
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from fhir_mappings.audit_event import IDENTITY_SYSTEM
from server.auth import launch as launch_module
from server.auth.identities import IdentityError
from server.auth.scopes import Role
from server.cli import main
from server.tables import authorization_requests
from tests.conftest import admin_headers, served

PASSWORD = "a long clinician password"
REDIRECT = "http://127.0.0.1:18601/callback"  # nothing listens: the app reads the redirect's Location itself
ASKED = "user/ImagingStudy.rs user/Patient.r user/AuditEvent.rs patient/Patient.rs openid fhirUser launch/patient"
REGISTERED = "user/ImagingStudy.rs user/Patient.rs user/Observation.rs user/AuditEvent.rs"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class App:
    """A registered app and the browser of its user."""

    def __init__(self, base: str, client_id: str, secret: str | None = None) -> None:
        self.base, self.client_id, self.secret = base, client_id, secret
        self.browser = httpx.Client(base_url=base)
        self.verifier, self.challenge = _pkce()

    def authorize(self, **changes: str | None) -> httpx.Response:
        params = {"response_type": "code", "client_id": self.client_id, "redirect_uri": REDIRECT, "scope": ASKED,
                  "state": "s-123", "aud": f"{self.base}/fhir", "code_challenge": self.challenge,
                  "code_challenge_method": "S256", **changes}
        return self.browser.get("/auth/authorize", params={k: v for k, v in params.items() if v is not None})

    def log_in(self, page: httpx.Response, username: str = "clara", password: str = PASSWORD,
               **changes: str) -> httpx.Response:
        key = re.search(r'name="request" value="([^"]+)"', page.text)
        assert key is not None, page.text
        form = {"request": key.group(1), "username": username, "password": password, "decision": "allow", **changes}
        return self.browser.post("/auth/authorize", data=form)

    def code(self, username: str = "clara", **changes: str) -> str:
        redirect = self.log_in(self.authorize(**changes), username)
        assert redirect.status_code == 303, redirect.text
        location = redirect.headers["location"]
        assert location.startswith(REDIRECT + "?")
        query = parse_qs(urlsplit(location).query)
        assert query["state"] == ["s-123"]
        return query["code"][0]

    def token(self, **form: str) -> httpx.Response:
        auth = (self.client_id, self.secret) if self.secret else None
        body = {"client_id": self.client_id, **form} if not self.secret else form
        return httpx.post(f"{self.base}/auth/token", data=body, auth=auth)

    def redeem(self, code: str, **changes: str) -> httpx.Response:
        return self.token(**{"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                             "code_verifier": self.verifier, **changes})

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.token(grant_type="refresh_token", refresh_token=refresh_token)


@pytest.fixture
def launch(app, services):  # type: ignore[no-untyped-def]
    services.auth.identities.add_user("clara", Role.CLINICIAN, PASSWORD)
    client_id, secret = services.auth.identities.add_client("<b>viewer</b>", REGISTERED, redirect_uris=[REDIRECT],
                                                            public=True)
    assert secret is None
    with served(app) as base:
        yield App(base, client_id)


def test_the_whole_flow_gives_a_token_that_reads_fhir_within_its_scopes(launch):
    page = launch.authorize()
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "&lt;b&gt;viewer&lt;/b&gt;" in page.text and "<b>viewer</b>" not in page.text  # the app's name, escaped
    assert "<script" not in page.text and "http" not in page.text.split('action="')[0]  # nothing loaded from elsewhere
    code = launch.code()
    answer = launch.redeem(code)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # Asked, registered and the role's, all three: no AuditEvent (not a clinician's), no patient/, openid or launch.
    assert body["scope"] == "user/ImagingStudy.rs user/Patient.r"
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0 and "refresh_token" not in body
    assert answer.headers["cache-control"] == "no-store"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{launch.base}/fhir/ImagingStudy", headers=headers).status_code == 200
    assert httpx.get(f"{launch.base}/fhir/Patient/nobody", headers=headers).status_code == 404  # read: allowed
    assert httpx.get(f"{launch.base}/fhir/Patient", headers=headers).status_code == 403  # search: not granted
    assert httpx.get(f"{launch.base}/fhir/Observation", headers=headers).status_code == 403  # not asked for
    assert httpx.get(f"{launch.base}/fhir/AuditEvent", headers=headers).status_code == 403  # not the role's


def test_a_wrong_verifier_is_refused_and_spends_the_code(launch):
    code = launch.code()
    wrong = launch.redeem(code, code_verifier=_pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert "code_verifier" in wrong.json()["error_description"]
    assert launch.redeem(code).status_code == 400  # a stolen code is not worked on
    assert launch.redeem(launch.code(), code_verifier="short").json()["error"] == "invalid_request"


def test_a_code_used_twice_is_refused_and_its_refresh_tokens_revoked(launch):
    code = launch.code(scope="user/ImagingStudy.rs offline_access")
    first = launch.redeem(code)
    assert first.status_code == 200 and first.json()["scope"] == "user/ImagingStudy.rs offline_access"
    again = launch.redeem(code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert launch.refresh(first.json()["refresh_token"]).status_code == 400  # revoked with its code


def test_a_code_is_for_its_redirect_uri_and_its_client(launch, services):
    code = launch.code()
    wrong = launch.redeem(code, redirect_uri=REDIRECT + "/")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    other_id, _ = services.auth.identities.add_client("other", REGISTERED, redirect_uris=[REDIRECT], public=True)
    stolen = App(launch.base, other_id).redeem(launch.code())
    assert stolen.status_code == 400 and "another client" in stolen.json()["error_description"]


@pytest.mark.parametrize("changes", [
    {"redirect_uri": "http://127.0.0.1:18601/callback/evil"},  # compared exactly: no prefix
    {"redirect_uri": "http://127.0.0.1:18601/callback?x=1"},
    {"redirect_uri": None},
    {"client_id": "nobody-1234"},
    {"client_id": None},
    {"client_id": "a\x00b"},  # PostgreSQL's text holds no NUL: looking it up was a 500
])
def test_what_comes_before_the_redirect_uri_is_trusted_is_shown_never_redirected(launch, changes):
    page = launch.authorize(**changes)
    assert page.status_code == 400 and "location" not in page.headers
    assert page.headers["content-type"].startswith("text/html") and "name=\"request\"" not in page.text


@pytest.mark.parametrize(("changes", "error"), [
    ({"aud": "https://elsewhere.example/fhir"}, "invalid_request"),
    ({"aud": None}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge_method": None}, "invalid_request"),
    ({"code_challenge": None}, "invalid_request"),
    # RFC 7636 4.2: an S256 challenge is 43 base64url characters; no verifier matches another.
    ({"code_challenge": "A" * 44}, "invalid_request"),
    ({"code_challenge": "A" * 128}, "invalid_request"),
    ({"code_challenge": "A" * 42 + "."}, "invalid_request"),
    ({"code_challenge": "A" * 42 + "B"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "system/*.rs patient/*.rs openid"}, "invalid_scope"),
    ({"scope": "user/*.rs", "extra": "a\x00b"}, "invalid_request"),
])
def test_what_is_wrong_after_is_sent_back_to_the_app_with_its_state(launch, changes, error):
    page = launch.authorize(**changes)
    assert page.status_code == 302
    location = page.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == [error] and "code" not in query
    assert query.get("state") == (None if "extra" in changes else ["s-123"])  # a state with a NUL is not echoed


@pytest.mark.parametrize("form", [
    {"grant_type": "authorization_code", "client_id": "a\x00b", "code": "x"},
    {"grant_type": "refresh_token", "client_id": "a\x00b", "refresh_token": "x"},
])
def test_a_client_id_with_a_nul_character_is_unknown_not_a_500(launch, form):
    refused = httpx.post(f"{launch.base}/auth/token", data=form)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"


def test_the_form_needs_its_key_in_the_form_and_in_the_cookie(launch):
    page = launch.authorize()
    key = re.search(r'name="request" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    form = {"request": key, "username": "clara", "password": PASSWORD, "decision": "allow"}
    elsewhere = httpx.post(f"{launch.base}/auth/authorize", data=form)  # another page's post: no cookie
    assert elsewhere.status_code == 400 and "location" not in elsewhere.headers
    forged = launch.browser.post("/auth/authorize", data={**form, "request": secrets.token_urlsafe(32)})
    assert forged.status_code == 400 and "location" not in forged.headers
    missing = launch.browser.post("/auth/authorize", data={k: v for k, v in form.items() if k != "request"})
    assert missing.status_code == 400
    assert launch.log_in(page).status_code == 303  # the form itself still works
    assert launch.log_in(page).status_code == 400  # once


def test_two_authorizations_in_one_browser_each_keep_their_form(launch):
    # Another app, or the same one in another tab: the form asked for first still logs in.
    first, second = launch.authorize(), launch.authorize(state="s-456")
    assert launch.log_in(first).status_code == 303
    assert "state=s-456" in launch.log_in(second).headers["location"]


def test_a_form_or_cookie_that_is_not_ascii_is_stale_not_a_500(launch):
    page = launch.authorize()
    key = re.search(r'name="request" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    cookie = page.headers["set-cookie"].split(";")[0].split("=")[0]
    form = {"request": key, "username": "clara", "password": PASSWORD, "decision": "allow"}
    for sent_key, sent_cookie in ((key, "\u00e9t\u00e9"), ("\u00e9t\u00e9", "\u00e9t\u00e9"), ("\u00e9t\u00e9", key)):
        headers = {"Cookie": f"{cookie}={sent_cookie}".encode("latin-1")}
        answer = httpx.post(f"{launch.base}/auth/authorize", data={**form, "request": sent_key}, headers=headers)
        assert answer.status_code == 400 and "location" not in answer.headers, answer.text


def test_a_wrong_password_gives_no_code_and_counts_as_a_failed_login(launch, services):
    page = launch.authorize()
    for _ in range(5):
        wrong = launch.log_in(page, password="not the password")
        assert wrong.status_code == 401 and "location" not in wrong.headers
        assert "wrong" in wrong.text and 'name="request"' in wrong.text  # the form again, to try again
    limited = launch.log_in(page)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert "location" not in limited.headers
    logins = [(record["outcome"], record["agent"][0]["name"]) for record in _logins(launch, services)]
    assert sorted(logins) == [("4", "clara")] * 6


def test_a_login_through_the_form_is_audited(launch, services):
    launch.code()
    [login] = _logins(launch, services)
    assert _app_of(login) == launch.client_id
    assert login["outcome"] == "0" and login["agent"][0]["name"] == "clara"


def test_the_user_may_deny(launch, services):
    denied = launch.log_in(launch.authorize(), decision="deny")
    assert denied.status_code == 303
    query = parse_qs(urlsplit(denied.headers["location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["s-123"] and "code" not in query
    # The browser is sent back with 303 either way: the record says the app was not let in.
    [record] = _logins(launch, services)
    assert record["outcome"] == "4"
    assert record["outcomeDesc"] == f"POST /auth/authorize answered 303: the user did not let {launch.client_id} in"


def test_a_login_that_grants_nothing_is_recorded_as_refused(launch, services):
    services.auth.identities.add_user("audrey", Role.AUDITOR, PASSWORD)  # may read none of ImagingStudy, Patient
    redirect = launch.log_in(launch.authorize(scope="user/ImagingStudy.rs"), username="audrey")
    assert parse_qs(urlsplit(redirect.headers["location"]).query)["error"] == ["invalid_scope"]
    [record] = _logins(launch, services)
    assert (record["outcome"], record["agent"][0]["name"]) == ("4", "audrey")
    assert record["outcomeDesc"].endswith(f"audrey may use none of the scopes {launch.client_id} asked for")


def test_what_a_user_does_through_an_app_is_recorded_with_the_app(launch, services):
    """An app acts for its user: the trail said who, not through which app."""
    answer = launch.redeem(launch.code()).json()
    assert httpx.get(f"{launch.base}/fhir/ImagingStudy", params={"_count": 1},
                     headers={"Authorization": f"Bearer {answer['access_token']}"}).status_code == 200
    services.audit.chain.project()
    with httpx.Client(base_url=launch.base, headers=admin_headers(services)) as admin:
        found = admin.get("/fhir/AuditEvent", params={"agent:identifier": f"{IDENTITY_SYSTEM}|{launch.client_id}"})
        everything = admin.get("/fhir/AuditEvent", params={"_count": 100}).json()["entry"]
    events = {entry["resource"]["outcomeDesc"]: entry["resource"] for entry in found.json().get("entry", [])}
    assert set(events) == {"POST /auth/authorize answered 303", "POST /auth/token answered 200",
                           "GET /fhir/ImagingStudy answered 200"}
    for event in events.values():
        assert event["agent"][0]["name"] == "clara" and event["agent"][0]["requestor"]
        assert _app_of(event) == launch.client_id
    # Other tokens name no app: the admin's first search (the second is recorded as it answers).
    assert [_app_of(entry["resource"]) for entry in everything
            if entry["resource"]["agent"][0]["name"] == "test-admin"] == [None]


def _app_of(event: dict) -> str | None:
    apps = [agent for agent in event["agent"] if agent["type"]["coding"][0]["code"] == "110150"]
    assert len(apps) <= 1 and all(not agent["requestor"] for agent in apps)
    return apps[0]["who"]["identifier"]["value"] if apps else None


def _logins(launch: App, services) -> list[dict]:  # type: ignore[no-untyped-def]
    services.audit.chain.project()
    with httpx.Client(base_url=launch.base, headers=admin_headers(services)) as admin:
        found = admin.get("/fhir/AuditEvent", params={"type": "110114", "subtype": "110122"}).json()
    return [entry["resource"] for entry in found.get("entry", [])]


def test_refresh_tokens_rotate_and_one_used_twice_ends_its_family(launch):
    first = launch.redeem(launch.code(scope="user/ImagingStudy.rs online_access")).json()
    assert first["scope"] == "user/ImagingStudy.rs online_access"
    second = launch.refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    renewed = second.json()
    assert renewed["refresh_token"] != first["refresh_token"] and renewed["scope"] == first["scope"]
    headers = {"Authorization": f"Bearer {renewed['access_token']}"}
    assert httpx.get(f"{launch.base}/fhir/ImagingStudy", headers=headers).status_code == 200
    narrowed = launch.token(grant_type="refresh_token", refresh_token=renewed["refresh_token"],
                            scope="user/ImagingStudy.r")
    assert narrowed.json()["scope"] == "user/ImagingStudy.r online_access"  # RFC 6749 6: the access token's
    widened = launch.refresh(narrowed.json()["refresh_token"]).json()
    assert widened["scope"] == first["scope"]  # the refresh token kept its family's
    replayed = launch.refresh(first["refresh_token"])
    assert replayed.status_code == 400 and "family is revoked" in replayed.json()["error_description"]
    assert launch.refresh(widened["refresh_token"]).status_code == 400  # the thief's and the app's alike


def test_a_refresh_asking_for_nothing_granted_is_refused_without_spending_its_token(launch):
    tokens = launch.redeem(launch.code(scope="user/ImagingStudy.rs offline_access")).json()
    for asked in ("user/Observation.rs", "user/*.c", "no scope at all"):
        wider = launch.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"], scope=asked)
        assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope", wider.text
    again = launch.refresh(tokens["refresh_token"])  # the app may ask again: it was not spent
    assert again.status_code == 200, again.text
    assert again.json()["scope"] == "user/ImagingStudy.rs offline_access"


def test_a_disabled_user_or_client_gets_no_refresh(launch, services):
    tokens = launch.redeem(launch.code(scope="user/ImagingStudy.rs offline_access")).json()
    services.auth.identities.disable_user("clara")
    refused = launch.refresh(tokens["refresh_token"])
    assert refused.status_code == 400 and "disabled" in refused.json()["error_description"]
    services.auth.identities.add_user("carl", Role.CLINICIAN, PASSWORD)
    tokens = launch.redeem(launch.code(username="carl", scope="user/ImagingStudy.rs offline_access")).json()
    services.auth.identities.disable_client(launch.client_id)
    assert launch.refresh(tokens["refresh_token"]).status_code == 401


def test_a_confidential_app_authenticates_and_a_public_one_has_no_client_credentials(launch, services):
    client_id, secret = services.auth.identities.add_client("ehr-app", REGISTERED, redirect_uris=[REDIRECT])
    assert secret is not None
    app = App(launch.base, client_id, secret)
    assert app.redeem(app.code()).status_code == 200
    unauthenticated = App(launch.base, client_id).redeem(app.code())
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"] == "invalid_client"
    for form in ({"client_id": launch.client_id}, {"client_id": launch.client_id, "client_secret": ""}):
        refused = httpx.post(f"{launch.base}/auth/token", data={"grant_type": "client_credentials", **form})
        assert refused.status_code == 401
    basic = httpx.post(f"{launch.base}/auth/token", data={"grant_type": "client_credentials"},
                       auth=(launch.client_id, "x"))
    assert basic.status_code == 401


def test_discovery_names_the_authorization_endpoint(launch):
    configuration = httpx.get(f"{launch.base}/.well-known/smart-configuration").json()
    assert configuration["authorization_endpoint"] == f"{launch.base}/auth/authorize"
    assert {"authorization_code", "refresh_token"} <= set(configuration["grant_types_supported"])
    assert configuration["code_challenge_methods_supported"] == ["S256"]
    assert configuration["response_types_supported"] == ["code"]
    assert {"launch-standalone", "client-public", "permission-offline"} <= set(configuration["capabilities"])
    metadata = httpx.get(f"{launch.base}/fhir/metadata", headers={"Accept": "application/fhir+json"}).json()
    [uris] = [extension for extension in metadata["rest"][0]["security"]["extension"]
              if extension["url"].endswith("oauth-uris")]
    assert {"url": "authorize", "valueUri": f"{launch.base}/auth/authorize"} in uris["extension"]


@pytest.mark.parametrize("uri", ["http://viewer.example/callback", "https://viewer.example/cb#part", "/callback",
                                 "ftp://127.0.0.1/cb"])
def test_redirect_uris_are_https_or_loopback(services, uri):
    with pytest.raises(IdentityError):
        services.auth.identities.add_client("viewer", REGISTERED, redirect_uris=[uri], public=True)


def test_the_command_line_registers_apps(services, monkeypatch, capsys):
    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(services.settings.data_dir))
    monkeypatch.setenv("MEDAIFLOW_DATABASE_URL", services.settings.database_url)
    assert main(["clients", "add", "viewer", "--scopes", "user/*.rs", "--redirect-uri", "https://viewer.example/cb",
                 "--redirect-uri", "http://localhost:8080/cb", "--public"]) == 0
    printed = capsys.readouterr().out
    assert "client id: viewer-" in printed and "secret" not in printed
    client_id = printed.split("client id: ")[1].split()[0]
    client = services.auth.identities.launch_client(client_id)
    assert client is not None and client.public
    assert client.redirect_uris == ("https://viewer.example/cb", "http://localhost:8080/cb")
    assert main(["clients", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{client_id:40} enabled  public user/*.rs",
        "    redirect URI https://viewer.example/cb",
        "    redirect URI http://localhost:8080/cb",
    ]
    assert main(["clients", "add", "viewer", "--scopes", "user/*.rs", "--public"]) == 2  # no redirect URI
    assert main(["clients", "add", "viewer", "--scopes", "system/*.rs", "--redirect-uri", "https://v.example/cb"]) == 2


def test_behind_a_proxy_prefix_the_form_and_its_cookie_name_the_path_the_browser_sees(launch):
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example", "X-Forwarded-Prefix": "/medaiflow"}
    page = launch.browser.get("/auth/authorize", headers=proxied, params={
        "response_type": "code", "client_id": launch.client_id, "redirect_uri": REDIRECT, "scope": ASKED,
        "state": "s-1", "aud": "https://pacs.example/medaiflow/fhir", "code_challenge": launch.challenge,
        "code_challenge_method": "S256"})
    assert page.status_code == 200, page.headers.get("location")
    assert 'action="https://pacs.example/medaiflow/auth/authorize"' in page.text
    cookie = page.headers["set-cookie"]
    assert "Path=/medaiflow/auth/authorize" in cookie and "Secure" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie


def _waiting(services) -> int:  # type: ignore[no-untyped-def]
    with services.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(authorization_requests)).scalar_one()


def _error_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 302, response.text
    assert response.headers["location"].startswith(REDIRECT + "?")
    return parse_qs(urlsplit(response.headers["location"]).query)["error"]


def test_an_address_asks_for_a_few_authorizations_at_a_time(launch, services):
    # Each page is a row until its login, and anyone may ask for one: without a limit, a loop filled the database.
    answers = [launch.authorize() for _ in range(100)]
    accepted = sum(answer.status_code == 200 for answer in answers)
    assert 60 <= accepted < 100  # 60 at once, then one every 2 seconds
    assert all(_error_of(answer) == ["temporarily_unavailable"] for answer in answers if answer.status_code != 200)
    assert _waiting(services) == accepted


def test_no_more_authorizations_wait_than_the_limit(launch, services, monkeypatch):
    monkeypatch.setattr(launch_module, "PENDING_LIMIT", 2)
    assert launch.authorize().status_code == 200
    page = launch.authorize()
    assert page.status_code == 200
    assert _error_of(launch.authorize()) == ["temporarily_unavailable"]
    assert _waiting(services) == 2
    assert launch.log_in(page).status_code == 303  # one that waits ends with its login, and makes room
    assert launch.authorize().status_code == 200
