"""`$validate` (R4 Resource-validate): content checked in general, and writes
rehearsed as a create, an update or a delete, with nothing of them kept."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from server.services import Services
from server.tables import fhir_resources, inference_jobs, workitems
from tests.fhir_checks import seed
from tests.inference_checks import stored_study

PLAIN_TASK = {"resourceType": "Task", "status": "requested", "intent": "order", "description": "read the film"}


def _issue(response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [issue] = outcome["issue"]
    return issue  # type: ignore[no-any-return]


def _valid(response) -> str:
    issue = _issue(response)
    assert (issue["severity"], issue["code"]) == ("information", "informational"), issue
    return issue["diagnostics"]  # type: ignore[no-any-return]


def _invalid(response, code: str = "invalid") -> str:
    issue = _issue(response)
    assert (issue["severity"], issue["code"]) == ("error", code), issue
    return issue["diagnostics"]  # type: ignore[no-any-return]


def _stored(services: Services, table=fhir_resources) -> int:
    """Rows of `table`; of FHIR resources, those but the audit trail's (every request adds to it)."""
    query = select(func.count()).select_from(table)
    if table is fhir_resources:
        query = query.where(fhir_resources.c.resource_type != "AuditEvent")
    with services.engine.connect() as connection:
        return connection.execute(query).scalar_one()


def _client_headers(services: Services, scopes: str) -> dict[str, str]:
    client_id, _ = services.auth.identities.add_client("validator", scopes)
    token, _ = services.auth.issuer.issue(client_id, "", scopes, client=True)
    return {"Authorization": f"Bearer {token}"}


def test_content_of_any_type_is_checked_against_r4(fhir: TestClient, services: Services):
    stored = _stored(services)
    assert "valid against the base FHIR R4" in _valid(
        fhir.post("/fhir/Patient/$validate", json={"resourceType": "Patient", "gender": "male"})
    )
    assert "required value set" in _invalid(
        fhir.post("/fhir/Patient/$validate", json={"resourceType": "Patient", "gender": "x"})
    )
    assert "colour: Extra inputs" in _invalid(
        fhir.post("/fhir/Patient/$validate", json={"resourceType": "Patient", "colour": "blue"})
    )
    assert "the URL names Patient" in _invalid(fhir.post("/fhir/Patient/$validate", json=PLAIN_TASK))
    assert _stored(services) == stored


def test_a_create_is_judged_by_the_write_itself_and_not_kept(fhir: TestClient, services: Services):
    """An inference order meets the Task write hook (the study must be here),
    which the structure alone does not show; a valid order leaves no job."""
    services.jobs.ensure_demo_model()
    order = {**PLAIN_TASK, "focus": {"reference": "ImagingStudy/1.2.3.4"}}
    assert "valid against" in _valid(fhir.post("/fhir/Task/$validate", json=order))
    refused = fhir.post("/fhir/Task", json=order)
    assert refused.status_code == 422
    assert _invalid(fhir.post("/fhir/Task/$validate?mode=create", json=order)) == (
        refused.json()["issue"][0]["diagnostics"]
    )

    before = _stored(services)
    uid = stored_study(fhir, seed=3)
    order["focus"]["reference"] = f"ImagingStudy/{uid}"
    stored = _stored(services)
    assert stored > before
    assert "a create of this Task would be accepted" in _valid(
        fhir.post("/fhir/Task/$validate?mode=create", json=order)
    )
    assert _stored(services) == stored
    assert _stored(services, inference_jobs) == _stored(services, workitems) == 0
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_an_update_is_rehearsed_with_its_if_match(fhir: TestClient):
    task = fhir.post("/fhir/Task", json=PLAIN_TASK).json()
    changed = {**PLAIN_TASK, "id": task["id"], "description": "read it again"}
    url = f"/fhir/Task/{task['id']}/$validate?mode=update"
    assert "is at version 1, not 2" in _invalid(fhir.post(url, json=changed, headers={"If-Match": 'W/"2"'}), "conflict")
    assert "an update to this Task would be accepted" in _valid(
        fhir.post(url, json=changed, headers={"If-Match": 'W/"1"'})
    )
    assert "must be present and equal" in _invalid(fhir.post(url, json={**changed, "id": "other"}))
    current = fhir.get(f"/fhir/Task/{task['id']}").json()
    assert (current["description"], current["meta"]["versionId"]) == ("read the film", "1")


def test_a_deletion_is_asked_without_content(fhir: TestClient, services: Services):
    """An inference job's Task is kept as its record: deleting it is refused."""
    services.jobs.ensure_demo_model()
    uid = stored_study(fhir, seed=4)
    job = fhir.post("/fhir/Task", json={**PLAIN_TASK, "focus": {"reference": f"ImagingStudy/{uid}"}}).json()
    assert "is an inference job" in _invalid(
        fhir.get(f"/fhir/Task/{job['id']}/$validate", params={"mode": "delete"}), "not-supported"
    )
    plain = fhir.post("/fhir/Task", json=PLAIN_TASK).json()
    assert "a deletion of this Task would be accepted" in _valid(
        fhir.get(f"/fhir/Task/{plain['id']}/$validate", params={"mode": "delete"})
    )
    assert fhir.get(f"/fhir/Task/{plain['id']}").status_code == 200


def test_types_the_server_writes_itself_are_not_accepted_as_writes(fhir: TestClient, services: Services):
    seed(services, {"resourceType": "Patient", "id": "p1"})
    assert "read-only here" in _invalid(
        fhir.post("/fhir/Patient/$validate?mode=create", json={"resourceType": "Patient"}), "not-supported"
    )
    assert "read-only here" in _invalid(fhir.get("/fhir/Patient/p1/$validate?mode=delete"), "not-supported")


def test_input_as_parameters(fhir: TestClient):
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": PLAIN_TASK}, {"name": "mode", "valueCode": "create"},
        {"name": "profile", "valueUri": "http://hl7.org/fhir/StructureDefinition/Task"},
    ]}
    assert "would be accepted" in _valid(fhir.post("/fhir/Task/$validate", json=parameters))
    wrong = {**PLAIN_TASK, "status": "dreaming"}
    parameters["parameter"][0] = {"name": "resource", "resource": wrong}
    assert "dreaming" in _invalid(fhir.post("/fhir/Task/$validate", json=parameters))


@pytest.mark.parametrize(("url", "body", "message"), [
    ("/fhir/Task/$validate?mode=bogus", PLAIN_TASK, "mode must be one of"),
    ("/fhir/Task/$validate?mode=update", PLAIN_TASK, "use [type]/[id]/$validate"),
    ("/fhir/Task/t1/$validate?mode=create", PLAIN_TASK, "asked of the type"),
    ("/fhir/Task/$validate?profile=http://example.org/StructureDefinition/my-task", PLAIN_TASK, "not the profile"),
    ("/fhir/Task/$validate?mode=create", {"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "create"}, {"name": "resource", "resource": PLAIN_TASK}]}, "one mode, not 2"),
    ("/fhir/Task/$validate", {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]},
     "needs the resource"),
    ("/fhir/Task/$validate?strictness=high", PLAIN_TASK, "not strictness"),
])
def test_a_question_that_cannot_be_asked_is_400(fhir: TestClient, url: str, body: dict, message: str):
    response = fhir.post(url, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["issue"][0]["diagnostics"]


def test_unknown_type_is_404_and_a_body_of_no_fhir_format_415(fhir: TestClient):
    assert fhir.post("/fhir/Nothing/$validate", json=PLAIN_TASK).status_code == 404
    assert fhir.post("/fhir/Task/$validate", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415


def test_xml_in_and_out(fhir: TestClient):
    body = b'<Patient xmlns="http://hl7.org/fhir"><gender value="x"/></Patient>'
    response = fhir.post("/fhir/Patient/$validate", content=body,
                         headers={"Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+xml")
    assert b"<OperationOutcome" in response.content and b"required value set" in response.content


def test_a_mode_needs_the_right_it_asks_about(client: TestClient, services: Services):
    """Its answer tells what is stored (a version, whether a study exists), so
    a client asks only about writes it may make; content alone, anyone."""
    reader = _client_headers(services, "system/Task.rs")
    assert client.post("/fhir/Task/$validate", json=PLAIN_TASK, headers=reader).status_code == 200
    refused = client.post("/fhir/Task/$validate?mode=create", json=PLAIN_TASK, headers=reader)
    assert refused.status_code == 403
    assert "may not create Task" in refused.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Task/t1/$validate?mode=delete", headers=reader).status_code == 403

    writer = _client_headers(services, "system/Task.crus")
    order = {**PLAIN_TASK, "focus": {"reference": "ImagingStudy/1.2.3"}}
    refused = client.post("/fhir/Task/$validate?mode=create", json=order, headers=writer)
    assert refused.status_code == 403  # before the study is looked up: the answer tells nothing of it
    assert "ImagingStudy.r" in refused.json()["issue"][0]["diagnostics"]


def test_declared_for_every_type(fhir: TestClient):
    statement = fhir.get("/fhir/metadata").json()
    for resource in statement["rest"][0]["resource"]:
        assert {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"} in (
            resource["operation"]
        ), resource["type"]


def test_a_subscription_is_judged_with_its_writers_rights_and_endpoints(tmp_path, database_url):
    """The Subscription write hook needs the request's principal and the
    allowed endpoints: the rehearsal runs it as the write would."""
    from server.app import build_services, create_app
    from server.migrate import upgrade
    from server.settings import Settings
    from tests.conftest import admin_headers

    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, executor="none", demo_model=False,
                        subscription_endpoints="https://ehr.example.org/hooks/")
    services = build_services(settings)
    upgrade(services.engine)
    subscription = {"resourceType": "Subscription", "status": "requested", "reason": "AI results",
                    "criteria": "DiagnosticReport?status=final",
                    "channel": {"type": "rest-hook", "endpoint": "https://elsewhere.example.org/x"}}
    try:
        with TestClient(create_app(services=services), headers=admin_headers(services)) as client:
            url = "/fhir/Subscription/$validate?mode=create"
            assert "MEDAIFLOW_SUBSCRIPTION_ENDPOINTS" in _invalid(client.post(url, json=subscription))
            subscription["channel"]["endpoint"] = "https://ehr.example.org/hooks/a"
            assert "would be accepted" in _valid(client.post(url, json=subscription))
            assert client.get("/fhir/Subscription").json()["total"] == 0
    finally:
        services.engine.dispose()


def test_the_record_of_a_rehearsal_names_the_patients_it_looked_at(fhir: TestClient, services: Services):
    """A rehearsed update or deletion reads the stored resource (its version,
    its hooks' rules): the request's audit record names its patients, before
    and after, as the write's own record would, though nothing was written."""
    task = fhir.post("/fhir/Task", json={**PLAIN_TASK, "for": {"reference": "Patient/before"}}).json()
    moved = {**PLAIN_TASK, "id": task["id"], "for": {"reference": "Patient/after"}}
    assert "would be accepted" in _valid(fhir.post(f"/fhir/Task/{task['id']}/$validate?mode=update", json=moved))
    assert "would be accepted" in _valid(fhir.get(f"/fhir/Task/{task['id']}/$validate?mode=delete"))
    services.audit.chain.project()
    records = fhir.get("/fhir/AuditEvent", params={"subtype": "operation", "_count": 100}).json()["entry"]
    named = {
        record["resource"]["outcomeDesc"].split("?")[0].split(" answered")[0]: sorted(
            entity["what"]["reference"] for entity in record["resource"].get("entity", [])
            if entity.get("role", {}).get("code") == "1"
        )
        for record in records
    }
    url = f"/fhir/Task/{task['id']}/$validate"
    assert named == {f"POST {url}": ["Patient/after", "Patient/before"], f"GET {url}": ["Patient/before"]}


def test_mode_profile_checks_the_stored_resource(client: TestClient, services: Services):
    """R4 resource-validation-mode `profile`: the resource nominated by id, as
    stored, against the nominated profile (here the base definition only). It
    tells of what is stored, so it takes the right to read it."""
    seed(services, {**PLAIN_TASK, "id": "fine"}, {**PLAIN_TASK, "id": "odd", "status": "dreaming"})
    base = {"profile": "http://hl7.org/fhir/StructureDefinition/Task"}
    assert "Task/fine is valid against the base FHIR R4" in _valid(
        client.get("/fhir/Task/fine/$validate", params={"mode": "profile", **base})
    )
    assert "dreaming" in _invalid(client.get("/fhir/Task/odd/$validate", params={"mode": "profile"}))
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "profile"}, {"name": "profile", "valueUri": base["profile"]}]}
    assert "dreaming" in _invalid(client.post("/fhir/Task/odd/$validate", json=parameters))
    assert client.get("/fhir/Task/none/$validate?mode=profile").status_code == 404

    for asked in (client.post("/fhir/Task/$validate?mode=profile", json=PLAIN_TASK),
                  client.post("/fhir/Task/fine/$validate?mode=profile", json={**PLAIN_TASK, "id": "fine"})):
        assert asked.status_code == 400, asked.text
    assert "not the profile" in client.get(
        "/fhir/Task/fine/$validate", params={"mode": "profile", "profile": "http://example.org/my-task"}
    ).json()["issue"][0]["diagnostics"]

    writer = _client_headers(services, "system/Task.cud")
    refused = client.get("/fhir/Task/odd/$validate?mode=profile", headers=writer)
    assert refused.status_code == 403 and "may not read Task" in refused.json()["issue"][0]["diagnostics"]
    reader = _client_headers(services, "system/Task.r")
    assert "dreaming" in _invalid(client.get("/fhir/Task/odd/$validate?mode=profile", headers=reader))


def test_mode_profile_of_an_audit_event_just_recorded_finds_it(client: TestClient, services: Services):
    """AuditEvents are copies of the chain made a moment after it: a profile
    check of one is a read, brought up to date first as a read is."""
    from server.tables import audit_head

    assert client.get("/fhir/Task").status_code == 200
    with services.engine.connect() as connection:
        newest = connection.execute(select(audit_head.c.seq)).scalar_one()
    checked = client.get(f"/fhir/AuditEvent/{newest}/$validate", params={"mode": "profile"})
    assert checked.status_code == 200, checked.text
    assert f"AuditEvent/{newest} is valid" in _valid(checked)
