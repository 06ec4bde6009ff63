"""FHIR R4 REST interactions (FHIR R4 http.html): read, vread, history,
create, update, delete, conditional reads, content negotiation, and the
OperationOutcome on every error."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.fhir_checks import ids, link, seed

TASK = {"resourceType": "Task", "status": "requested", "intent": "order"}


def _create(fhir, **extra):
    response = fhir.post("/fhir/Task", json={**TASK, **extra})
    assert response.status_code == 201, response.text
    return response


def _outcome(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]
    assert issue["code"] == code
    assert issue["diagnostics"]
    return issue["diagnostics"]


# --- create, read, vread ---------------------------------------------------------
def test_create_assigns_id_version_and_location(fhir):
    response = _create(fhir, id="client-chosen")
    body = response.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert response.headers["location"] == f"http://testserver/fhir/Task/{body['id']}/_history/1"
    assert response.headers["etag"] == 'W/"1"'

    read = fhir.get(f"/fhir/Task/{body['id']}")
    assert read.status_code == 200
    assert read.json() == body
    assert read.headers["etag"] == 'W/"1"'
    assert read.headers["last-modified"].endswith("GMT")


def test_update_versions_and_vread_returns_each_version(fhir):
    task_id = _create(fhir).json()["id"]
    updated = fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id, "status": "in-progress"})
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    assert fhir.get(f"/fhir/Task/{task_id}/_history/1").json()["status"] == "requested"
    assert fhir.get(f"/fhir/Task/{task_id}/_history/2").json()["status"] == "in-progress"
    _outcome(fhir.get(f"/fhir/Task/{task_id}/_history/3"), 404, "not-found")


def test_update_as_create_is_201(fhir):
    response = fhir.put("/fhir/Task/my-task-1", json={**TASK, "id": "my-task-1"})
    assert response.status_code == 201
    assert response.headers["location"].endswith("/fhir/Task/my-task-1/_history/1")


def test_update_needs_the_url_id_in_the_body(fhir):
    _outcome(fhir.put("/fhir/Task/abc", json={**TASK, "id": "other"}), 400, "invalid")
    _outcome(fhir.put("/fhir/Task/abc", json=TASK), 400, "invalid")


def test_stale_if_match_is_412_and_changes_nothing(fhir):
    task_id = _create(fhir).json()["id"]
    fresh = fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id, "status": "ready"}, headers={"If-Match": 'W/"1"'})
    assert fresh.status_code == 200
    stale = fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id, "status": "failed"}, headers={"If-Match": 'W/"1"'})
    assert "version 2" in _outcome(stale, 412, "conflict")
    assert fhir.get(f"/fhir/Task/{task_id}").json()["status"] == "ready"
    _outcome(fhir.delete(f"/fhir/Task/{task_id}", headers={"If-Match": 'W/"1"'}), 412, "conflict")
    _outcome(fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id}, headers={"If-Match": "3"}), 400, "invalid")


def test_if_match_star_needs_a_current_version(fhir):
    """`If-Match: *` holds for any current version (RFC 9110 13.1.1), and for
    nothing else: not a resource that does not exist, nor a deleted one."""
    task_id = _create(fhir).json()["id"]
    star = {"If-Match": "*"}
    updated = fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id, "status": "ready"}, headers=star)
    assert updated.status_code == 200, updated.text
    assert updated.headers["etag"] == 'W/"2"'
    assert "does not exist" in _outcome(fhir.put("/fhir/Task/never", json={**TASK, "id": "never"}, headers=star), 412,
                                        "conflict")
    _outcome(fhir.get("/fhir/Task/never"), 404, "not-found")
    assert fhir.delete(f"/fhir/Task/{task_id}", headers=star).status_code == 204
    _outcome(fhir.delete(f"/fhir/Task/{task_id}", headers=star), 412, "conflict")
    _outcome(fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id}, headers=star), 412, "conflict")
    _outcome(fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id}, headers={"If-Match": 'W/"3"'}), 412,
             "conflict")
    _outcome(fhir.get(f"/fhir/Task/{task_id}"), 410, "deleted")


def test_if_match_takes_a_list_of_etags(fhir):
    task_id = _create(fhir).json()["id"]
    listed = {"If-Match": 'W/"7", "1"'}
    assert fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id}, headers=listed).status_code == 200
    assert "not 1, 7" in _outcome(fhir.delete(f"/fhir/Task/{task_id}", headers=listed), 412, "conflict")
    for header in ('*, W/"1"', ",", ""):
        _outcome(fhir.delete(f"/fhir/Task/{task_id}", headers={"If-Match": header}), 400, "invalid")
    # An empty member is ignored (RFC 9110 5.6.1.2): this names version 1, no longer current.
    assert "not 1 " in _outcome(fhir.delete(f"/fhir/Task/{task_id}", headers={"If-Match": 'W/"1",'}), 412, "conflict")


def test_an_etag_that_is_no_version_of_ours_matches_nothing(fhir):
    """A well-formed entity tag that names no version (another server's, a
    cache's) is no error (RFC 9110 13.1.1, 13.1.2): it fails If-Match (412)
    and passes If-None-Match, on reads and writes alike."""
    task_id = _create(fhir).json()["id"]
    foreign = {"If-Match": '"abc"'}
    assert "name no version" in _outcome(fhir.get(f"/fhir/Task/{task_id}", headers=foreign), 412, "conflict")
    _outcome(fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id}, headers=foreign), 412, "conflict")
    assert fhir.get(f"/fhir/Task/{task_id}", headers={"If-None-Match": 'W/"x-1", ""'}).status_code == 200
    assert fhir.get(f"/fhir/Task/{task_id}", headers={"If-None-Match": 'W/"x-1", W/"1"'}).status_code == 304
    # RFC 9110 5.6.1: empty members of a list are ignored; a tag may hold a comma (it was split there, and 400).
    assert fhir.get(f"/fhir/Task/{task_id}", headers={"If-None-Match": 'W/"x-1", , W/"1",'}).status_code == 304
    assert fhir.get(f"/fhir/Task/{task_id}", headers={"If-None-Match": '"a,b", W/"1"'}).status_code == 304
    _outcome(fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id}, headers={"If-Match": '"1,2"'}), 412,
             "conflict")
    _outcome(fhir.get(f"/fhir/Task/{task_id}", headers={"If-None-Match": 'W/"1" W/"2"'}), 400, "invalid")
    updated = fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id}, headers={"If-None-Match": '"abc"'})
    assert updated.status_code == 200


def test_if_none_match_keeps_a_write_from_changing_what_is_current(fhir):
    """`If-None-Match: *` on a PUT creates only (RFC 9110 13.1.2): it was
    ignored, and the PUT overwrote what it was sent to keep."""
    only_create = {"If-None-Match": "*"}
    created = fhir.put("/fhir/Task/fresh", json={**TASK, "id": "fresh"}, headers=only_create)
    assert created.status_code == 201, created.text
    kept = fhir.put("/fhir/Task/fresh", json={**TASK, "id": "fresh", "status": "failed"}, headers=only_create)
    assert "version 1" in _outcome(kept, 412, "conflict")
    assert fhir.get("/fhir/Task/fresh").json()["status"] == "requested"
    _outcome(fhir.put("/fhir/Task/fresh", json={**TASK, "id": "fresh"}, headers={"If-None-Match": 'W/"1"'}), 412,
             "conflict")
    _outcome(fhir.delete("/fhir/Task/fresh", headers={"If-None-Match": '"1"'}), 412, "conflict")
    _outcome(fhir.delete("/fhir/Task/fresh", headers={"If-None-Match": "soon"}), 400, "invalid")
    both = {"If-Match": 'W/"1"', "If-None-Match": 'W/"2"'}
    assert fhir.put("/fhir/Task/fresh", json={**TASK, "id": "fresh"}, headers=both).status_code == 200
    assert fhir.delete("/fhir/Task/fresh", headers={"If-None-Match": 'W/"1"'}).status_code == 204
    # Deleted, nothing is current: it may be created again.
    assert fhir.put("/fhir/Task/fresh", json={**TASK, "id": "fresh"}, headers=only_create).status_code == 201
    assert fhir.put("/fhir/Task?_id=other", json=TASK, headers=only_create).status_code == 201
    _outcome(fhir.put("/fhir/Task?_id=fresh", json=TASK, headers=only_create), 412, "conflict")
    entries = [
        {"resource": {**TASK, "id": "fresh"}, "request": {"method": "PUT", "url": "Task/fresh", "ifNoneMatch": "*"}},
        {"resource": {**TASK, "id": "new"}, "request": {"method": "PUT", "url": "Task/new", "ifNoneMatch": "*"}},
    ]
    batch = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries}).json()
    assert [entry["response"]["status"] for entry in batch["entry"]] == ["412", "201 Created"]
    transaction = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries[:1]})
    _outcome(transaction, 412, "conflict")


def test_if_unmodified_since_keeps_a_write_from_overwriting_a_later_version(fhir):
    """RFC 9110 13.1.4: it was ignored, and the write overwrote what changed
    after the client's copy. If-Match, when sent, decides instead; a resource
    with no modification date (none yet) and a value that is no HTTP date
    leave it out."""
    task_id = _create(fhir).json()["id"]
    earlier = {"If-Unmodified-Since": format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)}
    later = {"If-Unmodified-Since": format_datetime(datetime.now(UTC) + timedelta(minutes=1), usegmt=True)}
    body = {**TASK, "id": task_id, "status": "failed"}
    assert "If-Unmodified-Since" in _outcome(fhir.put(f"/fhir/Task/{task_id}", json=body, headers=earlier), 412,
                                             "conflict")
    _outcome(fhir.delete(f"/fhir/Task/{task_id}", headers=earlier), 412, "conflict")
    _outcome(fhir.put(f"/fhir/Task?_id={task_id}", json=TASK, headers=earlier), 412, "conflict")
    assert fhir.get(f"/fhir/Task/{task_id}").json()["meta"]["versionId"] == "1"
    assert fhir.put(f"/fhir/Task/{task_id}", json=body, headers={**earlier, "If-Match": 'W/"1"'}).status_code == 200
    assert fhir.put(f"/fhir/Task/{task_id}", json=body, headers=later).status_code == 200
    assert fhir.put(f"/fhir/Task/{task_id}", json=body, headers={"If-Unmodified-Since": "soon"}).status_code == 200
    assert fhir.put("/fhir/Task/unmodified", json={**TASK, "id": "unmodified"}, headers=earlier).status_code == 201
    assert fhir.delete(f"/fhir/Task/{task_id}", headers=later).status_code == 204


def test_delete_then_read_is_410_and_delete_is_idempotent(fhir):
    task_id = _create(fhir).json()["id"]
    assert fhir.delete(f"/fhir/Task/{task_id}").status_code == 204
    _outcome(fhir.get(f"/fhir/Task/{task_id}"), 410, "deleted")
    assert fhir.delete(f"/fhir/Task/{task_id}").status_code == 204
    _outcome(fhir.get(f"/fhir/Task/{task_id}/_history/2"), 410, "deleted")
    assert fhir.get(f"/fhir/Task/{task_id}/_history/1").status_code == 200
    assert task_id not in ids(fhir.get("/fhir/Task").json())


def test_update_of_a_deleted_resource_creates_it_again(fhir):
    task_id = _create(fhir).json()["id"]
    assert fhir.delete(f"/fhir/Task/{task_id}").status_code == 204
    again = fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id})
    assert again.status_code == 201
    assert again.headers["location"].endswith(f"/fhir/Task/{task_id}/_history/3")
    assert fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id, "status": "ready"}).status_code == 200
    history = fhir.get(f"/fhir/Task/{task_id}/_history").json()
    assert [entry["response"]["status"] for entry in history["entry"]] == [
        "200 OK", "201 Created", "204 No Content", "201 Created",
    ]


def test_unknown_resource_is_404(fhir):
    _outcome(fhir.get("/fhir/Task/does-not-exist"), 404, "not-found")
    _outcome(fhir.get("/fhir/Task/bad id!"), 400, "invalid")


# --- conditional read ------------------------------------------------------------
def test_if_none_match_gives_304(fhir):
    task_id = _create(fhir).json()["id"]
    assert fhir.get(f"/fhir/Task/{task_id}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert fhir.get(f"/fhir/Task/{task_id}", headers={"If-None-Match": 'W/"7"'}).status_code == 200


def test_a_read_under_if_match_is_412_unless_it_names_the_version_read(fhir):
    """If-Match is evaluated first on a GET too (RFC 9110 13.1.1, 13.2.2):
    it was ignored, and a client that read only the version it held got
    another. `*` holds for whatever is read; a vread's version is the one
    matched. A malformed If-None-Match was taken as naming nothing on a read
    (200), though a write refuses it (400)."""
    task_id = _create(fhir).json()["id"]
    fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id, "status": "ready"})
    for url, held, other in ((f"/fhir/Task/{task_id}", 'W/"2"', 'W/"1"'),
                             (f"/fhir/Task/{task_id}/_history/1", '"1"', 'W/"2"')):
        assert fhir.get(url, headers={"If-Match": held}).status_code == 200
        assert fhir.get(url, headers={"If-Match": "*"}).status_code == 200
        assert "If-Match" in _outcome(fhir.get(url, headers={"If-Match": other}), 412, "conflict")
        # If-Match holds, If-None-Match is asked next: not modified.
        assert fhir.get(url, headers={"If-Match": held, "If-None-Match": held}).status_code == 304
        # Parsed as a write's are: a list, and no ETag that is not one.
        assert fhir.get(url, headers={"If-None-Match": f'W/"9", {held}'}).status_code == 304
        for header in ({"If-Match": "soon"}, {"If-None-Match": "soon"}, {"If-None-Match": f'*, {held}'}):
            _outcome(fhir.get(url, headers=header), 400, "invalid")
    _outcome(fhir.get("/fhir/Task/never", headers={"If-Match": "*"}), 404, "not-found")  # no 2xx to condition
    entries = [{"request": {"method": "GET", "url": f"Task/{task_id}", "ifMatch": tag}} for tag in ('W/"2"', 'W/"1"')]
    batch = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries}).json()
    assert [entry["response"]["status"][:3] for entry in batch["entry"]] == ["200", "412"]


def test_if_modified_since_gives_304(fhir):
    task_id = _create(fhir).json()["id"]
    later = format_datetime(datetime.now(UTC) + timedelta(minutes=1), usegmt=True)
    earlier = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert fhir.get(f"/fhir/Task/{task_id}", headers={"If-Modified-Since": later}).status_code == 304
    assert fhir.get(f"/fhir/Task/{task_id}", headers={"If-Modified-Since": earlier}).status_code == 200


# --- read-only types and other refusals ------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/fhir/ImagingStudy"),
        ("PUT", "/fhir/Patient/p1"),
        ("DELETE", "/fhir/Endpoint/dicomweb-wado-rs"),
        ("POST", "/fhir/Observation"),
        ("PATCH", "/fhir/Patient/p1"),
    ],
)
def test_writes_to_read_only_types_are_405(fhir, method, path):
    response = fhir.request(method, path, json={"resourceType": path.split("/")[2], "id": "p1"})
    _outcome(response, 405, "not-supported")


def test_unsupported_type_is_404_outcome(fhir):
    _outcome(fhir.get("/fhir/Medication"), 404, "not-found")
    _outcome(fhir.get("/fhir/no/such/route/here"), 404, "not-found")


def test_invalid_bodies(fhir):
    _outcome(fhir.post("/fhir/Task", content=b"{not json", headers={"Content-Type": "application/fhir+json"}), 400, "invalid")
    _outcome(fhir.post("/fhir/Task", json={**TASK, "status": "bogus"}), 422, "invalid")
    _outcome(fhir.post("/fhir/Task", json={**TASK, "unknownElement": 1}), 422, "invalid")
    _outcome(fhir.post("/fhir/Task", json={"resourceType": "Patient"}), 400, "invalid")
    _outcome(fhir.post("/fhir/Task", content=b"<Task/>", headers={"Content-Type": "text/plain"}), 415, "not-supported")


def test_a_uuid_of_any_version_is_stored_as_sent_and_one_r4_does_not_allow_is_422(fhir):
    time_based = "urn:uuid:a76d9bbf-f293-11e8-a1a4-7b4e5c8a1c3d"  # RFC 4122 version 1
    task_id = _create(fhir, input=[{"type": {"text": "correlation"}, "valueUuid": time_based}]).json()["id"]
    assert fhir.get(f"/fhir/Task/{task_id}").json()["input"][0]["valueUuid"] == time_based
    unprefixed = {"type": {"text": "correlation"}, "valueUuid": "c757873d-ec9a-4326-a141-556f43239520"}
    _outcome(fhir.post("/fhir/Task", json={**TASK, "input": [unprefixed]}), 422, "invalid")


# --- content negotiation ---------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "params", "expected"),
    [
        ({}, {}, "application/fhir+json"),
        ({"Accept": "application/json"}, {}, "application/json"),
        ({"Accept": "*/*"}, {}, "application/fhir+json"),
        ({"Accept": "application/fhir+xml"}, {}, "application/fhir+xml"),
        ({"Accept": "text/html, application/xml;q=0.5"}, {}, "application/xml"),
        ({"Accept": "application/fhir+xml"}, {"_format": "json"}, "application/fhir+json"),
        ({}, {"_format": "xml"}, "application/fhir+xml"),
        ({}, {"_format": "application/fhir+json"}, "application/fhir+json"),
    ],
)
def test_content_negotiation(fhir, headers, params, expected):
    response = fhir.get("/fhir/Endpoint/dicomweb-wado-rs", headers=headers, params=params)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == expected
    if expected.endswith("xml"):
        assert response.text.startswith("<?xml")
        assert '<Endpoint xmlns="http://hl7.org/fhir">' in response.text
        assert '<id value="dicomweb-wado-rs"/>' in response.text


def test_unacceptable_formats_are_406(fhir):
    _outcome(fhir.get("/fhir/Endpoint", headers={"Accept": "text/html"}), 406, "not-supported")
    _outcome(fhir.get("/fhir/Endpoint", params={"_format": "turtle"}), 406, "not-supported")
    refused_write = fhir.post("/fhir/Task", json=TASK, headers={"Accept": "text/html"})
    assert refused_write.status_code == 406
    assert refused_write.json()["issue"][0]["code"] == "not-supported"
    assert fhir.get("/fhir/Task").json()["total"] == 0  # refused before the write


def test_the_dstu2_names_of_the_formats_older_clients_send_are_understood(fhir):
    """application/json+fhir and application/xml+fhir (FHIR DSTU2's): in Accept,
    in _format and as a body's type; answers name the R4 types."""
    as_json = fhir.get("/fhir/Endpoint/dicomweb-wado-rs", headers={"Accept": "application/json+fhir"})
    assert as_json.status_code == 200 and as_json.headers["content-type"].startswith("application/fhir+json")
    as_xml = fhir.get("/fhir/Endpoint/dicomweb-wado-rs", params={"_format": "application/xml+fhir"})
    assert as_xml.status_code == 200 and as_xml.headers["content-type"].startswith("application/fhir+xml")
    created = fhir.post("/fhir/Task", content=orjson.dumps(TASK), headers={"Content-Type": "application/json+fhir"})
    assert created.status_code == 201, created.text


def test_xml_search_bundle(fhir):
    response = fhir.get("/fhir/Endpoint", params={"_format": "xml"})
    assert response.status_code == 200
    assert response.text.count("<Endpoint>") == 3
    assert '<Bundle xmlns="http://hl7.org/fhir">' in response.text


def test_pretty(fhir):
    compact = fhir.get("/fhir/Endpoint/dicomweb-wado-rs")
    pretty = fhir.get("/fhir/Endpoint/dicomweb-wado-rs", params={"_pretty": "true"})
    assert "\n" not in compact.text
    assert "\n  " in pretty.text
    assert pretty.json() == compact.json()


# --- history ---------------------------------------------------------------------
def test_instance_history_newest_first_with_paging(fhir):
    task_id = _create(fhir).json()["id"]
    for status in ("received", "accepted", "in-progress"):
        assert fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id, "status": status}).status_code == 200
    fhir.delete(f"/fhir/Task/{task_id}")
    first = fhir.get(f"/fhir/Task/{task_id}/_history", params={"_count": 3}).json()
    assert first["type"] == "history"
    methods = [entry["request"]["method"] for entry in first["entry"]]
    assert methods == ["DELETE", "PUT", "PUT"]
    assert "resource" not in first["entry"][0]
    second = fhir.get(link(first, "next")).json()
    assert [entry["response"]["etag"] for entry in second["entry"]] == ['W/"2"', 'W/"1"']
    assert second["entry"][-1]["request"] == {"method": "POST", "url": "Task"}
    assert link(second, "next") is None
    Bundle.model_validate(second)


def test_type_history_and_since(fhir):
    first = _create(fhir).json()
    second = _create(fhir).json()
    everything = fhir.get("/fhir/Task/_history").json()
    assert [entry["resource"]["id"] for entry in everything["entry"]] == [second["id"], first["id"]]
    since = fhir.get("/fhir/Task/_history", params={"_since": second["meta"]["lastUpdated"]}).json()
    assert [entry["resource"]["id"] for entry in since["entry"]] == [second["id"]]
    _outcome(fhir.get("/fhir/Task/_history", params={"_since": "yesterday"}), 400, "invalid")


@pytest.mark.parametrize(
    "since", ["2000", "2000-01-01", "2000-01-01T00:00", "2000-01-01T00:00:00", "2000-01-01T00:00Z"]
)
def test_history_since_is_an_instant_not_a_date(fhir, since):
    """R4 types `_since` as an instant (http.html#history): to the second,
    with a zone. A date was taken as the start of its range."""
    task_id = _create(fhir).json()["id"]
    for url in ("/fhir/Task/_history", f"/fhir/Task/{task_id}/_history"):
        assert "_since" in _outcome(fhir.get(url, params={"_since": since}), 400, "invalid")
    entry = {"request": {"method": "GET", "url": f"Task/_history?_since={since}"}}
    answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [entry]}).json()
    assert answer["entry"][0]["response"]["status"] == "400"
    stamped = fhir.get("/fhir/Task/_history", params={"_since": "2000-01-01T00:00:00.5+01:00"})
    assert [entry["resource"]["id"] for entry in stamped.json()["entry"]] == [task_id]


def test_polling_a_type_history_with_since_misses_no_version_that_commits_late(fhir, services):
    """A version's time is taken before its transaction commits: one that
    commits after a newer one was polled would be older than the poller's
    next `_since`. The answer waits for the transactions still open."""
    from fhir_mappings.date_ranges import to_micros
    from server.db import write_connection

    if services.engine.dialect.name == "sqlite":
        pytest.skip("SQLite writers take turns: versions commit in the order of their times")

    def poll(since: str | None) -> list[dict]:
        params = {"_since": since} if since else {}
        return [entry["resource"] for entry in fhir.get("/fhir/Task/_history", params=params).json().get("entry", [])]

    def newest(seen: list[dict]) -> str | None:
        return max((resource["meta"]["lastUpdated"] for resource in seen), default=None)

    before = poll(None)
    since = newest(before)
    late = write_connection(services.engine)
    connection = late.__enter__()
    try:
        [slow] = services.fhir.store.put_many(connection, [({**TASK, "id": "slow"}, "slow")], "PUT")
        fast = _create(fhir).json()  # committed while `slow`, older, is not yet
        first = poll(since)
        since = newest(first) or since
    finally:
        late.__exit__(None, None, None)
    second = poll(since)
    seen = {resource["id"] for resource in first + second}
    assert {"slow", fast["id"]} <= seen
    assert slow.last_updated < to_micros(datetime.fromisoformat(fast["meta"]["lastUpdated"]))


def test_a_type_history_waits_only_as_long_as_the_transactions_open_when_asked(fhir, services):
    """It waits for the transactions open when it was asked for, and no longer
    than they stay open: the version of one that commits while it waits is in
    the answer, which comes as soon as it has committed."""
    import threading
    import time

    from server.db import write_connection

    if services.engine.dialect.name == "sqlite":
        pytest.skip("SQLite writers take turns: versions commit in the order of their times")
    late = write_connection(services.engine)
    connection = late.__enter__()
    services.fhir.store.put_many(connection, [({**TASK, "id": "late"}, "late")], "PUT")
    threading.Timer(0.2, late.__exit__, (None, None, None)).start()  # it commits while the history waits
    started = time.monotonic()
    answered = fhir.get("/fhir/Task/_history").json()
    waited = time.monotonic() - started
    assert "late" in {entry["resource"]["id"] for entry in answered.get("entry", [])}
    assert waited < 0.8, f"waited {waited:.2f} s for a transaction that committed after 0.2 s"


def test_derived_types_keep_no_history(fhir):
    _outcome(fhir.get("/fhir/Endpoint/dicomweb-wado-rs/_history"), 404, "not-found")
    assert fhir.get("/fhir/Endpoint/dicomweb-wado-rs/_history/1").status_code == 200


def test_tampered_history_cursor_is_400(fhir, services):
    seed(services, *({**TASK, "id": f"t{i}"} for i in range(3)))
    first = fhir.get("/fhir/Task/_history", params={"_count": 1}).json()
    url = link(first, "next")
    _outcome(fhir.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")), 400, "invalid")


def test_a_write_answers_as_prefer_return_asks(fhir):
    minimal = fhir.post("/fhir/Task", json=TASK, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"] and minimal.headers["etag"] == 'W/"1"'
    task_id = minimal.headers["location"].split("/Task/")[1].split("/")[0]
    outcome = fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id},
                       headers={"Prefer": "handling=lenient, return=OperationOutcome"})
    assert outcome.status_code == 200
    assert outcome.json()["resourceType"] == "OperationOutcome" and "version 2" in outcome.text
    full = fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id}, headers={"Prefer": "return=representation"})
    assert full.json()["meta"]["versionId"] == "3"
