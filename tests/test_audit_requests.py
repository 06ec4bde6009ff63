"""Every request leaves an AuditEvent in the chain (IHE BALP shape), refused
ones included, and a request whose record cannot be written is not answered."""

import base64

from server.auth.scopes import Role
from tests.dicom_files import make_ct, multipart_body


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
    assert any(entity.get("what", {}).get("identifier", {}).get("value") == "urn:oid:1.2.3.4.5"
               for entity in _events(services, fhir, type="110112")[0].get("entity", [])) is False
    qido = _events(services, fhir, type="110112")
    assert len(qido) == 1 and qido[0]["action"] == "E"
    assert any("query" in entity for entity in qido[0]["entity"])  # the query, base64
    read = _events(services, fhir, subtype="read")
    assert read[0]["entity"][0]["what"]["reference"] == "ImagingStudy/1.2.3.4.5"
    assert read[0]["agent"][0]["type"]["coding"][0]["code"] == "110152"  # on a read the client is the Destination
    assert _events(services, fhir, subtype="search-type")
    assert services.audit.chain.verify().intact


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
    assert len(failures) == 4
    assert {event["agent"][0]["name"] for event in failures} == {"anonymous", "nurse"}
    logins = _events(services, fhir, type="110114")
    assert len(logins) == 1 and logins[0]["outcome"] == "4"


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


def test_the_servers_own_changes_are_recorded_in_their_transactions(services, fhir):
    from tests.inference_checks import phantom, series_bytes, stow, study_uid

    services.auth.identities.add_user("auditor-1", Role.AUDITOR, "a long auditor password")
    services.jobs.ensure_demo_model()  # registered, then activated: two model events
    study = phantom(seed=91, lesions=1)
    stow(fhir, series_bytes(study))
    task = fhir.post("/fhir/Task", json={"resourceType": "Task", "status": "requested", "intent": "order",
                                         "focus": {"reference": f"ImagingStudy/{study_uid(study)}"}}).json()
    runner = services.jobs.make_runner()
    runner.run(services.jobs.queue.claim("audited-worker", 1))
    runner.close()

    security = _events(services, fhir, type="110137")
    assert [event["outcomeDesc"] for event in security] == ["user auditor-1 added with role auditor"]
    models = _events(services, fhir, type="110100", action="U")
    descriptions = [event["outcomeDesc"] for event in models]
    assert any("inactive" in text for text in descriptions)
    assert any("active, activated without a passing validation" in text for text in descriptions)
    task_events = _events(services, fhir, entity=f"Task/{task['id']}", subtype="update")
    changes = sorted(event["outcomeDesc"] for event in task_events)
    assert changes == ["inference Task completed", "inference Task in-progress"]
    assert {event["agent"][0]["name"] for event in task_events} == {"audited-worker"}
    assert services.audit.chain.verify().intact
