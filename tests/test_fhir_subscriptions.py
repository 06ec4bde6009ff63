"""FHIR R4 Subscriptions with the rest-hook channel, against a real receiver:
an HTTP server on loopback that records what it is sent (and answers 500 under
`/hook/fail`), and one that answers a header line at a time, slowly."""

import socketserver
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from sqlalchemy import func, insert, select, update

from fhir_mappings.errors import InvalidResource
from fhir_mappings.subscription import accepted, sendable_url
from server.auth.scopes import Role
from server.fhir import subscriptions
from server.fhir.subscription_delivery import DeliveryPolicy
from server.fhir.subscriptions import as_sent
from server.jobs.queue import now_micros
from server.services import Services
from server.settings import Settings
from server.tables import clients, fhir_subscription_notifications
from tests.fhir_checks import seed
from tests.inference_checks import order, run_queued, stored_study

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EHR_SCOPES = "system/Subscription.cruds system/DiagnosticReport.rs system/Observation.rs"


class Received(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]]


class Receiver:
    """An HTTP server on a free port that keeps every request."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                         self.rfile.read(length), list(self.headers.items())))
                self.send_response(500 if self.path.startswith("/hook/fail") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _record

            def log_message(self, *args: Any) -> None:
                pass

        # A port the system picks: the first free one of a fixed range was the one the test before had just let
        # go, and a notification that test's server still retried reached this test's receiver.
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, f"{len(self.requests)} notifications arrived, not {count}"
        return list(self.requests)


class Trickler:
    """An endpoint that reads a request, then answers its head one header line
    every 0.2 s for a minute: each read is quick, the answer never whole."""

    def __init__(self) -> None:
        self.connections = 0
        trickler = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                trickler.connections += 1
                self.request.recv(65536)
                try:
                    self.request.sendall(b"HTTP/1.1 200 OK\r\n")
                    for _ in range(300):
                        self.request.sendall(b"X-Slow: yes\r\n")
                        time.sleep(0.2)
                except OSError:
                    return  # the server gave up: what this endpoint is for

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiving = Receiver()
    receiving.thread.start()
    yield receiving
    receiving.server.shutdown()
    receiving.server.server_close()


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    trickling = Trickler()
    trickling.thread.start()
    yield trickling
    trickling.server.shutdown()
    trickling.server.server_close()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, receiver: Receiver, trickler: Trickler) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, executor="none", demo_model=False,
        subscription_endpoints=f"{receiver.base}/hook, https://ehr.example.org/fhir-hooks/, {trickler.base}/slow/",
        subscription_attempts=3, subscription_retry_seconds=0.05, subscription_timeout_seconds=2,
    )


def _client_headers(services: Services, scopes: str = EHR_SCOPES, asked: str | None = None) -> tuple[str, dict]:
    """A registered client (its id) and a Bearer token of it, for the scopes `asked` (all of its own by default)."""
    client_id, _ = services.auth.identities.add_client("ehr", scopes)
    token, _ = services.auth.issuer.issue(client_id, "", asked or scopes, client=True)
    return client_id, {"Authorization": f"Bearer {token}"}


def _subscription(endpoint: str, criteria: str = "DiagnosticReport?status=final", **channel: Any) -> dict:
    return {"resourceType": "Subscription", "status": "requested", "reason": "AI results for the EHR",
            "criteria": criteria, "channel": {"type": "rest-hook", "endpoint": endpoint, **channel}}


def _report(report_id: str, status: str = "final") -> dict:
    return {"resourceType": "DiagnosticReport", "id": report_id, "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
            "subject": {"reference": "Patient/p1"}}


def _subscribe(client, headers: dict, body: dict) -> dict:
    response = client.post("/fhir/Subscription", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _wait_for_status(client, subscription_id: str, status: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        subscription = client.get(f"/fhir/Subscription/{subscription_id}").json()
        if subscription["status"] == status:
            return subscription  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"Subscription/{subscription_id} is {subscription['status']}, not {status}")


def test_a_matching_write_is_put_to_the_endpoint_as_stored(client, services, receiver):
    owner, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(
        f"{receiver.base}/hook", payload="application/fhir+json", header=["Authorization: Bearer for-the-ehr"]))
    assert created["status"] == "active"  # requested, accepted
    seed(services, _report("not-final", status="preliminary"))
    seed(services, _report("r1"))
    [notification] = receiver.wait_for(1)
    assert (notification.method, notification.path) == ("PUT", "/hook/DiagnosticReport/r1")
    assert notification.headers["content-type"] == "application/fhir+json"
    assert notification.headers["authorization"] == "Bearer for-the-ehr"
    assert notification.body == client.get("/fhir/DiagnosticReport/r1").content  # the stored resource, byte for byte
    time.sleep(0.5)
    assert [request.path for request in receiver.requests] == ["/hook/DiagnosticReport/r1"]  # preliminary: none

    # Each send is in the audit trail: what left, to where, on whose behalf.
    bundle = client.get("/fhir/AuditEvent", params={"type": f"{DCM}|110106"}).json()
    [event] = [entry["resource"] for entry in bundle["entry"]]
    assert event["outcome"] == "0"
    assert event["agent"][0]["who"]["identifier"]["value"] == owner
    assert event["agent"][0]["network"] == {"address": f"{receiver.base}/hook/DiagnosticReport/r1", "type": "5"}
    references = {entity["what"]["reference"] for entity in event["entity"] if "reference" in entity.get("what", {})}
    assert {"DiagnosticReport/r1/_history/1", f"Subscription/{created['id']}", "Patient/p1"} <= references


def test_without_a_payload_the_endpoint_gets_an_empty_post(client, services, receiver):
    _, headers = _client_headers(services)
    _subscribe(client, headers, _subscription(f"{receiver.base}/hook/ping", criteria="Observation?code=C1"))
    seed(services, {"resourceType": "Observation", "id": "o1", "status": "final",
                    "code": {"coding": [{"system": "urn:x", "code": "C1"}]}})
    [notification] = receiver.wait_for(1)
    assert (notification.method, notification.path, notification.body) == ("POST", "/hook/ping", b"")


def test_an_update_is_notified_and_a_subscription_turned_off_sends_nothing(client, services, receiver):
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base}/hook", payload="application/json"))
    seed(services, _report("r2"))
    seed(services, {**_report("r2"), "conclusion": "amended text"})
    arrived = receiver.wait_for(1)
    time.sleep(0.3)
    assert orjson.loads(receiver.requests[-1].body)["conclusion"] == "amended text"
    assert all(request.path == "/hook/DiagnosticReport/r2" for request in arrived)
    off = client.put(f"/fhir/Subscription/{created['id']}", json={**created, "status": "off"}, headers=headers)
    assert off.status_code == 200 and off.json()["status"] == "off"
    count = len(receiver.requests)
    seed(services, _report("r3"))
    time.sleep(0.8)
    assert len(receiver.requests) == count


@pytest.mark.parametrize("change, diagnostic", [
    ({"channel": {"type": "websocket", "endpoint": "wss://x"}}, "only rest-hook is offered"),
    ({"channel": {"type": "email", "endpoint": "mailto:a@b"}}, "only rest-hook is offered"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://10.0.0.1/steal"}}, "MEDAIFLOW_SUBSCRIPTION_ENDPOINTS"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org.evil.net/fhir-hooks/x"}},
     "MEDAIFLOW_SUBSCRIPTION_ENDPOINTS"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/elsewhere"}},
     "MEDAIFLOW_SUBSCRIPTION_ENDPOINTS"),
    ({"channel": {"type": "rest-hook", "endpoint": "ftp://ehr.example.org/fhir-hooks/"}}, "http or https"),
    ({"channel": {"type": "rest-hook", "endpoint": "/relative"}}, "http or https"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://u:p@ehr.example.org/fhir-hooks/"}}, "credentials"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/fhir-hooks/",
                  "payload": "application/fhir+xml"}}, "payload"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/fhir-hooks/",
                  "header": ["Content-Type: text/plain"]}}, "sets Content-Type itself"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/fhir-hooks/", "header": ["no colon"]}},
     "not an HTTP header"),
    ({"criteria": "DiagnosticReport?nonsense=1"}, "unknown search parameter 'nonsense'"),
    ({"criteria": "DiagnosticReport?date=yesterday"}, "is not a FHIR date"),
    ({"criteria": "Unicorn?status=final"}, "not a resource type this server supports"),
    ({"criteria": "AuditEvent?type=110106"}, "cannot be subscribed to"),
    ({"criteria": "DiagnosticReport?status=final&_include=DiagnosticReport:result"}, "search conditions only"),
    ({"criteria": "DiagnosticReport?status=final&_format=json"}, "search conditions only"),
    ({"criteria": "DiagnosticReport?status=final&_cursor=abc"}, "search conditions only"),
    # Dot segments, plain or escaped, which clients and receivers resolve out of the allowed prefix.
    *[({"channel": {"type": "rest-hook", "endpoint": f"https://ehr.example.org/fhir-hooks/{tail}"}}, diagnostic)
      for tail, diagnostic in [
          ("../secret", ". or .. path segments"), ("./../secret", ". or .. path segments"),
          ("..", ". or .. path segments"), ("x/.", ". or .. path segments"), ("%2e%2e/secret", ". or .. path segments"),
          (".%2E/secret", ". or .. path segments"), ("..%2fsecret", "escapes a /"), ("a%5C..", "escapes a /"),
          ("a%zz", "escapes nothing"), ("..\\secret", "characters a URL sent as written may not"),
          ("a b", "characters"), ("a\tb", "characters"), ("a\nb", "characters"), ("caf\u00e9", "characters"),
          ("x?", "characters"), ("x#", "characters"), ("x?a=1", "characters"),
      ]],
    ({"channel": {"type": "rest-hook", "endpoint": "https://@ehr.example.org/fhir-hooks/"}}, "credentials"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org:99999/fhir-hooks/"}}, "is not a URL"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://[zz]/fhir-hooks/"}}, "is not a URL"),
    # Header values the server could not send as written: RFC 9110 field-values are visible ASCII.
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/fhir-hooks/",
                  "header": ["Authorization: Bearer caf\u00e9"]}}, "not an HTTP header"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/fhir-hooks/",
                  "header": ["X-A: a\u007fb"]}}, "not an HTTP header"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/fhir-hooks/",
                  "header": ["X A: b"]}}, "not an HTTP header"),
    ({"status": "error"}, "set by the server"),
])
def test_what_the_server_cannot_serve_is_refused_with_422(client, services, change, diagnostic):
    _, headers = _client_headers(services)
    body = {**_subscription("https://ehr.example.org/fhir-hooks/ai"), **change}
    response = client.post("/fhir/Subscription", json=body, headers=headers)
    assert response.status_code == 422, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert diagnostic in outcome["issue"][0]["diagnostics"]


def test_no_endpoint_is_allowed_by_default():
    assert Settings().subscription_endpoint_list == []
    with pytest.raises(InvalidResource, match="allowed: none"):
        accepted(_subscription("https://ehr.example.org/x"), [], as_sent, now_micros())


def test_a_past_end_makes_it_off(client, services, receiver):
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, {**_subscription(f"{receiver.base}/hook"), "end": "2001-01-01T00:00:00Z"})
    assert created["status"] == "off"


def test_an_endpoint_that_keeps_failing_sets_the_subscription_to_error(client, services, receiver):
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base}/hook/fail", payload="application/fhir+json"))
    seed(services, _report("r4"))
    failed = _wait_for_status(client, created["id"], "error")
    # The endpoint, not the resource: a reader of the Subscription may not be allowed to read it.
    assert f"PUT {receiver.base}/hook/fail/DiagnosticReport/… answered 500 (3 attempts)" in failed["error"]
    assert "r4" not in failed["error"]
    assert failed["meta"]["versionId"] == "2"
    assert [request.path for request in receiver.requests] == ["/hook/fail/DiagnosticReport/r4"] * 3
    history = client.get(f"/fhir/Subscription/{created['id']}/_history").json()
    assert [entry["resource"]["status"] for entry in history["entry"]] == ["error", "active"]
    # Asked again (requested), it is active once more, without the server's error text.
    restarted = client.put(f"/fhir/Subscription/{created['id']}", json={**failed, "status": "requested"},
                           headers=headers).json()
    assert restarted["status"] == "active" and "error" not in restarted


def test_subscribing_needs_the_right_to_read_what_it_matches(client, services, receiver):
    _, headers = _client_headers(services, asked="system/Subscription.cruds")  # its token did not ask for reports
    response = client.post("/fhir/Subscription", json=_subscription(f"{receiver.base}/hook"), headers=headers)
    assert response.status_code == 403
    assert "DiagnosticReport.r" in response.json()["issue"][0]["diagnostics"]


def test_subscriptions_need_scopes_that_name_them(client, services, receiver):
    """A wildcard does not reach them: their headers carry other systems' credentials."""
    _, headers = _client_headers(services, scopes="system/*.cruds")
    assert client.post("/fhir/Subscription", json=_subscription(f"{receiver.base}/hook"),
                       headers=headers).status_code == 403
    assert client.get("/fhir/Subscription", headers=headers).status_code == 403


@pytest.mark.parametrize("loss", ["narrowed", "disabled"])
def test_an_owner_that_lost_the_right_to_read_gets_nothing(client, services, receiver, loss):
    owner, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base}/hook", payload="application/fhir+json"))
    if loss == "disabled":
        services.auth.identities.disable_client(owner)
    else:
        with services.engine.begin() as connection:
            connection.execute(update(clients).where(clients.c.client_id == owner)
                               .values(scopes="system/Subscription.cruds system/Observation.rs"))
    seed(services, _report("r5"))
    failed = _wait_for_status(client, created["id"], "error")
    assert owner in failed["error"]
    assert ("DiagnosticReport.r" if loss == "narrowed" else "disabled") in failed["error"]
    assert receiver.requests == []


def test_an_admin_that_updates_a_subscription_makes_it_its_own(client, services, receiver):
    """Else it would send with the rights of another, who did not choose where to."""
    first, first_headers = _client_headers(services)
    created = _subscribe(client, first_headers, _subscription(f"{receiver.base}/hook"))
    services.auth.identities.add_user("test-admin", Role.ADMIN, "a long enough password")  # the client's admin
    assert client.put(f"/fhir/Subscription/{created['id']}", json=created).status_code == 200
    services.auth.identities.disable_client(first)  # no longer the owner: nothing changes for the subscription
    seed(services, _report("r7"))
    assert [request.path for request in receiver.wait_for(1)] == ["/hook"]
    # Now the admin's: its former owner's token (still valid) no longer finds it.
    assert client.get(f"/fhir/Subscription/{created['id']}", headers=first_headers).status_code == 404


def test_a_subscription_is_its_owners_alone(client, services, receiver):
    """Its headers carry another system's credentials: anyone else, whatever
    its scopes, finds nothing there, by any path, and cannot change it."""
    readers = f"{EHR_SCOPES} system/Task.cruds system/*.rs system/AuditEvent.rs"  # an include may reach any type
    _, owner = _client_headers(services, scopes=readers)
    created = _subscribe(client, owner, _subscription(
        f"{receiver.base}/hook", payload="application/fhir+json", header=["Authorization: Bearer ehr-secret"]))
    sid = created["id"]
    seed(services, {"resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
                    "focus": {"reference": f"Subscription/{sid}"}})
    _, other = _client_headers(services, scopes=readers)
    assert client.put(f"/fhir/Subscription/{sid}", json={**created, "status": "off"}, headers=owner).status_code == 200
    for url in [f"/fhir/Subscription/{sid}", f"/fhir/Subscription/{sid}/_history/1",
                f"/fhir/Subscription/{sid}/_history"]:
        answer = client.get(url, headers=other)
        assert answer.status_code == 404, (url, answer.text)
        assert "ehr-secret" not in answer.text
        assert client.get(url, headers=owner).status_code == 200, url
        assert client.get(url).status_code == 200, url  # an admin sees every one
    for url, params in [("/fhir/Subscription", {}), ("/fhir/Subscription", {"status": "off"}),
                        ("/fhir/Subscription", {"_lastUpdated": "gt2000-01-01", "_total": "accurate"}),
                        ("/fhir/Subscription/_history", {}), ("/fhir/Task", {"_include": "Task:focus"}),
                        ("/fhir/Task", {"_include": "Task:focus:Subscription"}),
                        ("/fhir/Task", {"focus:Subscription.status": "off"})]:
        mine = client.get(url, params=params, headers=owner).json()
        theirs = client.get(url, params=params, headers=other).json()
        assert f"Subscription/{sid}" in orjson.dumps(mine).decode(), (url, params)
        assert "ehr-secret" not in orjson.dumps(theirs).decode(), (url, params)
        assert not [entry for entry in theirs.get("entry", []) if entry.get("resource", {}).get("resourceType")
                    == "Subscription"], (url, params)
        chained = "focus:Subscription.status" in params
        assert theirs.get("total", 0) == (1 if url == "/fhir/Task" and not chained else 0), (url, params)
    batch = client.post("/fhir", headers=other, json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Subscription/{sid}"}},
        {"request": {"method": "GET", "url": f"Subscription/{sid}/_history"}},
        {"request": {"method": "GET", "url": "Subscription"}},
    ]}).json()
    assert [entry["response"]["status"][:3] for entry in batch["entry"]] == ["404", "404", "200"]
    assert "ehr-secret" not in orjson.dumps(batch).decode()
    # Nor may it change or delete it (and so make it its own, or stop it).
    assert client.put(f"/fhir/Subscription/{sid}", json=created, headers=other).status_code == 404
    assert client.delete(f"/fhir/Subscription/{sid}", headers=other).status_code == 404
    assert client.get(f"/fhir/Subscription/{sid}", headers=owner).json()["status"] == "off"
    # A deleted one's history stays its owner's.
    assert client.delete(f"/fhir/Subscription/{sid}", headers=owner).status_code == 204
    assert client.get(f"/fhir/Subscription/{sid}/_history", headers=other).status_code == 404
    assert len(client.get(f"/fhir/Subscription/{sid}/_history", headers=owner).json()["entry"]) == 3
    assert client.put(f"/fhir/Subscription/{sid}", json=created, headers=other).status_code == 404


def test_subscribing_needs_the_right_to_search_what_it_matches(client, services, receiver):
    """A notification tells whether a resource matches the criteria: what a search would tell."""
    _, headers = _client_headers(services, scopes="system/Subscription.cruds system/DiagnosticReport.r")
    response = client.post("/fhir/Subscription", json=_subscription(f"{receiver.base}/hook"), headers=headers)
    assert response.status_code == 403
    assert "DiagnosticReport.s" in response.json()["issue"][0]["diagnostics"]


def test_the_endpoint_is_stored_as_it_is_sent(client, services, receiver):
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base.upper()}/hook/Case", header=[
        "X-Tag: one", "x-tag: two"]))
    assert created["channel"]["endpoint"] == f"{receiver.base}/hook/Case"
    seed(services, _report("r8"))
    [notification] = receiver.wait_for(1)
    assert notification.path == "/hook/Case"
    # A header given twice is sent twice.
    assert [value for name, value in notification.header_list if name.lower() == "x-tag"] == ["one", "two"]


def test_a_notification_url_is_judged_as_sent():
    """The PUT URL holds the resource's id, which may be a dot segment (ids allow dots)."""
    prefixes = ["http://127.0.0.1:18420/hook/"]
    assert sendable_url("http://127.0.0.1:18420/hook/Task/a.b", prefixes, as_sent) == \
        "http://127.0.0.1:18420/hook/Task/a.b"
    for url in ["http://127.0.0.1:18420/hook/Task/..", "http://127.0.0.1:18420/hook/Task/.",
                "http://127.0.0.1:18420/hook/.."]:
        with pytest.raises(ValueError, match="path segments"):
            sendable_url(url, prefixes, as_sent)


def test_search_by_the_r4_parameters(client, services, receiver):
    _, headers = _client_headers(services)
    hook = f"{receiver.base}/hook/search"
    created = _subscribe(client, headers, _subscription(hook, payload="application/fhir+json"))
    other = _subscribe(client, headers, {**_subscription(f"{receiver.base}/hook/other", criteria="Observation?code=x"),
                                         "status": "off"})
    for name, value, expected in [
        ("status", "active", [created["id"]]), ("url", hook, [created["id"]]), ("url", f"{receiver.base}/hook", []),
        ("payload", "application/fhir+json", [created["id"]]), ("criteria", "DiagnosticReport", [created["id"]]),
        ("type", "rest-hook", sorted([created["id"], other["id"]])), ("type", "websocket", []),
    ]:
        bundle = client.get("/fhir/Subscription", params={name: value}, headers=headers).json()
        assert sorted(entry["resource"]["id"] for entry in bundle.get("entry", [])) == expected, (name, value)


def test_deleting_a_subscription_stops_its_notifications(client, services, receiver):
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base}/hook"))
    assert client.delete(f"/fhir/Subscription/{created['id']}", headers=headers).status_code == 204
    seed(services, _report("r6"))
    time.sleep(0.8)
    assert receiver.requests == []


def test_a_report_published_by_an_inference_job_is_notified(queued, receiver):
    client, services = queued
    _, headers = _client_headers(services)
    _subscribe(client, headers, _subscription(f"{receiver.base}/hook", criteria="DiagnosticReport?code=18748-4",
                                              payload="application/fhir+json"))
    uid = stored_study(client, 71, lesions=1)
    order(client, uid)
    run_queued(services)
    [notification] = receiver.wait_for(1, timeout=30)
    report = orjson.loads(notification.body)
    assert notification.path == f"/hook/DiagnosticReport/{report['id']}"
    assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{uid}"
    assert notification.body == client.get(f"/fhir/DiagnosticReport/{report['id']}").content


def test_the_r4b_model_is_r4s_subscription():
    """R4B keeps R4's Subscription (criteria and channel); R5 replaced it with topics."""
    from fhir.resources.R4B.subscription import Subscription, SubscriptionChannel
    from fhir.resources.subscription import Subscription as R5Subscription

    assert {"criteria", "channel", "end", "error"} <= set(Subscription.model_fields)
    assert {"type", "endpoint", "payload", "header"} <= set(SubscriptionChannel.model_fields)
    assert "criteria" not in R5Subscription.model_fields


def test_a_send_that_raises_anything_is_a_failed_attempt(client, services, receiver, monkeypatch):
    """Not only httpx's errors: else the row came back at every lease, for ever, unaudited."""
    def refuse(*args: Any) -> int:
        raise UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range(128)")

    monkeypatch.setattr(services.subscriptions._http, "send", refuse)
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base}/hook", payload="application/fhir+json"))
    seed(services, _report("r9"))
    failed = _wait_for_status(client, created["id"], "error")
    assert "UnicodeEncodeError" in failed["error"] and "(3 attempts)" in failed["error"]
    bundle = client.get("/fhir/AuditEvent", params={"type": f"{DCM}|110106"}).json()
    assert [entry["resource"]["outcome"] for entry in bundle["entry"]] == ["8"] * 3


def test_a_row_claimed_more_often_than_allowed_ends_its_subscription(client, services, receiver):
    """Its senders died while sending it (or it could not be prepared): it is not claimed for ever."""
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base}/hook"))
    with services.engine.begin() as connection:
        connection.execute(insert(fhir_subscription_notifications).values(
            subscription_id=created["id"], resource_type="DiagnosticReport", resource_id="gone", version_id=1,
            attempts=3, not_before=0, created_at=0))
    failed = _wait_for_status(client, created["id"], "error")
    assert "failed 4 times" in failed["error"]
    assert receiver.requests == []


def test_a_slow_endpoint_is_given_up_on_and_holds_up_no_other(client, services, receiver, trickler):
    """An endpoint answering a header line every 0.2 s never trips a per-read
    timeout: each send has a deadline of its own (2 s here), and the other
    Subscriptions' rows are claimed while it runs."""
    _, headers = _client_headers(services)
    slow = _subscribe(client, headers, _subscription(f"{trickler.base}/slow/", criteria="Observation?code=C1"))
    _subscribe(client, headers, _subscription(f"{receiver.base}/hook"))
    seed(services, {"resourceType": "Observation", "id": "o2", "status": "final",
                    "code": {"coding": [{"system": "urn:x", "code": "C1"}]}})
    deadline = time.monotonic() + 5
    while trickler.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trickler.connections == 1
    written = time.monotonic()
    seed(services, _report("r10"))
    receiver.wait_for(1, timeout=3)
    assert time.monotonic() - written < 2  # not behind the slow send
    started = time.monotonic()
    failed = _wait_for_status(client, slow["id"], "error", timeout=20)
    assert "had no answer within 2 s (3 attempts)" in failed["error"]
    assert time.monotonic() - started < 3 * 2 + 3
    assert trickler.connections == 3


def test_a_slow_send_to_a_subscription_turned_off_meanwhile_is_not_tried_again(client, services, trickler):
    _, headers = _client_headers(services)
    slow = _subscribe(client, headers, _subscription(f"{trickler.base}/slow/", criteria="Observation?code=C1"))
    seed(services, {"resourceType": "Observation", "id": "o3", "status": "final",
                    "code": {"coding": [{"system": "urn:x", "code": "C1"}]}})
    deadline = time.monotonic() + 5
    while trickler.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.put(f"/fhir/Subscription/{slow['id']}", json={**slow, "status": "off"},
                      headers=headers).status_code == 200
    time.sleep(3)
    assert trickler.connections == 1
    assert client.get(f"/fhir/Subscription/{slow['id']}").json()["status"] == "off"


def test_the_lease_outlasts_a_send():
    policy = DeliveryPolicy(attempts=5, retry_seconds=2, timeout_seconds=60)
    assert policy.lease_micros > 60 * 1_000_000 + 10 * 1_000_000


def test_a_subscription_whose_end_passes_is_turned_off(client, services, receiver):
    _, headers = _client_headers(services)
    end = datetime.fromtimestamp(time.time() + 1.5, timezone.utc).isoformat(timespec="milliseconds")
    created = _subscribe(client, headers, {**_subscription(f"{receiver.base}/hook"), "end": end})
    assert created["status"] == "active"
    ended = _wait_for_status(client, created["id"], "off", timeout=10)
    assert ended["meta"]["versionId"] == "2" and "error" not in ended


def test_deleting_a_subscription_while_its_type_is_written(client, services, receiver, monkeypatch):
    """A writer of the watched type that saw the Subscription active adds an
    outbox row for it while it is being deleted: the deletion still succeeds
    (on PostgreSQL it was a foreign key violation, a 500), and that row sends nothing."""
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base}/hook"))
    outboxed, resume = threading.Event(), threading.Event()
    write_outbox = subscriptions._Written.__call__

    def paused_after_outbox(self: Any, connection: Any) -> None:
        write_outbox(self, connection)
        outboxed.set()
        resume.wait(10)

    monkeypatch.setattr(subscriptions._Written, "__call__", paused_after_outbox)
    writer = threading.Thread(target=seed, args=(services, _report("r11")))
    writer.start()
    assert outboxed.wait(10)
    answers: list[int] = []
    deleter = threading.Thread(target=lambda: answers.append(
        client.delete(f"/fhir/Subscription/{created['id']}", headers=headers).status_code))
    deleter.start()
    deleter.join(1)  # on SQLite it waits for the writer's lock; on PostgreSQL it need not
    resume.set()
    writer.join(10)
    deleter.join(10)
    assert answers == [204]
    assert client.get(f"/fhir/Subscription/{created['id']}").status_code == 410
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with services.engine.connect() as connection:
            if connection.execute(select(func.count()).select_from(fhir_subscription_notifications)).scalar() == 0:
                break
        time.sleep(0.1)
    else:
        raise AssertionError("the outbox row of the deleted Subscription stayed")
    assert receiver.requests == []
