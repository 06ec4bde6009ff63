"""The whole-system history (R4 http.html#history, `GET [base]/_history`):
every version of the types that keep one, newest first across types, paged
with cursors; of the types the caller may search, and of the resources it
may see."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.settings import Settings
from tests.conftest import admin_headers

TASK = {"resourceType": "Task", "status": "requested", "intent": "order"}
ENDPOINT = "https://ehr.example.org/fhir-hooks/"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, executor="none", demo_model=False,
                    subscription_endpoints=ENDPOINT)


def _bearer(services, name: str, scopes: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    client_id, _ = services.auth.identities.add_client(name, scopes)
    token, _ = services.auth.issuer.issue(client_id, "", scopes, client=True)
    return {"Authorization": f"Bearer {token}"}


def _subscription(client: TestClient, headers: dict[str, str]) -> str:
    body = {"resourceType": "Subscription", "status": "off", "reason": "history", "criteria": "Task?status=ready",
            "channel": {"type": "rest-hook", "endpoint": f"{ENDPOINT}h"}}
    response = client.post("/fhir/Subscription", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]  # type: ignore[no-any-return]


def _listed(bundle: dict) -> list[tuple[str, str, str]]:
    return [(entry["request"]["method"], entry["fullUrl"].split("/fhir/")[1], entry["response"]["etag"])
            for entry in bundle.get("entry", [])]


def test_the_system_history_lists_every_type_newest_first(client, services):
    admin = admin_headers(services)
    first = client.post("/fhir/Task", json=TASK, headers=admin).json()["id"]
    subscription = _subscription(client, admin)
    second = client.post("/fhir/Task", json=TASK, headers=admin).json()["id"]
    assert client.put(f"/fhir/Task/{first}", json={**TASK, "id": first, "status": "ready"},
                      headers=admin).status_code == 200
    assert client.delete(f"/fhir/Task/{second}", headers=admin).status_code == 204

    response = client.get("/fhir/_history", headers=admin)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "history"
    assert bundle["link"] == [{"relation": "self", "url": "http://testserver/fhir/_history"}]
    assert _listed(bundle) == [
        ("DELETE", f"Task/{second}", 'W/"2"'),
        ("PUT", f"Task/{first}", 'W/"2"'),
        ("POST", f"Task/{second}", 'W/"1"'),
        ("POST", f"Subscription/{subscription}", 'W/"1"'),
        ("POST", f"Task/{first}", 'W/"1"'),
    ]
    statuses = [entry["response"]["status"] for entry in bundle["entry"]]
    assert statuses == ["204 No Content", "200 OK", "201 Created", "201 Created", "201 Created"]
    assert "resource" not in bundle["entry"][0]
    assert bundle["entry"][1]["resource"]["status"] == "ready"


def test_the_system_history_pages_and_filters_by_since(client, services):
    admin = admin_headers(services)
    created = [client.post("/fhir/Task", json=TASK, headers=admin).json() for _ in range(5)]
    seen: list[str] = []
    url: str | None = "/fhir/_history?_count=2"
    while url is not None:
        page = client.get(url, headers=admin).json()
        assert len(page.get("entry", [])) <= 2
        seen += [entry["resource"]["id"] for entry in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert seen == [task["id"] for task in reversed(created)]

    since = created[3]["meta"]["lastUpdated"]
    recent = client.get("/fhir/_history", params={"_since": since}, headers=admin).json()
    assert [entry["resource"]["id"] for entry in recent["entry"]] == [created[4]["id"], created[3]["id"]]
    assert client.get("/fhir/_history", params={"_since": "2020"}, headers=admin).status_code == 400


def test_a_cursor_belongs_to_the_history_it_came_from(client, services):
    admin = admin_headers(services)
    for _ in range(3):
        client.post("/fhir/Task", json=TASK, headers=admin)
    system_next = next(link["url"] for link in client.get("/fhir/_history?_count=1", headers=admin).json()["link"]
                       if link["relation"] == "next")
    type_next = next(link["url"] for link in client.get("/fhir/Task/_history?_count=1", headers=admin).json()["link"]
                     if link["relation"] == "next")
    system_cursor = system_next.partition("_cursor=")[2]
    type_cursor = type_next.partition("_cursor=")[2]
    assert client.get(f"/fhir/Task/_history?_cursor={system_cursor}", headers=admin).status_code == 400
    assert client.get(f"/fhir/_history?_cursor={type_cursor}", headers=admin).status_code == 400
    assert client.get(f"/fhir/_history?_cursor={system_cursor}", headers=admin).status_code == 200


def test_the_system_history_holds_what_the_caller_may_search_and_see(client, services):
    admin = admin_headers(services)
    task = client.post("/fhir/Task", json=TASK, headers=admin).json()["id"]
    ehr = _bearer(services, "ehr", "system/Subscription.cruds system/Task.rs")
    theirs = _subscription(client, ehr)
    other = _bearer(services, "other-ehr", "system/Subscription.cruds system/Task.rs")
    mine = _subscription(client, other)

    # Another client's Subscription is not there for it, as it is not in a search.
    assert _listed(client.get("/fhir/_history", headers=other).json()) == [
        ("POST", f"Subscription/{mine}", 'W/"1"'), ("POST", f"Task/{task}", 'W/"1"'),
    ]
    assert [listed[1] for listed in _listed(client.get("/fhir/_history", headers=admin).json())] == [
        f"Subscription/{mine}", f"Subscription/{theirs}", f"Task/{task}",
    ]
    # Only the types it may search: a read right alone does not list a type.
    tasks_only = _bearer(services, "tasks", "system/Task.rs system/Subscription.r")
    assert _listed(client.get("/fhir/_history", headers=tasks_only).json()) == [("POST", f"Task/{task}", 'W/"1"')]
    for scopes in ("system/Patient.rs system/ImagingStudy.rs", "system/Task.r"):  # no type it may search keeps one
        refused = client.get("/fhir/_history", headers=_bearer(services, "none", scopes))
        assert refused.status_code == 403, scopes
        assert refused.json()["resourceType"] == "OperationOutcome"


def test_the_system_history_is_declared_and_audited(client, services):
    admin = admin_headers(services)
    statement = client.get("/fhir/metadata").json()
    assert {"code": "history-system"} in statement["rest"][0]["interaction"]
    assert client.get("/fhir/_history", headers=admin).status_code == 200
    services.audit.chain.project()
    events = client.get("/fhir/AuditEvent", params={"subtype": "history-system"}, headers=admin).json()
    assert events["total"] == 1
    assert client.post("/fhir/_history", json=TASK, headers=admin).status_code in (404, 405)


def test_a_bundle_entry_reads_the_system_history(client, services):
    admin = admin_headers(services)
    task = client.post("/fhir/Task", json=TASK, headers=admin).json()["id"]
    ehr = _bearer(services, "ehr", "system/Subscription.cruds system/Task.rs")
    subscription = _subscription(client, ehr)
    entry = {"request": {"method": "GET", "url": "_history?_count=5"}}
    for kind in ("batch", "transaction"):
        answer = client.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": [entry]}, headers=ehr)
        [result] = answer.json()["entry"]
        assert result["response"]["status"] == "200 OK"
        assert _listed(result["resource"]) == [("POST", f"Subscription/{subscription}", 'W/"1"'),
                                               ("POST", f"Task/{task}", 'W/"1"')]
    tasks_only = _bearer(services, "tasks", "system/Task.rs")
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [entry]}
    answer = client.post("/fhir", json=batch, headers=tasks_only)
    assert _listed(answer.json()["entry"][0]["resource"]) == [("POST", f"Task/{task}", 'W/"1"')]
    answer = client.post("/fhir", json=batch, headers=_bearer(services, "none", "system/Patient.rs"))
    assert answer.json()["entry"][0]["response"]["status"].startswith("403")
