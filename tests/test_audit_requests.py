"""Every request leaves one AuditEvent in the chain (IHE BALP shape), refused
ones included; a request whose record cannot be written is not answered; a
write's record commits in the write's own transaction, so a rolled-back
write leaves none and a committed one never lacks it."""

import base64
import socket
import time

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fhir_mappings.resources import validate_resource
from server.auth.scopes import Role
from server.tables import audit_events, audit_head
from tests.conftest import admin_headers, cut_off
from tests.dicom_files import make_ct, multipart_body
from tests.fhir_checks import ids


def _events(services, fhir, **params: str) -> list[dict]:  # type: ignore[no-untyped-def]
    services.audit.chain.project()
    return [entry["resource"] for entry in fhir.get("/fhir/AuditEvent", params={**params, "_count": 100}).json().get("entry", [])]


def test_fhir_and_dicomweb_requests_are_recorded(services, fhir):
    body, content_type = multipart_body([make_ct(StudyInstanceUID="1.2.3.4.5", PatientID="AUDIT-1")])
    assert fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    assert fhir.get("/dicom-web/studies", params={"PatientID": "AUDIT-1"}).status_code == 200
    assert fhir.get("/fhir/ImagingStudy/1.2.3.4.5").status_code == 200
    assert fhir.get("/fhir/Patient", params={"identifier": "AUDIT-1"}).status_code == 200

    stow = _events(services, fhir, type="110104", action="C")
    assert len(stow) == 1
    assert stow[0]["agent"][0]["name"] == "test-admin"
    assert stow[0]["agent"][0]["type"]["coding"][0]["code"] == "110153"  # the client sent: Source
    qido = _events(services, fhir, type="110112")
    assert len(qido) == 1 and qido[0]["action"] == "E"
    assert qido[0]["agent"][0]["type"]["coding"][0]["code"] == "110153"  # a query's client is the Source
    assert any("query" in entity for entity in qido[0]["entity"])  # the query, base64
    read = _events(services, fhir, subtype="read")
    assert "ImagingStudy/1.2.3.4.5" in [entity.get("what", {}).get("reference") for entity in read[0]["entity"]]
    assert read[0]["agent"][0]["type"]["coding"][0]["code"] == "110152"  # on a read the client is the Destination
    searches = _events(services, fhir, subtype="search-type")  # the Patient search, and the AuditEvent ones
    assert searches and all(search["agent"][0]["type"]["coding"][0]["code"] == "110153" for search in searches)
    assert services.audit.chain.verify().intact


def test_a_vread_or_a_bundle_read_of_an_event_sees_it_once_recorded(services, fhir):
    """Only reads and searches by type brought the copies up to date: a vread
    or a batch's read of an event already in the chain answered 404."""
    assert fhir.get("/fhir/Task").status_code == 200
    with services.engine.connect() as connection:
        newest = connection.execute(select(audit_head.c.seq)).scalar_one()
    assert fhir.get(f"/fhir/AuditEvent/{newest}/_history/1").status_code == 200
    assert fhir.get("/fhir/Task").status_code == 200
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"AuditEvent/{newest + 2}"}}]}  # the vread's and the Task search's
    assert fhir.post("/fhir", json=batch).json()["entry"][0]["response"]["status"] == "200 OK"
    # A search by POST names what it includes in its form, not its URL.
    task = fhir.post("/fhir/Task", json={"resourceType": "Task", "status": "draft", "intent": "proposal"}).json()
    fhir.get(f"/fhir/Task/{task['id']}")
    form = {"_id": task["id"], "_revinclude": "AuditEvent:entity"}
    found = fhir.post("/fhir/Task/_search", data=form).json()
    assert len(ids(found, "include")) == 2  # the create's record and the read's


def test_refused_requests_and_logins_are_recorded(services, fhir):
    services.auth.identities.add_user("nurse", Role.CLINICIAN, "a long nurse password")
    # The test client sends the admin's token unless told otherwise; an empty header is no credential.
    assert fhir.get("/fhir/Patient", headers={"Authorization": ""}).status_code == 401
    bad = "Basic " + base64.b64encode(b"nurse:wrong").decode()
    assert fhir.get("/fhir/Patient", headers={"Authorization": bad}).status_code == 401
    good = "Basic " + base64.b64encode(b"nurse:a long nurse password").decode()
    assert fhir.get("/fhir/AuditEvent", headers={"Authorization": good}).status_code == 403
    login = fhir.post("/auth/token", content="grant_type=password&username=nurse&password=nope",
                      headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": ""})
    assert login.status_code == 400
    failures = _events(services, fhir, outcome="4")
    # Four refused requests, and the failed Basic login among them as a login of its own.
    assert len(failures) == 5
    assert {event["agent"][0]["name"] for event in failures} == {"anonymous", "nurse"}
    logins = sorted(
        (event["outcome"], event["agent"][0]["name"], event["outcomeDesc"]) for event in _events(services, fhir, type="110114")
    )
    assert logins == [("0", "nurse", "HTTP Basic login of nurse succeeded"), ("4", "nurse", "HTTP Basic login of nurse failed"),
                      ("4", "nurse", "POST /auth/token answered 400")]  # the token request names who tried
    # The right password is checked once: later requests within a minute are not logins.
    assert fhir.get("/fhir/Patient", headers={"Authorization": good}).status_code == 200
    assert len(_events(services, fhir, type="110114")) == 3
    assert len(_events(services, fhir, type="110114", subtype="110122")) == 3  # PS3.15 requires its Login type


def test_a_request_whose_record_cannot_be_written_is_not_answered(services, fhir):
    body, content_type = multipart_body([make_ct(StudyInstanceUID="1.2.3.4.6", PatientID="SECRET-PATIENT")])
    assert fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    services.audit.recorder.stop()
    try:
        refused = fhir.get("/dicom-web/studies", params={"PatientID": "SECRET-PATIENT"})
        assert refused.status_code == 503
        assert "SECRET-PATIENT" not in refused.text
        assert refused.headers["retry-after"] == "5"
    finally:
        services.audit.recorder.start()
    assert fhir.get("/dicom-web/studies", params={"PatientID": "SECRET-PATIENT"}).status_code == 200


def _chain_length(services) -> int:
    with services.engine.connect() as connection:
        return len(connection.execute(select(audit_events.c.seq)).all())


def _stow(fhir, study_uid: str, patient_id: str):  # type: ignore[no-untyped-def]
    body, content_type = multipart_body([make_ct(StudyInstanceUID=study_uid, PatientID=patient_id)])
    return fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})


def test_a_write_is_recorded_in_its_own_transaction(services, fhir):
    """With the recorder stopped, a write still commits with its record (it
    needs no recorder); the read after it cannot be recorded and is refused."""
    services.audit.recorder.stop()
    try:
        before = _chain_length(services)
        assert _stow(fhir, "1.2.3.4.7", "WITNESSED").status_code == 200
        assert _chain_length(services) == before + 1
        assert fhir.get("/dicom-web/studies", params={"PatientID": "WITNESSED"}).status_code == 503
    finally:
        services.audit.recorder.start()
    [event] = _events(services, fhir, type="110104", action="C")
    assert event["outcome"] == "0" and event["agent"][0]["name"] == "test-admin"
    assert event["outcomeDesc"] == "POST /dicom-web/studies committed"
    # The STOW and the search just made; the query was refused because it could not be recorded.
    assert _chain_length(services) == before + 2
    assert services.audit.chain.verify().intact


def test_a_write_whose_record_fails_is_rolled_back(services, fhir, monkeypatch):
    def broken(connection, events):  # type: ignore[no-untyped-def]
        raise OperationalError("INSERT INTO audit_events", {}, Exception("the audit table is gone"))

    monkeypatch.setattr(services.audit.chain, "append", broken)
    assert _stow(fhir, "1.2.3.4.8", "UNRECORDED").status_code >= 400
    monkeypatch.undo()
    assert fhir.get("/dicom-web/studies", params={"PatientID": "UNRECORDED"}).json() == []


def test_a_refused_write_leaves_one_refusal_event(services, fhir):
    before = _chain_length(services)
    invalid = fhir.post("/fhir/Task", json={"resourceType": "Task", "status": "sometimes", "intent": "order"})
    assert invalid.status_code == 422
    [event] = _events(services, fhir, subtype="create")
    assert event["outcome"] == "4" and event["outcomeDesc"] == "POST /fhir/Task answered 422"
    assert _chain_length(services) == before + 2  # the refused create and the search that found it


def test_writes_made_while_authenticating_are_not_recorded_as_the_action(services, fhir):
    """A Basic login whose hash is rehashed writes during authentication; the
    STOW it carries is then refused (415): its record says so."""
    from argon2 import PasswordHasher

    identities = services.auth.identities
    strong = identities.hasher
    identities.hasher = PasswordHasher(time_cost=1, memory_cost=8192)
    identities.add_user("pacs", Role.MODALITY, "a long modality password")
    identities.hasher = strong  # the stored hash is now outdated: the next login rewrites it
    credentials = "Basic " + base64.b64encode(b"pacs:a long modality password").decode()
    answer = fhir.post("/dicom-web/studies", content=b"x", headers={"Authorization": credentials,
                                                                    "Content-Type": "text/plain"})
    assert answer.status_code == 415
    [event] = _events(services, fhir, type="110104")
    assert event["outcome"] == "4" and event["agent"][0]["name"] == "pacs"
    assert event["outcomeDesc"] == "POST /dicom-web/studies answered 415"


@pytest.mark.parametrize("path", [
    "/fhir/Patient/%00%1f", "/fhir/Patient/%C2%A0x", "/fhir/Task/bad%20id", "/fhir/Nope/x",
])
def test_hostile_paths_are_recorded_as_valid_fhir(services, fhir, path):
    assert fhir.get(path).status_code in (400, 404)
    [event] = _events(services, fhir, subtype="read")  # the fhir fixture checked it against the R4 schema
    # And against this server's own rules: a URL that names no resource is no reference (`Task/bad id`).
    validate_resource(event, "AuditEvent")
    assert "entity" not in event or all("what" not in entity for entity in event["entity"])


def test_every_kind_of_request_is_recorded_once(services, fhir):
    before = _chain_length(services)
    requests = [
        ("GET", "/fhir/metadata"), ("GET", "/fhir/Patient"), ("GET", "/fhir/Patient/nobody"),
        ("GET", "/fhir/Patient/_history"), ("GET", "/dicom-web/studies"), ("GET", "/dicom-web/studies/1.2.3/metadata"),
        ("GET", "/admin/models"), ("GET", "/fhir/AuditEvent/$verify"),
    ]
    for method, path in requests:
        fhir.request(method, path)
    assert fhir.get("/healthz").status_code == 200  # probes are not recorded
    services.audit.chain.project()
    assert _chain_length(services) == before + len(requests)


def test_agents_and_the_source_are_found_by_identifier(services, fhir):
    services.auth.identities.add_user("nurse", Role.CLINICIAN, "a long nurse password")
    nurse = "Basic " + base64.b64encode(b"nurse:a long nurse password").decode()
    assert fhir.get("/dicom-web/studies", headers={"Authorization": nurse}).status_code == 200
    assert fhir.get("/fhir/Patient").status_code == 200  # the admin's
    by_nurse = _events(services, fhir, **{"agent:identifier": "urn:medaiflow:identity|nurse"})
    assert sorted(event["type"]["code"] for event in by_nurse) == ["110112", "110114"]  # the login and the query
    assert {event["agent"][0]["who"]["display"] for event in by_nurse} == {"nurse"}
    server = services.settings.public_root
    from_here = _events(services, fhir, **{"source:identifier": f"urn:ietf:rfc:3986|{server}"})
    assert len(from_here) >= 3  # the nurse's query, the admin's search, the search above
    assert fhir.get("/fhir/AuditEvent", params={"agent-name:identifier": "x"}).status_code == 400  # a string has none


def test_the_patient_of_each_access_is_named(services, fhir):
    body, content_type = multipart_body([make_ct(StudyInstanceUID="1.2.3.4.9", PatientID="AUDIT-PATIENT")])
    assert fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    study = fhir.get("/fhir/ImagingStudy/1.2.3.4.9").json()
    patient = study["subject"]["reference"].removeprefix("Patient/")
    assert fhir.get("/dicom-web/studies/1.2.3.4.9/metadata").status_code == 200
    assert fhir.get("/fhir/ImagingStudy", params={"patient": patient}).status_code == 200
    assert fhir.get(f"/fhir/Patient/{patient}").status_code == 200
    assert fhir.get("/dicom-web/studies", params={"PatientID": "AUDIT-PATIENT"}).status_code == 200

    expected = [f"Patient/{patient}"]
    [stow] = _events(services, fhir, type="110104", action="C")
    assert _patients(stow) == expected  # looked up in the STOW's own transaction
    [wado] = _events(services, fhir, type="110104", action="R")
    assert _patients(wado) == expected
    reads = _events(services, fhir, subtype="read")
    assert sorted(map(tuple, map(_patients, reads))) == [tuple(expected), tuple(expected)]
    [search] = [event for event in _events(services, fhir, subtype="search-type")
                if any("query" in entity for entity in event.get("entity", []))
                and _patients(event)]
    assert _patients(search) == expected
    [qido] = _events(services, fhir, type="110112")
    assert _patients(qido) == expected  # the patients of the studies the query answered with
    found = _events(services, fhir, patient=patient)
    assert len(found) >= 6  # the STOW, the metadata, the two reads, the search, the query


def _patients(event: dict) -> list[str]:
    return sorted(entity["what"]["reference"] for entity in event.get("entity", [])
                  if entity.get("role", {}).get("code") == "1")


def _task(patient: str) -> dict:
    return {"resourceType": "Task", "status": "draft", "intent": "proposal", "for": {"reference": f"Patient/{patient}"}}


def test_a_write_names_the_patients_of_the_versions_before_and_after_it(services, fhir):
    task = fhir.post("/fhir/Task", json=_task("before")).json()
    [create] = _events(services, fhir, subtype="create")
    assert _patients(create) == ["Patient/before"]
    # Moving a resource to another patient changes both patients' records.
    assert fhir.put(f"/fhir/Task/{task['id']}", json={**_task("after"), "id": task["id"]}).status_code == 200
    [update] = _events(services, fhir, subtype="update")
    assert _patients(update) == ["Patient/after", "Patient/before"]
    assert fhir.delete(f"/fhir/Task/{task['id']}").status_code == 204
    [delete] = _events(services, fhir, subtype="delete")
    assert _patients(delete) == ["Patient/after"]


def test_a_history_names_the_patients_of_the_versions_it_returns(services, fhir):
    task = fhir.post("/fhir/Task", json=_task("first")).json()
    assert fhir.put(f"/fhir/Task/{task['id']}", json={**_task("second"), "id": task["id"]}).status_code == 200
    assert fhir.get(f"/fhir/Task/{task['id']}/_history").status_code == 200
    [instance_history] = _events(services, fhir, subtype="history-instance")
    assert _patients(instance_history) == ["Patient/first", "Patient/second"]
    assert fhir.get("/fhir/Task/_history", params={"_count": "1"}).status_code == 200
    [type_history] = _events(services, fhir, subtype="history-type")
    assert _patients(type_history) == ["Patient/second"]  # only the newest version was on the page


def test_each_entry_of_a_batch_names_its_own_patients_and_the_answer_all_it_disclosed(services, fhir):
    read = fhir.post("/fhir/Task", json=_task("read")).json()
    entries = [{"resource": _task(patient), "request": {"method": "POST", "url": "Task"}} for patient in ("one", "two")]
    entries += [{"request": {"method": "GET", "url": f"Task/{read['id']}"}},
                {"request": {"method": "GET", "url": "Task?patient=searched"}}]
    assert fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries}).status_code == 200
    events = {event["outcomeDesc"]: event for event in _events(services, fhir, subtype="batch")}
    committed = sorted(_patients(event) for event in _events(services, fhir, subtype="batch")
                       if event["outcomeDesc"] == "POST /fhir committed")
    assert committed == [["Patient/one"], ["Patient/two"]]
    assert _patients(events["POST /fhir answered 200"]) == [
        "Patient/one", "Patient/read", "Patient/searched", "Patient/two"]
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert fhir.post("/fhir", json=transaction).status_code == 200
    [event] = _events(services, fhir, subtype="transaction")
    assert _patients(event) == ["Patient/one", "Patient/read", "Patient/searched", "Patient/two"]


def test_a_transaction_is_recorded_as_one_and_a_batch_as_a_batch(services, fhir):
    task = {"resourceType": "Task", "status": "draft", "intent": "proposal"}
    for kind in ("transaction", "batch"):
        entry = {"resource": task, "request": {"method": "POST", "url": "Task"}}
        assert fhir.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": [entry]}).status_code == 200
    assert len(_events(services, fhir, subtype="transaction")) == 1
    # The batch's one entry as it committed, and its answer.
    assert sorted(event["outcomeDesc"] for event in _events(services, fhir, subtype="batch")) == [
        "POST /fhir answered 200", "POST /fhir committed"]


def test_each_committed_entry_of_a_batch_is_recorded_with_what_it_wrote(services, fhir):
    task = {"resourceType": "Task", "status": "draft", "intent": "proposal"}
    entries = [{"resource": task, "request": {"method": "POST", "url": "Task"}} for _ in range(2)]
    entries.append({"resource": {**task, "status": "bogus"}, "request": {"method": "POST", "url": "Task"}})
    answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries}).json()
    created = sorted(entry["response"]["location"].split("/fhir/")[1].split("/_history")[0]
                     for entry in answer["entry"] if entry["response"]["status"].startswith("201"))
    assert len(created) == 2
    named = sorted(entity["what"]["reference"] for event in _events(services, fhir, subtype="batch")
                   for entity in event["entity"] if entity.get("what", {}).get("reference", "").startswith("Task/"))
    assert named == created
    transaction = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries[:2]}).json()
    [event] = _events(services, fhir, subtype="transaction")
    written = {entity["what"]["reference"] for entity in event["entity"] if "what" in entity}
    assert {entry["response"]["location"].split("/fhir/")[1].split("/_history")[0]
            for entry in transaction["entry"]} <= written


def test_a_request_refused_for_its_study_path_is_still_recorded(services, fhir):
    response = fhir.get("/dicom-web/studies/1.2.3%00/series")
    assert response.status_code == 400
    refused = [event for event in _events(services, fhir, outcome="4") if "1.2.3" in event.get("outcomeDesc", "")]
    assert len(refused) == 1


def test_a_stow_that_stores_nothing_is_recorded_as_its_answer_not_as_a_committed_change(services, fhir):
    def stow(*datasets) -> int:  # type: ignore[no-untyped-def]
        body, content_type = multipart_body(list(datasets))
        return fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code

    stored = make_ct(StudyInstanceUID="1.2.3.4.5", SeriesInstanceUID="1.2.3.9", PatientID="A1")
    assert stow(stored) == 200
    assert stow(make_ct(StudyInstanceUID="1.2.3.4.6", SeriesInstanceUID="1.2.3.9")) == 409  # its series is elsewhere
    assert stow(stored) == 200  # sent again: nothing changed
    events = sorted(_events(services, fhir, type="110104"), key=lambda event: int(event["id"]))
    assert [(event["outcome"], event["outcomeDesc"]) for event in events] == [
        ("0", "POST /dicom-web/studies committed"),
        ("4", "POST /dicom-web/studies answered 409"),
        ("0", "POST /dicom-web/studies answered 200"),
    ]


def test_reading_one_model_is_recorded_as_a_read_and_listing_them_as_a_search(services, fhir):
    assert fhir.get("/admin/models").status_code == 200
    assert fhir.get("/admin/models/nothing-by-this-name").status_code == 404
    events = {event["outcomeDesc"]: (event["subtype"][0]["code"], event["action"]) for event in _events(services, fhir)}
    assert events["GET /admin/models answered 200"] == ("search-type", "E")
    assert events["GET /admin/models/nothing-by-this-name answered 404"] == ("read", "R")


def _cut_short(events: list[dict]) -> list[dict]:
    return [event for event in events if "cut short" in event.get("outcomeDesc", "")]


def _request_id(event: dict) -> str:
    return next(entity["description"] for entity in event["entity"] if entity.get("name") == "request id")


def test_an_answer_the_client_cuts_short_is_recorded_as_such(live_server, services):
    """The record is written as the answer starts (nothing goes out
    unrecorded); a client that leaves partway through a big study adds a
    second event, a minor failure saying how much had gone out."""
    study = "1.2.826.0.1.3680043.8.498.77001"
    headers = admin_headers(services)
    body, content_type = multipart_body([make_ct(study, "1.2.826.0.1.3680043.8.498.77002", size=1024,
                                                 InstanceNumber=number) for number in range(1, 17)])
    assert httpx.post(f"{live_server}/dicom-web/studies", content=body, timeout=120,
                      headers={**headers, "Content-Type": content_type}).status_code == 200
    port = int(live_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(f"GET /dicom-web/studies/{study} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Authorization: {headers['Authorization']}\r\n"
                           'Accept: multipart/related; type="application/dicom"\r\n\r\n'.encode())
        received = 0
        while received < 256 * 1024:  # an eighth of one instance: far from the 32 MB of the study
            chunk = connection.recv(65536)
            assert chunk
            received += len(chunk)
    deadline = time.monotonic() + 20
    while True:
        events = httpx.get(f"{live_server}/fhir/AuditEvent", params={"_count": 200}, headers=headers,
                           timeout=30).json().get("entry", [])
        events = [entry["resource"] for entry in events
                  if f"/dicom-web/studies/{study} " in entry["resource"].get("outcomeDesc", "")]
        if _cut_short(events) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [cut] = _cut_short(events)
    assert cut["outcome"] == "4"
    assert cut["outcomeDesc"].startswith(f"GET /dicom-web/studies/{study} answered 200, but the answer was cut short")
    assert cut["outcomeDesc"].endswith("the client closed the connection")
    sent = int(cut["outcomeDesc"].split(" after ")[1].split(" bytes")[0])
    assert received <= sent < len(body)  # what left the server, not the study
    [started] = [event for event in events if event is not cut and event["outcomeDesc"].endswith("answered 200")]
    assert started["outcome"] == "0" and _request_id(started) == _request_id(cut)
    assert started["entity"] == cut["entity"]  # the same patient, study and request
    assert services.audit.chain.verify().intact


def test_an_answer_the_server_cannot_finish_is_recorded_as_such(services, fhir, live_server):
    """A study whose file went after its rows were read is cut off; the
    audit trail says so too (a serious failure), and why."""
    assert _stow(fhir, "1.2.826.0.1.3680043.8.498.77003", "CUT-2").status_code == 200
    [stored] = [path for path in services.settings.storage_dir.rglob("*") if path.is_file() and path.suffix == ".dcm"]
    stored.unlink()
    cut_off(f"{live_server}/dicom-web/studies/1.2.826.0.1.3680043.8.498.77003",
            {**admin_headers(services), "Accept": 'multipart/related; type="application/dicom"'})
    [cut] = _cut_short(_events(services, fhir, outcome="8"))
    assert "instance" in cut["outcomeDesc"] and "CUT-2" not in cut["outcomeDesc"]
    assert "Patient/" in str(cut["entity"])


def test_a_whole_answer_is_recorded_once(services, fhir):
    assert _stow(fhir, "1.2.826.0.1.3680043.8.498.77004", "WHOLE-1").status_code == 200
    assert fhir.get("/dicom-web/studies/1.2.826.0.1.3680043.8.498.77004",
                    headers={"Accept": 'multipart/related; type="application/dicom"'}).status_code == 200
    assert _cut_short(_events(services, fhir)) == []


def test_a_stow_names_the_patients_of_its_studies_without_reading_them_back(services, monkeypatch):
    """The STOW's transaction wrote its study's ImagingStudy: the record takes
    the Patient from there, where it read it back once more (a join of the
    search index, at every STOW)."""
    from fastapi.testclient import TestClient

    import server.app
    from server.fhir.derived import study_patients
    from tests.conftest import admin_headers

    asked: list[list[str]] = []

    def looked_up(connection, study_uids):  # type: ignore[no-untyped-def]
        asked.append(sorted(study_uids))
        return study_patients(connection, study_uids)

    monkeypatch.setattr(server.app, "study_patients", looked_up)
    with TestClient(server.app.create_app(services=services), headers=admin_headers(services)) as client:
        for patient_id in ("FIRST-ID", "CORRECTED-ID"):  # the second corrects the study's PatientID
            body, content_type = multipart_body([make_ct(StudyInstanceUID="1.2.3.4.11", PatientID=patient_id)])
            assert client.post("/dicom-web/studies/1.2.3.4.11", content=body,
                               headers={"Content-Type": content_type}).status_code == 200
        assert asked == []
        first, corrected = _events(services, client, type="110104", action="C", _sort="date")
        patient = client.get("/fhir/ImagingStudy/1.2.3.4.11").json()["subject"]["reference"]
        assert _patients(first) != [patient]
        assert _patients(corrected) == sorted([*_patients(first), patient])  # the patient before, and after
        assert client.get("/dicom-web/studies/1.2.3.4.11/metadata").status_code == 200
    assert asked == [["1.2.3.4.11"]]  # a read still looks its study's patient up


def test_a_reverse_chain_search_names_the_patient_it_asks_about(services, fhir):
    """`Observation?_has:DiagnosticReport:result:patient=p1` asks which
    Observations p1's reports point at: a search about p1."""
    assert fhir.get("/fhir/Observation", params={"_has:DiagnosticReport:result:patient": "p1"}).status_code == 200
    [search] = [event for event in _events(services, fhir, subtype="search-type")
                if event["outcomeDesc"].startswith("GET /fhir/Observation")]
    assert _patients(search) == ["Patient/p1"]
