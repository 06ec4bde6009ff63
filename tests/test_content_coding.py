"""Request bodies sent with a Content-Encoding (RFC 9110 §8.4), on FHIR and STOW-RS."""

import gzip
import zlib

import pytest

from tests.dicom_files import make_ct, multipart_body

TASK = b'{"resourceType":"Task","status":"draft","intent":"order"}'


def _post_task(fhir, body: bytes, coding: str):
    return fhir.post("/fhir/Task", content=body,
                     headers={"Content-Type": "application/fhir+json", "Content-Encoding": coding})


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes),
     ("GZIP", gzip.compress)],
)
def test_a_fhir_body_is_decoded(fhir, coding, encode):
    response = _post_task(fhir, encode(TASK), coding)
    assert response.status_code == 201, response.text
    assert response.json()["intent"] == "order"


def _outcome(response, status: int, naming: str) -> None:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert naming in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("coding", ["br", "compress", "gzip, gzip"])
def test_a_coding_not_decoded_is_415(fhir, coding):
    response = _post_task(fhir, TASK, coding)
    _outcome(response, 415, "Content-Encoding")
    assert response.headers["accept-encoding"] == "gzip, deflate"
    assert fhir.get("/fhir/Task").json().get("total") == 0


@pytest.mark.parametrize(
    ("body", "coding", "naming"),
    [
        (TASK, "gzip", "not the compressed stream"),  # said to be gzip, but plain
        (gzip.compress(TASK, mtime=0)[:-12], "gzip", "ends before"),  # cut short
        (gzip.compress(TASK, mtime=0) + b"trailing", "gzip", "not the compressed stream"),
        (zlib.compress(TASK) + b"trailing", "deflate", "goes on after"),
    ],
    ids=["plain", "cut short", "gzip and junk", "deflate and more"],
)
def test_a_body_that_is_not_what_its_coding_says_is_400(fhir, body, coding, naming):
    _outcome(_post_task(fhir, body, coding), 400, naming)


def test_a_gzip_body_of_several_members_is_their_concatenation(fhir):
    half = len(TASK) // 2
    response = _post_task(fhir, gzip.compress(TASK[:half]) + gzip.compress(TASK[half:]), "gzip")
    assert response.status_code == 201, response.text


def test_the_limit_holds_for_the_decoded_body(fhir, services):
    services.settings.fhir_max_body_bytes = 10_000
    padded = TASK[:-1] + b',"description":"' + b"x" * 50_000 + b'"}'
    compressed = gzip.compress(padded)
    assert len(compressed) < 10_000
    _outcome(_post_task(fhir, compressed, "gzip"), 413, "limit")


def test_a_gzipped_stow_stores_its_instances(client):
    body, content_type = multipart_body([make_ct(), make_ct()])
    response = client.post("/dicom-web/studies", content=gzip.compress(body),
                           headers={"Content-Type": content_type, "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 2


def test_a_stow_in_an_unknown_coding_is_415_and_stores_nothing(client):
    body, content_type = multipart_body([make_ct()])
    response = client.post("/dicom-web/studies", content=body,
                           headers={"Content-Type": content_type, "Content-Encoding": "br"})
    assert response.status_code == 415
    assert "Content-Encoding" in response.json()["message"]
    assert client.get("/dicom-web/studies").json() == []
