"""What a client's order says is kept, and an order the server cannot run as
written is refused when it is made, not stored as a Task that orders nothing."""

from typing import Any

import pytest

from fhir_mappings.task import SOURCE_SERIES
from tests.inference_checks import phantom, run_queued, series_bytes, stow, study_uid

EHR_ORDER = {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "ORD-42"}


def _order(uid: str, **elements: Any) -> dict[str, Any]:
    return {"resourceType": "Task", "status": "requested", "intent": "order",
            "focus": {"reference": f"ImagingStudy/{uid}"}, **elements}


def _stored(client, seed: int) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A phantom study sent by STOW-RS: its study and series UIDs."""
    study = phantom(seed, 1)
    payloads = series_bytes(study)
    stow(client, payloads)
    series = client.get(f"/dicom-web/studies/{study_uid(study)}/series").json()
    return study_uid(study), series[0]["0020000E"]["Value"][0]


def _diagnostics(response) -> str:  # type: ignore[no-untyped-def]
    return response.json()["issue"][0]["diagnostics"]  # type: ignore[no-any-return]


def test_the_clients_elements_are_kept_through_the_jobs_life(queued, fhir):
    client, services = queued
    uid, _ = _stored(client, 61)
    extra_input = {"type": {"text": "clinical question"}, "valueString": "lesion follow-up"}
    elements = {
        "identifier": [EHR_ORDER], "priority": "stat", "requester": {"display": "Dr. Who"},
        "note": [{"text": "compare with last year"}], "input": [extra_input],
        "meta": {"tag": [{"system": "http://example.org/tags", "code": "research"}]},
    }
    created = fhir.post("/fhir/Task", json=_order(uid, **elements))
    assert created.status_code == 201, created.text
    found = fhir.get("/fhir/Task", params={"identifier": f"{EHR_ORDER['system']}|{EHR_ORDER['value']}"}).json()
    assert [entry["resource"]["id"] for entry in found.get("entry", [])] == [created.json()["id"]]

    assert run_queued(services) == [created.json()["id"]]
    done = fhir.get(f"/fhir/Task/{created.json()['id']}").json()
    assert done["status"] == "completed"
    for name in ("identifier", "priority", "requester", "note"):
        assert done[name] == elements[name], name
    assert done["input"][1:] == [extra_input]  # after the series it ran on, which the server names
    assert done["input"][0]["type"] == {"coding": [SOURCE_SERIES]}
    assert done["meta"]["tag"] == elements["meta"]["tag"]
    assert done["output"][0]["valueReference"]["reference"].startswith("DiagnosticReport/")


def test_a_client_may_change_what_it_said_but_not_what_the_job_runs(queued, fhir):
    client, _ = queued
    uid, _ = _stored(client, 62)
    other_uid, _ = _stored(client, 63)
    task = fhir.post("/fhir/Task", json=_order(uid, description="first")).json()

    changed = fhir.put(f"/fhir/Task/{task['id']}", json={**task, "description": "second", "priority": "urgent"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["description"], changed.json()["priority"]) == ("second", "urgent")
    assert changed.json()["meta"]["versionId"] == "2"
    assert changed.json()["status"] == "requested"

    moved = fhir.put(f"/fhir/Task/{task['id']}", json={**task, "focus": {"reference": f"ImagingStudy/{other_uid}"}})
    assert moved.status_code == 422
    assert "order a new Task" in _diagnostics(moved)
    other_model = fhir.put(f"/fhir/Task/{task['id']}", json={**task, "owner": {"reference": "Device/another"}})
    assert other_model.status_code == 422
    assert fhir.get(f"/fhir/Task/{task['id']}").json()["meta"]["versionId"] == "2"


def test_an_order_for_a_series_is_judged_when_it_is_made(queued, fhir):
    client, _ = queued
    uid, series_uid = _stored(client, 64)

    elsewhere = fhir.post("/fhir/Task", json=_order(uid, input=[
        {"type": {"coding": [SOURCE_SERIES]}, "valueId": "1.2.826.0.1.3680043.8.498.999"}
    ]))
    assert elsewhere.status_code == 422
    assert "is not in ImagingStudy" in _diagnostics(elsewhere)

    created = fhir.post("/fhir/Task", json=_order(uid, input=[{"type": {"coding": [SOURCE_SERIES]}, "valueId": series_uid}]))
    assert created.status_code == 201, created.text
    assert created.json()["input"] == [{"type": {"coding": [SOURCE_SERIES]}, "valueId": series_uid}]


def test_an_order_for_a_series_the_model_does_not_run_on_is_refused(queued, fhir):
    client, services = queued
    study = phantom(65, 1)
    stow(client, series_bytes(study)[:10])  # under the demo model's 20 slices
    series_uid = client.get(f"/dicom-web/studies/{study_uid(study)}/series").json()[0]["0020000E"]["Value"][0]
    device = services.jobs.registry.active()[0].device_id
    refused = fhir.post("/fhir/Task", json=_order(
        study_uid(study), owner={"reference": f"Device/{device}"},
        input=[{"type": {"coding": [SOURCE_SERIES]}, "valueId": series_uid}],
    ))
    assert refused.status_code == 422
    assert "does not run on series" in _diagnostics(refused)


@pytest.mark.parametrize("focus", [
    {"reference": "http://elsewhere.example/fhir/ImagingStudy/{uid}"}, {"reference": "ImagingStudy/{uid}/_history/1"},
    {"reference": "ImagingStudy/"}, {"reference": "ImagingStudy/a/b"}, {"reference": "ImagingStudy"},
    # By type or by the study's DICOM identifier alone: which study is not said in a form the server reads.
    {"type": "ImagingStudy", "identifier": {"value": "{uid}"}},
    {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:{uid}"}},
])
def test_a_focus_the_server_cannot_read_is_refused_not_stored_as_a_plain_task(queued, fhir, focus):
    client, _ = queued
    uid, _ = _stored(client, 66)
    filled = {key: {k: v.format(uid=uid) for k, v in value.items()} if isinstance(value, dict) else value.format(uid=uid)
              for key, value in focus.items()}
    response = fhir.post("/fhir/Task", json=_order(uid, focus=filled))
    assert response.status_code == 422, response.text
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_a_focus_given_with_this_servers_base_is_an_order(queued, fhir):
    client, _ = queued
    uid, _ = _stored(client, 69)
    response = fhir.post("/fhir/Task", json=_order(uid, focus={"reference": f"http://testserver/fhir/ImagingStudy/{uid}"}))
    assert response.status_code == 201, response.text
    assert response.json()["focus"] == {"reference": f"ImagingStudy/{uid}"}
    assert response.json()["businessStatus"]["text"] == "queued"


def test_task_for_must_be_the_studys_patient(queued, fhir):
    client, _ = queued
    uid, _ = _stored(client, 67)
    wrong = fhir.post("/fhir/Task", json=_order(uid, **{"for": {"reference": "Patient/someone-else"}}))
    assert wrong.status_code == 422
    assert "Task.for" in _diagnostics(wrong)
    # A patient named by identifier alone (another's MRN, maybe) cannot be checked: refused, not replaced.
    by_identifier = fhir.post("/fhir/Task", json=_order(uid, **{"for": {"identifier": {"value": "MRN-1"}}}))
    assert by_identifier.status_code == 422
    assert "as a reference" in _diagnostics(by_identifier)
    patient = fhir.get(f"/fhir/ImagingStudy/{uid}").json()["subject"]
    assert fhir.post("/fhir/Task", json=_order(uid, **{"for": patient})).status_code == 201


def test_an_inference_task_is_kept_as_the_jobs_record(queued, fhir):
    client, _ = queued
    uid, _ = _stored(client, 68)
    task = fhir.post("/fhir/Task", json=_order(uid)).json()
    response = fhir.delete(f"/fhir/Task/{task['id']}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, PATCH, PUT"  # a patch may cancel it, as a PUT may
    assert fhir.get(f"/fhir/Task/{task['id']}").status_code == 200


def test_a_decimals_precision_is_a_change_the_job_task_keeps(queued, fhir):
    client, _ = queued
    uid, _ = _stored(client, 65)
    task = fhir.post("/fhir/Task", json=_order(uid)).json()
    head = (f'{{"resourceType":"Task","id":"{task["id"]}","status":"requested","intent":"order",'
            f'"focus":{{"reference":"ImagingStudy/{uid}"}},"input":[{{"type":{{"text":"threshold"}},"valueDecimal":')
    for text in ("1.1", "1.10"):
        changed = fhir.put(f"/fhir/Task/{task['id']}", content=(head + text + "}]}").encode(),
                           headers={"Content-Type": "application/fhir+json"})
        assert changed.status_code == 200, changed.text
        assert f'"valueDecimal":{text}}}'.encode() in changed.content
    assert fhir.get(f"/fhir/Task/{task['id']}").json()["meta"]["versionId"] == "3"


def test_an_ordinary_task_cannot_become_an_order(queued, fhir):
    client, _ = queued
    uid, _ = _stored(client, 66)
    plain = {"resourceType": "Task", "id": "plain-task", "status": "draft", "intent": "order"}
    assert fhir.put("/fhir/Task/plain-task", json=plain).status_code == 201
    refused = fhir.put("/fhir/Task/plain-task", json={**_order(uid), "id": "plain-task"})
    assert refused.status_code == 422 and "new Task" in _diagnostics(refused)
    assert fhir.get("/fhir/Task/plain-task").json()["status"] == "draft"


def test_an_order_sent_twice_with_if_none_exist_makes_one_job(queued, fhir):
    client, services = queued
    uid, _ = _stored(client, 67)
    condition = {"If-None-Exist": f"identifier={EHR_ORDER['system']}|{EHR_ORDER['value']}"}
    first = fhir.post("/fhir/Task", json=_order(uid, identifier=[EHR_ORDER]), headers=condition)
    again = fhir.post("/fhir/Task", json=_order(uid, identifier=[EHR_ORDER]), headers=condition)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert run_queued(services) == [first.json()["id"]]


def test_a_study_order_names_the_series_it_ran_on(queued, fhir):
    client, services = queued
    uid, series_uid = _stored(client, 68)
    task = fhir.post("/fhir/Task", json=_order(uid)).json()
    assert "input" not in task  # any series the model accepts
    assert run_queued(services) == [task["id"]]
    done = fhir.get(f"/fhir/Task/{task['id']}").json()
    assert done["input"] == [{"type": {"coding": [SOURCE_SERIES]}, "valueId": series_uid}]
    unnamed = {key: value for key, value in done.items() if key != "input"}
    again = fhir.put(f"/fhir/Task/{task['id']}", json={**unnamed, "note": [{"text": "seen"}]})  # as ordered: no series
    assert again.status_code == 200, again.text
