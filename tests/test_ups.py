"""UPS-RS (PS3.18 chapter 11): inference jobs ordered, watched and cancelled as
UPS workitems, on a real server in process with the demo model."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from dicom.workitems import MODEL_SCHEME, SEGMENTATION_SOP_CLASS, UPS_PUSH_SOP_CLASS, derived_workitem_uid
from server.auth.scopes import Role, role_grant
from tests.inference_checks import order, phantom, run_queued, series_bytes, stow, study_uid

DEMO = "medaiflow-demo-lesions@1.0.1"
UPS_JSON = {"Content-Type": "application/dicom+json"}
TRANSACTION_UID = "1.2.826.0.1.3680043.8.498.77"


def _stored(client: TestClient, seed: int) -> str:
    study = phantom(seed, 1)
    stow(client, series_bytes(study))
    return study_uid(study)


def _value(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _workitem(study: str, model: str | None = DEMO, start: str = "20240501100000", **extra: Any) -> dict[str, Any]:
    dataset = {
        "00404005": _value("DT", start),
        "00404021": {"vr": "SQ", "Value": [{"0020000D": _value("UI", study)}]},
        "00404041": _value("CS", "READY"),
        "00741000": _value("CS", "SCHEDULED"),
        "00741200": _value("CS", "HIGH"),
        "00741204": _value("LO", "lesion segmentation"),
    }
    if model is not None:
        dataset["00404018"] = {"vr": "SQ", "Value": [{
            "00080100": _value("SH", model), "00080102": _value("SH", MODEL_SCHEME),
            "00080104": _value("LO", "lesions"),
        }]}
    return dataset | extra


def _create(client: TestClient, dataset: dict[str, Any], uid: str | None = None) -> str:
    response = client.post(f"/dicom-web/workitems{'?' + uid if uid else ''}", json=dataset, headers=UPS_JSON)
    assert response.status_code == 201, response.text
    return response.headers["location"].rsplit("/", 1)[1]


def _retrieve(client: TestClient, uid: str) -> dict[str, Any]:
    response = client.get(f"/dicom-web/workitems/{uid}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    [dataset] = response.json()
    return dataset  # type: ignore[no-any-return]


def _first(dataset: dict[str, Any], *path: str) -> Any:
    """The first value down a path of tags (first items of sequences)."""
    for tag in path[:-1]:
        dataset = dataset[tag]["Value"][0]
    return dataset[path[-1]]["Value"][0]


def _tasks(client: TestClient) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in client.get("/fhir/Task").json().get("entry", [])]


def test_a_workitem_orders_a_job_and_follows_it_to_its_seg(queued):
    client, services = queued
    uid = _stored(client, 71)
    response = client.post("/dicom-web/workitems", json=_workitem(uid), headers=UPS_JSON)
    assert response.status_code == 201, response.text
    assert response.content == b""
    location = response.headers["location"]
    assert location.startswith("http://testserver/dicom-web/workitems/2.25.")
    assert "created with modifications" in response.headers["warning"]  # the server chose the UID
    workitem_uid = location.rsplit("/", 1)[1]

    scheduled = _retrieve(client, workitem_uid)
    assert _first(scheduled, "00741000") == "SCHEDULED"
    assert _first(scheduled, "00080016") == UPS_PUSH_SOP_CLASS
    assert _first(scheduled, "00080018") == workitem_uid
    assert _first(scheduled, "00741204") == "lesion segmentation"  # the requester's, kept
    assert _first(scheduled, "00741200") == "HIGH"
    assert _first(scheduled, "0020000D") == uid
    assert scheduled["00100020"]["Value"]  # the study's patient
    assert list(scheduled) == sorted(scheduled)
    [task] = _tasks(client)  # ordered as POST /fhir/Task orders
    assert (task["status"], task["focus"]["reference"]) == ("requested", f"ImagingStudy/{uid}")
    assert task["owner"]["reference"] == f"Device/{services.jobs.registry.get(DEMO).device_id}"

    assert run_queued(services) == [task["id"]]
    done = _retrieve(client, workitem_uid)
    assert _first(done, "00741000") == "COMPLETED"
    assert _first(done, "00741002", "00741004") == 100.0
    performed = done["00741216"]["Value"][0]
    assert _first(performed, "00404019", "00080100") == DEMO
    [output] = performed["00404033"]["Value"]
    assert _first(output, "0040E020") == "DICOM"
    assert _first(output, "0020000D") == uid
    assert _first(output, "00081199", "00081150") == SEGMENTATION_SOP_CLASS
    seg_url = _first(output, "0040E025", "00081190")
    assert seg_url == f"http://testserver/dicom-web/studies/{uid}/series/{_first(output, '0020000E')}"
    seg = client.get(seg_url.removeprefix("http://testserver"),
                     headers={"Accept": "multipart/related; type=application/dicom"})
    assert seg.status_code == 200
    assert _first(output, "00081199", "00081155").encode() in seg.content


def test_a_workitem_is_answered_in_dicom_xml_too(queued):
    client, _ = queued
    workitem_uid = _create(client, _workitem(_stored(client, 72)))
    response = client.get(f"/dicom-web/workitems/{workitem_uid}",
                          headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    assert b'<DicomAttribute tag="00741000" vr="CS" keyword="ProcedureStepState">' in response.content
    assert client.get(f"/dicom-web/workitems/{workitem_uid}", headers={"Accept": "image/png"}).status_code == 406


def test_a_chosen_uid_is_the_workitems_and_only_once(queued):
    client, _ = queued
    uid = _stored(client, 73)
    chosen = "1.2.826.0.1.3680043.8.498.4711"
    assert _create(client, _workitem(uid), chosen) == chosen
    again = client.post(f"/dicom-web/workitems?{chosen}", json=_workitem(uid), headers=UPS_JSON)
    assert again.status_code == 409
    assert chosen in again.json()["message"]
    in_body = "1.2.826.0.1.3680043.8.498.4712"
    assert _create(client, _workitem(uid, **{"00080018": _value("UI", in_body)})) == in_body
    also_named = client.post(f"/dicom-web/workitems?AffectedSOPInstanceUID={in_body}", json=_workitem(uid),
                             headers=UPS_JSON)
    assert also_named.status_code == 409
    assert len(_tasks(client)) == 2


def test_a_requesters_patient_replaced_by_the_studys_is_a_modification(queued):
    """PS3.18 §11.4.3.2: the Warning is due whenever the server modified the workitem, not only for its UID."""
    client, _ = queued
    study = _stored(client, 75)
    chosen, same = "1.2.826.0.1.3680043.8.498.4721", "1.2.826.0.1.3680043.8.498.4722"
    named = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Other^Person"}]}}
    response = client.post(f"/dicom-web/workitems?{chosen}", json=_workitem(study, **named), headers=UPS_JSON)
    assert response.status_code == 201, response.text
    assert "created with modifications" in response.headers["warning"]
    patient = _retrieve(client, chosen)["00100010"]
    assert patient != named["00100010"]  # the study's patient, whom the server knows for sure
    as_stored = client.post(f"/dicom-web/workitems?{same}", json=_workitem(study, **{"00100010": patient}),
                            headers=UPS_JSON)
    assert as_stored.status_code == 201, as_stored.text
    assert "warning" not in as_stored.headers
    stateless = "1.2.826.0.1.3680043.8.498.4723"
    response = client.post(f"/dicom-web/workitems?{stateless}", json=_workitem(study, **{"00741000": {"vr": "CS"}}),
                           headers=UPS_JSON)
    assert "created with modifications" in response.headers["warning"]  # the empty state made SCHEDULED


@pytest.mark.parametrize(("change", "status", "message"), [
    ({"00741000": _value("CS", "IN PROGRESS")}, 400, "must be SCHEDULED"),
    ({"00741000": None}, 400, "ProcedureStepState (0074,1000) is required"),
    ({"00741200": _value("CS", "URGENT")}, 400, "HIGH, MEDIUM, LOW"),
    ({"00741204": {"vr": "LO"}}, 400, "ProcedureStepLabel (0074,1204) needs a value"),
    ({"00404005": _value("DT", "2024-05-01")}, 400, "not a DICOM date and time"),
    ({"00404041": _value("CS", "INCOMPLETE")}, 400, "READY"),
    ({"00404021": {"vr": "SQ"}}, 400, "InputInformationSequence"),
    ({"00404021": {"vr": "SQ", "Value": [{"0020000D": _value("UI", "1.2.3.999")}]}}, 400, "not stored on this server"),
    ({"00404018": {"vr": "SQ", "Value": [{"00080100": _value("SH", "nope@1"),
                                          "00080102": _value("SH", MODEL_SCHEME)}]}}, 400, "no model version nope@1"),
    ({"00404018": {"vr": "SQ", "Value": [{"00080100": _value("SH", "nope"),
                                          "00080102": _value("SH", MODEL_SCHEME)}]}}, 400, "no active model is named"),
    ({"00081195": _value("UI", TRANSACTION_UID)}, 400, "TransactionUID"),
    ({"00080016": _value("UI", "1.2.840.10008.5.1.4.1.1.2")}, 400, "UPS Push"),
    ({"00100020": _value("LO", "someone-else")}, 400, "is of patient"),
    ({"0020000E": "not an element"}, 400, "'vr'"),
])
def test_a_workitem_the_server_cannot_run_is_refused_and_orders_nothing(queued, change, status, message):
    client, _ = queued
    dataset = _workitem(_stored(client, 74)) | change
    dataset = {tag: element for tag, element in dataset.items() if element is not None}
    response = client.post("/dicom-web/workitems", json=dataset, headers=UPS_JSON)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]
    assert _tasks(client) == []
    assert client.get("/dicom-web/workitems").json() == []


def test_bodies_that_are_no_workitem_are_refused(queued):
    client, _ = queued
    uid = _stored(client, 75)
    assert client.post("/dicom-web/workitems", content=b"{", headers=UPS_JSON).status_code == 400
    assert client.post("/dicom-web/workitems", json=[_workitem(uid)] * 2, headers=UPS_JSON).status_code == 400
    xml = client.post("/dicom-web/workitems", content=b"<NativeDicomModel/>",
                      headers={"Content-Type": "application/dicom+xml"})
    assert xml.status_code == 415
    assert client.post("/dicom-web/workitems?1.2.3&limit=1", json=_workitem(uid), headers=UPS_JSON).status_code == 400
    assert client.post("/dicom-web/workitems?not-a-uid", json=_workitem(uid), headers=UPS_JSON).status_code == 400
    empty = client.post("/dicom-web/workitems?AffectedSOPInstanceUID=", json=_workitem(uid), headers=UPS_JSON)
    assert empty.status_code == 400
    assert "the workitem UID '' is not" in empty.json()["message"]  # the value is empty, not the parameter's name
    assert _tasks(client) == []


def test_an_inactive_model_is_refused(queued):
    client, services = queued
    uid = _stored(client, 76)
    services.jobs.registry.deactivate(DEMO)
    response = client.post("/dicom-web/workitems", json=_workitem(uid), headers=UPS_JSON)
    assert response.status_code == 400
    assert "is not active" in response.json()["message"]


def test_a_workitem_without_a_model_runs_the_active_one_that_accepts_the_study(queued):
    client, services = queued
    workitem_uid = _create(client, _workitem(_stored(client, 77), model=None))
    [task] = _tasks(client)
    assert task["owner"]["reference"] == f"Device/{services.jobs.registry.get(DEMO).device_id}"
    assert _first(_retrieve(client, workitem_uid), "00404018", "00080100") == DEMO  # the server says which


def test_cancellation_is_requested_and_granted_once(queued):
    client, services = queued
    uid = _stored(client, 78)
    workitem_uid = _create(client, _workitem(uid))
    reason = {"00741238": _value("LT", "wrong study"), "0074100C": _value("LO", "Dr. Who")}
    response = client.post(f"/dicom-web/workitems/{workitem_uid}/cancelrequest", json=reason, headers=UPS_JSON)
    assert response.status_code == 202, response.text
    assert "warning" not in response.headers
    cancelled = _retrieve(client, workitem_uid)
    assert _first(cancelled, "00741000") == "CANCELED"
    assert _first(cancelled, "00741002", "00741238") == "wrong study (contact: Dr. Who)"
    assert _first(cancelled, "00741002", "00404052").endswith("+0000")
    assert cancelled["00741216"]["Value"][0]["00404033"] == {"vr": "SQ"}  # no output
    # PS3.4 Table CC.2.5-3, Final State "X": a CANCELED workitem has a discontinuation reason (CID 9300).
    [discontinuation] = cancelled["00741002"]["Value"][0]["0074100E"]["Value"]
    assert {key: element["Value"][0] for key, element in discontinuation.items()} == {
        "00080100": "110513", "00080102": "DCM", "00080104": "Discontinued for unspecified reason"}
    [task] = _tasks(client)
    assert (task["status"], task["statusReason"]["text"]) == ("cancelled", "wrong study (contact: Dr. Who)")
    assert run_queued(services) == []

    again = client.post(f"/dicom-web/workitems/{workitem_uid}/cancelrequest")
    assert again.status_code == 202
    assert "already in the requested state of CANCELED" in again.headers["warning"]
    assert client.post("/dicom-web/workitems/1.2.3.4/cancelrequest").status_code == 404


def test_a_completed_workitem_cannot_be_cancelled(queued):
    client, services = queued
    workitem_uid = _create(client, _workitem(_stored(client, 79)))
    run_queued(services)
    response = client.post(f"/dicom-web/workitems/{workitem_uid}/cancelrequest")
    assert response.status_code == 409
    assert "inconsistent with the state" in response.headers["warning"]
    assert _first(_retrieve(client, workitem_uid), "00741000") == "COMPLETED"


def test_no_one_else_performs_a_workitem(queued):
    client, _ = queued
    workitem_uid = _create(client, _workitem(_stored(client, 80)))
    claim = {"00741000": _value("CS", "IN PROGRESS"), "00081195": _value("UI", TRANSACTION_UID)}
    refused = client.put(f"/dicom-web/workitems/{workitem_uid}/state", json=claim, headers=UPS_JSON)
    assert refused.status_code == 409
    assert "inconsistent with the state of the UPS Instance" in refused.headers["warning"]
    assert "performs its workitems itself" in refused.json()["message"]
    untitled = client.put(f"/dicom-web/workitems/{workitem_uid}/state", json={"00741000": _value("CS", "COMPLETED")},
                          headers=UPS_JSON)
    assert untitled.status_code == 400
    assert "Transaction UID is missing" in untitled.headers["warning"]
    update = client.post(f"/dicom-web/workitems/{workitem_uid}", json={"00741200": _value("CS", "LOW")},
                         headers=UPS_JSON)
    assert update.status_code == 409
    assert "inconsistent with the current state of the Workitem" in update.headers["warning"]

    client.post(f"/dicom-web/workitems/{workitem_uid}/cancelrequest")
    cancel = {"00741000": _value("CS", "CANCELED"), "00081195": _value("UI", TRANSACTION_UID)}
    same = client.put(f"/dicom-web/workitems/{workitem_uid}/state", json=cancel, headers=UPS_JSON)
    assert same.status_code == 200
    assert "already in the requested state of CANCELED" in same.headers["warning"]
    assert client.post(f"/dicom-web/workitems/{workitem_uid}", json={}, headers=UPS_JSON).status_code == 400
    assert client.put("/dicom-web/workitems/1.2.3.4/state", json=cancel, headers=UPS_JSON).status_code == 404


def test_workitems_are_searched_as_qido_searches(queued):
    client, services = queued
    first_study, second_study = _stored(client, 81), _stored(client, 82)
    first = _create(client, _workitem(first_study, start="20240501100000"))
    second = _create(client, _workitem(second_study, start="20240601100000+0200"))
    by_fhir = order(client, first_study)  # a Task is a workitem too
    derived = derived_workitem_uid(by_fhir["id"])
    client.post(f"/dicom-web/workitems/{second}/cancelrequest")
    patient_id = _first(_retrieve(client, first), "00100020")

    def found(**params: str) -> list[str]:
        response = client.get("/dicom-web/workitems", params=params)
        assert response.status_code == 200, response.text
        return [_first(dataset, "00080018") for dataset in response.json()]

    assert found() == [first, second, derived]
    assert found(ProcedureStepState="SCHEDULED") == [first, derived]
    assert found(ProcedureStepState="CANCELED") == [second]
    assert found(ProcedureStepState="SCHEDULED,CANCELED") == [first, second, derived]
    assert found(PatientID=patient_id) == [first, derived]
    assert found(StudyInstanceUID=second_study) == [second]
    assert found(**{"InputInformationSequence.StudyInstanceUID": first_study}) == [first, derived]
    assert found(SOPInstanceUID=f"{derived},{second}") == [second, derived]
    assert found(ScheduledProcedureStepStartDateTime="20240501-20240531") == [first]
    assert found(ScheduledProcedureStepStartDateTime="2024060108") == [second]  # 10:00 at +02:00 is 08:00 UTC
    # West of UTC, as a value and as both ends of a range: 03:00 at -05:00 is 08:00 UTC.
    assert found(ScheduledProcedureStepStartDateTime="20240601030000-0500") == [second]
    assert found(ScheduledProcedureStepStartDateTime="20240601020000-0500-20240601040000-0500") == [second]
    assert found(ScheduledProcedureStepStartDateTime="-20240601020000-0500") == [first]
    assert found(ScheduledProcedureStepPriority="HIGH") == [first, second]
    assert found(PatientID="nobody") == []

    page = client.get("/dicom-web/workitems", params={"limit": "2"})
    assert "Additional results can be requested" in page.headers["warning"]
    rest = client.get("/dicom-web/workitems", params={"limit": "2", "offset": "2"})
    assert [_first(dataset, "00080018") for dataset in page.json() + rest.json()] == [first, second, derived]
    assert "warning" not in rest.headers

    [summary] = client.get("/dicom-web/workitems", params={"SOPInstanceUID": first}).json()
    assert "00741204" in summary and "00081195" not in summary
    assert "00100030" in summary  # a return key of Table CC.2.5-3
    assert "00404018" in summary
    extra = {"00400400": _value("LT", "note"), "00380010": _value("LO", "ADM-1")}
    with_admission = _create(client, _workitem(first_study, **extra))
    [plain] = client.get("/dicom-web/workitems", params={"SOPInstanceUID": with_admission}).json()
    assert "00380010" not in plain
    [included] = client.get("/dicom-web/workitems",
                            params={"SOPInstanceUID": with_admission, "includefield": "AdmissionID"}).json()
    assert _first(included, "00380010") == "ADM-1"

    for bad in ({"ProcedureStepLabel": "x"}, {"ScheduledProcedureStepStartDateTime": "2024-05"}, {"Modality": "CT"}):
        assert client.get("/dicom-web/workitems", params=bad).status_code == 400


def test_a_job_ordered_through_fhir_is_a_workitem(queued):
    client, services = queued
    uid = _stored(client, 83)
    task = order(client, uid)
    workitem = _retrieve(client, derived_workitem_uid(task["id"]))
    assert _first(workitem, "00741000") == "SCHEDULED"
    assert _first(workitem, "00741200") == "MEDIUM"
    assert _first(workitem, "00404021", "0020000D") == uid
    assert _first(workitem, "00404018", "00080100") == DEMO
    assert _first(workitem, "00404005").endswith("+0000")
    run_queued(services)
    assert _first(_retrieve(client, derived_workitem_uid(task["id"])), "00741000") == "COMPLETED"


def test_workitems_need_the_task_scopes(queued, app):
    client, services = queued
    uid = _stored(client, 84)
    workitem_uid = _create(client, _workitem(uid))
    # Not entered (no `with`): the server the fixture started serves them, and is not stopped by them.
    anonymous = TestClient(app, base_url="http://testserver")
    assert anonymous.get("/dicom-web/workitems").status_code == 401
    assert anonymous.post("/dicom-web/workitems", json=_workitem(uid), headers=UPS_JSON).status_code == 401
    token, _ = services.auth.issuer.issue("reader", "clinician", str(role_grant(Role.CLINICIAN)), client=False)
    reader = TestClient(app, base_url="http://testserver", headers={"Authorization": f"Bearer {token}"})
    assert reader.get(f"/dicom-web/workitems/{workitem_uid}").status_code == 200
    assert reader.get("/dicom-web/workitems").status_code == 200
    assert reader.post("/dicom-web/workitems", json=_workitem(uid), headers=UPS_JSON).status_code == 403
    assert reader.post(f"/dicom-web/workitems/{workitem_uid}/cancelrequest").status_code == 403
    tasks_only = "user/Task.cruds"
    token, _ = services.auth.issuer.issue("tasks-only", "ai-operator", tasks_only, client=False)
    blind = TestClient(app, base_url="http://testserver", headers={"Authorization": f"Bearer {token}"})
    for refused in (blind.get(f"/dicom-web/workitems/{workitem_uid}"), blind.get("/dicom-web/workitems"),
                    blind.post("/dicom-web/workitems", json=_workitem(uid), headers=UPS_JSON)):
        assert refused.status_code == 403
        assert "ImagingStudy.r" in refused.json()["message"]
    assert len(_tasks(client)) == 1


def test_workitem_requests_are_audited(queued):
    client, _ = queued
    uid = _stored(client, 85)
    workitem_uid = _create(client, _workitem(uid))
    client.get(f"/dicom-web/workitems/{workitem_uid}")
    client.get("/dicom-web/workitems", params={"ProcedureStepState": "SCHEDULED"})
    events = [entry["resource"] for entry in client.get("/fhir/AuditEvent", params={"_count": "100"}).json()["entry"]]
    described = [event.get("outcomeDesc", "") for event in events]
    for request in ("POST /dicom-web/workitems committed", f"GET /dicom-web/workitems/{workitem_uid} answered 200",
                    "GET /dicom-web/workitems answered 200"):
        assert any(text.startswith(request) for text in described), (request, described)


@pytest.mark.parametrize(
    "element",
    [
        {"00404037": _value("PN", "Doe^John")},  # a person name is an object
        {"00400275": {"vr": "SQ", "Value": ["a", 1]}},  # sequence items are data sets
        {"00101010": _value("XX", "a")},  # no such VR
        {"00404036": _value("UI", "x")},  # a known attribute with another VR than the dictionary's
        {"00400000": _value("UL", 4)},  # a group length
        {"00280010": _value("US", "12")},  # US values are numbers
        {"00091010": _value("AT", "zz")},
        {"00400280": _value("LT", "why\u0000not")},  # NUL is in no DICOM text
        {"00091011": {"vr": "OB", "BulkDataURI": "http://elsewhere/b"}},  # no bulk data to fetch here
        {"00404018": {"vr": "SQ", "Value": [{"00080100": _value("SH", DEMO + "\u0000"),
                                             "00080102": _value("SH", MODEL_SCHEME)}]}},
    ],
)
def test_a_workitem_that_is_no_valid_dicom_json_is_refused_and_orders_nothing(queued, element):
    """Such attributes were stored, echoed back as invalid JSON, and made every
    XML answer of the workitem a 500 (PostgreSQL: a NUL was a 500 at once)."""
    client, _ = queued
    response = client.post("/dicom-web/workitems", json=_workitem(_stored(client, 86)) | element, headers=UPS_JSON)
    assert response.status_code == 400, response.text
    assert "attribute" in response.json()["message"]
    assert _tasks(client) == []


def test_what_a_requester_may_add_comes_back_in_json_and_xml(queued):
    client, _ = queued
    extra = {"00404037": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
             "00400275": {"vr": "SQ", "Value": [{"00401001": _value("SH", "RP-1")}]}}
    workitem_uid = _create(client, _workitem(_stored(client, 87)) | extra)
    assert _retrieve(client, workitem_uid)["00404037"] == extra["00404037"]
    xml = client.get(f"/dicom-web/workitems/{workitem_uid}",
                     headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert xml.status_code == 200 and b"Doe" in xml.content


def test_a_cancellation_reason_with_a_control_character_is_refused(queued):
    client, _ = queued
    workitem_uid = _create(client, _workitem(_stored(client, 88)))
    reason = {"00741238": _value("LT", "why\u0000not")}
    response = client.post(f"/dicom-web/workitems/{workitem_uid}/cancelrequest", json=reason, headers=UPS_JSON)
    assert response.status_code == 400
    assert _first(_retrieve(client, workitem_uid), "00741000") == "SCHEDULED"


def test_a_workitem_in_progress_refuses_any_transaction_uid_as_incorrect(queued):
    """The server holds its claim's Transaction UID and never tells it: what a
    client sends is incorrect (PS3.18 Tables 11.6.3-1, 11.7.3-1), not a conflict."""
    client, services = queued
    workitem_uid = _create(client, _workitem(_stored(client, 89)))
    services.jobs.queue.claim("test-worker", 10)  # the server's own performer has taken it
    assert _first(_retrieve(client, workitem_uid), "00741000") == "IN PROGRESS"
    complete = {"00741000": _value("CS", "COMPLETED"), "00081195": _value("UI", TRANSACTION_UID)}
    state = client.put(f"/dicom-web/workitems/{workitem_uid}/state", json=complete, headers=UPS_JSON)
    assert state.status_code == 400 and "Transaction UID is incorrect" in state.headers["warning"]
    url = f"/dicom-web/workitems/{workitem_uid}"
    missing = client.post(url, json={"00741200": _value("CS", "LOW")}, headers=UPS_JSON)
    assert missing.status_code == 400 and "Transaction UID is missing" in missing.headers["warning"]
    incorrect = client.post(url, json={"00081195": _value("UI", TRANSACTION_UID)}, headers=UPS_JSON)
    assert incorrect.status_code == 400 and "Transaction UID is incorrect" in incorrect.headers["warning"]
    assert client.post(url, content=b"garbage", headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post(url, content=b"{", headers=UPS_JSON).status_code == 400


def test_the_input_items_of_a_job_ordered_otherwise_are_in_tag_order(queued):
    client, _ = queued
    task = order(client, _stored(client, 90))
    [item] = _retrieve(client, derived_workitem_uid(task["id"]))["00404021"]["Value"]
    assert list(item) == sorted(item)


def test_a_workitem_read_names_its_task_in_the_audit_record(queued):
    client, services = queued
    workitem_uid = _create(client, _workitem(_stored(client, 91)))
    task_id = _tasks(client)[0]["id"]
    client.get(f"/dicom-web/workitems/{workitem_uid}")
    services.audit.chain.catch_up()
    reads = client.get("/fhir/AuditEvent", params={"entity": f"Task/{task_id}", "_count": "50"}).json()["entry"]
    assert any(entry["resource"]["outcomeDesc"].startswith(f"GET /dicom-web/workitems/{workitem_uid}")
               for entry in reads)


def test_workitems_match_patient_names_per_component_group(queued):
    """Workitem searches share QIDO's person-name rule (`dicom.matching.PersonNameMatch`)."""
    from pydicom.uid import generate_uid

    from tests.dicom_files import make_ct

    client, _ = queued
    grouped, plain = generate_uid(), generate_uid()
    stow(client, [
        make_ct(grouped, PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう", SpecificCharacterSet="ISO_IR 192"),
        make_ct(plain, PatientName="Yamada^Tarou"),
    ])
    by_study = {_create(client, _workitem(study)): study for study in (grouped, plain)}

    def found(name: str) -> set[str]:
        response = client.get("/dicom-web/workitems", params={"PatientName": name})
        assert response.status_code == 200, response.text
        return {by_study[_first(dataset, "00080018")] for dataset in response.json()}

    assert found("山田^太郎") == {grouped}
    assert found("Yamada^Tarou") == {grouped, plain}
    assert found("Yamada^Tarou=山田^*") == {grouped}
    assert found("yamada^tarou") == set()
