"""Who may do what: every role against every endpoint family (allowed, or
403), missing credentials (401 with a challenge), each kind of bad token,
the public endpoints, scopes narrowing a role, Bundle entries, HTTP Basic
and system clients."""

import base64
import threading
import time

import httpx
import jwt
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from server.auth.scopes import Role, role_grant
from server.auth.tokens import TokenIssuer
from tests.dicom_files import make_ct, multipart_body

STUDY = "1.2.826.0.1.3680043.8.498.1"
CT = make_ct(StudyInstanceUID=STUDY, PatientID="ACCESS-1")


def _requests() -> dict[str, tuple[str, str, dict]]:
    body, content_type = multipart_body([CT])
    return {
        "stow": ("POST", "/dicom-web/studies", {"content": body, "headers": {"Content-Type": content_type}}),
        "qido": ("GET", "/dicom-web/studies", {}),
        "wado": ("GET", f"/dicom-web/studies/{STUDY}/metadata", {}),
        "dicom-delete": ("DELETE", f"/dicom-web/studies/{STUDY}/series/1.2.3", {}),
        "fhir-read": ("GET", "/fhir/Patient/someone", {}),
        "fhir-search": ("GET", "/fhir/DiagnosticReport", {}),
        "task-create": ("POST", "/fhir/Task", {"json": {"resourceType": "Task", "status": "draft", "intent": "plan"}}),
        "audit-search": ("GET", "/fhir/AuditEvent", {}),
        "audit-verify": ("GET", "/fhir/AuditEvent/$verify", {}),
        "models-list": ("GET", "/admin/models", {}),
        "models-add": ("POST", "/admin/models", {"json": {"path": "/nonexistent"}}),
        "models-validate": ("POST", "/admin/models/nothing@1/validate", {"json": {"directory": "/nonexistent"}}),
        "models-activate": ("POST", "/admin/models/nothing@1/activate", {}),
    }


# The roles of issue 5, and the families each may use; every other one is 403.
ALLOWED = {
    Role.ADMIN: set(_requests()),
    Role.MODALITY: {"stow"},
    Role.CLINICIAN: {"qido", "wado", "fhir-read", "fhir-search", "models-list"},
    # A bundle's configs are code: only an admin registers or validates one; an operator switches them.
    Role.AI_OPERATOR: {"qido", "wado", "fhir-read", "fhir-search", "task-create", "models-list", "models-activate"},
    Role.AUDITOR: {"audit-search", "audit-verify"},
}


def _bearer(services, role: Role, scope: str | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    token, _ = services.auth.issuer.issue(f"a-{role.value}", role.value, scope or str(role_grant(role)), client=False)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def anonymous(app) -> TestClient:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url="http://testserver") as client:
        yield client


@pytest.mark.parametrize("role", list(Role), ids=lambda role: role.value)
def test_every_role_against_every_endpoint_family(anonymous, services, role):
    headers = _bearer(services, role)
    for family, (method, path, options) in _requests().items():
        extra = options.get("headers", {})
        response = anonymous.request(method, path, headers={**headers, **extra},
                                     **{key: value for key, value in options.items() if key != "headers"})
        if family in ALLOWED[role]:
            assert response.status_code not in (401, 403), (role, family, response.status_code, response.text)
        else:
            assert response.status_code == 403, (role, family, response.status_code, response.text)
            if path.startswith("/fhir"):
                assert response.json()["issue"][0]["code"] == "forbidden"
            else:
                assert "may not" in response.json()["message"]


def test_missing_credentials_get_401_with_a_challenge(anonymous):
    for method, path, options in _requests().values():
        response = anonymous.request(method, path, **{key: value for key, value in options.items()})
        assert response.status_code == 401, (path, response.status_code)
        assert "Bearer" in response.headers["www-authenticate"] and "Basic" in response.headers["www-authenticate"]
        if path.startswith("/fhir"):
            assert response.json()["resourceType"] == "OperationOutcome"
            assert response.json()["issue"][0]["code"] == "login"
        else:
            assert response.json()["status"] == 401


def test_public_endpoints_need_no_credentials(anonymous):
    for path in ("/healthz", "/readyz", "/fhir/metadata", "/.well-known/jwks.json", "/.well-known/smart-configuration"):
        assert anonymous.get(path).status_code == 200, path
    preflight = anonymous.options("/fhir/Patient", headers={"Origin": "http://viewer.example",
                                                            "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 200
    # Public to read, not to anything else: other methods need credentials as every other path does.
    for method, path in (("POST", "/fhir/metadata"), ("DELETE", "/fhir/metadata"), ("POST", "/healthz"),
                         ("PUT", "/.well-known/jwks.json"), ("GET", "/auth/token")):
        assert anonymous.request(method, path).status_code == 401, (method, path)


def test_each_kind_of_bad_token_gets_401(anonymous, services, tmp_path):
    issuer = services.auth.issuer
    newest = issuer._keys()[-1]
    now = int(time.time())

    def signed(**claims: object) -> str:
        payload = {"iss": issuer.issuer, "aud": "medaiflow", "sub": "x", "exp": now + 60, "scope": "user/*.rs", **claims}
        return jwt.encode(payload, newest.private, algorithm="ES256", headers={"kid": newest.kid})

    foreign, _ = TokenIssuer(tmp_path / "foreign", issuer.issuer).issue("x", "admin", "user/*.cruds", client=False)
    cases = {
        "malformed": "not.a.token",
        "expired": signed(exp=now - 5),
        "wrong audience": signed(aud="another-server"),
        "wrong issuer": signed(iss="https://elsewhere"),
        "wrongly signed": foreign,
    }
    for kind, token in cases.items():
        for path in ("/fhir/Patient", "/dicom-web/studies"):
            response = anonymous.get(path, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (kind, path)
            assert 'error="invalid_token"' in response.headers["www-authenticate"], kind


def test_scopes_narrow_a_role(anonymous, services):
    headers = _bearer(services, Role.CLINICIAN, "user/Patient.r")
    assert anonymous.get("/fhir/Patient/someone", headers=headers).status_code == 404
    assert anonymous.get("/fhir/Patient", headers=headers).status_code == 403  # r, not s
    assert anonymous.get("/fhir/DiagnosticReport", headers=headers).status_code == 403


def test_bundle_entries_are_authorized_one_by_one(anonymous, services):
    headers = _bearer(services, Role.CLINICIAN)
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?_count=1"}},
        {"resource": {"resourceType": "Task", "status": "draft", "intent": "plan"}, "request": {"method": "POST", "url": "Task"}},
    ]}
    answer = anonymous.post("/fhir", json=batch, headers=headers).json()
    assert [entry["response"]["status"][:3] for entry in answer["entry"]] == ["200", "403"]
    transaction = {**batch, "type": "transaction"}
    refused = anonymous.post("/fhir", json=transaction, headers=headers)
    assert refused.status_code == 403
    assert anonymous.get("/fhir/Task", headers=_bearer(services, Role.ADMIN)).json()["total"] == 0


def test_http_basic_for_users_and_clients_as_pacs_send_them(anonymous, services):
    services.auth.identities.add_user("scanner", Role.MODALITY, "a long scanner password")
    body, content_type = multipart_body([CT])
    good = "Basic " + base64.b64encode(b"scanner:a long scanner password").decode()
    stored = anonymous.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type, "Authorization": good})
    assert stored.status_code == 200
    assert anonymous.get("/dicom-web/studies", headers={"Authorization": good}).status_code == 403
    client_id, secret = services.auth.identities.add_client("ehr", "system/DiagnosticReport.rs")
    system = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    assert anonymous.get("/fhir/DiagnosticReport", headers={"Authorization": system}).status_code == 200
    assert anonymous.get("/fhir/Patient", headers={"Authorization": system}).status_code == 403
    # Guessing: five failures, then this address waits, even with a right password.
    wrong = "Basic " + base64.b64encode(b"scanner:wrong").decode()
    statuses = [anonymous.get("/dicom-web/studies", headers={"Authorization": wrong}).status_code for _ in range(6)]
    assert statuses[:5] == [401] * 5 and statuses[5] == 429
    fresh = "Basic " + base64.b64encode(b"scanner:a long scanner password!").decode()
    limited = anonymous.get("/dicom-web/studies", headers={"Authorization": fresh})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_a_right_password_sent_in_parallel_is_checked_once_and_never_refused(live_server, services):
    """A PACS sends its STOWs in parallel; each in-flight check used to count as an attempt until done."""
    services.auth.identities.add_user("pacs-user", Role.CLINICIAN, "a long pacs-user password")
    good = "Basic " + base64.b64encode(b"pacs-user:a long pacs-user password").decode()
    statuses: list[int] = []

    def query() -> None:
        statuses.append(httpx.get(f"{live_server}/dicom-web/studies", headers={"Authorization": good}, timeout=60).status_code)

    threads = [threading.Thread(target=query) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 12


def test_when_a_shared_check_fails_the_waiting_requests_check_again(live_server, services, monkeypatch):
    """The check that failed (a dropped database connection, say) fails its own request alone."""
    identities = services.auth.identities
    identities.add_user("pacs-two", Role.CLINICIAN, "a long pacs-two password")
    real = identities.authenticate_user
    calls: list[str] = []

    def first_check_fails(name: str, secret: str):  # type: ignore[no-untyped-def]
        calls.append(name)
        time.sleep(0.3)  # long enough for the others to arrive and wait on it
        if len(calls) == 1:
            raise RuntimeError("the database connection was dropped")
        return real(name, secret)

    monkeypatch.setattr(identities, "authenticate_user", first_check_fails)
    header = {"Authorization": "Basic " + base64.b64encode(b"pacs-two:a long pacs-two password").decode()}
    statuses: list[int] = []

    def query() -> None:
        statuses.append(httpx.get(f"{live_server}/fhir/Patient", headers=header, timeout=30).status_code)

    threads = [threading.Thread(target=query) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 200, 200, 500]
    assert len(calls) == 2  # the failed check, then one check for all that waited


def test_includes_and_chains_reach_only_readable_types(anonymous, services):
    clinician = _bearer(services, Role.CLINICIAN)
    for path, params in [
        ("/fhir/Patient", {"_revinclude": "AuditEvent:patient"}),
        ("/fhir/Provenance", {"target:AuditEvent.outcome": "0"}),
        ("/fhir/Patient", {"_has:AuditEvent:patient:outcome": "0"}),
    ]:
        response = anonymous.get(path, params=params, headers=clinician)
        assert response.status_code == 403, (path, params)
        assert "AuditEvent" in response.json()["issue"][0]["diagnostics"]
    assert anonymous.get("/fhir/Patient", params={"_revinclude": "Observation:subject"}, headers=clinician).status_code == 200
    # Task.focus may point at any type, AuditEvent included: only a grant that reads every type may include it.
    operator = _bearer(services, Role.AI_OPERATOR)
    assert anonymous.get("/fhir/Task", params={"_include": "Task:focus"}, headers=operator).status_code == 403
    assert anonymous.get("/fhir/Task", params={"_include": "Task:focus"}, headers=_bearer(services, Role.ADMIN)).status_code == 200
    batch = {"resourceType": "Bundle", "type": "batch",
             "entry": [{"request": {"method": "GET", "url": "Patient?_revinclude=AuditEvent:patient"}}]}
    answer = anonymous.post("/fhir", json=batch, headers=clinician).json()
    assert answer["entry"][0]["response"]["status"].startswith("403")


def test_a_type_history_is_a_search(anonymous, services):
    reader = _bearer(services, Role.CLINICIAN, "user/Patient.r")
    assert anonymous.get("/fhir/Patient/_history", headers=reader).status_code == 403
    assert anonymous.head("/fhir/Patient", headers=reader).status_code == 403


def test_malformed_basic_credentials_are_401_not_500(anonymous):
    # Header bytes beyond ASCII arrive as Latin-1 text.
    for header in (b"Basic \xe9\xe9", b"Basic !!!", b"Basic " + base64.b64encode(b"\xff\xfe")):
        response = anonymous.get("/dicom-web/studies", headers={"Authorization": header})
        assert response.status_code == 401, header
    token = anonymous.post("/auth/token", content="grant_type=client_credentials",
                           headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": b"Basic \xe9"})
    assert token.status_code == 401


def test_attempts_in_flight_count_against_the_limit():
    from server.auth.limits import FailedLogins

    limits = FailedLogins(limit=5)
    assert all(limits.attempt("name:x", "address:a") is None for _ in range(5))  # five checks still running
    assert limits.attempt("name:x", "address:a") is not None
    limits.succeeded("name:x", "address:a", afresh="name:x")  # one of them was right: the name starts afresh
    assert limits.attempt("name:x", "address:b") is None


def test_names_tried_long_ago_are_forgotten_once_many_are_kept(monkeypatch):
    import server.auth.limits as limits_module
    from server.auth.limits import FailedLogins

    clock = [1000.0]
    monkeypatch.setattr(limits_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(FailedLogins, "_MEMORY", 50)
    limits = FailedLogins(limit=5, window_seconds=60)
    for number in range(50):  # each name tried once, from addresses of their own
        limits.attempt(f"name:n{number}", f"address:{number}")
    clock[0] += 61
    limits.attempt("name:late", "address:late")
    assert set(limits._failures) == {"name:late", "address:late"}
    for number in range(60):  # within the window, none is forgotten: their limits still hold
        limits.attempt("name:x", f"address:x{number}")
    assert limits.attempt("name:x", "address:y") is not None


def test_ordering_inference_needs_reading_the_study(anonymous, services):
    """The answer to an order tells whether its study exists, and its patient
    (Task.for): a client that may write Tasks but not read studies learns
    nothing from the refusal, whether the study exists or not."""
    admin = _bearer(services, Role.ADMIN)
    body, content_type = multipart_body([CT])
    assert anonymous.post("/dicom-web/studies", content=body, headers={**admin, "Content-Type": content_type}).status_code == 200
    writer = _bearer(services, Role.AI_OPERATOR, "system/Task.cru")

    def order(study: str) -> dict:
        return {"resourceType": "Task", "status": "requested", "intent": "order",
                "focus": {"reference": f"ImagingStudy/{study}"}}

    answers = [
        anonymous.post("/fhir/Task", json=order(STUDY), headers=writer),
        anonymous.post("/fhir/Task", json=order("1.2.3.404"), headers=writer),
        anonymous.put("/fhir/Task/order-1", json={**order(STUDY), "id": "order-1"}, headers=writer),
        anonymous.post("/fhir", headers=writer, json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": order(STUDY), "request": {"method": "POST", "url": "Task"}}]}),
    ]
    answers.append(anonymous.post("/fhir", headers=writer, json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**order(STUDY), "focus": {"reference": f"ImagingStudy?_id={STUDY}"}},  # resolved later
         "request": {"method": "POST", "url": "Task"}}]}))
    assert [answer.status_code for answer in answers] == [403, 403, 403, 403, 403]
    assert answers[0].json()["issue"][0]["diagnostics"] == answers[1].json()["issue"][0]["diagnostics"]
    batch = anonymous.post("/fhir", headers=writer, json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": order(STUDY), "request": {"method": "POST", "url": "Task"}},
        {"resource": {"resourceType": "Task", "status": "draft", "intent": "plan"}, "request": {"method": "POST", "url": "Task"}},
    ]})
    assert [entry["response"]["status"][:3] for entry in batch.json()["entry"]] == ["403", "201"]

    reader = _bearer(services, Role.AI_OPERATOR, "system/Task.cru system/ImagingStudy.r")
    missing = anonymous.post("/fhir/Task", json=order("1.2.3.404"), headers=reader)
    assert missing.status_code == 422  # now it may know: the study is not here


def test_conditional_references_need_searching_their_type(anonymous, services):
    """Resolving `Patient?identifier=...` is a search: without Patient.s a
    writer could otherwise learn which patients exist."""
    writer = _bearer(services, Role.AI_OPERATOR, "system/Task.cru")
    task = {"resourceType": "Task", "status": "draft", "intent": "proposal",
            "for": {"reference": "Patient?identifier=ACCESS-1"}}
    answer = anonymous.post("/fhir", headers=writer, json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": task, "request": {"method": "POST", "url": "Task"}}]})
    assert answer.status_code == 403 and "Patient.s" in answer.text


@pytest.mark.parametrize("focus", ["x", [1], 5, {"reference": 7}])
def test_a_focus_that_is_no_reference_is_refused_not_a_500(client, focus):
    task = {"resourceType": "Task", "status": "requested", "intent": "order", "focus": focus}
    assert client.post("/fhir/Task", json=task).status_code in (400, 422)
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": task, "request": {"method": "POST", "url": "Task"}}]}
    answer = client.post("/fhir", json=batch)
    assert answer.status_code == 200 and answer.json()["entry"][0]["response"]["status"][:3] in ("400", "422")


def test_a_conditional_update_needs_create_as_well(anonymous, services):
    updater = _bearer(services, Role.AI_OPERATOR, "system/Task.rus")
    task = {"resourceType": "Task", "status": "draft", "intent": "proposal"}
    assert anonymous.put("/fhir/Task?identifier=x", json=task, headers=updater).status_code == 403
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": task, "request": {"method": "PUT", "url": "Task?identifier=x"}}]}
    answer = anonymous.post("/fhir", json=batch, headers=updater).json()
    assert answer["entry"][0]["response"]["status"][:3] == "403"


def test_an_update_that_would_create_needs_create_as_well(anonymous, services):
    updater = _bearer(services, Role.AI_OPERATOR, "system/Task.ru")
    task = {"resourceType": "Task", "id": "made-by-update", "status": "draft", "intent": "proposal"}
    refused = anonymous.put("/fhir/Task/made-by-update", json=task, headers=updater)
    assert refused.status_code == 403, refused.text
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": task, "request": {"method": "PUT", "url": "Task/made-by-update"}}]}
    assert anonymous.post("/fhir", json=batch, headers=updater).json()["entry"][0]["response"]["status"][:3] == "403"
    admin = _bearer(services, Role.ADMIN)
    assert anonymous.get("/fhir/Task/made-by-update", headers=admin).status_code == 404
    # Once it exists, updating it needs no more than update.
    assert anonymous.put("/fhir/Task/made-by-update", json=task, headers=admin).status_code == 201
    assert anonymous.put("/fhir/Task/made-by-update", json=task, headers=updater).status_code == 200


def test_a_conditional_delete_needs_searching_as_well(anonymous, services):
    deleter = _bearer(services, Role.AI_OPERATOR, "system/Task.cd")
    assert anonymous.delete("/fhir/Task?identifier=x", headers=deleter).status_code == 403
    allowed = _bearer(services, Role.AI_OPERATOR, "system/Task.cds")
    assert anonymous.delete("/fhir/Task?identifier=x", headers=allowed).status_code == 204


@pytest.mark.parametrize("role", [Role.ADMIN, Role.AUDITOR, Role.CLINICIAN], ids=lambda role: role.value)
def test_a_write_of_a_type_nobody_writes_is_405_whoever_asks(anonymous, services, role):
    """An admin was told 403 (its scopes), as if some other client could write an AuditEvent."""
    headers = _bearer(services, role)
    created = anonymous.post("/fhir/AuditEvent", json={"resourceType": "AuditEvent"}, headers=headers)
    assert created.status_code == 405 and created.headers["allow"] == "GET, HEAD"
    assert anonymous.delete("/fhir/Patient/p1", headers=headers).status_code == 405
    batch = {"resourceType": "Bundle", "type": "batch",
             "entry": [{"request": {"method": "DELETE", "url": "AuditEvent/1"}}]}
    assert anonymous.post("/fhir", json=batch, headers=headers).json()["entry"][0]["response"]["status"] == "405"
    assert anonymous.post("/fhir/AuditEvent", json={"resourceType": "AuditEvent"}).status_code == 401


def test_an_address_flooding_without_credentials_gets_429_and_one_record_a_window(anonymous, services):
    """Every 401 was recorded: an address sending requests without (valid)
    credentials could flood the audit trail with them. Over its limit it
    gets 429, recorded once a window with the count of those left
    unrecorded; good credentials from the same address still pass."""
    from server.tables import audit_events

    limit = services.auth.unauthenticated
    limit.limit, limit.window_seconds = 3, 4.0  # long enough for a loaded machine to send eleven within
    bad_token = {"Authorization": "Bearer not-a-token"}
    statuses = [anonymous.get("/fhir/Patient", headers=bad_token if number % 2 else {}).status_code
                for number in range(10)]
    assert statuses == [401] * 3 + [429] * 7
    refused = anonymous.get("/fhir/Patient")
    assert refused.headers["content-type"].startswith("application/fhir+json")  # an OperationOutcome
    assert 1 <= int(refused.headers["retry-after"]) <= 5
    assert anonymous.get("/fhir/Patient", headers=_bearer(services, Role.ADMIN)).status_code == 200

    def recorded() -> list[str]:
        with services.engine.connect() as connection:
            events = [orjson.loads(body) for body in connection.execute(select(audit_events.c.event_json)).scalars()]
        return [event["outcomeDesc"] for event in events if "GET /fhir/Patient answered 4" in event["outcomeDesc"]]

    assert [desc.split(" answered ")[1][:3] for desc in recorded()] == ["401"] * 3 + ["429"]
    time.sleep(4.1)  # the window passes: 401s again, then one more record of the refusals
    assert [anonymous.get("/fhir/Patient").status_code for _ in range(5)] == [401] * 3 + [429] * 2
    descriptions = recorded()
    assert [desc.split(" answered ")[1][:3] for desc in descriptions] == ["401"] * 3 + ["429"] + ["401"] * 3 + ["429"]
    assert "(7 did since the last such record)" in descriptions[-1]  # the seven unrecorded of the first window


def test_refused_token_requests_count_against_their_address_alike(anonymous, services):
    """A token request with a wrong password is refused (400), then, past
    the failed logins allowed, 429: each was recorded, a flood path too."""
    from server.tables import audit_events

    services.auth.unauthenticated.limit = 3
    form = {"grant_type": "password", "username": "nobody", "password": "wrong"}
    statuses = [anonymous.post("/auth/token", data=form).status_code for _ in range(8)]
    assert statuses == [400] * 3 + [429] * 5
    with services.engine.connect() as connection:
        events = [orjson.loads(body) for body in connection.execute(select(audit_events.c.event_json)).scalars()]
    answers = [event["outcomeDesc"].split(" answered ")[1][:3] for event in events
               if event["outcomeDesc"].startswith("POST /auth/token")]
    assert answers == ["400"] * 3 + ["429"]


def test_an_ipv6_network_counts_as_one_address(app, services):
    """One host commonly holds a whole /64: counted address by address, it
    got the limit of requests without valid credentials 2^64 times over."""
    services.auth.unauthenticated.limit = 3
    statuses = []
    for host in ("2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:ffff::3", "2001:db8:5:6::4"):
        with TestClient(app, base_url="http://testserver", client=(host, 50000)) as client:
            statuses.append(client.get("/fhir/Patient").status_code)
    with TestClient(app, base_url="http://testserver", client=("2001:db8:5:7::1", 50000)) as client:
        statuses.append(client.get("/fhir/Patient").status_code)  # the next /64: another network
    assert statuses == [401, 401, 401, 429, 401]


@pytest.mark.parametrize(("host", "counted_as"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:5:6:1:2:3:4", "2001:db8:5:6::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client of a dual-stack socket: the same address as over IPv4
    ("testclient", "testclient"),
])
def test_where_a_request_comes_from_as_the_limits_count_it(host, counted_as):
    from server.auth.limits import limited_address

    assert limited_address({"client": (host, 1)}) == counted_as
    assert limited_address({}) == "unknown"
