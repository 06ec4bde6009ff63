"""FHIR R4 Subscriptions with the rest-hook channel, against a real receiver:
an HTTP server on loopback that records what it is sent (and answers 500 under
`/hook/fail`)."""

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from sqlalchemy import update

from fhir_mappings.errors import InvalidResource
from fhir_mappings.subscription import accepted
from server.jobs.queue import now_micros
from server.services import Services
from server.settings import Settings
from server.tables import clients
from tests.fhir_checks import seed
from tests.inference_checks import order, run_queued, stored_study

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EHR_SCOPES = "system/Subscription.cruds system/DiagnosticReport.rs system/Observation.rs"


class Received(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on a free port of 18100-18199 that keeps every request."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                         self.rfile.read(length)))
                self.send_response(500 if self.path.startswith("/hook/fail") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _bound(Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, f"{len(self.requests)} notifications arrived, not {count}"
        return list(self.requests)


def _bound(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    for port in range(18100, 18200):
        try:
            return ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError:
            continue
    raise RuntimeError("no free port in 18100-18199")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiving = Receiver()
    receiving.thread.start()
    yield receiving
    receiving.server.shutdown()
    receiving.server.server_close()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, receiver: Receiver) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, executor="none", demo_model=False,
        subscription_endpoints=f"{receiver.base}/hook, https://ehr.example.org/fhir-hooks/",
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
        accepted(_subscription("https://ehr.example.org/x"), [], now_micros())


def test_a_past_end_makes_it_off(client, services, receiver):
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, {**_subscription(f"{receiver.base}/hook"), "end": "2001-01-01T00:00:00Z"})
    assert created["status"] == "off"


def test_an_endpoint_that_keeps_failing_sets_the_subscription_to_error(client, services, receiver):
    _, headers = _client_headers(services)
    created = _subscribe(client, headers, _subscription(f"{receiver.base}/hook/fail", payload="application/fhir+json"))
    seed(services, _report("r4"))
    failed = _wait_for_status(client, created["id"], "error")
    assert "answered 500 (3 attempts)" in failed["error"]
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


def test_whoever_updates_a_subscription_makes_it_its_own(client, services, receiver):
    """Else one could send another's data with the other's rights: it sends with its own."""
    first, first_headers = _client_headers(services)
    created = _subscribe(client, first_headers, _subscription(f"{receiver.base}/hook"))
    thief_id, thief = _client_headers(services, scopes="system/Subscription.cruds")
    response = client.put(f"/fhir/Subscription/{created['id']}", json=created, headers=thief)
    assert response.status_code == 403  # it may not read reports, so it may not take the subscription
    assert thief_id in response.json()["issue"][0]["diagnostics"]
    _, second = _client_headers(services)
    assert client.put(f"/fhir/Subscription/{created['id']}", json=created, headers=second).status_code == 200
    services.auth.identities.disable_client(first)  # no longer the owner: nothing changes for the subscription
    seed(services, _report("r7"))
    assert [request.path for request in receiver.wait_for(1)] == ["/hook"]


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
