"""Writes under a SMART patient context (`server.dicomweb.patient_writes`,
`server.auth.scopes.PATIENT_WRITES`): patient/ scopes store and delete DICOM
studies of their patient alone, and write nothing else. A real HTTP server,
and a token from the whole launch (PKCE), as an admin, whose role may write."""

from collections.abc import Iterator

import httpx
import pytest
from pydicom.uid import generate_uid

from server.auth.scopes import Role
from tests.dicom_files import make_ct, multipart_body
from tests.fhir_checks import ids
from tests.test_auth_smart_launch import PASSWORD
from tests.test_auth_smart_patient import World, _as, _code_of, _key, _served_world

WRITER = "launch/patient patient/*.cruds"


@pytest.fixture
def world(app, services) -> Iterator[World]:  # type: ignore[no-untyped-def]
    services.auth.identities.add_user("ada", Role.ADMIN, PASSWORD)
    yield from _served_world(app, services, f"{WRITER} user/*.rs")


def _launch(world: World, scope: str = WRITER, username: str = "ada") -> dict:
    picker = world.app.log_in(world.app.authorize(scope=scope), username=username)
    assert "Pick a patient" in picker.text, picker.text
    picked = world.app.browser.post("/auth/authorize", data={"request": _key(picker), "patient": world.patients["a"]})
    answer = world.app.redeem(_code_of(picked))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _stow(app: httpx.Client, *payloads: bytes, study: str | None = None) -> httpx.Response:
    body, content_type = multipart_body(list(payloads))
    path = f"/dicom-web/studies/{study}" if study else "/dicom-web/studies"
    return app.post(path, content=body, headers={"Content-Type": content_type})


def _subject(world: World, study_uid: str) -> str | None:
    found = world.admin.get(f"/fhir/ImagingStudy/{study_uid}")
    return found.json()["subject"]["reference"].removeprefix("Patient/") if found.status_code == 200 else None


def _b_series_and_instance(world: World) -> tuple[str, str]:
    study = world.admin.get(f"/fhir/ImagingStudy/{world.studies['b']}").json()
    return study["series"][0]["uid"], study["series"][0]["instance"][0]["uid"]


def test_patient_scopes_grant_the_writes_of_imaging_studies_alone(world):
    token = _launch(world)
    # Writes reach ImagingStudy only (STOW, DELETE); the compartment's other types and the Patient read and search.
    assert "patient/ImagingStudy.crds" in token["scope"].split()
    granted = set(token["scope"].split())
    assert {"patient/Patient.rs", "patient/Observation.rs", "patient/DiagnosticReport.rs"} <= granted
    # A clinician's role writes nothing: the same app launched by clara gets reading alone.
    assert "patient/ImagingStudy.rs" in _launch(world, username="clara")["scope"].split()
    # SMART v1 names, as the code maps them: write = cud, * = cruds.
    assert "patient/ImagingStudy.cd" in _launch(world, "launch/patient patient/ImagingStudy.write")["scope"].split()


def test_a_patient_context_stores_and_deletes_its_patients_studies(world):
    with _as(world, _launch(world)) as app:
        study = generate_uid()
        stored = _stow(app, make_ct(study, PatientID="MRN-A", PatientName="Able^Anna"))
        assert stored.status_code == 200, stored.text
        assert _subject(world, study) == world.patients["a"]
        assert app.get(f"/fhir/ImagingStudy/{study}").status_code == 200
        # More of its study, by the study's own URL too.
        assert _stow(app, make_ct(study, PatientID="MRN-A"), study=study).status_code == 200
        assert app.delete(f"/dicom-web/studies/{study}").status_code == 200
        assert _subject(world, study) is None
        assert app.delete(f"/dicom-web/studies/{world.studies['a']}").status_code == 200


def test_a_patient_context_cannot_store_outside_its_compartment(world, services):
    b_series, b_instance = _b_series_and_instance(world)
    with _as(world, _launch(world)) as app:
        attempts = {
            "another patient's PatientID": make_ct(PatientID="MRN-B"),
            "its MRN from another issuer": make_ct(PatientID="MRN-A", IssuerOfPatientID="OTHER"),
            # The latest instance names a study's patient: this one would pull B's study into A's compartment.
            "B's study": make_ct(world.studies["b"], PatientID="MRN-A"),
            "B's series in a new study": make_ct(series_uid=b_series, PatientID="MRN-A"),
            # Stored again under another study, an instance leaves its old one: B's study would lose it.
            "B's instance in a new study": make_ct(sop_uid=b_instance, PatientID="MRN-A"),
            "no PatientID (the study stands in for the patient)": make_ct(PatientID=""),
        }
        for attempt, payload in attempts.items():
            refused = _stow(app, payload)
            assert refused.status_code == 403, (attempt, refused.text)
            assert "compartment" in refused.text or "another patient" in refused.text, refused.text
        # One instance out refuses the request whole: the good one beside it is not stored.
        good = generate_uid()
        refused = _stow(app, make_ct(good, PatientID="MRN-A"), make_ct(world.studies["b"], PatientID="MRN-A"))
        assert refused.status_code == 403 and _subject(world, good) is None
    assert _subject(world, world.studies["b"]) == world.patients["b"]
    series = world.admin.get(f"/fhir/ImagingStudy/{world.studies['b']}").json()["series"]
    assert [item["uid"] for item in series] == [b_series] and series[0]["instance"][0]["uid"] == b_instance
    # Audited as about the context's patient, as its reads are.
    services.audit.chain.project()
    events = world.admin.get("/fhir/AuditEvent", params={"_count": 200}).json()["entry"]
    refusals = [entry["resource"] for entry in events
                if entry["resource"].get("outcomeDesc") == "POST /dicom-web/studies answered 403"]
    assert refusals and all(f"Patient/{world.patients['a']}" in [entity.get("what", {}).get("reference")
                                                                 for entity in event.get("entity", [])]
                            for event in refusals)


def test_a_patient_context_deletes_nothing_outside_its_compartment(world):
    b_series, b_instance = _b_series_and_instance(world)
    b = world.studies["b"]
    with _as(world, _launch(world)) as app:
        for path in (f"/dicom-web/studies/{b}", f"/dicom-web/studies/{b}/series/{b_series}",
                     f"/dicom-web/studies/{b}/series/{b_series}/instances/{b_instance}"):
            refused = app.delete(path)
            assert refused.status_code == 404 and "compartment" in refused.text, refused.text
    assert _subject(world, b) == world.patients["b"]


def test_patient_scopes_write_no_fhir_resource(world, services):
    a = world.patients["a"]
    with _as(world, _launch(world)) as app:
        # The compartment's FHIR types and the Patient are the server's to write: 405 to everyone.
        observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                       "subject": {"reference": f"Patient/{a}"}}
        assert app.post("/fhir/Observation", json=observation).status_code == 405
        assert app.post("/fhir/Patient", json={"resourceType": "Patient"}).status_code == 405
        assert app.put(f"/fhir/Patient/{a}", json={"resourceType": "Patient", "id": a}).status_code == 405
        assert app.delete(f"/fhir/Patient/{a}").status_code == 405
        assert app.delete("/fhir/Observation/oa").status_code == 405
        assert app.delete("/fhir/Observation", params={"subject": f"Patient/{a}"}).status_code == 405
        patch = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{world.patients['b']}"}]
        assert app.patch("/fhir/Observation/oa", json=patch,
                         headers={"Content-Type": "application/json-patch+json"}).status_code == 405
        # A transaction that creates a Patient and an Observation naming it by its placeholder: refused whole.
        placeholder = "urn:uuid:6f1c5d1e-0000-4000-8000-0000000000aa"
        made = app.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": placeholder, "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {**observation, "subject": {"reference": placeholder}},
             "request": {"method": "POST", "url": "Observation"}},
        ]})
        assert made.status_code in (403, 405) and made.json()["resourceType"] == "OperationOutcome", made.text
        # Types outside the compartment (Task, Group) and Subscriptions: 403, whatever they name.
        task = {"resourceType": "Task", "status": "draft", "intent": "order", "for": {"reference": f"Patient/{a}"}}
        for refused in (app.post("/fhir/Task", json=task), app.delete("/fhir/Task/ta"),
                        app.post("/fhir/Group", json={"resourceType": "Group", "type": "person", "actual": True}),
                        app.post("/fhir/Subscription", json={"resourceType": "Subscription"})):
            assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome", refused.text
        # A transaction with one forbidden entry fails whole.
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:6f1c5d1e-0000-4000-8000-000000000001", "resource": task,
             "request": {"method": "POST", "url": "Task"}},
        ]}
        refused = app.post("/fhir", json=bundle)
        assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome", refused.text
    assert ids(world.admin.get("/fhir/Task").json()) == ["ta"]
    assert sorted(ids(world.admin.get("/fhir/Observation").json())) == ["oa", "ob"]
    assert sorted(ids(world.admin.get("/fhir/Patient").json())) == sorted(world.patients.values())


def test_a_token_without_its_patient_writes_nothing_through_patient_scopes(world, services):
    token, _ = services.auth.issuer.issue("ada", "admin", "patient/ImagingStudy.cruds", False)
    with httpx.Client(base_url=world.base, headers={"Authorization": f"Bearer {token}"}) as app:
        assert _stow(app, make_ct(PatientID="MRN-A")).status_code == 403
        assert app.delete(f"/dicom-web/studies/{world.studies['a']}").status_code == 403


def test_user_scopes_beside_keep_their_reach(world, services):
    """A token whose user/ scopes create studies anywhere is not held to its patient by its patient/ ones."""
    token, _ = services.auth.issuer.issue("ada", "admin", "patient/ImagingStudy.cruds user/ImagingStudy.c", False,
                                          app=world.app.client_id, patient=world.patients["a"])
    with httpx.Client(base_url=world.base, headers={"Authorization": f"Bearer {token}"}) as app:
        assert _stow(app, make_ct(PatientID="MRN-C")).status_code == 200
        # Its delete is still its patient's alone: only patient/ scopes give it.
        assert app.delete(f"/dicom-web/studies/{world.studies['b']}").status_code == 404



def _mixed_study(world: World) -> tuple[str, str, str]:
    """A study of A (its latest instance names A) whose first instance names B, as a PatientID corrected on
    some instances only leaves one: its UID, and the series and SOP Instance UIDs of A's instance."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert _stow(world.admin, make_ct(study, PatientID="MRN-B")).status_code == 200
    assert _stow(world.admin, make_ct(study, series, sop, PatientID="MRN-A")).status_code == 200
    assert _subject(world, study) == world.patients["a"]
    return study, series, sop


def test_a_patient_context_leaves_no_study_to_another_patient(world):
    """Its study would be described again by the instance its write leaves newest, one naming B: refused whole."""
    study, series, sop = _mixed_study(world)
    with _as(world, _launch(world)) as app:
        refused = app.delete(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}")
        assert refused.status_code == 403 and "another patient" in refused.text, refused.text
        assert app.delete(f"/dicom-web/studies/{study}/series/{series}").status_code == 403
        # Stored again under a study of its own, the instance would leave the mixed study behind it too.
        moved = _stow(app, make_ct(series_uid=generate_uid(), sop_uid=sop, PatientID="MRN-A"))
        assert moved.status_code == 403 and "another patient" in moved.text, moved.text
        assert _subject(world, study) == world.patients["a"]
        assert len(app.get(f"/dicom-web/studies/{study}/instances").json()) == 2
        # The whole study goes, B's instance with it: nothing is left to move.
        assert app.delete(f"/dicom-web/studies/{study}").status_code == 200
    assert _subject(world, study) is None


def test_a_study_of_another_patient_stored_meanwhile_is_not_joined(world, services, monkeypatch):
    """B's first instance of a study commits after STOW's first check of A's instance, before its index
    transaction: the check in that transaction, where the study is held, sees it."""
    study = generate_uid()
    store_batch = services.ingestor.store_batch

    def b_first(batch, *arguments):  # type: ignore[no-untyped-def]
        monkeypatch.setattr(services.ingestor, "store_batch", store_batch)
        assert _stow(world.admin, make_ct(study, PatientID="MRN-B")).status_code == 200
        return store_batch(batch, *arguments)

    monkeypatch.setattr(services.ingestor, "store_batch", b_first)
    with _as(world, _launch(world)) as app:
        refused = _stow(app, make_ct(study, PatientID="MRN-A"))
        assert refused.status_code == 403 and "outside" in refused.text, refused.text
        assert app.get(f"/dicom-web/studies/{study}/metadata").status_code == 404
    assert _subject(world, study) == world.patients["b"]
    assert len(world.admin.get(f"/dicom-web/studies/{study}/instances").json()) == 1
    # Nothing of the refused request is left on disk: B's file alone.
    assert len(list((services.store.root / study).rglob("*.dcm"))) == 1
