"""The Patient compartment over HTTP: `Patient/[id]/$everything` (R4
OperationDefinition Patient-everything) and `Patient/[id]/[type]` searches
(R4 http.html#vsearch)."""

import pytest
from fastapi.testclient import TestClient

from server.auth.scopes import Role
from tests.fhir_checks import ids, link, seed

LOINC = "http://loinc.org"
# Every type but AuditEvent: each request about the patient adds one of those to its compartment.
RECORDS = "Patient,ImagingStudy,DiagnosticReport,Observation,Provenance"


def _patient(pid):
    return {"resourceType": "Patient", "id": pid, "name": [{"family": f"Family {pid}"}]}


def _observation(oid, subject, effective=None, code="1111-1"):
    body = {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": subject}}
    if effective is not None:
        body["effectiveDateTime"] = effective
    return body


def _study(uid, subject, started):
    return {"resourceType": "ImagingStudy", "id": uid, "status": "available", "subject": {"reference": subject},
            "started": started}


@pytest.fixture
def charts(services):
    """Two patients' records, and records in no patient's compartment."""
    seed(
        services,
        _study("1.2.3.1", "Patient/pa", "2020-03-01"),
        _patient("pa"),
        _patient("pb"),
        _study("1.2.3.2", "Patient/pb", "2021-01-01"),
        _observation("oa-2019", "Patient/pa", "2019-06-01T10:00:00Z"),
        _observation("oa-2024", "Patient/pa", "2024-06-01T10:00:00Z", code="2222-2"),
        _observation("oa-undated", "Patient/pa"),
        _observation("ob", "Patient/pb", "2024-06-01T10:00:00Z"),
        {"resourceType": "DiagnosticReport", "id": "ra", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "18748-4"}]}, "subject": {"reference": "Patient/pa"},
         "effectiveDateTime": "2024-06-02T00:00:00Z"},
        {"resourceType": "Provenance", "id": "va", "recorded": "2024-06-02T00:00:00Z",
         "target": [{"reference": "DiagnosticReport/ra"}, {"reference": "Patient/pa"}],
         "agent": [{"who": {"display": "a model"}}]},
        # A Task is in no patient's compartment in R4, whatever it is for.
        {"resourceType": "Task", "id": "ta", "status": "draft", "intent": "order", "for": {"reference": "Patient/pa"}},
        {"resourceType": "Device", "id": "da", "status": "active"},
    )


def _get(client, path, expected=200, **params):
    # No `params` at all for a link: httpx would replace the query the link carries.
    response = client.get(path, params=params) if params else client.get(path)
    assert response.status_code == expected, response.text
    return response.json()


def _everything_ids(fhir, patient="pa", **params):
    """Every page's match ids, following `next`."""
    bundle = _get(fhir, f"/fhir/Patient/{patient}/$everything", **{"_type": RECORDS, **params})
    assert bundle["type"] == "searchset"
    found = ids(bundle)
    while link(bundle, "next"):
        bundle = _get(fhir, link(bundle, "next").removeprefix("http://testserver"))
        found += ids(bundle)
    return found


def test_everything_is_the_patient_then_its_compartment_in_the_order_written(fhir, charts):
    found = _everything_ids(fhir)
    assert found == ["pa", "1.2.3.1", "oa-2019", "oa-2024", "oa-undated", "ra", "va"]
    # Without _type, the record of each access to the patient too (AuditEvent is in R4's compartment).
    bundle = _get(fhir, "/fhir/Patient/pa/$everything")
    assert ids(bundle)[: len(found)] == found
    audits = [entry["resource"] for entry in bundle["entry"] if entry["resource"]["resourceType"] == "AuditEvent"]
    assert len(audits) == len(bundle["entry"]) - len(found) >= 1
    assert "total" not in bundle
    assert all({"reference": "Patient/pa"} in [entity.get("what") for entity in audit["entity"]] for audit in audits)


def test_everything_pages_neither_repeat_nor_skip(fhir, charts, services):
    first = _get(fhir, "/fhir/Patient/pa/$everything", _count="3", _type=RECORDS)
    assert ids(first) == ["pa", "1.2.3.1", "oa-2019"]
    # Written while the client pages: it comes at the end, and nothing shifts.
    seed(services, _observation("oa-late", "Patient/pa"))
    second = _get(fhir, link(first, "next").removeprefix("http://testserver"))
    assert ids(second) == ["oa-2024", "oa-undated", "ra"]
    third = _get(fhir, link(second, "next").removeprefix("http://testserver"))
    assert ids(third) == ["va", "oa-late"]
    assert link(third, "next") is None
    assert "entry" not in _get(fhir, "/fhir/Patient/pa/$everything", _count="0", _type=RECORDS)


def test_paging_one_at_a_time_ends_though_each_page_read_is_recorded_in_the_compartment(fhir, charts):
    """Each page's AuditEvent is in the patient's compartment: pages after the
    first show only the AuditEvents there were when it was read, so a client
    paging one at a time gets to the end instead of reading, on each page, the
    record of reading the one before."""
    _get(fhir, "/fhir/Patient/pa/$everything", _type=RECORDS)  # a record of an access before the paging
    bundle = _get(fhir, "/fhir/Patient/pa/$everything", _count="1")
    pages = 1
    while link(bundle, "next") and pages < 50:
        bundle = _get(fhir, link(bundle, "next").removeprefix("http://testserver"))
        pages += 1
    assert link(bundle, "next") is None, "still paging after 50 pages"
    # The patient, its 6 records, and the AuditEvents of the accesses before the paging began.
    assert 8 <= pages < 20
    searched = _get(fhir, "/fhir/AuditEvent", patient="Patient/pa", _count="1")
    pages = 1
    while link(searched, "next") and pages < 50:
        searched = _get(fhir, link(searched, "next").removeprefix("http://testserver"))
        pages += 1
    assert link(searched, "next") is None, "still paging AuditEvent after 50 pages"


@pytest.mark.parametrize("count", ["1", "2", "5"])
def test_pages_of_any_size_hold_the_whole_compartment_in_order_each_once(fhir, charts, services, count):
    # A resource that names the patient twice is still one member.
    seed(services, {"resourceType": "Provenance", "id": "vb", "recorded": "2024-06-03T00:00:00Z",
                    "target": [{"reference": "Patient/pa"}, {"reference": "Patient/pa"}],
                    "agent": [{"who": {"display": "a model"}}]})
    assert _everything_ids(fhir, _count=count) == ["pa", "1.2.3.1", "oa-2019", "oa-2024", "oa-undated", "ra", "va", "vb"]


@pytest.mark.parametrize("count", ["1", "2", "3"])
def test_pages_hold_the_groups_naming_the_patient_among_the_rest_in_order(fhir, charts, services, count):
    """A Group is found by `member`, the rest by `patient`: one range of the index each, merged in one order."""
    def group(gid, *patients):
        return {"resourceType": "Group", "id": gid, "type": "person", "actual": True,
                "member": [{"entity": {"reference": f"Patient/{patient}"}} for patient in patients]}

    seed(services, group("ga", "pa", "pb", "pa"))  # names the patient twice: still one member
    seed(services, _observation("oa-after", "Patient/pa"))
    seed(services, group("gb", "pb"), group("ga-left", "pa"))
    expected = ["pa", "1.2.3.1", "oa-2019", "oa-2024", "oa-undated", "ra", "va", "ga", "oa-after", "ga-left"]
    assert _everything_ids(fhir, _count=count, _type=f"{RECORDS},Group") == expected
    assert _everything_ids(fhir, "pb", _count=count, _type="Group") == ["ga", "gb"]


def test_everything_by_type_and_by_date(fhir, charts, services):
    assert _everything_ids(fhir, _type="Observation,Patient,") == ["pa", "oa-2019", "oa-2024", "oa-undated"]
    assert _everything_ids(fhir, _type="DiagnosticReport") == ["ra"]
    # Care dates: what is dated outside the window goes; what has no date stays.
    assert _everything_ids(fhir, start="2021", end="2024-12-31") == ["pa", "oa-2024", "oa-undated", "ra", "va"]
    assert _everything_ids(fhir, end="2019-12") == ["pa", "oa-2019", "oa-undated"]
    # _since: changed since then, whatever the care date.
    moment = _get(fhir, "/fhir/Observation/oa-undated")["meta"]["lastUpdated"]
    seed(services, _observation("oa-2019", "Patient/pa", "2019-06-01T10:00:00Z", code="3333-3"))
    # An update keeps the resource's place in the order.
    assert _everything_ids(fhir, _since=moment) == ["oa-2019", "oa-undated", "ra", "va"]


def test_everything_leaves_out_what_was_deleted_and_answers_for_patients_not_here(fhir, charts, services):
    with services.engine.begin() as connection:
        services.fhir.store.delete(connection, "Observation", "oa-2019")
    assert "oa-2019" not in _everything_ids(fhir)
    assert _get(fhir, "/fhir/Patient/nobody/$everything", 404)["resourceType"] == "OperationOutcome"
    with services.engine.begin() as connection:
        services.fhir.store.delete(connection, "Patient", "pb")
    assert _get(fhir, "/fhir/Patient/pb/$everything", 410)["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("params", [
    {"_type": "Task"}, {"_type": "Nonsense"}, {"start": "yesterday"}, {"end": "2024-13"}, {"start": "ge2024"},
    {"_since": "2024,2025"}, {"_since": "2024"}, {"_since": "2024-01-01T00:00:00"}, {"_count": "-1"},
    {"start": "2020", "end": "2021", "_count": "x"},
])
def test_everything_refuses_what_it_cannot_honour(fhir, charts, params):
    outcome = _get(fhir, "/fhir/Patient/pa/$everything", 400, **params)
    assert outcome["issue"][0]["diagnostics"]


def test_everything_ignores_unknown_parameters_unless_strict(fhir, charts):
    bundle = _get(fhir, "/fhir/Patient/pa/$everything", foo="1")
    assert "'foo'" in bundle["entry"][-1]["resource"]["issue"][0]["diagnostics"]
    response = fhir.get("/fhir/Patient/pa/$everything", params={"foo": "1"}, headers={"Prefer": "handling=strict"})
    assert response.status_code == 400


def test_a_paging_cursor_belongs_to_its_patient(fhir, charts):
    first = _get(fhir, "/fhir/Patient/pa/$everything", _count="1", _type=RECORDS)
    cursor = link(first, "next").partition("?")[2]
    assert fhir.get(f"/fhir/Patient/pb/$everything?{cursor}").status_code == 400
    assert fhir.get(f"/fhir/Patient?{cursor}").status_code == 400


def _bearer(services, scope):
    token, _ = services.auth.issuer.issue("a-clinician", Role.CLINICIAN.value, scope, client=False)
    return {"Authorization": f"Bearer {token}"}


def test_everything_shows_only_what_the_client_may_search(app, services, charts):
    with TestClient(app, base_url="http://testserver") as anonymous:
        narrow = _bearer(services, "user/Patient.r user/Observation.s user/DiagnosticReport.s")
        bundle = anonymous.get("/fhir/Patient/pa/$everything", headers=narrow).json()
        assert ids(bundle) == ["oa-2019", "oa-2024", "oa-undated", "ra"]
        left_out = bundle["entry"][-1]["resource"]["issue"][0]["diagnostics"]
        assert all(name in left_out for name in ("Patient", "ImagingStudy", "Provenance", "AuditEvent"))
        refused = anonymous.get("/fhir/Patient/pa/$everything", params={"_type": "Observation,Provenance"},
                                headers=narrow)
        assert refused.status_code == 403 and "Provenance" in refused.text
        # The operation reads the patient: without Patient.r it is refused whole.
        unread = _bearer(services, "user/Observation.s")
        assert anonymous.get("/fhir/Patient/pa/$everything", headers=unread).status_code == 403


def _parameters(**values):
    return {"resourceType": "Parameters", "parameter": [
        {"name": name, "valueUnsignedInt" if name == "_count" else "valueString": value} for name, value in values.items()
    ]}


def test_everything_by_post_takes_its_parameters_in_a_parameters_resource(fhir, charts):
    response = fhir.post("/fhir/Patient/pa/$everything", json=_parameters(_type=RECORDS, _count=3))
    assert response.status_code == 200, response.text
    first = response.json()
    assert ids(first) == ["pa", "1.2.3.1", "oa-2019"]
    rest = _get(fhir, link(first, "next").removeprefix("http://testserver"))
    assert ids(rest) == ["oa-2024", "oa-undated", "ra"]
    dated = fhir.post("/fhir/Patient/pa/$everything", json={"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"}, {"name": "start", "valueDate": "2024-01-01"}]}).json()
    assert ids(dated) == ["oa-2024", "oa-undated"]
    xml = ('<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="_type"/>'
           '<valueString value="ImagingStudy"/></parameter></Parameters>')
    by_xml = fhir.post("/fhir/Patient/pa/$everything", content=xml,
                       headers={"Content-Type": "application/fhir+xml", "Accept": "application/fhir+json"})
    assert ids(by_xml.json()) == ["1.2.3.1"]


@pytest.mark.parametrize("body", [
    {"resourceType": "Patient"},
    {"resourceType": "Parameters", "parameter": [{"name": "_type", "resource": {"resourceType": "Patient"}}]},
    {"resourceType": "Parameters", "parameter": [{"name": "_count", "valueQuantity": {"value": 3}}]},
    {"resourceType": "Parameters", "parameter": [{"name": "start", "valueDate": "yesterday"}]},
    {"resourceType": "Parameters", "parameter": "start"},
])
def test_everything_by_post_refuses_what_is_not_its_input(fhir, charts, body):
    response = fhir.post("/fhir/Patient/pa/$everything", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_everything_by_post_needs_reading_the_patient_not_creating(app, services, charts):
    with TestClient(app, base_url="http://testserver") as anonymous:
        reader = _bearer(services, "user/Patient.r user/Observation.s")
        answer = anonymous.post("/fhir/Patient/pa/$everything", json=_parameters(), headers=reader)
        assert answer.status_code == 200 and ids(answer.json()) == ["oa-2019", "oa-2024", "oa-undated"]
        creator = _bearer(services, "user/Patient.c user/Observation.s")
        assert anonymous.post("/fhir/Patient/pa/$everything", json=_parameters(), headers=creator).status_code == 403


def test_a_compartment_search_is_the_types_search_within_the_patients_compartment(fhir, charts):
    bundle = _get(fhir, "/fhir/Patient/pa/Observation", code=f"{LOINC}|1111-1")
    assert sorted(ids(bundle)) == ["oa-2019", "oa-undated"]
    assert sorted(ids(_get(fhir, "/fhir/Patient/pb/Observation"))) == ["ob"]
    assert ids(_get(fhir, "/fhir/Patient/pa/ImagingStudy")) == ["1.2.3.1"]
    assert ids(_get(fhir, "/fhir/Patient/pa/Observation", subject="Patient/pb")) == []
    # Pages of a compartment search stay in the compartment.
    first = _get(fhir, "/fhir/Patient/pa/Observation", _count="2")
    rest = _get(fhir, link(first, "next").removeprefix("http://testserver"))
    assert sorted(ids(first) + ids(rest)) == ["oa-2019", "oa-2024", "oa-undated"]
    assert _get(fhir, "/fhir/Patient/pa/Task", 400)["issue"][0]["code"] == "invalid"
    assert _get(fhir, "/fhir/Patient/pa/Nonsense", 404)["resourceType"] == "OperationOutcome"
    # `_history` is no type: it stays the history route (the derived Patient keeps none).
    assert "no history" in _get(fhir, "/fhir/Patient/pa/_history", 404)["issue"][0]["diagnostics"]


def test_a_compartment_search_needs_searching_the_type_not_reading_the_patient(app, services, charts):
    with TestClient(app, base_url="http://testserver") as anonymous:
        observations = _bearer(services, "user/Observation.s")
        response = anonymous.get("/fhir/Patient/pa/Observation", headers=observations)
        assert response.status_code == 200
        assert anonymous.get("/fhir/Patient/pa/DiagnosticReport", headers=observations).status_code == 403


def test_the_capability_statement_declares_the_compartment_and_everything(fhir):
    statement = _get(fhir, "/fhir/metadata")
    rest = statement["rest"][0]
    assert rest["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
    patient = next(resource for resource in rest["resource"] if resource["type"] == "Patient")
    assert patient["operation"] == [
        {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
        {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
        {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
    ]


def _patients_named(services, fhir, description: str) -> list[list[str]]:
    """The patients named by each recorded request whose description starts so."""
    services.audit.chain.project()
    events = [entry["resource"] for entry in fhir.get("/fhir/AuditEvent", params={"_count": "1000"}).json()["entry"]]
    return [sorted(entity["what"]["reference"] for entity in event["entity"]
                   if entity.get("what", {}).get("reference", "").startswith("Patient/"))
            for event in events if event.get("outcomeDesc", "").startswith(description)]


def test_a_compartment_searchs_pages_stay_in_it_and_name_its_patient(fhir, charts, services):
    # Another patient's cursor under this patient's URL is refused, not followed out of the compartment.
    others = _get(fhir, "/fhir/Observation", subject="Patient/pb", _count="1")
    cursor = link(others, "first").partition("?")[2]
    assert fhir.get(f"/fhir/Patient/pa/Observation?{cursor}").status_code == 400
    # Every page of a compartment search names its patient, those reached by a cursor too.
    first = _get(fhir, "/fhir/Patient/pa/Observation", _count="1")
    second = link(first, "next").removeprefix("http://testserver")
    assert ids(_get(fhir, second)) == ["oa-2024"]
    # The search of pb's, then this page, which names pa though its URL has only the cursor.
    assert _patients_named(services, fhir, "GET /fhir/Observation answered") == [["Patient/pb"], ["Patient/pa"]]


def test_a_batch_entry_may_search_a_compartment(fhir, charts):
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/pa/Observation?code=http://loinc.org|2222-2"}},
        {"request": {"method": "GET", "url": "Patient/pa/Task"}},
    ]}
    answer = fhir.post("/fhir", json=batch).json()
    found, refused = answer["entry"]
    assert found["response"]["status"].startswith("200") and ids(found["resource"]) == ["oa-2024"]
    assert refused["response"]["status"].startswith("400")
