"""Odd and hostile input gets a 4xx OperationOutcome, never a 500; odd DICOM
values never cost an instance its storage."""

import threading

import pytest
from pydicom.uid import generate_uid

from fhir_mappings.errors import InvalidResource
from fhir_mappings.resources import validate_resource
from server.db import write_connection
from tests.dicom_files import make_ct, multipart_body
from tests.fhir_checks import ids, link, seed

TASK = {"resourceType": "Task", "status": "requested", "intent": "order"}


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/ImagingStudy?started=9999-12-31",
        "/fhir/ImagingStudy?started=9999-12-31T23:59:59-05:00",
        "/fhir/ImagingStudy?_lastUpdated=gt9999-12-31",
        "/fhir/Task/_history?_since=9999-12-31",
        "/fhir/Task?_count=%C2%B2",
        "/fhir/Task/_history?_count=%C2%B2",
        "/fhir/Task/x/_history/%C2%B2",
        "/fhir/Task/x/_history/99999999999999999999999999",
        "/fhir/Observation?value-quantity=1e999999999",
        "/fhir/Observation?value-quantity=1e-999999999",
        "/fhir/Observation?value-quantity=ap1e999999999",
        "/fhir/Task?identifier=%00",
        "/fhir/Task?_id=%00",
        "/fhir/Patient?name=%00",
        "/fhir/ImagingStudy?identifier=:foo&_total=estimate",
        "/fhir/Observation?value-quantity=1e400&_total=estimate",
        "/fhir/Task?status=" + ",".join(f"s{n}" for n in range(500)),
        "/fhir/Task?" + "&".join(f"status=s{n}" for n in range(1100)),
        "/fhir/Task?_sort=" + ",".join(["status"] * 40),
        "/fhir/Task?_sort=status,intent,priority,code,authored-on,modified",
        "/fhir/ImagingStudy?patient:Patient=",
        "/fhir/Task?started=%D9%A2%D9%A0%D9%A2%D9%A4",
        "/fhir/Task?authored-on=%D9%A2%D9%A0%D9%A2%D9%A4",
    ],
)
def test_hostile_queries_are_client_errors(fhir, url):
    response = fhir.get(url)
    assert 200 <= response.status_code < 500, (url, response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "entry",
    [
        {"request": {"method": "GET", "url": "Task/x", "ifMatch": 1}},
        {"request": {"method": "GET", "url": "http://[::1"}},
        {"request": {"method": "GET", "url": "Foo"}},
        {"request": {"method": "GET", "url": "Task?_count=%C2%B2"}},
        {"resource": {**TASK, "authoredOn": "9999-12-31"}, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "executionPeriod": {"end": "9999-12-31T23:59:59Z"}}, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "focus": {"reference": "A" * 100 + "/1"}}, "request": {"method": "POST", "url": "Task"}},
        {"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": "identifier=x"}},
    ],
)
def test_odd_bundle_entries_never_fail_the_server(fhir, entry):
    for bundle_type in ("batch", "transaction"):
        response = fhir.post("/fhir", json={"resourceType": "Bundle", "type": bundle_type, "entry": [entry]})
        assert response.status_code < 500, (bundle_type, response.text[:300])


def test_nul_in_a_resource_is_400(fhir):
    response = fhir.post("/fhir/Task", json={**TASK, "identifier": [{"value": "a\u0000b"}]})
    assert response.status_code == 400


def test_escaped_bar_stays_in_the_code(fhir, services):
    seed(services, {**TASK, "id": "bar", "identifier": [{"value": "a|b"}]})
    assert ids(fhir.get("/fhir/Task", params={"identifier": "a\\|b"}).json()) == ["bar"]


def test_links_keep_format_and_pretty(fhir, services):
    seed(services, *({**TASK, "id": f"f{n}"} for n in range(3)))
    response = fhir.get("/fhir/Task", params={"_count": 1, "_format": "xml", "_pretty": "true"})
    assert response.headers["content-type"].startswith("application/fhir+xml")
    following = fhir.get("/fhir/Task", params={"_count": 1, "_format": "json"}).json()
    next_url = link(following, "next")
    assert "_format=json" in next_url
    assert fhir.get(next_url).status_code == 200


def test_update_as_create_shows_201_in_history(fhir):
    fhir.put("/fhir/Task/h1", json={**TASK, "id": "h1"})
    [entry] = fhir.get("/fhir/Task/h1/_history").json()["entry"]
    assert entry["response"]["status"] == "201 Created"


def test_transaction_reads_see_its_own_writes(fhir):
    response = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**TASK, "id": "t5"}, "request": {"method": "PUT", "url": "Task/t5"}},
        {"request": {"method": "GET", "url": "Task/t5"}},
        {"request": {"method": "GET", "url": "Task?_id=t5"}},
    ]})
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert entries[1]["resource"]["id"] == "t5"
    assert entries[2]["resource"]["total"] == 1


def test_transaction_refuses_overlapping_entries(fhir):
    same_url = "urn:uuid:11111111-1111-1111-1111-111111111111"
    for entries in (
        [{"fullUrl": same_url, "resource": TASK, "request": {"method": "POST", "url": "Task"}}] * 2,
        [{"resource": {**TASK, "id": "t6"}, "request": {"method": "PUT", "url": "Task/t6"}}] * 2,
    ):
        response = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert response.status_code == 400
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_batch_vread_of_a_deletion_is_410_and_empty_transaction_is_valid(fhir):
    fhir.put("/fhir/Task/d1", json={**TASK, "id": "d1"})
    fhir.delete("/fhir/Task/d1")
    response = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Task/d1/_history/2"}},
    ]})
    assert response.json()["entry"][0]["response"]["status"] == "410"
    empty = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction"})
    assert empty.status_code == 200 and "entry" not in empty.json()


@pytest.mark.parametrize(
    "attributes",
    [
        {"StudyDate": "20241340"},
        {"StudyDate": "00000000"},
        {"PatientBirthDate": "19990230"},
        {"SeriesNumber": -3, "InstanceNumber": -1},
        {"AccessionNumber": " ", "StudyDescription": "  ", "SeriesDescription": " "},
    ],
)
def test_odd_dicom_values_are_left_out_of_fhir_not_refused(fhir, attributes):
    study = generate_uid()
    body, content_type = multipart_body([make_ct(study, **attributes)])
    response = fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    resource = fhir.get(f"/fhir/ImagingStudy/{study}").json()
    assert "started" not in resource or attributes.get("StudyDate") is None
    patient = fhir.get(f"/fhir/{resource['subject']['reference']}").json()
    assert "birthDate" not in patient


def test_concurrent_stow_and_delete_leave_fhir_in_step(fhir, services):
    """STOWs and DELETEs of the studies of one patient, interleaved; afterwards
    every ImagingStudy matches the index and every subject resolves."""
    studies = [generate_uid() for _ in range(4)]
    series = {study: [generate_uid(), generate_uid()] for study in studies}
    errors: list[str] = []

    def churn(study: str) -> None:
        for round_number in range(3):
            body, content_type = multipart_body(
                [make_ct(study, series[study][n % 2], PatientID="CHURN") for n in range(2)]
            )
            answer = fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
            if answer.status_code != 200:
                errors.append(answer.text)
            if round_number < 2:
                target = f"/dicom-web/studies/{study}" if round_number == 0 else f"/dicom-web/studies/{study}/series/{series[study][0]}"
                deleted = fhir.delete(target)
                if deleted.status_code not in (200, 404):
                    errors.append(deleted.text)

    threads = [threading.Thread(target=churn, args=(study,)) for study in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for study in studies:
        instances = fhir.get(f"/dicom-web/studies/{study}/instances").json()
        resource = fhir.get(f"/fhir/ImagingStudy/{study}")
        assert resource.status_code == 200
        assert resource.json()["numberOfInstances"] == len(instances)
        assert fhir.get(f"/fhir/{resource.json()['subject']['reference']}").status_code == 200


def _nested_extensions(depth: int) -> dict:
    extension: dict = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(depth):
        extension = {"url": "http://example.org/branch", "extension": [extension]}
    return extension


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType":"Task","status":"draft","intent":"proposal","note":' + b"[" * 500 + b"]" * 500 + b"}",
        {**TASK, "extension": [_nested_extensions(300)]},
    ],
)
def test_a_body_nested_deeper_than_any_resource_is_400(fhir, body):
    if isinstance(body, bytes):
        response = fhir.post("/fhir/Task", content=body, headers={"Content-Type": "application/fhir+json"})
    else:
        response = fhir.post("/fhir/Task", json=body)
    assert response.status_code == 400, response.text[:300]
    assert "deep" in response.json()["issue"][0]["diagnostics"]


def test_extensions_nested_as_deep_as_real_ones_are_kept(fhir):
    response = fhir.post("/fhir/Task", json={**TASK, "extension": [_nested_extensions(20)]})
    assert response.status_code == 201, response.text[:300]


@pytest.mark.parametrize(
    "contained",
    [
        [{"resourceType": "Foo", "id": "p1"}],
        [{"resourceType": 5, "id": "p1"}],
        [{"id": "p1"}],
        [{"resourceType": "Patient"}],
        [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p1"}],
        [{"resourceType": "Patient", "id": "p1", "contained": [{"resourceType": "Patient", "id": "p2"}]}],
        [{"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}],
    ],
)
def test_an_unsound_contained_resource_is_422_and_sinks_only_its_batch_entry(fhir, contained):
    assert fhir.post("/fhir/Task", json={**TASK, "contained": contained}).status_code == 422
    response = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {**TASK, "contained": contained}, "request": {"method": "POST", "url": "Task"}},
        {"resource": TASK, "request": {"method": "POST", "url": "Task"}},
    ]})
    assert response.status_code == 200, response.text[:300]
    assert [entry["response"]["status"][:3] for entry in response.json()["entry"]] == ["422", "201"]


def test_a_local_reference_names_a_contained_resource(fhir):
    patient = {"resourceType": "Patient", "id": "p1"}
    # `#p1` is what the Task contains; `#` from a contained resource names the Task itself.
    kept = {**TASK, "contained": [{**patient, "link": [{"other": {"reference": "#"}, "type": "seealso"}]}],
            "for": {"reference": "#p1"}}
    assert fhir.post("/fhir/Task", json=kept).status_code == 201
    for body in ({**TASK, "for": {"reference": "#p1"}}, {**TASK, "contained": [patient], "for": {"reference": "#p2"}},
                 {**TASK, "focus": {"reference": "#x"}}):
        refused = fhir.post("/fhir/Task", json=body)
        assert refused.status_code == 422, refused.text[:300]
        assert "ref-1" in refused.json()["issue"][0]["diagnostics"]
    # Each resource of a Bundle contains its own: `#p1` is the entry's.
    batch = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": kept, "request": {"method": "POST", "url": "Task"}}]})
    assert [entry["response"]["status"][:3] for entry in batch.json()["entry"]] == ["201"]


_OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "c"}}


@pytest.mark.parametrize("reference", [
    "Patient/", "Patient", "Patient//_history", "Patient/p1/", "Patient/p1/_history", "Patient/p1/_history/",
    "Patient/p1/x", "http://other.example/fhir/Patient/", "https://other.example/fhir/Patient//_history/1",
    "http://testserver/fhir/Patient/", "http://other.example/fhir/Patient/p1/_history",
    # Relative, a reference is [type]/[id] of an R4 type: nothing else is a resource of this server.
    "/Patient/p1", "patient/p1", "Nope/p1", "p1", "./Patient/p1", "Patient/p 1",
    # Abstract types, and types of R4B (whose models validate here) that R4 does not have.
    "Resource/p1", "DomainResource/p1", "Citation/p1", "SubscriptionTopic/p1",
])
@pytest.mark.parametrize(("where", "body"), [
    ("Task.for.reference", lambda reference: {**TASK, "for": {"reference": reference}}),
    ("Task.contained[0].subject.reference", lambda reference: {
        **TASK, "contained": [{**_OBSERVATION, "subject": {"reference": reference}}], "focus": {"reference": "#o1"}}),
    ("Task.extension[0].valueReference.reference", lambda reference: {
        **TASK, "extension": [{"url": "http://example.org/x", "valueReference": {"reference": reference}}]}),
])
def test_a_reference_that_names_a_type_names_a_resource_of_it(fhir, reference, where, body):
    """`Patient/` or `Patient//_history` is a link nothing can follow (R4
    references.html#literal): refused wherever a Reference stands, naming
    the element, never stored as written."""
    for response in (fhir.post("/fhir/Task", json=body(reference)),
                     fhir.put("/fhir/Task/t1", json={**body(reference), "id": "t1"})):
        assert response.status_code == 422, response.text[:300]
        assert response.json()["issue"][0]["diagnostics"].startswith(f"{where}: "), response.text[:300]
    batch = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": body(reference), "request": {"method": "POST", "url": "Task"}}]})
    assert [entry["response"]["status"] for entry in batch.json()["entry"]] == ["422"]
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_references_of_every_literal_form_are_kept(fhir):
    for reference in ("Patient/p1", "Patient/p1/_history/2", "http://other.example/fhir/Patient/p1",
                      "http://other.example/fhir/Patient/p1/_history/2", "http://other.example/fhir/Patient/Patient",
                      "http://directory.example.org/People/", "https://other.example",
                      # R4 types that R4B (whose models validate here) dropped or renamed are R4 types still.
                      "MedicinalProduct/m1", "SubstanceSpecification/s1/_history/2"):
        created = fhir.post("/fhir/Task", json={**TASK, "for": {"reference": reference}})
        assert created.status_code == 201, created.text[:300]
        assert created.json()["for"] == {"reference": reference}


def test_a_transaction_refuses_a_reference_of_a_type_without_an_id(fhir):
    parent = "urn:uuid:6f6b1f52-2f4e-4b6e-8a55-0d8f2c2b9a11"
    response = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": parent, "resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "partOf": [{"reference": parent}, {"reference": "Task/"}]},
         "request": {"method": "POST", "url": "Task"}},
    ]})
    assert response.status_code == 422, response.text[:300]
    assert "Task.partOf[1].reference" in response.json()["issue"][0]["diagnostics"]
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_a_resource_in_a_bundle_resource_must_be_a_resource():
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Foo"}}]}
    with pytest.raises(InvalidResource, match="not a FHIR R4 resource"):
        validate_resource(bundle)


def test_an_etag_no_version_reaches_is_412_not_400(fhir):
    fhir.put("/fhir/Task/e1", json={**TASK, "id": "e1"})
    response = fhir.put("/fhir/Task/e1", json={**TASK, "id": "e1"}, headers={"If-Match": 'W/"99999999999"'})
    assert response.status_code == 412


def test_another_fhir_version_is_not_acceptable(fhir):
    fhir.put("/fhir/Task/v1", json={**TASK, "id": "v1"})
    assert fhir.get("/fhir/Task/v1", headers={"Accept": "application/fhir+json; fhirVersion=3.0"}).status_code == 406
    assert fhir.get("/fhir/Task/v1", headers={"Accept": "application/fhir+json; fhirVersion=4.0"}).status_code == 200
    both = "application/fhir+json; fhirVersion=5.0, application/fhir+json; fhirVersion=4.0; q=0.5"
    assert fhir.get("/fhir/Task/v1", headers={"Accept": both}).status_code == 200


def test_history_keeps_the_format_and_refuses_what_it_would_ignore(fhir):
    for version in range(3):
        fhir.put("/fhir/Task/hx", json={**TASK, "id": "hx", "description": str(version)})
    first = fhir.get("/fhir/Task/hx/_history", params={"_count": 1, "_format": "json", "_pretty": "true"}).json()
    next_url = link(first, "next")
    assert "_format=json" in next_url and "_pretty=true" in next_url
    assert "_format=json" in link(first, "self")
    assert fhir.get(next_url).json()["entry"][0]["resource"]["meta"]["versionId"] == "2"
    for params in ({"_at": "2026"}, {"_list": "x"}, [("_count", "2"), ("_count", "3")]):
        assert fhir.get("/fhir/Task/_history", params=params).status_code == 400, params


def test_a_read_takes_summary_and_elements(fhir):
    fhir.put("/fhir/Task/s1", json={**TASK, "id": "s1", "description": "long", "note": [{"text": "x"}]})
    subset = fhir.get("/fhir/Task/s1", params={"_elements": "status"}).json()
    assert "description" not in subset and subset["status"] == "requested" and subset["intent"] == "order"
    assert any(tag["code"] == "SUBSETTED" for tag in subset["meta"]["tag"])
    summary = fhir.get("/fhir/Task/s1/_history/1", params={"_summary": "true"}).json()
    assert "note" not in summary
    assert "meta" not in fhir.get("/fhir/Task/s1").json() or "tag" not in fhir.get("/fhir/Task/s1").json()["meta"]
    for params in ({"_summary": "bogus"}, {"_summary": "count"}):
        assert fhir.get("/fhir/Task/s1", params=params).status_code == 400


@pytest.mark.parametrize(
    "wrong",
    [
        {"input": [{"type": {"text": "n"}, "valueInteger": "5"}]},
        {"input": [{"type": {"text": "n"}, "valueInteger": True}]},
        {"input": [{"type": {"text": "n"}, "valueInteger": 5.5}]},
        {"input": [{"type": {"text": "n"}, "valueBoolean": "true"}]},
        {"input": [{"type": {"text": "n"}, "valueDecimal": "1.5"}]},
        {"authoredOn": 2024},
        {"note": {"text": "one note, not in an array"}},
        {"contained": [{"resourceType": "Patient", "id": "p1", "active": 1}]},
    ],
)
def test_a_primitive_of_the_wrong_json_type_is_422_not_coerced(fhir, wrong):
    response = fhir.post("/fhir/Task", json={**TASK, **wrong})
    assert response.status_code == 422, response.text[:300]
    assert fhir.get("/fhir/Task").json()["total"] == 0


@pytest.mark.parametrize(
    ("broken", "rule"),
    [
        ({"input": [{"type": {"text": "b"}, "valueBase64Binary": "!!!"}]}, "base64"),  # the models stored ""
        ({"input": [{"type": {"text": "b"}, "valueBase64Binary": "aGVsbG8"}]}, "Base64"),  # a quartet short
        ({"identifier": [{}]}, "ele-1"),
        ({"for": {"id": "only-an-id"}}, "ele-1"),
        ({"identifier": []}, "empty array"),
        ({"extension": [{"url": "http://example.org/x"}]}, "ext-1"),
        ({"extension": [{"url": "http://example.org/x", "valueString": "v",
                         "extension": [{"url": "y", "valueString": "w"}]}]}, "ext-1"),
        ({"partOf": [{"reference": "Patient/p1"}]}, "R4 allows Task there"),
        ({"identifier": [{"assigner": {"reference": "http://other.example/fhir/Task/t1"}}]}, "R4 allows Organization"),
        ({"note": [{"text": "n", "authorReference": {"reference": "Task/t1/_history/2"}}]}, "refers to a Task"),
        ({"executionPeriod": {"start": "2024-05-02", "end": "2024-05-01T23:00:00Z"}}, "per-1"),
    ],
)
def test_what_the_models_let_through_but_r4_refuses_is_422(fhir, broken, rule):
    response = fhir.post("/fhir/Task", json={**TASK, **broken})
    assert response.status_code == 422, response.text[:300]
    assert rule in response.json()["issue"][0]["diagnostics"]
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_a_long_base64_value_is_judged_at_once(fhir):
    """R4's base64Binary regex, taken as written, backtracked exponentially:
    120 bytes like these held the whole server for minutes."""
    import time

    started = time.perf_counter()
    response = fhir.post("/fhir/Task", json={**TASK, "input": [
        {"type": {"text": "b"}, "valueBase64Binary": "AAAA  " * 40 + "!"}]})
    assert response.status_code == 422
    assert time.perf_counter() - started < 5


def test_a_reference_to_a_url_that_names_no_fhir_type_is_not_judged_by_type(fhir):
    owned = {**TASK, "owner": {"reference": "http://directory.example.org/People/jdoe"}}
    assert fhir.post("/fhir/Task", json=owned).status_code == 201


def test_a_period_within_one_day_is_valid(fhir):
    period = {"start": "2024-05-01", "end": "2024-05-01"}  # the same day: start is not after end
    assert fhir.post("/fhir/Task", json={**TASK, "executionPeriod": period}).status_code == 201


def test_dates_times_and_base64_are_stored_as_written(fhir):
    # The models write `.1` as `.100000` and `+00:00` as `Z`, which changes the precision a value claims.
    written = {
        "authoredOn": "2020-01-01T10:00:00.1+05:30",
        "lastModified": "2020-01-01T10:00:00.000+00:00",
        "input": [
            {"type": {"text": "t"}, "valueTime": "10:00:00.5"},
            {"type": {"text": "i"}, "valueInstant": "2020-01-01T10:00:00.123456789Z"},
            {"type": {"text": "b"}, "valueBase64Binary": "aGVs bG8="},
        ],
    }
    created = fhir.post("/fhir/Task", json={**TASK, **written})
    assert created.status_code == 201, created.text[:300]
    stored = fhir.get(f"/fhir/Task/{created.json()['id']}").json()
    assert {key: stored[key] for key in written} == written
    assert fhir.get("/fhir/Task", params={"authored-on": "2020-01-01T04:30:00.1Z"}).json()["total"] == 1


def test_dates_with_more_fraction_digits_than_nanoseconds_are_kept_and_searched(fhir):
    """R4's date/dateTime/instant regex takes any number of fraction digits
    (`(\\.[0-9]+)?`). Such a value is stored as written and indexed to the
    microsecond, cut rather than rounded; it was stored without an index, so
    no date search found it, and refused as a search value."""
    written = {
        "authoredOn": "2020-01-01T10:00:00.1234569999999+01:00", "lastModified": "2020-01-01T09:00:00.9999999999Z",
    }
    created = fhir.post("/fhir/Task", json={**TASK, **written})
    assert created.status_code == 201, created.text[:300]
    task_id = created.json()["id"]
    assert {key: fhir.get(f"/fhir/Task/{task_id}").json()[key] for key in written} == written
    for value in ("2020-01-01T09:00:00.123456Z", "2020-01-01T09:00:00.12345699999999999Z", "2020-01-01T09:00:00Z",
                  "gt2020-01-01T09:00:00.12345599999999Z", "lt2020-01-01T09:00:00.1234570000000001Z"):
        found = fhir.get("/fhir/Task", params={"authored-on": value})
        assert found.status_code == 200, (value, found.text[:300])
        assert ids(found.json()) == [task_id], value
    for value in ("2020-01-01T09:00:00.1234570000001Z", "gt2020-01-01T09:00:00.1234569Z"):
        assert ids(fhir.get("/fhir/Task", params={"authored-on": value}).json()) == [], value
    assert ids(fhir.get("/fhir/Task", params={"modified": "2020-01-01T09:00:00.99999999999999Z"}).json()) == [task_id]


def test_primitives_of_the_right_json_type_are_kept_as_sent(fhir):
    inputs = [
        {"type": {"text": "n"}, "valueInteger": 5},
        {"type": {"text": "d"}, "valueDecimal": 1.5},
        {"type": {"text": "b"}, "valueBoolean": False},
        {"type": {"text": "t"}, "valueDateTime": "2024-05-01T10:00:00Z"},
    ]
    created = fhir.post("/fhir/Task", json={**TASK, "input": inputs})
    assert created.status_code == 201, created.text[:300]
    assert created.json()["input"] == inputs


@pytest.mark.parametrize(("dicom_date", "fhir_date"), [("00010101", "0001-01-01"), ("09991231", "0999-12-31")])
def test_dates_before_the_year_1000_are_kept(fhir, dicom_date, fhir_date):
    study = generate_uid()
    body, content_type = multipart_body([make_ct(study, PatientBirthDate=dicom_date, StudyDate=dicom_date)])
    assert fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    resource = fhir.get(f"/fhir/ImagingStudy/{study}").json()
    assert resource["started"] == fhir_date
    assert fhir.get(f"/fhir/{resource['subject']['reference']}").json()["birthDate"] == fhir_date


def test_a_control_character_in_a_resource_is_400(fhir):
    response = fhir.post("/fhir/Task", json={**TASK, "description": "ctl\u0001x"})
    assert response.status_code == 400
    assert "U+0001" in response.json()["issue"][0]["diagnostics"]
    assert fhir.post("/fhir/Task", json={**TASK, "description": "tab\tand\nnewline"}).status_code == 201


def test_control_characters_in_dicom_text_are_left_out_of_fhir_and_xml_answers(fhir):
    study = generate_uid()
    body, content_type = multipart_body([make_ct(study, PatientName="Ctl\x02^Name", StudyDescription="ctrl\x01desc")])
    assert fhir.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    assert fhir.get(f"/fhir/ImagingStudy/{study}").json()["description"] == "ctrldesc"
    for url in ("/fhir/Patient", "/fhir/ImagingStudy"):
        response = fhir.get(url, params={"_format": "xml"})
        assert response.status_code == 200, (url, response.text[:300])


def test_a_stored_resource_xml_cannot_carry_is_406_with_json_offered(fhir, services):
    div = '<div xmlns="http://www.w3.org/1999/xhtml">a&nbsp;b</div>'  # refused on write now; stored before that was
    with write_connection(services.engine) as connection:
        services.fhir.store.put(connection, {**TASK, "text": {"status": "generated", "div": div}}, "old-task", "PUT")
    response = fhir.get("/fhir/Task/old-task", params={"_format": "xml"})
    assert response.status_code == 406
    assert response.headers["content-type"].startswith("application/fhir+xml")  # the outcome itself is XML
    assert "<OperationOutcome" in response.text and "available as application/fhir+json" in response.text


def test_a_write_that_asks_for_an_answer_it_cannot_have_writes_nothing(fhir):
    fhir.put("/fhir/Task/x1", json={**TASK, "id": "x1"})
    assert fhir.post("/fhir/Task", json=TASK, params={"_format": "turtle"}).status_code == 406
    assert fhir.put("/fhir/Task/x1", json={**TASK, "id": "x1", "description": "new"},
                    headers={"Accept": "text/html"}).status_code == 406
    assert fhir.get("/fhir/Task").json()["total"] == 1
    assert fhir.get("/fhir/Task/x1").json()["meta"]["versionId"] == "1"
