"""WADO-URI (PS3.18 chapter 9) at /wado: the Part 10 file, or a rendered image."""

import io

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from server.auth.scopes import Role
from server.dicomweb import wado_uri
from tests.dicom_files import make_ct, multipart_body, pydicom_files_with_uids
from tests.test_wado import before_reading, delete_instance

SIZE = 32


@pytest.fixture
def stored(client):
    """An uncompressed CT and an RLE one (its pixels a gradient left to right), by name."""
    study, series = generate_uid(), generate_uid()
    names = {}
    payloads = []
    for name, syntax in (("plain", ExplicitVRLittleEndian), ("rle", RLELossless)):
        sop = generate_uid()
        payload = make_ct(study_uid=study, series_uid=series, sop_uid=sop, size=SIZE)
        if syntax == RLELossless:
            ds = pydicom.dcmread(io.BytesIO(payload))
            ds.compress(RLELossless, generate_instance_uid=False)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            payload = out.getvalue()
        names[name] = (sop, payload)
        payloads.append(payload)
    body, content_type = multipart_body(payloads)
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    return study, series, names


def _query(stored, name, **extra):
    study, series, names = stored
    return {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": names[name][0], **extra}


def test_the_part_10_file_as_stored_when_its_syntax_is_asked(client, stored):
    response = client.get("/wado", params=_query(stored, "rle", contentType="application/dicom",
                                                   transferSyntax=RLELossless))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.content == stored[2]["rle"][1]


@pytest.mark.parametrize(("asked", "expected"), [
    (None, ExplicitVRLittleEndian), (ImplicitVRLittleEndian, ImplicitVRLittleEndian),
])
def test_the_part_10_file_transcoded_explicit_little_endian_by_default(client, stored, asked, expected):
    extra = {"transferSyntax": asked} if asked else {}
    response = client.get("/wado", params=_query(stored, "rle", contentType="application/dicom", **extra))
    assert response.status_code == 200
    ds = pydicom.dcmread(io.BytesIO(response.content))
    assert ds.file_meta.TransferSyntaxUID == expected
    assert ds.SOPInstanceUID == stored[2]["rle"][0]
    original = pydicom.dcmread(io.BytesIO(stored[2]["plain"][1]))
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_a_syntax_that_cannot_be_produced_is_406(client, stored):
    response = client.get("/wado", params=_query(stored, "plain", contentType="application/dicom",
                                                   transferSyntax="1.2.840.10008.1.2.4.50"))
    assert response.status_code == 406
    assert "message" in response.json()


def _image(response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize(("content_type", "accept", "expected"), [
    (None, None, "image/jpeg"),  # nothing said: a JPEG (§9.3)
    (None, "*/*", "image/jpeg"),
    ("image/png", None, "image/png"),
    ("image/gif,image/png", None, "image/gif"),
    (None, "image/png", "image/png"),
    ("image/png", "image/jpeg", "image/png"),  # contentType wins over Accept
    (None, "image/jpeg;q=0, */*", "image/png"),  # q=0 refuses (RFC 9110 §12.4.2)
    (None, "image/jpeg;q=0, image/png;q=0, image/*", "image/gif"),
])
def test_rendered_in_the_media_type_asked(client, stored, content_type, accept, expected):
    extra = {"contentType": content_type} if content_type else {}
    headers = {"Accept": accept} if accept else {}
    response = client.get("/wado", params=_query(stored, "rle", **extra), headers=headers)
    assert response.headers["content-type"] == expected
    assert _image(response).size == (SIZE, SIZE)


def test_rows_and_columns_are_maxima_that_keep_the_aspect_ratio(client, stored):
    assert _image(client.get("/wado", params=_query(stored, "plain", rows="64"))).size == (64, 64)
    assert _image(client.get("/wado", params=_query(stored, "plain", columns="16", rows="64"))).size == (16, 16)


def test_region_and_window(client, stored):
    # make_ct's pixels rise along each row and down the image: the right half is brighter.
    whole = np.asarray(_image(client.get("/wado", params=_query(stored, "plain", contentType="image/png"))))
    right = _image(client.get("/wado", params=_query(stored, "plain", contentType="image/png", region="0.5,0,1,1")))
    assert right.size == (SIZE // 2, SIZE)
    assert np.asarray(right).mean() > whole.mean()
    narrow = np.asarray(_image(client.get("/wado", params=_query(
        stored, "plain", contentType="image/png", windowCenter="0", windowWidth="2"))))
    assert narrow.min() == 0 and narrow.max() == 255 and narrow.mean() > whole.mean()


@pytest.mark.parametrize(("extra", "naming"), [
    ({"requestType": "WADO-RS"}, "requestType"),
    ({"objectUID": "1.2.abc"}, "objectUID"),
    ({"windowCenter": "40"}, "windowWidth"),
    ({"region": "0.5,0.5,0.2,1"}, "region"),
    ({"rows": "0"}, "rows"),
    ({"frameNumber": "0"}, "frameNumber"),
    ({"imageQuality": "101"}, "imageQuality"),
    ({"anonymize": "yes"}, "anonymize"),
])
def test_bad_parameters_are_400(client, stored, extra, naming):
    response = client.get("/wado", params=_query(stored, "plain") | extra)
    assert response.status_code == 400
    assert naming in response.json()["message"]


def test_an_instance_without_pixels_is_there_but_cannot_be_an_image(client):
    [sr] = [p for p in pydicom_files_with_uids() if p.endswith("/test-SR.dcm")]
    with open(sr, "rb") as file:
        payload = file.read()
    body, content_type = multipart_body([payload])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    ds = pydicom.dcmread(sr)
    query = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
             "objectUID": ds.SOPInstanceUID}
    refused = client.get("/wado", params=query)
    assert refused.status_code == 406 and "application/dicom" in refused.json()["message"]
    assert client.get("/wado", params=query | {"contentType": "application/dicom"}).status_code == 200


@pytest.mark.parametrize(("extra", "reader"), [
    ({"contentType": "application/dicom", "transferSyntax": RLELossless}, "map_file"),
    ({"contentType": "application/dicom"}, "transcode_to"),
    ({}, "render_frame"),
])
def test_an_instance_deleted_just_before_its_file_is_read_is_404_not_500(client, services, monkeypatch, stored, extra,
                                                                          reader):
    victim = stored[2]["rle"][1]
    before_reading(services, monkeypatch, victim, delete_instance(client, victim), (reader,), wado_uri)

    response = client.get("/wado", params=_query(stored, "rle", **extra))

    assert response.status_code == 404, response.text


def test_missing_uids_and_unknown_instances(client, stored):
    query = _query(stored, "plain")
    del query["seriesUID"]
    assert client.get("/wado", params=query).status_code == 400
    assert client.get("/wado", params=_query(stored, "plain") | {"objectUID": generate_uid()}).status_code == 404
    assert client.get("/wado", params=_query(stored, "plain") | {"frameNumber": "2"}).status_code == 404
    assert client.get("/wado", params=_query(stored, "plain", contentType="text/html")).status_code == 406


def test_it_is_read_as_an_imaging_study_and_audited_as_a_retrieve(app, services, client, stored):
    assert client.get("/wado", params=_query(stored, "plain")).status_code == 200
    events = client.get("/fhir/AuditEvent", params={"type": "110104", "action": "R"}).json()["entry"]
    [event] = [entry["resource"] for entry in events if "/wado" in str(entry["resource"])]
    named = {entity["what"].get("identifier", {}).get("value") for entity in event["entity"] if "what" in entity}
    assert stored[0] in named or f"urn:oid:{stored[0]}" in named
    assert any(entity["what"].get("reference", "").startswith("Patient/") for entity in event["entity"])
    token, _ = services.auth.issuer.issue("viewer", Role.CLINICIAN.value, "user/Patient.r", client=False)
    with TestClient(app) as anonymous:  # last: leaving it stops the app `client` shares
        assert anonymous.get("/wado", params=_query(stored, "plain")).status_code == 401
        refused = anonymous.get("/wado", params=_query(stored, "plain"), headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403
