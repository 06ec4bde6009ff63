"""WADO-RS resources of a whole study or series over HTTP: the Pixel Data
resource (PS3.18 §10.4.1.1.6) at each level, and rendered studies and series
(§10.4.1.1.3), one multipart/related answer of many instances each."""

import io

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid

from tests.conftest import admin_headers, cut_off
from tests.dicom_files import (
    bundled_file,
    make_ct,
    multipart_parts,
    stow,
)

NATIVE = 'multipart/related; type="application/octet-stream"'
AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def parts_of(response) -> list[tuple[dict[str, str], bytes]]:
    """Each part's headers (lowercase names) and body; the answer must be complete."""
    return [({name.lower(): value for name, value in start.headers.items()}, body)
            for start, body in multipart_parts(response)]


def uids_of(payload: bytes) -> tuple[str, str, str]:
    dataset = pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True)
    return dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID


def in_study(path: str, study: str, series: str | None = None, **attributes: object) -> bytes:
    """A bundled file moved into `study` (and `series`), with a fresh SOP Instance UID."""
    dataset = pydicom.dcmread(path)
    dataset.StudyInstanceUID, dataset.SOPInstanceUID = study, generate_uid()
    dataset.SeriesInstanceUID = series or dataset.SeriesInstanceUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def without_pixels(study: str, series: str) -> bytes:
    """A data set with no image in it (as an SR or a KOS is), in `series`."""
    dataset = pydicom.dcmread(io.BytesIO(make_ct(study, series, InstanceNumber=9)))
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(dataset, keyword)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pixel_data_uri(client, study: str, series: str, sop: str) -> str:
    [metadata] = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata").json()
    return metadata["7FE00010"]["BulkDataURI"]


def ct_series(client, count: int = 3) -> tuple[str, str, list[bytes]]:
    """A stored series of CTs, each with its own pixels, sent out of order; the payloads in instance order."""
    study, series = generate_uid(), generate_uid()
    payloads = [
        # 2 KiB of pixels each: above the 1 KiB up to which metadata holds them inline, not by a BulkDataURI
        make_ct(study, series, size=32, InstanceNumber=number,
                PixelData=(np.arange(32 * 32, dtype=np.int16) * number).tobytes())
        for number in range(1, count + 1)
    ]
    stow(client, list(reversed(payloads)))
    return study, series, payloads


# --- Pixel Data -----------------------------------------------------------------------
def test_the_pixel_data_of_a_series_is_every_frame_in_instance_order_named_as_the_metadata_names_it(client):
    study, series, payloads = ct_series(client)
    nothing = without_pixels(study, series)
    stow(client, [nothing])

    response = client.get(f"/dicom-web/studies/{study}/series/{series}/pixeldata", headers={"Accept": NATIVE})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    parts = parts_of(response)
    assert [body for _, body in parts] == [pydicom.dcmread(io.BytesIO(p)).PixelData for p in payloads]
    assert [headers["content-type"] for headers, _ in parts] == [
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"] * 3
    locations = [headers["content-location"] for headers, _ in parts]
    assert locations == [pixel_data_uri(client, *uids_of(p)) for p in payloads]
    # What each part names is that pixel data itself.
    for location, (_, body) in zip(locations, parts, strict=True):
        [(_, bulk)] = parts_of(client.get(location, headers={"Accept": NATIVE}))
        assert bulk == body
    # The instance without pixel data has none to send, and alone it is 404, as its frames are.
    instance = f"/dicom-web/studies/{study}/series/{series}/instances/{uids_of(nothing)[2]}"
    assert client.get(instance + "/pixeldata").status_code == 404
    assert client.get(instance + "/frames/1").status_code == 404


def test_the_pixel_data_of_a_study_spans_its_series_and_multi_frame_instances(client):
    study, series, payloads = ct_series(client, count=2)
    dose = in_study(bundled_file("rtdose.dcm"), study, generate_uid(), SeriesNumber=2)
    stow(client, [dose])
    frames = pydicom.dcmread(io.BytesIO(dose)).pixel_array

    parts = parts_of(client.get(f"/dicom-web/studies/{study}/pixeldata", headers={"Accept": AS_STORED}))

    assert len(parts) == 2 + len(frames) == 17
    assert [body for _, body in parts[2:]] == [frame.astype("<u4").tobytes() for frame in frames]
    dose_uri = pixel_data_uri(client, *uids_of(dose))
    assert {headers["content-location"] for headers, _ in parts[2:]} == {dose_uri}
    # An instance's Pixel Data resource is the same frames.
    study_, series_, sop = uids_of(dose)
    alone = parts_of(client.get(f"/dicom-web/studies/{study_}/series/{series_}/instances/{sop}/pixeldata"))
    assert [body for _, body in alone] == [body for _, body in parts[2:]]


def test_compressed_pixel_data_is_sent_as_stored_or_decoded_as_the_frames_resource_sends_it(client):
    study, series = generate_uid(), generate_uid()
    jp2 = in_study(bundled_file("JPEG2000.dcm"), study, series, InstanceNumber=1)
    ct = make_ct(study, series, size=8, InstanceNumber=2)
    stow(client, [jp2, ct])
    url = f"/dicom-web/studies/{study}/series/{series}/pixeldata"
    _, _, jp2_sop = uids_of(jp2)
    frame_url = f"/dicom-web/studies/{study}/series/{series}/instances/{jp2_sop}/frames/1"

    native = client.get(url, headers={"Accept": NATIVE})
    assert native.status_code == 200
    decoded, plain = parts_of(native)
    assert decoded[1] == parts_of(client.get(frame_url, headers={"Accept": NATIVE}))[0][1]
    assert plain[1] == pydicom.dcmread(io.BytesIO(ct)).PixelData

    # Only JPEG 2000 taken: the CT is left out of a 206 whose Warning names it.
    only_jp2 = client.get(url, headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert only_jp2.status_code == 206
    assert uids_of(ct)[2] in only_jp2.headers["warning"]
    [(headers, body)] = parts_of(only_jp2)
    assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert body == parts_of(client.get(frame_url, headers={"Accept": 'multipart/related; type="image/jp2"'}))[0][1]
    assert only_jp2.headers["content-type"].startswith('multipart/related; type="image/jp2"')
    # Its Pixel Data bulk data is the same frames, by the same code, named as bulk data in a multipart answer is.
    bulk = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{jp2_sop}/bulkdata/7FE00010",
                      headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert [(part_headers["content-location"], part) for part_headers, part in parts_of(bulk)] == [
        (headers["content-location"], body)]
    assert headers["content-location"] == pixel_data_uri(client, study, series, jp2_sop)


def test_the_frames_of_a_long_instance_are_read_a_few_at_a_time_and_all_sent_in_order(client, monkeypatch):
    from server.dicomweb import wado

    frames = np.arange(40 * 16 * 16, dtype=np.int16).reshape(40, 16, 16)
    long = make_ct(size=16, NumberOfFrames=40, PixelData=frames.tobytes())
    stow(client, [long])
    reads: list[list[int]] = []
    read = wado.read_pixel_frames
    monkeypatch.setattr(wado, "read_pixel_frames", lambda path, numbers, accept: reads.append(list(numbers))
                        or read(path, numbers, accept))
    study, series, sop = uids_of(long)

    parts = parts_of(client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/pixeldata"))

    assert [body for _, body in parts] == [frame.tobytes() for frame in frames]
    assert reads == [list(range(1, 17)), list(range(17, 33)), list(range(33, 41))]


def test_an_instance_deleted_while_a_study_streams_cuts_the_answer_off(client, live_server, services, monkeypatch):
    from server.dicomweb import wado

    study, series, payloads = ct_series(client)
    read = wado.read_pixel_frames
    calls = []

    def deleting_the_last(path, numbers, accept):
        calls.append(path)
        if len(calls) == 2:  # the first instance went before the status; the second is under way
            _, _, sop = uids_of(payloads[2])
            assert client.delete(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}").status_code == 200
        return read(path, numbers, accept)

    monkeypatch.setattr(wado, "read_pixel_frames", deleting_the_last)
    received = cut_off(f"{live_server}/dicom-web/studies/{study}/pixeldata", admin_headers(services))
    assert received.count(b"\r\nContent-Location: ") == 2


@pytest.mark.parametrize("suffix", ["pixeldata", "rendered"])
def test_an_image_that_fails_once_the_answer_is_under_way_cuts_it_off_for_every_client(
    client, live_server, services, suffix
):
    """A 12-bit JPEG is known undecodable only once decoded: second in its
    series, its failure comes after the status. The client must be told the
    answer is incomplete by HTTP itself: dicomweb-client takes a body that
    merely lacks its closing boundary for complete (a 200 with an image less)."""
    study, series = generate_uid(), generate_uid()
    ct = make_ct(study, series, size=8, InstanceNumber=1)
    stow(client, [ct, in_study(bundled_file("JPEG-lossy.dcm"), study, series, InstanceNumber=2)])
    headers = {**admin_headers(services), "Accept": NATIVE if suffix == "pixeldata" else "image/jpeg"}
    received = cut_off(f"{live_server}/dicom-web/studies/{study}/series/{series}/{suffix}", headers)
    assert received.count(b"\r\nContent-Location: ") == 1  # the CT's part went out whole before the cut
    if suffix == "rendered":  # as the most used Python DICOMweb client asks for it
        dicomweb = DICOMwebClient(f"{live_server}/dicom-web", headers=admin_headers(services))
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            dicomweb.retrieve_series_rendered(study, series, media_types=("image/jpeg",))


def test_pixel_data_nothing_acceptable_is_406_and_nothing_there_404(client):
    study, series, _ = ct_series(client, count=1)
    jpeg = {"Accept": 'multipart/related; type="image/jpeg"'}
    jpeg_only = client.get(f"/dicom-web/studies/{study}/pixeldata", headers=jpeg)
    assert jpeg_only.status_code == 406
    assert "stored as 1.2.840.10008.1.2.1" in jpeg_only.json()["message"]
    assert client.get(f"/dicom-web/studies/{generate_uid()}/pixeldata").status_code == 404
    assert client.get(f"/dicom-web/studies/{study}/series/{generate_uid()}/pixeldata").status_code == 404
    nothing_study, nothing_series = generate_uid(), generate_uid()
    stow(client, [without_pixels(nothing_study, nothing_series)])
    response = client.get(f"/dicom-web/studies/{nothing_study}/pixeldata")
    assert response.status_code == 404 and "no pixel data" in response.json()["message"]
    assert client.get("/dicom-web/studies/not-a-uid/pixeldata").status_code == 400


def test_an_instance_that_cannot_be_decoded_is_left_out_of_the_pixel_data_by_name(client):
    study, series = generate_uid(), generate_uid()
    lossy = in_study(bundled_file("JPEG-lossy.dcm"), study, series, InstanceNumber=1)  # 12-bit: no decoder here
    ct = make_ct(study, series, size=8, InstanceNumber=2)
    stow(client, [lossy, ct])
    response = client.get(f"/dicom-web/studies/{study}/pixeldata", headers={"Accept": NATIVE})
    assert response.status_code == 206
    assert uids_of(lossy)[2] in response.headers["warning"] and "cannot be decoded here" in response.headers["warning"]
    assert [body for _, body in parts_of(response)] == [pydicom.dcmread(io.BytesIO(ct)).PixelData]
    # As stored it goes.
    assert len(parts_of(client.get(f"/dicom-web/studies/{study}/pixeldata", headers={"Accept": AS_STORED}))) == 2


def test_a_video_is_left_out_of_the_pixel_data_by_name(client):
    from pydicom.encaps import encapsulate

    study, series = generate_uid(), generate_uid()
    video = pydicom.dcmread(io.BytesIO(make_ct(study, series, InstanceNumber=1)))
    video.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # H.264: one stream, not frames
    video.PixelData = encapsulate([b"\x00\x00\x01\xb3a stream"])
    buffer = io.BytesIO()
    video.save_as(buffer, enforce_file_format=True)
    ct = make_ct(study, series, size=8, InstanceNumber=2)
    stow(client, [buffer.getvalue(), ct])
    response = client.get(f"/dicom-web/studies/{study}/pixeldata", headers={"Accept": "*/*"})
    assert response.status_code == 206
    assert video.SOPInstanceUID in response.headers["warning"]
    assert [body for _, body in parts_of(response)] == [pydicom.dcmread(io.BytesIO(ct)).PixelData]


def test_head_of_pixel_data_is_the_status_and_type_of_its_get(client):
    study, _, _ = ct_series(client, count=2)
    head = client.head(f"/dicom-web/studies/{study}/pixeldata")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')


# --- Rendered studies and series -------------------------------------------------------
def test_a_rendered_series_is_each_image_rendered_as_its_instance_is(client):
    study, series, payloads = ct_series(client)
    stow(client, [without_pixels(study, series)])
    url = f"/dicom-web/studies/{study}/series/{series}/rendered"

    response = client.get(url, headers={"Accept": "image/png"}, params={"window": "0,300"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="image/png"')
    parts = parts_of(response)
    assert len(parts) == 3
    for payload, (headers, body) in zip(payloads, parts, strict=True):
        _, _, sop = uids_of(payload)
        instance = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered"
        assert headers["content-type"] == "image/png"
        assert headers["content-location"] == "http://testserver" + instance
        assert body == client.get(instance, headers={"Accept": "image/png"}, params={"window": "0,300"}).content
    assert len({body for _, body in parts}) == 3  # each image its own
    assert Image.open(io.BytesIO(parts[0][1])).format == "PNG"


def test_a_rendered_study_takes_the_multipart_form_of_its_media_type_and_jpeg_by_default(client):
    study, _, _ = ct_series(client, count=2)
    stow(client, [in_study(bundled_file("rtdose.dcm"), study, generate_uid(), SeriesNumber=2)])
    url = f"/dicom-web/studies/{study}/rendered"
    for accept, image_format in (('multipart/related; type="image/png"', "PNG"), ("multipart/related", "JPEG"),
                                 (None, "JPEG"), ("image/gif", "GIF")):
        response = client.get(url, headers={"Accept": accept} if accept else {})
        assert response.status_code == 200, (accept, response.text)
        parts = parts_of(response)
        assert len(parts) == 3  # a multi-frame instance is one image, as its rendered resource is
        assert {Image.open(io.BytesIO(body)).format for _, body in parts} == {image_format}
    small = parts_of(client.get(url, params={"viewport": "4,4", "quality": "50"}))
    assert {Image.open(io.BytesIO(body)).size for _, body in small} == {(4, 4)}


def test_rendered_refusals(client):
    study, series, _ = ct_series(client, count=1)
    url = f"/dicom-web/studies/{study}/rendered"
    assert client.get(url, headers={"Accept": "application/dicom"}).status_code == 406
    assert client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}).status_code == 406
    assert client.get(url, headers={"Accept": "image/jpeg; q=0, image/png"}).headers["content-type"].startswith(
        'multipart/related; type="image/png"')
    assert client.get(url, params={"viewport": "0,0"}).status_code == 400
    assert client.get(f"/dicom-web/studies/{generate_uid()}/rendered").status_code == 404
    assert client.get(f"/dicom-web/studies/{study}/series/{generate_uid()}/rendered").status_code == 404
    # A level that exists but holds no image: 406, as an instance without pixel data is.
    nothing_study, nothing_series = generate_uid(), generate_uid()
    stow(client, [without_pixels(nothing_study, nothing_series)])
    response = client.get(f"/dicom-web/studies/{nothing_study}/series/{nothing_series}/rendered")
    assert response.status_code == 406 and "no pixel data" in response.json()["message"]


def test_an_image_that_cannot_be_rendered_is_left_out_by_name(client):
    study, series = generate_uid(), generate_uid()
    lossy = in_study(bundled_file("JPEG-lossy.dcm"), study, series, InstanceNumber=1)
    ct = make_ct(study, series, size=8, InstanceNumber=2)
    stow(client, [lossy, ct])
    response = client.get(f"/dicom-web/studies/{study}/series/{series}/rendered")
    assert response.status_code == 206
    assert uids_of(lossy)[2] in response.headers["warning"]
    [(headers, _)] = parts_of(response)
    assert headers["content-location"].endswith(f"/instances/{uids_of(ct)[2]}/rendered")


# --- Access and audit -------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["pixeldata", "rendered"])
def test_the_study_resources_are_audited_and_need_the_right_to_read_studies(app, services, client, suffix):
    from fastapi.testclient import TestClient

    from server.auth.scopes import Role, role_grant

    study, series, _ = ct_series(client, count=1)
    url = f"/dicom-web/studies/{study}/series/{series}/{suffix}"
    assert client.get(url).status_code == 200
    services.audit.chain.project()
    events = client.get("/fhir/AuditEvent", params={"type": "110104", "action": "R", "_count": 100}).json()
    [read] = [entry["resource"] for entry in events.get("entry", [])]
    assert [entity["what"]["identifier"]["value"] for entity in read["entity"]
            if entity.get("name") == "Study Instance UID"] == [f"urn:oid:{study}"]
    assert any(entity["what"].get("reference", "").startswith("Patient/") for entity in read["entity"])

    # Last: a second client's end stops the app's audit recorder.
    with TestClient(app, base_url="http://testserver") as anonymous:
        assert anonymous.get(url).status_code == 401
        for role, allowed in ((Role.CLINICIAN, True), (Role.MODALITY, False), (Role.AUDITOR, False)):
            token, _ = services.auth.issuer.issue(f"a-{role.value}", role.value, str(role_grant(role)), client=False)
            status = anonymous.get(url, headers={"Authorization": f"Bearer {token}"}).status_code
            assert status == (200 if allowed else 403), (role, status)
