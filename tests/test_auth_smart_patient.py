"""SMART App Launch with a patient context (standalone, `launch/patient`):
the user logs in, picks a patient, and the app's patient/ scopes reach that
patient's compartment alone, on every FHIR read path and on DICOMweb. A
real HTTP server throughout; two patients, whose studies come in by STOW
and whose other records the server writes, as its models' results are."""

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from alembic import command
from pydicom.uid import generate_uid
from sqlalchemy import inspect

from server.auth.launch import Pending, Spent
from server.auth.scopes import Grant, Role
from server.cli import main
from server.migrate import migrating, upgrade
from tests.conftest import admin_headers, served
from tests.dicom_files import make_ct, multipart_body
from tests.fhir_checks import ids, link, seed
from tests.test_auth_smart_launch import PASSWORD, REDIRECT, App
from tests.test_fhir_bulk_export import KICK, _files, _ids, _manifest

ASKED = "launch/patient patient/*.rs user/Observation.s openid fhirUser"
LOINC = "http://loinc.org"


@dataclass
class World:
    base: str
    app: App
    patients: dict[str, str]  # "a", "b" -> Patient id
    studies: dict[str, str]  # "a", "b" -> StudyInstanceUID
    admin: httpx.Client


def _observation(oid: str, patient: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "1111-1"}]}, "subject": {"reference": f"Patient/{patient}"}}


@pytest.fixture
def world(app, services):  # type: ignore[no-untyped-def]
    yield from _served_world(app, services, "launch/patient patient/*.rs user/Observation.s")


def _served_world(app, services, registered: str) -> Iterator[World]:  # type: ignore[no-untyped-def]
    """Two patients, each with a study (by STOW) and an Observation; the second with a DiagnosticReport, the
    first with a Task (in no compartment); clara, a clinician; an app registered with `registered`."""
    services.auth.identities.add_user("clara", Role.CLINICIAN, PASSWORD)
    client_id, _ = services.auth.identities.add_client("viewer", registered, redirect_uris=[REDIRECT], public=True)
    studies = {"a": generate_uid(), "b": generate_uid()}
    body, content_type = multipart_body([
        make_ct(studies["a"], PatientID="MRN-A", PatientName="Able^Anna"),
        make_ct(studies["b"], PatientID="MRN-B", PatientName="Baker^Bob"),
    ])
    with served(app) as base, httpx.Client(base_url=base, headers=admin_headers(services)) as admin:
        stored = admin.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
        assert stored.status_code == 200, stored.text
        patients = {
            key: admin.get(f"/fhir/ImagingStudy/{uid}").json()["subject"]["reference"].removeprefix("Patient/")
            for key, uid in studies.items()
        }
        seed(
            services,
            _observation("oa", patients["a"]),
            _observation("ob", patients["b"]),
            {"resourceType": "DiagnosticReport", "id": "rb", "status": "final",
             "code": {"coding": [{"system": LOINC, "code": "18748-4"}]},
             "subject": {"reference": f"Patient/{patients['b']}"}, "result": [{"reference": "Observation/ob"}]},
            {"resourceType": "Task", "id": "ta", "status": "draft", "intent": "order",
             "for": {"reference": f"Patient/{patients['a']}"}},
            {"resourceType": "Device", "id": "da", "status": "active"},
        )
        yield World(base, App(base, client_id), patients, studies, admin)


def _key(page: httpx.Response) -> str:
    found = re.search(r'name="request" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def _picker(world: World, scope: str = ASKED) -> httpx.Response:
    page = world.app.log_in(world.app.authorize(scope=scope))
    assert page.status_code == 200 and "Pick a patient" in page.text, page.text
    return page


def _code_of(redirect: httpx.Response) -> str:
    assert redirect.status_code == 303, redirect.text
    query = parse_qs(urlsplit(redirect.headers["location"]).query)
    assert query["state"] == ["s-123"]
    return query["code"][0]


def _launch(world: World, patient: str = "a", scope: str = ASKED) -> dict:
    picker = _picker(world, scope)
    picked = world.app.browser.post("/auth/authorize",
                                    data={"request": _key(picker), "patient": world.patients[patient]})
    answer = world.app.redeem(_code_of(picked))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _as(world: World, token: dict) -> httpx.Client:
    return httpx.Client(base_url=world.base, headers={"Authorization": f"Bearer {token['access_token']}"})


def test_the_token_names_the_patient_picked_and_carries_it(world):
    token = _launch(world)
    assert token["patient"] == world.patients["a"]
    # patient/*.rs, as far as the compartment's types go (AuditEvent only when named); user/ scopes kept beside.
    assert token["scope"] == ("user/Observation.s patient/Patient.rs patient/ImagingStudy.rs "
                              "patient/DiagnosticReport.rs patient/Observation.rs patient/Provenance.rs "
                              "patient/Group.rs launch/patient")
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["patient"] == world.patients["a"] and claims["client_id"] == world.app.client_id
    configuration = httpx.get(f"{world.base}/.well-known/smart-configuration").json()
    capabilities = set(configuration["capabilities"])
    assert {"launch-standalone", "context-standalone-patient", "permission-patient"} <= capabilities


def test_the_picker_lists_searches_and_pages_the_patients_the_user_may_read(world, services):
    seed(services, *({"resourceType": "Patient", "id": f"extra-{number:02}", "name": [{"family": f"Extra{number:02}"}]}
                     for number in range(25)))
    seed(services, {"resourceType": "Patient", "id": "marked", "name": [{"text": "<b>Bold</b>"}]})
    picker = _picker(world)
    assert picker.headers["x-frame-options"] == "DENY" and picker.headers["cache-control"] == "no-store"
    assert picker.text.count('name="patient"') == 20 and 'value="next"' in picker.text
    assert "Anna Able" in picker.text or "Able" in picker.text
    key = _key(picker)
    cursor = re.search(r'name="cursor" value="([^"]+)"', picker.text).group(1)  # type: ignore[union-attr]
    second = world.app.browser.post("/auth/authorize", data={"request": key, "decision": "next", "cursor": cursor})
    assert second.status_code == 200 and second.text.count('name="patient"') == 8 and 'value="next"' not in second.text
    assert "&lt;b&gt;Bold&lt;/b&gt;" in second.text and "<b>Bold</b>" not in second.text
    by_name = world.app.browser.post("/auth/authorize", data={"request": key, "decision": "search", "name": "bak"})
    assert re.findall(r'name="patient" value="([^"]+)"', by_name.text) == [world.patients["b"]]
    by_identifier = world.app.browser.post("/auth/authorize",
                                           data={"request": key, "decision": "search", "identifier": "MRN-A"})
    assert re.findall(r'name="patient" value="([^"]+)"', by_identifier.text) == [world.patients["a"]]
    bad = world.app.browser.post("/auth/authorize", data={"request": key, "decision": "search", "name": "a\x00b"})
    assert bad.status_code == 400 and "location" not in bad.headers and 'name="request"' in bad.text
    # After all that, the form still picks.
    picked = world.app.browser.post("/auth/authorize", data={"request": key, "patient": world.patients["b"]})
    assert world.app.redeem(_code_of(picked)).json()["patient"] == world.patients["b"]


def test_the_picker_refuses_what_is_not_the_users_to_pick_and_what_no_browser_sent(world, services):
    picker = _picker(world)
    key = _key(picker)
    unknown = world.app.browser.post("/auth/authorize", data={"request": key, "patient": "nobody"})
    assert unknown.status_code == 403 and "location" not in unknown.headers and "nobody" in unknown.text
    for odd in ("a\x00b", "", "x" * 65):  # PostgreSQL's text holds no NUL: a 500 otherwise
        refused = world.app.browser.post("/auth/authorize", data={"request": key, "patient": odd})
        assert refused.status_code == 403 and "location" not in refused.headers
    # Another page's post has no cookie; a forged key is no form's.
    elsewhere = httpx.post(f"{world.base}/auth/authorize", data={"request": key, "patient": world.patients["a"]})
    assert elsewhere.status_code == 400 and "location" not in elsewhere.headers
    forged = world.app.browser.post("/auth/authorize", data={"request": "x" * 43, "patient": world.patients["a"]})
    assert forged.status_code == 400 and "location" not in forged.headers
    # A login form's post cannot skip the login: the user picks only once logged in.
    unlogged = world.app.authorize(scope=ASKED)
    skipped = world.app.browser.post("/auth/authorize",
                                     data={"request": _key(unlogged), "patient": world.patients["a"]})
    assert skipped.status_code == 400 and "location" not in skipped.headers
    # A user disabled between the login and the pick picks nothing.
    services.auth.identities.disable_user("clara")
    late = world.app.browser.post("/auth/authorize", data={"request": key, "patient": world.patients["a"]})
    assert late.status_code == 303 and parse_qs(urlsplit(late.headers["location"]).query)["error"] == ["access_denied"]


def test_the_picker_runs_no_search_the_user_may_not(world, services):
    """A paging cursor holds its search: one of someone else's, with a reverse chain into AuditEvents (which a
    clinician may not search), tells no more on the picker than the search itself would tell the user."""
    services.audit.chain.project()
    first = world.admin.get("/fhir/Patient", params={"_has:AuditEvent:patient:action": "C", "_count": "1"})
    assert first.status_code == 200 and first.json()["total"] == 2, first.text
    cursor = parse_qs(urlsplit(link(first.json(), "next") or "").query)["_cursor"][0]
    picker = _picker(world)
    replayed = world.app.browser.post("/auth/authorize",
                                      data={"request": _key(picker), "decision": "next", "cursor": cursor})
    assert replayed.status_code == 403 and 'name="patient"' not in replayed.text
    assert "AuditEvent.s" in replayed.text and "location" not in replayed.headers


def test_the_user_may_deny_on_the_picker(world):
    denied = world.app.browser.post("/auth/authorize", data={"request": _key(_picker(world)), "decision": "deny"})
    assert parse_qs(urlsplit(denied.headers["location"]).query)["error"] == ["access_denied"]


def test_fhir_reads_reach_the_patients_compartment_alone(world):
    a, b = world.patients["a"], world.patients["b"]
    with _as(world, _launch(world)) as app:
        assert app.get(f"/fhir/Patient/{a}").status_code == 200
        assert app.get(f"/fhir/Patient/{b}").status_code == 404  # to the app, not there
        assert app.get("/fhir/Observation/oa").status_code == 200
        assert app.get("/fhir/Observation/ob").status_code == 404
        assert app.get("/fhir/Observation/ob/_history/1").status_code == 404
        assert app.get("/fhir/Observation/ob/_history").status_code == 404
        assert ids(app.get("/fhir/Observation/_history").json()) == ["oa"]
        assert app.get("/fhir/DiagnosticReport/rb").status_code == 404
        assert ids(app.get("/fhir/Patient").json()) == [a]
        assert ids(app.get("/fhir/Observation").json()) == ["oa"]
        assert ids(app.get("/fhir/ImagingStudy").json()) == [world.studies["a"]]
        assert ids(app.get("/fhir/Observation", params={"subject": f"Patient/{b}"}).json()) == []
        assert ids(app.get("/fhir/Observation", params={"subject.name": "Baker"}).json()) == []  # a chain
        assert ids(app.get("/fhir/Patient", params={"_has:Observation:subject:code": "1111-1"}).json()) == [a]
        assert ids(app.get("/fhir/Patient", params={"_has:DiagnosticReport:subject:status": "final"}).json()) == []
        included = app.get("/fhir/Observation", params={"_include": "Observation:patient"}).json()
        assert ids(included) == ["oa"] and ids(included, "include") == [a]
        revincluded = app.get("/fhir/Patient", params={"_revinclude": "Observation:subject"}).json()
        assert ids(revincluded) == [a] and ids(revincluded, "include") == ["oa"]
        assert app.get(f"/fhir/Patient/{b}/$everything").status_code == 404
        everything = app.get(f"/fhir/Patient/{a}/$everything").json()
        assert sorted(ids(everything)) == sorted([a, world.studies["a"], "oa"])
        assert not link(everything, "next")
        assert ids(app.get(f"/fhir/Patient/{b}/Observation").json()) == []
        # Types outside the compartment get nothing from patient/ scopes; writes neither.
        assert app.get("/fhir/Task/ta").status_code == 403 and app.get("/fhir/Device").status_code == 403
        task = {"resourceType": "Task", "status": "draft", "intent": "order", "for": {"reference": f"Patient/{a}"}}
        assert app.post("/fhir/Task", json=task).status_code == 403


def test_a_patient_context_reads_the_groups_that_name_its_patient_whole_and_no_other(world, services):
    """R4 puts a Group in the compartment of each Patient it names as a member, and patient/ scopes reach the
    compartment: the app reads such a Group whole, its other members' ids with it (as HAPI FHIR does)."""
    a, b = world.patients["a"], world.patients["b"]
    member = {"resourceType": "Group", "type": "person", "actual": True}
    seed(services, {**member, "id": "both", "member": [{"entity": {"reference": f"Patient/{b}"}},
                                                        {"entity": {"reference": f"Patient/{a}"}}]},
         {**member, "id": "b-only", "member": [{"entity": {"reference": f"Patient/{b}"}}]},
         {**member, "id": "a-left", "member": [{"entity": {"reference": f"Patient/{a}"}, "inactive": True}]})
    with _as(world, _launch(world)) as app:
        read = app.get("/fhir/Group/both")
        assert read.status_code == 200 and len(read.json()["member"]) == 2
        assert app.get("/fhir/Group/b-only").status_code == 404
        assert app.get("/fhir/Group/b-only/_history/1").status_code == 404
        assert sorted(ids(app.get("/fhir/Group").json())) == ["a-left", "both"]
        assert ids(app.get("/fhir/Group", params={"member": f"Patient/{b}"}).json()) == ["both"]
        assert sorted(ids(app.get(f"/fhir/Patient/{a}/Group").json())) == ["a-left", "both"]
        assert ids(app.get(f"/fhir/Patient/{b}/Group").json()) == ["both"]  # the row rule still holds
        assert sorted(ids(app.get(f"/fhir/Patient/{a}/$everything", params={"_type": "Group"}).json())) == \
            ["a-left", "both"]
        started = app.get("/fhir/Patient/$export", headers={**KICK}, params={"_type": "Group"})
        assert started.status_code == 202, started.text
        assert sorted(_ids(_files(app, _manifest(app, started.headers["Content-Location"]))["Group"])) == \
            ["a-left", "both"]
        assert app.post("/fhir/Group", json={**member, "member": []}).status_code == 403  # reads only
    services.audit.chain.project()
    events = world.admin.get("/fhir/AuditEvent", params={"_count": 100}).json()["entry"]
    [read_event] = [entry["resource"] for entry in events
                    if entry["resource"].get("outcomeDesc") == "GET /fhir/Group/both answered 200"]
    named = [entity["what"]["reference"] for entity in read_event["entity"]
             if entity.get("role", {}).get("code") == "1"]
    assert named == [f"Patient/{a}", f"Patient/{b}"]  # the context's patient first, then every member


def test_an_estimated_total_counts_the_patients_compartment_alone(world, services):
    """`_total=estimate` on PostgreSQL is the planner's guess, from the whole
    table's statistics: under a patient context it would tell how many
    records of other patients there are. There it is counted instead."""
    a, b = world.patients["a"], world.patients["b"]
    seed(services, *(_observation(f"a{number}", a) for number in range(2)),
         *(_observation(f"b{number}", b) for number in range(300)))
    if services.engine.dialect.name == "postgresql":
        with services.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")  # statistics that know the other patient's 300
            connection.commit()
    with _as(world, _launch(world)) as app:
        for params in ({}, {"code": "1111-1"}, {"patient.name": "Able"}, {"_lastUpdated": "gt2000"}):
            page = app.get("/fhir/Observation", params={**params, "_total": "estimate", "_count": 1}).json()
            assert (page["total"], len(ids(page)), link(page, "next") is not None) == (3, 1, True), params
    # Outside the context, the estimate is still the planner's (of 303, give or take).
    estimated = world.admin.get("/fhir/Observation", params={"_total": "estimate", "_count": 1}).json()
    assert estimated["total"] > 100


def test_a_patient_context_finds_its_groups_by_any_form_of_reference_and_learns_nothing_of_other_members(
        world, services):
    """Group membership under a patient context, by the forms a reference takes: a versioned reference is the
    patient's, an absolute URL of this server is made relative as it is written, a contained Patient is nobody's.
    Through the Group, the other members' ids are read (the Group whole), but no more of them: a chain on their
    names, or an `_include` of them, finds nothing of theirs."""
    a, b = world.patients["a"], world.patients["b"]
    group = {"resourceType": "Group", "type": "person", "actual": True}
    seed(services, {**group, "id": "both", "member": [{"entity": {"reference": f"Patient/{b}"}},
                                                       {"entity": {"reference": f"Patient/{a}"}}]},
         {**group, "id": "versioned", "member": [{"entity": {"reference": f"Patient/{a}/_history/1"}}]},
         {**group, "id": "contained", "contained": [{"resourceType": "Patient", "id": "x"}],
          "member": [{"entity": {"reference": "#x"}}]})
    written = world.admin.put("/fhir/Group/absolute", json={
        **group, "id": "absolute", "member": [{"entity": {"reference": f"{world.base}/fhir/Patient/{a}"}}]})
    assert written.status_code == 201 and written.json()["member"][0]["entity"]["reference"] == f"Patient/{a}"
    with _as(world, _launch(world)) as app:
        assert sorted(ids(app.get("/fhir/Group").json())) == ["absolute", "both", "versioned"]
        assert app.get("/fhir/Group/contained").status_code == 404
        assert ids(app.get("/fhir/Group", params={"member:Patient.name": "Baker"}).json()) == []
        assert sorted(ids(app.get("/fhir/Group", params={"member:Patient.name": "Able"}).json())) == \
            ["absolute", "both", "versioned"]
        included = app.get("/fhir/Group", params={"_id": "both", "_include": "Group:member:Patient"}).json()
        assert [(entry["resource"]["resourceType"], entry["resource"]["id"]) for entry in included["entry"]] == \
            [("Group", "both"), ("Patient", a)]
        assert ids(app.get("/fhir/Patient", params={"_has:Group:member:_id": "both"}).json()) == [a]


def test_a_version_that_named_another_patient_is_not_the_contexts(world, services):
    """Results move with their study to the Patient its corrected PatientID names (server.jobs.study_changes):
    their earlier versions, in the other patient's compartment, stay that patient's, on every history path."""
    a, b = world.patients["a"], world.patients["b"]
    seed(services, _observation("moved", b))
    seed(services, _observation("moved", a))  # version 2, now the first patient's
    with _as(world, _launch(world)) as app:
        assert app.get("/fhir/Observation/moved").status_code == 200
        assert app.get("/fhir/Observation/moved/_history/2").status_code == 200
        assert app.get("/fhir/Observation/moved/_history/1").status_code == 404
        for path in ("/fhir/Observation/moved/_history", "/fhir/Observation/_history", "/fhir/_history"):
            listed = [(entry["resource"]["id"], entry["resource"]["subject"]["reference"])
                      for entry in app.get(path).json()["entry"]]
            assert ("moved", f"Patient/{a}") in listed and ("moved", f"Patient/{b}") not in listed, (path, listed)
        paged = app.get("/fhir/Observation/_history", params={"_count": 1}).json()  # pages still reach the rest
        assert link(paged, "next") is not None
    # The server itself (no request) and the user, outside the context, still read it.
    assert world.admin.get("/fhir/Observation/moved/_history/1").status_code == 200


def test_an_export_under_a_patient_context_holds_that_patient_alone(world, services):
    a, b = world.patients["a"], world.patients["b"]
    with _as(world, _launch(world)) as app:
        assert app.get("/fhir/$export", headers=KICK).status_code == 403
        other = {"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference":
                                                              {"reference": f"Patient/{b}"}}]}
        assert app.post("/fhir/Patient/$export", json=other, headers=KICK).status_code == 403
        started = app.get("/fhir/Patient/$export", headers=KICK)
        assert started.status_code == 202, started.text
        files = _files(app, _manifest(app, started.headers["Content-Location"]))
        # The user's own export of every patient is not the app's to see.
        clara, _ = services.auth.issuer.issue("clara", "clinician", "user/*.rs", False)
        whole = world.admin.get("/fhir/Patient/$export", headers={**KICK, "Authorization": f"Bearer {clara}"})
        assert whole.status_code == 202
        assert app.get(whole.headers["Content-Location"]).status_code == 404
        assert app.delete(whole.headers["Content-Location"]).status_code == 404
    assert _ids(files["Patient"]) == [a] and _ids(files["Observation"]) == ["oa"]
    assert _ids(files["ImagingStudy"]) == [world.studies["a"]] and "DiagnosticReport" not in files


def test_an_exports_type_filters_look_into_the_patients_compartment_alone(world, services):
    """A `_typeFilter` chain is judged as the same token's search is: an
    Observation of the patient derived from another patient's is no match of
    `derived-from:Observation.code=...`, which would tell of that other one."""
    a, b = world.patients["a"], world.patients["b"]
    seed(services, {**_observation("derived", a), "derivedFrom": [{"reference": "Observation/ob"}]},
         {**_observation("own", a), "derivedFrom": [{"reference": "Observation/oa"}]})
    with _as(world, _launch(world)) as app:
        for chain, expected in (("derived-from:Observation.code=1111-1", ["own"]),
                                (f"derived-from:Observation.subject=Patient/{b}", []),
                                ("patient.name=Able", ["derived", "oa", "own"])):
            searched = app.get(f"/fhir/Observation?{chain}").json()
            started = app.get("/fhir/Patient/$export", params={"_type": "Observation",
                                                               "_typeFilter": f"Observation?{chain}"}, headers=KICK)
            assert started.status_code == 202, started.text
            files = _files(app, _manifest(app, started.headers["Content-Location"]))
            assert sorted(ids(searched)) == sorted(_ids(files.get("Observation", []))) == expected, chain
    # The user, outside the context, still finds what the chain reaches.
    clara, _ = services.auth.issuer.issue("clara", "clinician", "user/*.rs", False)
    found = world.admin.get("/fhir/Observation", params={"derived-from:Observation.code": "1111-1"},
                            headers={"Authorization": f"Bearer {clara}"})
    assert sorted(ids(found.json())) == ["derived", "own"]


def test_user_scopes_beside_patient_ones_keep_their_reach(app, services):
    """user/ scopes that read and search a type reach all of it; with one letter only, the type stays
    within the compartment (a search would otherwise find what a read then hides)."""
    for world in _served_world(app, services, "launch/patient patient/*.rs user/Observation.rs user/ImagingStudy.s"):
        token = _launch(world, scope="launch/patient patient/*.rs user/Observation.rs user/ImagingStudy.s")
        with _as(world, token) as client:
            assert sorted(ids(client.get("/fhir/Observation").json())) == ["oa", "ob"]
            assert client.get("/fhir/Observation/ob").status_code == 200
            assert ids(client.get("/fhir/ImagingStudy").json()) == [world.studies["a"]]
            assert client.get(f"/fhir/Patient/{world.patients['b']}").status_code == 404


def test_dicomweb_reaches_the_patients_studies_alone(world):
    a, b = world.studies["a"], world.studies["b"]
    with _as(world, _launch(world)) as app:
        found = app.get("/dicom-web/studies").json()
        assert [study["0020000D"]["Value"][0] for study in found] == [a]
        assert app.get("/dicom-web/studies", params={"StudyInstanceUID": b}).status_code in (200, 204)
        assert app.get("/dicom-web/studies", params={"StudyInstanceUID": b}).content in (b"", b"[]")
        assert app.get(f"/dicom-web/studies/{b}/series").content in (b"", b"[]")
        assert app.get(f"/dicom-web/studies/{a}/metadata").status_code == 200
        assert app.get(f"/dicom-web/studies/{b}/metadata").status_code == 404
        assert app.get(f"/dicom-web/studies/{b}").status_code == 404
        assert app.get(f"/dicom-web/studies/{b}/thumbnail").status_code == 404
    # The admin, with no patient context, still sees both.
    assert len(world.admin.get("/dicom-web/studies").json()) == 2


def test_what_tells_of_any_study_needs_more_than_a_patient_context(world, services):
    """Ordering inference on a study, or listing workitems, tells whether a study exists and whose it is:
    patient/ImagingStudy.rs, which reaches one patient's studies, is not enough beside Task rights."""
    token, _ = services.auth.issuer.issue("olga", "ai-operator", "user/Task.cruds patient/ImagingStudy.rs", False,
                                          app=world.app.client_id, patient=world.patients["a"])
    order = {"resourceType": "Task", "status": "requested", "intent": "order",
             "focus": {"reference": f"ImagingStudy/{world.studies['b']}"}}
    with httpx.Client(base_url=world.base, headers={"Authorization": f"Bearer {token}"}) as app:
        assert app.get("/dicom-web/studies").status_code == 200  # its own patient's studies it reads
        assert app.post("/fhir/Task", json=order).status_code == 403
        assert app.get("/dicom-web/workitems").status_code == 403


def test_a_refresh_keeps_the_patient(world):
    first = _launch(world, "b", scope=ASKED + " offline_access")
    renewed = world.app.refresh(first["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    token = renewed.json()
    assert token["patient"] == world.patients["b"] and token["scope"] == first["scope"]
    with _as(world, token) as app:
        assert ids(app.get("/fhir/Observation").json()) == ["ob"]
        assert app.get(f"/fhir/Patient/{world.patients['a']}").status_code == 404


def test_patient_scopes_without_a_patient_reach_nothing(world, services):
    # A token that names no patient: its patient/ scopes give nothing (never every patient).
    token, _ = services.auth.issuer.issue("clara", "clinician", "patient/*.rs", False, app=world.app.client_id)
    with httpx.Client(base_url=world.base, headers={"Authorization": f"Bearer {token}"}) as app:
        assert app.get("/fhir/Observation/oa").status_code == 403
        assert app.get("/dicom-web/studies").status_code == 403
    # An app that asks for patient/ scopes without launch/patient gets no picker and none of them.
    redirect = world.app.log_in(world.app.authorize(scope="patient/*.rs user/Observation.s"))
    answer = world.app.redeem(_code_of(redirect)).json()
    assert answer["scope"] == "user/Observation.s" and "patient" not in answer


def test_a_client_registered_for_patient_scopes_gets_no_wider_ones_by_itself(world, services):
    """Registered patient/ scopes reach a patient a user launches the app with: asked for as system/ or user/
    ones with the client's own credentials (no user, no patient), they are no scope at all, not every patient's."""
    client_id, secret = services.auth.identities.add_client("chart", "launch/patient patient/*.rs",
                                                            redirect_uris=[REDIRECT])
    for asked in ("system/*.rs", "user/Observation.rs", "system/Observation.read"):
        issued = httpx.post(f"{world.base}/auth/token", auth=(client_id, secret),
                            data={"grant_type": "client_credentials", "scope": asked})
        assert issued.status_code == 400 and issued.json()["error"] == "invalid_scope", (asked, issued.text)
    # Nor does a Subscription's owner keep, when a notification is sent, more than its registered scopes allow.
    assert not Grant.parse("system/Observation.rs").narrowed_to(Grant.parse("patient/*.rs")).scopes
    assert str(Grant.parse("patient/*.rs").narrowed_to(Grant.parse("user/*.cruds"))) == "patient/*.rs"


def test_patient_scopes_are_narrowed_to_the_clients_and_the_users(app, services):
    for world in _served_world(app, services, "launch/patient patient/ImagingStudy.rs"):
        token = _launch(world)
        assert token["scope"] == "patient/ImagingStudy.rs launch/patient"
        with _as(world, token) as client:
            assert client.get("/fhir/Observation").status_code == 403
            assert ids(client.get("/fhir/ImagingStudy").json()) == [world.studies["a"]]
        # An auditor's role reaches no compartment type: nothing to grant, no picker.
        services.auth.identities.add_user("audrey", Role.AUDITOR, PASSWORD)
        refused = world.app.log_in(world.app.authorize(scope=ASKED), username="audrey")
        assert parse_qs(urlsplit(refused.headers["location"]).query)["error"] == ["invalid_scope"]


def test_requests_under_a_patient_context_are_audited_as_about_that_patient(world, services):
    with _as(world, _launch(world)) as app:
        assert app.get("/fhir/Device").status_code == 403
        assert app.get("/dicom-web/studies").status_code == 200
    services.audit.chain.project()
    events = world.admin.get("/fhir/AuditEvent", params={"_count": 100}).json()["entry"]
    described = {entry["resource"]["outcomeDesc"]: entry["resource"] for entry in events}
    for description in ("GET /fhir/Device answered 403", "GET /dicom-web/studies answered 200"):
        patients = [entity["what"]["reference"] for entity in described[description].get("entity", [])
                    if entity.get("what", {}).get("reference", "").startswith("Patient/")]
        assert patients == [f"Patient/{world.patients['a']}"], described[description]


def test_the_audit_trails_verification_needs_more_than_a_patient_context(world, services):
    """$verify counts and checks every event of the trail: patient/AuditEvent.rs, which reaches the events
    about one patient, is not enough (user/ scopes that read and search every AuditEvent are)."""
    held, _ = services.auth.issuer.issue("audrey", "auditor", "patient/AuditEvent.rs", False,
                                         app=world.app.client_id, patient=world.patients["a"])
    whole, _ = services.auth.issuer.issue("audrey", "auditor", "patient/AuditEvent.rs user/AuditEvent.rs", False,
                                          app=world.app.client_id, patient=world.patients["a"])
    with httpx.Client(base_url=world.base, headers={"Authorization": f"Bearer {held}"}) as app:
        assert app.get("/fhir/AuditEvent").status_code == 200  # the events about its patient it reads
        refused = app.get("/fhir/AuditEvent/$verify")
        assert refused.status_code == 403 and refused.json()["issue"][0]["code"] == "forbidden"
    with httpx.Client(base_url=world.base, headers={"Authorization": f"Bearer {whole}"}) as app:
        assert app.get("/fhir/AuditEvent/$verify").status_code == 200


def _ehr_launch(world: World, patient: str, headers: dict | None = None, **form: str) -> httpx.Response:
    return world.admin.post("/auth/launch", data={"patient": patient, **form}, headers=headers)


def _error_of(redirect: httpx.Response) -> str:
    assert redirect.status_code == 302, redirect.text
    return parse_qs(urlsplit(redirect.headers["location"]).query)["error"][0]


def test_an_ehr_launch_names_its_patient_and_needs_no_picker(world):
    opened = _ehr_launch(world, world.patients["b"])
    assert opened.status_code == 201, opened.text
    assert opened.json()["patient"] == world.patients["b"] and opened.headers["cache-control"] == "no-store"
    launch = opened.json()["launch"]
    redirect = world.app.log_in(world.app.authorize(scope="launch patient/*.rs", launch=launch))
    token = world.app.redeem(_code_of(redirect)).json()
    assert token["patient"] == world.patients["b"] and token["scope"].endswith(" launch")
    with _as(world, token) as app:
        assert ids(app.get("/fhir/Observation").json()) == ["ob"]
        assert app.get(f"/fhir/Patient/{world.patients['a']}").status_code == 404
    capabilities = httpx.get(f"{world.base}/.well-known/smart-configuration").json()["capabilities"]
    assert {"launch-ehr", "context-ehr-patient"} <= set(capabilities)


def test_an_ehr_launch_is_refused_what_does_not_hold_together(world, services):
    launch = _ehr_launch(world, world.patients["a"]).json()["launch"]
    for changes in ({"scope": "launch patient/*.rs"}, {"scope": "patient/*.rs", "launch": launch},
                    {"scope": "launch patient/*.rs", "launch": "x" * 43}):
        refused = world.app.authorize(**changes)
        assert refused.status_code == 302, refused.text
        assert parse_qs(urlsplit(refused.headers["location"]).query)["error"] == ["invalid_request"]
    assert _ehr_launch(world, "nobody").status_code == 404
    assert _ehr_launch(world, "").status_code == 400 and _ehr_launch(world, "a\x00b").status_code == 400
    assert httpx.post(f"{world.base}/auth/launch", data={"patient": world.patients["a"]}).status_code == 401
    auditor, _ = services.auth.issuer.issue("audrey", "auditor", "user/AuditEvent.rs", False)
    assert _ehr_launch(world, world.patients["a"], {"Authorization": f"Bearer {auditor}"}).status_code == 403
    # A token held to one patient opens no context, not even for that patient.
    held = _launch(world)["access_token"]
    assert _ehr_launch(world, world.patients["a"], {"Authorization": f"Bearer {held}"}).status_code == 403


def test_a_launch_is_used_once(world):
    launch = _ehr_launch(world, world.patients["b"]).json()["launch"]
    page = world.app.authorize(scope="launch patient/*.rs", launch=launch)
    assert page.status_code == 200, page.text
    # Taken by the first authorization, before its login: a second one, even by the same app, gets nothing.
    assert _error_of(world.app.authorize(scope="launch patient/*.rs", launch=launch)) == "invalid_request"
    token = world.app.redeem(_code_of(world.app.log_in(page))).json()
    assert token["patient"] == world.patients["b"]
    assert _error_of(world.app.authorize(scope="launch patient/*.rs", launch=launch)) == "invalid_request"
    # A launch refused for what else the request gets wrong is not spent by it.
    fresh = _ehr_launch(world, world.patients["a"]).json()["launch"]
    assert _error_of(world.app.authorize(scope="patient/*.rs", launch=fresh)) == "invalid_request"
    assert world.app.authorize(scope="launch patient/*.rs", launch=fresh).status_code == 200


def test_a_launch_bound_to_an_app_is_that_apps_alone(world, services):
    other_id, _ = services.auth.identities.add_client("other", "launch patient/*.rs", redirect_uris=[REDIRECT],
                                                      public=True)
    other = App(world.base, other_id)
    opened = _ehr_launch(world, world.patients["b"], client_id=world.app.client_id)
    assert opened.status_code == 201 and opened.json()["client_id"] == world.app.client_id
    launch = opened.json()["launch"]
    assert _error_of(other.authorize(scope="launch patient/*.rs", launch=launch)) == "access_denied"
    # The other app's try did not spend it: the app it was opened for still launches with it.
    token = world.app.redeem(_code_of(world.app.log_in(
        world.app.authorize(scope="launch patient/*.rs", launch=launch)))).json()
    assert token["patient"] == world.patients["b"]
    # An unbound launch is any app's, once.
    unbound = _ehr_launch(world, world.patients["a"]).json()["launch"]
    assert other.authorize(scope="launch patient/*.rs", launch=unbound).status_code == 200
    # Sent empty (or blank), it binds to nothing: refused rather than opened for any app.
    for client_id in ("nobody", "a\x00b", "", " ", world.app.client_id + " ", world.app.client_id.upper()):
        refused = _ehr_launch(world, world.patients["a"], client_id=client_id)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"


def test_the_command_line_registers_patient_apps(services, monkeypatch, capsys):
    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(services.settings.data_dir))
    monkeypatch.setenv("MEDAIFLOW_DATABASE_URL", services.settings.database_url)
    assert main(["clients", "add", "chart", "--scopes", "launch/patient patient/*.rs",
                 "--redirect-uri", "https://chart.example/cb", "--public"]) == 0
    assert "client id: chart-" in capsys.readouterr().out
    assert main(["clients", "add", "chart", "--scopes", "patient/*.rs"]) == 2  # no app to launch


def test_the_migration_adds_and_drops_the_launch_columns(services):
    def columns() -> dict[str, set[str]]:
        found = inspect(services.engine)
        return {table: {column["name"] for column in found.get_columns(table)} if found.has_table(table) else set()
                for table in ("authorization_requests", "authorization_codes", "refresh_tokens", "launch_contexts")}

    with migrating(services.engine) as config:
        command.downgrade(config, "0023")
    services.engine.dispose()  # SQLite: the tables were copied under the connections' feet
    before = columns()
    assert not {"user_name", "patient"} & before["authorization_requests"] and not before["launch_contexts"]
    assert "patient" not in before["authorization_codes"] | before["refresh_tokens"]
    upgrade(services.engine)
    after = columns()
    assert {"user_name", "patient"} <= after["authorization_requests"] and "patient" in after["launch_contexts"]
    assert "patient" in after["authorization_codes"] and "patient" in after["refresh_tokens"]
    assert "client_id" in after["launch_contexts"]


def test_a_patient_context_reads_no_audit_event_that_names_another_patient(world, services):
    """An AuditEvent names every patient its request touched: one naming another patient besides the
    context's tells whose a study is (a probe of B's study UID is audited with B's Patient) and what the
    admin stored, so it is not the context's to read, by search, read, history or $everything."""
    a, b = world.patients["a"], world.patients["b"]
    token, _ = services.auth.issuer.issue("ada", "admin", "patient/AuditEvent.rs patient/ImagingStudy.rs", False,
                                          app=world.app.client_id, patient=a)
    with httpx.Client(base_url=world.base, headers={"Authorization": f"Bearer {token}"}) as app:
        assert app.get(f"/dicom-web/studies/{world.studies['b']}/metadata").status_code == 404
        assert app.get(f"/dicom-web/studies/{world.studies['a']}/metadata").status_code == 200
        services.audit.chain.project()
        every = world.admin.get("/fhir/AuditEvent", params={"_count": 200}).json()["entry"]
        both = [entry["resource"]["id"] for entry in every
                if {f"Patient/{a}", f"Patient/{b}"} <= {entity.get("what", {}).get("reference")
                                                        for entity in entry["resource"].get("entity", [])}]
        assert both  # the admin's STOW of both studies, and the probe of B's
        seen = app.get("/fhir/AuditEvent", params={"_count": 200})
        assert seen.status_code == 200 and b not in seen.text and world.studies["b"] not in seen.text
        assert any(entry["resource"]["outcomeDesc"].startswith(f"GET /dicom-web/studies/{world.studies['a']}")
                   for entry in seen.json()["entry"])  # its patient's alone: still read
        for event in both:
            assert app.get(f"/fhir/AuditEvent/{event}").status_code == 404
            assert app.get(f"/fhir/AuditEvent/{event}/_history/1").status_code == 404
        assert b not in app.get(f"/fhir/Patient/{a}/$everything", params={"_count": 200}).text


def test_two_authorizations_racing_for_one_launch_get_it_once(world, services):
    """Both read the context before either takes it: the take, in each one's own transaction, lets one through."""
    launch = _ehr_launch(world, world.patients["a"]).json()["launch"]
    pending = Pending(world.app.client_id, REDIRECT, "launch patient/*.rs", None, "x" * 43, patient=world.patients["a"])
    start = threading.Barrier(8)

    def ask() -> str:
        start.wait()
        try:
            return services.auth.launches.ask(pending, launch)
        except Spent:
            return "spent"

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(), range(8)))
    assert answers.count("spent") == 7, answers
