"""HEAD wherever GET is allowed, a 405 that names every method the URL takes
(RFC 9110 §9.3.2, §15.5.6), and a Date no earlier than a Last-Modified."""

import io
from email.utils import parsedate_to_datetime

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import admin_headers
from tests.dicom_files import bundled_file, make_ct, multipart_body

TASK = {"resourceType": "Task", "status": "draft", "intent": "proposal"}


def _stored_instance(client) -> str:  # type: ignore[no-untyped-def]
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    body, content_type = multipart_body([make_ct(study, series, sop, size=64)])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    return f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"


def test_head_answers_as_get_without_the_body(client):
    instance = _stored_instance(client)
    client.put("/fhir/Task/h1", json={**TASK, "id": "h1"})
    for url in (instance + "/metadata", instance, "/fhir/Task/h1", "/fhir/Task", "/dicom-web/studies"):
        got, head = client.get(url), client.head(url)
        assert head.status_code == got.status_code == 200, url
        assert head.content == b""
        # The media type, less a multipart boundary, which each answer draws anew.
        assert head.headers["content-type"].split("boundary=")[0] == got.headers["content-type"].split("boundary=")[0]
        if "multipart" not in got.headers["content-type"]:
            assert head.headers.get("content-length") == got.headers.get("content-length")
    assert client.head("/fhir/Task/missing").status_code == 404


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        ("PUT", "/dicom-web/studies", "GET, HEAD, POST"),
        ("PATCH", "{instance}", "DELETE, GET, HEAD"),
        ("PUT", "{instance}/metadata", "GET, HEAD"),
        ("POST", "/fhir/Task/x", "DELETE, GET, HEAD, PATCH, PUT"),
        ("GET", "/fhir/Task/$validate", "POST"),  # an operation's URL, not a resource's
        # Group is no type of this server, but its $export is served: the URL names something.
        ("PUT", "/fhir/Group/g/$export", "GET, HEAD, POST"),
        ("DELETE", "/fhir/Group/g/$export", "GET, HEAD, POST"),
        ("HEAD", "/auth/token", "POST"),
    ],
)
def test_405_lists_every_method_of_the_url(client, method, url, allowed):
    instance = _stored_instance(client)
    response = client.request(method, url.format(instance=instance))
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    if response.headers["content-type"].startswith("application/fhir+json"):
        assert response.json()["issue"][0]["diagnostics"].endswith(f"; allowed: {allowed}")


@pytest.mark.parametrize(("method", "url"), [
    ("GET", "/fhir/Nope/$validate"), ("HEAD", "/fhir/Nope/$validate"), ("PUT", "/fhir/Nope/$validate"),
    ("DELETE", "/fhir/Nope/x/$validate"), ("PATCH", "/fhir/Nope/x/$validate"), ("POST", "/fhir/Nope/x/_history"),
])
def test_an_operation_of_an_unknown_type_is_404_not_405(client, method, url):
    """The URL names nothing: a type the server lacks is 404, whatever the
    method, as its other URLs are, not a 405 for the operation the path looks like."""
    response = client.request(method, url)
    assert response.status_code == 404, response.text
    assert "allow" not in response.headers
    if method != "HEAD":
        assert "Nope is not a resource type" in response.json()["issue"][0]["diagnostics"]
    assert client.request(method, url.replace("Nope", "Task")).status_code == 405  # a type the server has


@pytest.mark.parametrize("url", ["/fhir/Task/$nothing", "/fhir/Patient/$everything", "/nowhere"])
def test_a_path_nothing_serves_says_so(client, url):
    response = client.get(url)
    assert response.status_code == 404
    said = response.json()["issue"][0]["diagnostics"] if url.startswith("/fhir") else response.text
    assert f"nothing is served at {url}" in said


@pytest.mark.parametrize(("method", "url"), [
    ("DELETE", "/fhir/Patient/anyone"), ("PATCH", "/fhir/Patient/anyone"), ("PUT", "/fhir/Patient"),
    ("POST", "/fhir/Patient"),
])
def test_a_read_only_fhir_type_names_what_it_allows(client, method, url):
    response = client.request(method, url, json={"resourceType": url.split("/")[2]})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_a_head_request_is_audited_as_a_head(client, services):
    client.put("/fhir/Task/h2", json={**TASK, "id": "h2"})
    assert client.head("/fhir/Task/h2").status_code == 200
    services.audit.chain.project()
    events = client.get("/fhir/AuditEvent", params={"subtype": "read", "_count": 50}).json()["entry"]
    assert "HEAD /fhir/Task/h2 answered 200" in [entry["resource"]["outcomeDesc"] for entry in events]


def test_head_on_a_transcoded_retrieve_decodes_only_what_decides_the_status(client, monkeypatch):
    """Native pixel data beyond the first group is re-encoded as it is sent,
    so HEAD transcodes only the first group of it; compressed pixel data is
    decoded before the status, as its decoding may fail and make the answer
    206, so HEAD decodes it all."""
    import server.dicomweb.wado as wado

    study, series = generate_uid(), generate_uid()
    body, content_type = multipart_body([make_ct(study, series, generate_uid()) for _ in range(wado._GROUP_FILES + 2)])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    transcoded = []
    original = wado.transcode_to
    monkeypatch.setattr(wado, "transcode_to", lambda path, syntax: transcoded.append(path) or original(path, syntax))
    implicit = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'}

    head = client.head(f"/dicom-web/studies/{study}", headers=implicit)
    assert head.status_code == 200 and head.content == b"" and len(transcoded) == wado._GROUP_FILES
    transcoded.clear()
    assert client.get(f"/dicom-web/studies/{study}", headers=implicit).status_code == 200
    assert len(transcoded) == wado._GROUP_FILES + 2

    compressed = pydicom.dcmread(bundled_file("JPEG2000.dcm"))
    compressed.StudyInstanceUID = study
    buffer = io.BytesIO()
    compressed.save_as(buffer, enforce_file_format=True)
    body, content_type = multipart_body([buffer.getvalue()])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    transcoded.clear()
    head = client.head(f"/dicom-web/studies/{study}", headers=implicit)
    assert head.status_code == 200 and len(transcoded) == wado._GROUP_FILES + 1  # the first group, and the JPEG 2000


def test_no_answer_was_last_modified_after_its_date(live_server, services):
    # RFC 9110 §8.8.2.1: Last-Modified never later than Date, which a Date
    # refreshed once a second (uvicorn's own) broke for about half the writes.
    with httpx.Client(base_url=live_server, headers=admin_headers(services)) as http:
        for _ in range(30):
            response = http.post("/fhir/Task", json=TASK)
            assert response.status_code == 201
            dates = response.headers.get_list("date")
            assert len(dates) == 1
            assert parsedate_to_datetime(response.headers["last-modified"]) <= parsedate_to_datetime(dates[0])
