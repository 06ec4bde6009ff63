"""WADO-RS over HTTP: byte-identical retrieval, negotiation, metadata, frames, bulk data, rendered."""

import base64
import io
import json
import struct
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from sqlalchemy import select

from server.tables import instances
from tests.conftest import admin_headers, cut_off
from tests.dicom_files import (
    bundled_file,
    make_ct,
    multipart_parts,
    pydicom_files_with_uids,
)
from tests.dicom_files import stow as stow_as

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ROUND_TRIP_FILES = pydicom_files_with_uids()


def split_multipart(response) -> list[tuple[str, bytes]]:
    return [(start.content_type, body) for start, body in multipart_parts(response)]


def stow(client, payloads: list[bytes]) -> dict:
    return stow_as(client, payloads, answered=(200, 202))


def uids_of(path_or_bytes) -> tuple[str, str, str]:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    dataset = pydicom.dcmread(source, stop_before_pixels=True)
    return dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID


_NOT_COMPARED_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN", "SQ"}
_TEXT_VRS_WITH_LEADING_SPACES = {"LT", "ST", "UT", "UR"}


def _pydicom_values(element) -> list:
    """What the DICOM JSON model should hold for an element, from pydicom's own reading."""
    value = element.value
    values = list(value) if isinstance(value, (MultiValue, list)) else ([] if value in (None, "") else [value])
    converted = []
    for item in values:
        if element.VR == "PN":
            groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), item.components))
            converted.append({key: group for key, group in groups.items() if group} or None)
        elif element.VR in ("IS", "DS", "FL", "FD"):
            converted.append(_number_or_text(item, integer=element.VR == "IS"))
        elif element.VR in ("US", "SS", "UL", "SL", "SV", "UV"):
            converted.append(int(item))
        elif element.VR == "AT":
            converted.append(f"{int(item):08X}")
        else:
            text = str(item).rstrip(" ") if element.VR in _TEXT_VRS_WITH_LEADING_SPACES else str(item).strip(" ")
            converted.append(text or None)
    return converted


def _number_or_text(item, integer: bool):
    # Invalid legacy IS/DS text is kept as text rather than lost (REFERENCES.md).
    text = str(getattr(item, "original_string", None) or item).strip()
    if not text:
        return None
    try:
        return int(text) if integer else float(text)
    except ValueError:
        return text


def _rounded(values: list) -> list:
    return [round(value, 6) if isinstance(value, float) else value for value in values]


def test_round_trip_files_exist():
    assert len(ROUND_TRIP_FILES) > 40


@pytest.mark.parametrize("path", ROUND_TRIP_FILES, ids=lambda p: p.rsplit("/", 1)[-1])
def test_round_trip_is_byte_identical_and_metadata_matches(client, path):
    original = open(path, "rb").read()
    answer = stow(client, [original])
    assert len(answer["00081199"]["Value"]) == 1, answer
    study, series, sop = uids_of(path)
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    response = client.get(url, headers={"Accept": ANY_SYNTAX})
    assert response.status_code == 200
    [(content_type, data)] = split_multipart(response)
    assert data == original
    stored_syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert content_type == f"application/dicom; transfer-syntax={stored_syntax}"

    metadata = client.get(url + "/metadata")
    assert metadata.status_code == 200
    assert metadata.headers["content-type"] == "application/dicom+json"
    [attributes] = metadata.json()
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    assert attributes["00080018"]["Value"] == [dataset.SOPInstanceUID]
    assert list(attributes) == sorted(attributes)
    compared = 0
    for element in dataset:
        if element.VR in _NOT_COMPARED_VRS or " or " in element.VR or element.tag.element == 0:
            continue
        got = attributes[f"{element.tag:08X}"].get("Value", [])
        assert _rounded(got) == _rounded(_pydicom_values(element)), element
        compared += 1
    assert compared > 5


def test_default_syntax_is_explicit_little_endian_transcoded_from_implicit(client):
    path = bundled_file("rtplan.dcm")  # Implicit VR Little Endian
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    response = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}")
    assert response.status_code == 200
    [(content_type, data)] = split_multipart(response)
    assert content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    decoded = pydicom.dcmread(io.BytesIO(data))
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert decoded.SOPInstanceUID == sop


def test_compressed_instance_is_decompressed_by_default(client):
    path = bundled_file("JPEG2000.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    response = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}")
    [(content_type, data)] = split_multipart(response)
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.1")
    decoded = pydicom.dcmread(io.BytesIO(data))
    assert np.array_equal(decoded.pixel_array, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_a_decompressed_instance_keeps_its_uids(client, name):
    path = bundled_file(name)
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    for url in (f"/dicom-web/studies/{study}", f"/dicom-web/studies/{study}/series/{series}",
                f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"):
        [(content_type, data)] = split_multipart(client.get(url))
        assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.1")
        decoded = pydicom.dcmread(io.BytesIO(data))
        assert (decoded.SOPInstanceUID, decoded.file_meta.MediaStorageSOPInstanceUID) == (sop, sop), url


def _implicit_element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _first_in_data_set(payload: bytes, element: bytes) -> bytes:
    """`payload` with an encoded element put before its first attribute."""
    meta_end = 144 + int.from_bytes(payload[140:144], "little")  # File Meta Information Group Length
    return payload[:meta_end] + element + payload[meta_end:]


def _implicit_ct(**attributes) -> bytes:
    return make_ct(transfer_syntax=ImplicitVRLittleEndian, **attributes)


def _item_with_stray_delimiter() -> Dataset:
    item = Dataset()
    item.ReferencedSOPInstanceUID = generate_uid()
    item.add_new(0xFFFEE0DD, "OB", b"")  # in Implicit VR: the 8 bytes of a Sequence Delimitation Item
    return item


_STRAY_DELIMITER = _implicit_element(0xFFFEE0DD, b"")

# Files as legacy toolkits write them: STOW stores them, pydicom refuses to write them again as they are.
_ELEMENTS_NO_FILE_MAY_HOLD = {
    "command element": lambda: _first_in_data_set(_implicit_ct(), _implicit_element(0x00000902, b"legacy note ")),
    "trailing NUL padding": lambda: _implicit_ct() + bytes(8),  # read as (0000,0000)
    "stray sequence delimiter": lambda: _implicit_ct() + _STRAY_DELIMITER,
    "stray delimiter in an item": lambda: _implicit_ct(ReferencedImageSequence=[_item_with_stray_delimiter()]),
}


def _elements(attributes: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """Every element of DICOM JSON, nested ones too, with its tag path as a bulk data URL names it."""
    for key, element in attributes.items():
        yield prefix + key, element
        for index, item in enumerate(element.get("Value", []) if element["vr"] == "SQ" else []):
            yield from _elements(item, f"{prefix}{key}/{index}/")


@pytest.mark.parametrize("shape", list(_ELEMENTS_NO_FILE_MAY_HOLD))
def test_command_and_delimitation_elements_are_left_out_of_a_transcoded_instance_and_its_metadata(client, shape):
    payload = _ELEMENTS_NO_FILE_MAY_HOLD[shape]()
    stow(client, [payload])
    study, series, sop = uids_of(payload)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    for url in (base, f"/dicom-web/studies/{study}"):
        response = client.get(url)
        assert response.status_code == 200
        [(_, data)] = split_multipart(response)
        sent = pydicom.dcmread(io.BytesIO(data))
        assert sent.PixelData == pydicom.dcmread(io.BytesIO(payload)).PixelData
        assert [element.tag for element in sent.iterall() if element.tag.group in (0x0000, 0xFFFE)] == []
    [attributes] = client.get(base + "/metadata").json()
    tags = [tag_path.rsplit("/", 1)[-1] for tag_path, _ in _elements(attributes)]
    assert [tag for tag in tags if tag.startswith(("0000", "FFFE"))] == []


def test_an_instance_that_cannot_be_encoded_again_is_406_and_still_retrievable_as_stored(client):
    # Length to End (0008,0001) is UL: five bytes hold no whole number of values.
    payload = _first_in_data_set(_implicit_ct(), _implicit_element(0x00080001, b"12345"))
    stow(client, [payload])
    study, series, sop = uids_of(payload)
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    response = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 406
    assert "(0008,0001)" in response.json()["message"]
    assert "transfer-syntax=*" in response.json()["message"]
    [(_, data)] = split_multipart(client.get(url, headers={"Accept": ANY_SYNTAX}))
    assert data == payload
    [(_, data)] = split_multipart(client.get(url, headers={"Accept": "*/*"}))  # any form: the stored one serves
    assert data == payload


def test_accept_query_parameter_wins_over_header(client):
    path = bundled_file("JPEG2000.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    response = client.get(url, params={"accept": ANY_SYNTAX}, headers={"Accept": "multipart/related; type=\"application/dicom\""})
    [(content_type, data)] = split_multipart(response)
    assert data == open(path, "rb").read()


def test_unproducible_syntax_is_406_with_a_reason(client):
    study = generate_uid()
    stow(client, [make_ct(study_uid=study)])
    response = client.get(
        f"/dicom-web/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'},
    )
    assert response.status_code == 406
    assert "1.2.840.10008.1.2.4.50" in response.json()["message"]


def test_q_values_pick_the_best_producible(client):
    study = generate_uid()
    stow(client, [make_ct(study_uid=study)])
    accept = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50; q=1, '
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2; q=0.5'
    )
    response = client.get(f"/dicom-web/studies/{study}", headers={"Accept": accept})
    assert response.status_code == 200
    [(content_type, _)] = split_multipart(response)
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2")


def test_study_and_series_retrieve_return_every_instance(client):
    study, series = generate_uid(), generate_uid()
    payloads = [make_ct(study_uid=study, series_uid=series, InstanceNumber=n) for n in range(1, 4)]
    payloads.append(make_ct(study_uid=study))
    stow(client, payloads)
    study_parts = split_multipart(client.get(f"/dicom-web/studies/{study}", headers={"Accept": ANY_SYNTAX}))
    assert sorted(data for _, data in study_parts) == sorted(payloads)
    series_parts = split_multipart(client.get(f"/dicom-web/studies/{study}/series/{series}", headers={"Accept": ANY_SYNTAX}))
    assert [data for _, data in series_parts] == payloads[:3]


def test_unknown_study_is_404_and_bad_uid_is_400(client):
    assert client.get(f"/dicom-web/studies/{generate_uid()}").status_code == 404
    response = client.get("/dicom-web/studies/1.2.abc/metadata")
    assert response.status_code == 400
    assert "UID" in response.json()["message"]


def test_metadata_bulk_data_uris_are_absolute_and_resolve(client):
    study = generate_uid()
    payload = make_ct(study_uid=study, size=64)
    stow(client, [payload])
    [attributes] = client.get(f"/dicom-web/studies/{study}/metadata").json()
    uri = attributes["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://testserver/dicom-web/studies/")
    response = client.get(uri)
    assert response.status_code == 200
    [(content_type, data)] = split_multipart(response)
    assert content_type.startswith("application/octet-stream")
    assert data == pydicom.dcmread(io.BytesIO(payload)).PixelData


@pytest.mark.parametrize("name", ["examples_overlay.dcm", "MR_small_bigendian.dcm"])
def test_bulk_data_is_exactly_what_the_metadata_names_by_a_bulk_data_uri(client, name):
    path = bundled_file(name)
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    [attributes] = client.get(base + "/metadata").json()
    for tag_path, element in _elements(attributes):
        response = client.get(f"{base}/bulkdata/{tag_path}")
        if "BulkDataURI" in element:
            assert element["BulkDataURI"] == f"http://testserver{base}/bulkdata/{tag_path}"
            assert response.status_code == 200, tag_path
        else:
            assert response.status_code == 404, tag_path


def _video(syntax: str, fragments: list[bytes]) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(make_ct()))
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.PixelData = encapsulate(fragments)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [("1.2.840.10008.1.2.4.100", "video/mpeg"), ("1.2.840.10008.1.2.4.102", "video/mp4"),
     ("1.2.840.10008.1.2.4.107", "video/H265")],
)
def test_the_pixel_data_of_a_video_is_its_stream_in_its_video_media_type(client, syntax, media_type):
    fragments = [b"\x00\x00\x01\xb3first part of a stream", b"and its second part."]
    payload = _video(syntax, fragments)
    stow(client, [payload])
    study, series, sop = uids_of(payload)
    [attributes] = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata").json()
    uri = attributes["7FE00010"]["BulkDataURI"]
    for accept in ("*/*", f'multipart/related; type="{media_type}"', "multipart/related; type=video/*"):
        response = client.get(uri, headers={"Accept": accept})
        assert response.status_code == 200, accept
        assert split_multipart(response) == [(f"{media_type}; transfer-syntax={syntax}", b"".join(fragments))]
    assert client.get(uri, headers={"Accept": 'multipart/related; type="image/jpeg"'}).status_code == 406


def test_an_mpeg2_video_is_sent_to_a_client_that_asks_for_it_by_its_older_name(client):
    """Both dicomweb-clients (Python and JavaScript) ask for MPEG-2 as video/mpeg2."""
    syntax, fragments = "1.2.840.10008.1.2.4.100", [b"\x00\x00\x01\xb3a stream"]
    payload = _video(syntax, fragments)
    stow(client, [payload])
    study, series, sop = uids_of(payload)
    uri = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    response = client.get(uri, headers={"Accept": f'multipart/related; type="video/mpeg2"; transfer-syntax={syntax}'})
    assert response.status_code == 200, response.text
    assert split_multipart(response) == [(f"video/mpeg; transfer-syntax={syntax}", b"".join(fragments))]


def test_a_frame_list_longer_than_the_instance_has_frames_is_400(client):
    payload = make_ct(size=64)
    stow(client, [payload])
    study, series, sop = uids_of(payload)
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/"
    accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
    assert client.get(url + "1", headers=accept).status_code == 200
    response = client.get(url + ",".join(["1"] * 1000), headers=accept)
    assert response.status_code == 400
    assert "names 1000 frames" in response.json()["message"]


def test_bulk_data_of_a_big_endian_instance_is_little_endian_as_its_frames_are(client):
    path = bundled_file("MR_small_bigendian.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    [attributes] = client.get(base + "/metadata").json()
    [(_, bulk)] = split_multipart(client.get(attributes["7FE00010"]["BulkDataURI"]))
    [(_, frame)] = split_multipart(client.get(base + "/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'}))
    pixels = pydicom.dcmread(path).pixel_array
    assert bulk == frame == pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


def test_inline_binary_of_a_big_endian_instance_is_little_endian_as_its_bulk_data_is(client):
    dataset = pydicom.dcmread(bundled_file("MR_small_bigendian.dcm"))
    words = np.arange(1, 9, dtype=">u2")
    dataset.add_new(0x60003000, "OW", words.tobytes())  # 16 bytes: sent inline
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    stow(client, [buffer.getvalue()])
    study, series, sop = uids_of(buffer.getvalue())
    [attributes] = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata").json()
    assert base64.b64decode(attributes["60003000"]["InlineBinary"]) == words.astype("<u2").tobytes()


@pytest.mark.parametrize("prefix", ["/medaiflow", "/medaiflow/"])
def test_bulk_data_uris_honour_forwarded_headers(client, prefix):
    study = generate_uid()
    stow(client, [make_ct(study_uid=study, size=64)])
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org", "X-Forwarded-Prefix": prefix}
    [attributes] = client.get(f"/dicom-web/studies/{study}/metadata", headers=headers).json()
    assert attributes["7FE00010"]["BulkDataURI"].startswith("https://pacs.example.org/medaiflow/dicom-web/studies/")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": 'evil"},"x":{"'},
        {"X-Forwarded-Prefix": '/a"b'},
        {"X-Forwarded-Proto": 'javascript"'},
        {"Host": 'evil" x'},
    ],
)
def test_forwarded_headers_that_are_no_url_part_are_passed_over(client, headers):
    study = generate_uid()
    stow(client, [make_ct(study_uid=study, size=64)])
    response = client.get(f"/dicom-web/studies/{study}/metadata", headers=headers)
    [attributes] = json.loads(response.content)  # valid JSON, whatever the headers held
    uri = attributes["7FE00010"]["BulkDataURI"]
    assert uri.startswith(("http://", "https://")) and '"' not in uri and " " not in uri
    assert f"/dicom-web/studies/{study}/" in uri


def test_a_text_value_that_looks_like_the_bulk_data_marker_comes_back_as_stored(client):
    study = generate_uid()
    stow(client, [make_ct(study_uid=study, size=64, StudyDescription="medaiflow-base:/hello")])
    [attributes] = client.get(f"/dicom-web/studies/{study}/metadata").json()
    assert attributes["00081030"]["Value"] == ["medaiflow-base:/hello"]
    assert attributes["7FE00010"]["BulkDataURI"].startswith("http://testserver/dicom-web/studies/")


def test_metadata_json_model_rules(client):
    path = bundled_file("CT_small.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    [attributes] = client.get(f"/dicom-web/studies/{study}/series/{series}/metadata").json()
    assert attributes["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    assert isinstance(attributes["00280030"]["Value"][0], float)  # DS as a number
    assert isinstance(attributes["00200013"]["Value"][0], int)  # IS as a number
    assert not any(key.endswith("0000") for key in attributes)
    assert not any(key.startswith("0002") for key in attributes)
    assert all("Value" not in element or element["Value"] for element in attributes.values())


def test_frames_of_a_native_multiframe_instance(client):
    path = bundled_file("rtdose.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    dataset = pydicom.dcmread(path)
    response = client.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1,3",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    )
    assert response.status_code == 200
    parts = split_multipart(response)
    frame_bytes = dataset.Rows * dataset.Columns * dataset.BitsAllocated // 8
    assert [data for _, data in parts] == [
        dataset.PixelData[0:frame_bytes],
        dataset.PixelData[2 * frame_bytes : 3 * frame_bytes],
    ]
    assert client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/999").status_code == 404
    assert client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/0").status_code == 400


def test_frames_of_a_compressed_instance_as_stored_or_decoded(client):
    path = bundled_file("JPEG2000.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1"
    compressed = client.get(url, headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert compressed.status_code == 200
    [(content_type, data)] = split_multipart(compressed)
    assert content_type.startswith("image/jp2")
    native = client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    [(content_type, data)] = split_multipart(native)
    assert content_type.startswith("application/octet-stream")
    assert data == pydicom.dcmread(path).pixel_array.astype(pydicom.dcmread(path).pixel_array.dtype.newbyteorder("<")).tobytes()


def test_pixel_data_that_cannot_be_decoded_here_is_406_and_still_retrievable_as_stored(client):
    path = bundled_file("JPEG-lossy.dcm")  # 12-bit extended JPEG: no decoder here takes it
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    for url, accept in (
        (base, "multipart/related; type=application/dicom"),
        (f"/dicom-web/studies/{study}", "multipart/related; type=application/dicom"),
        (base + "/frames/1", 'multipart/related; type="application/octet-stream"'),
        (base + "/rendered", "image/jpeg"),
    ):
        response = client.get(url, headers={"Accept": accept})
        assert response.status_code == 406, (url, response.status_code)
        assert "cannot be decoded here" in response.json()["message"]
    as_stored = client.get(base, headers={"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"})
    assert as_stored.status_code == 200
    [(_, data)] = split_multipart(as_stored)
    assert data == open(path, "rb").read()


def _in_study(path: str, study: str) -> bytes:
    dataset = pydicom.dcmread(path)
    dataset.StudyInstanceUID, dataset.SOPInstanceUID = study, generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_study_retrieve_leaves_out_what_cannot_be_decoded_with_206_and_names_it(client):
    study = generate_uid()
    undecodable = _in_study(bundled_file("JPEG-lossy.dcm"), study)  # 12-bit extended JPEG: no decoder here takes it
    payloads = [make_ct(study_uid=study, InstanceNumber=1), undecodable, make_ct(study_uid=study, InstanceNumber=3)]
    stow(client, payloads)
    explicit = {"Accept": 'multipart/related; type="application/dicom"'}  # Explicit VR Little Endian, and nothing else
    response = client.get(f"/dicom-web/studies/{study}", headers=explicit)
    assert response.status_code == 206
    parts = split_multipart(response)
    assert sorted(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for _, data in parts) == sorted(
        uids_of(payload)[2] for payload in (payloads[0], payloads[2])
    )
    assert all(content_type.endswith("transfer-syntax=1.2.840.10008.1.2.1") for content_type, _ in parts)
    assert int(response.headers["content-length"]) == len(response.content)
    warning = response.headers["warning"]
    assert warning.startswith('299 medaiflow: "1 instance(s)') and uids_of(undecodable)[2] in warning
    head = client.head(f"/dicom-web/studies/{study}", headers=explicit)
    assert (head.status_code, head.headers["content-length"], head.content) == (206, response.headers["content-length"], b"")
    # As stored, every instance goes; so with */*, which takes the stored syntax where decoding fails.
    assert len(split_multipart(client.get(f"/dicom-web/studies/{study}", headers={"Accept": ANY_SYNTAX}))) == 3
    anything = client.get(f"/dicom-web/studies/{study}", headers={"Accept": "*/*"})
    assert anything.status_code == 200
    assert sorted(content_type.rpartition("=")[2] for content_type, _ in split_multipart(anything)) == [
        "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.51"]


def test_a_syntax_refused_with_q0_is_not_sent_where_a_wildcard_admits_it(client):
    payload = open(bundled_file("JPEG2000.dcm"), "rb").read()
    stow(client, [payload])
    study, series, sop = uids_of(payload)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    refuse_explicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; q=0, */*'
    [(content_type, data)] = split_multipart(client.get(base, headers={"Accept": refuse_explicit}))
    assert (content_type, data) == ("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.91", payload)
    assert client.get(base, headers={"Accept": "application/dicom; q=0, */*"}).status_code == 406
    # The most specific range decides (RFC 9110 §12.5.1): a q=0 one is outranked by one naming more.
    specific = 'multipart/related; type="application/dicom"; q=0, multipart/related; type="application/dicom"; transfer-syntax=*'
    assert split_multipart(client.get(base, headers={"Accept": specific})) == [
        ("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.91", payload)]
    named = 'multipart/related; type="application/dicom", application/dicom; q=0'  # refuses only a bare part
    assert client.get(base, headers={"Accept": named}).status_code == 200
    refuse_stored = 'multipart/related; type="image/jp2"; q=0, */*'
    for url in (base + "/frames/1", base + "/bulkdata/7FE00010"):
        [(content_type, _)] = split_multipart(client.get(url, headers={"Accept": refuse_stored}))
        assert content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", url
    refuse_native = 'multipart/related; type="application/octet-stream"; q=0, */*'
    [(content_type, _)] = split_multipart(client.get(base + "/frames/1", headers={"Accept": refuse_native}))
    assert content_type == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"


def test_frames_bulk_data_and_transcoding_of_big_endian_32_bit_pixels_agree(client):
    # OW is swapped in 16-bit words whatever Bits Allocated says (PS3.5 §7.3), as DCMTK swaps it.
    path = bundled_file("rtdose_expb.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    native = {"Accept": 'multipart/related; type="application/octet-stream"'}
    [(_, frame)] = split_multipart(client.get(base + "/frames/2", headers=native))
    [(_, bulk)] = split_multipart(client.get(base + "/bulkdata/7FE00010", headers=native))
    [(_, instance)] = split_multipart(client.get(base))
    transcoded = pydicom.dcmread(io.BytesIO(instance)).PixelData
    assert frame == bulk[len(frame):2 * len(frame)] == transcoded[len(frame):2 * len(frame)]
    stored = pydicom.dcmread(path).PixelData
    assert frame[:4] == bytes((stored[len(frame) + 1], stored[len(frame)], stored[len(frame) + 3], stored[len(frame) + 2]))


def test_frames_of_an_instance_whose_header_lacks_their_layout_are_406(client):
    payload = pydicom.dcmread(io.BytesIO(make_ct(size=64)))
    del payload.Rows
    buffer = io.BytesIO()
    payload.save_as(buffer, enforce_file_format=True)
    stow(client, [buffer.getvalue()])
    study, series, sop = uids_of(buffer.getvalue())
    response = client.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert response.status_code == 406
    assert "Rows" in response.json()["message"]


def test_a_deflated_instance_is_rendered(client):
    path = bundled_file("image_dfl.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    rendered = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered", headers={"Accept": "image/png"})
    assert rendered.status_code == 200, rendered.text
    assert np.asarray(Image.open(io.BytesIO(rendered.content))).std() > 0


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png"])
def test_rendered_and_thumbnail(client, media_type):
    path = bundled_file("CT_small.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    rendered = client.get(base + "/rendered", headers={"Accept": media_type}, params={"viewport": "64,64"})
    assert rendered.status_code == 200
    assert rendered.headers["content-type"] == media_type
    image = Image.open(io.BytesIO(rendered.content))
    assert max(image.size) == 64
    assert np.asarray(image).std() > 0
    windowed = client.get(base + "/frames/1/rendered", headers={"Accept": media_type}, params={"window": "40,400,linear"})
    assert windowed.status_code == 200
    assert windowed.content != client.get(base + "/frames/1/rendered", headers={"Accept": media_type}).content
    thumbnail = client.get(base + "/thumbnail", headers={"Accept": media_type})
    assert thumbnail.status_code == 200
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 128
    assert client.get(base + "/rendered", params={"window": "abc"}).status_code == 400


def test_study_and_series_thumbnails_show_the_middle_image_of_the_fullest_series(client):
    """PS3.18 §10.4.4 (Sup 203) leaves the image to the server: the conformance statement names the rule."""
    study, small, full, masks = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    middle = generate_uid()

    def ct(series_uid: str, number: int, value: int, sop_uid: str | None = None, **attributes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(make_ct(study, series_uid, sop_uid, InstanceNumber=number, **attributes)))
        ds.PixelData = np.full((16, 16), value, dtype=np.int16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    # Sent out of order: the middle is by InstanceNumber, not by arrival.
    stow(client, [ct(full, 3, 3000, SeriesNumber=2), ct(full, 1, 1000, SeriesNumber=2),
                  ct(full, 2, 2000, middle, SeriesNumber=2)])
    stow(client, [ct(small, 1, 500, SeriesNumber=1)])
    stow(client, [ct(masks, number, 4000, SeriesNumber=3, Modality="SEG") for number in range(1, 6)])
    base = f"/dicom-web/studies/{study}"

    def shown(path: str) -> int:
        response = client.get(path, headers={"Accept": "image/png"}, params={"window": "1000,8000,linear"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        assert max(pixels.shape) <= 128 and pixels.std() == 0
        return int(pixels.flat[0])

    middle_image = shown(f"{base}/series/{full}/instances/{middle}/thumbnail")
    assert shown(f"{base}/thumbnail") == shown(f"{base}/series/{full}/thumbnail") == middle_image
    others = {shown(f"{base}/series/{small}/thumbnail"), shown(f"{base}/series/{masks}/thumbnail")}
    assert len(others | {middle_image}) == 3


def test_a_thumbnail_of_what_holds_no_image_is_406_and_of_nothing_404(client):
    study = generate_uid()
    sr = pydicom.dcmread(io.BytesIO(make_ct(study)))
    for keyword in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(sr, keyword)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    stow(client, [buffer.getvalue()])
    assert client.get(f"/dicom-web/studies/{study}/thumbnail").status_code == 406
    assert client.get(f"/dicom-web/studies/{generate_uid()}/thumbnail").status_code == 404
    assert client.get(f"/dicom-web/studies/{study}/series/{generate_uid()}/thumbnail").status_code == 404


def test_a_frame_thumbnail_shows_that_frame(client):
    path = bundled_file("CT_small.dcm")
    stow(client, [open(path, "rb").read()])
    study, series, sop = uids_of(path)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    frame = client.get(base + "/frames/1/thumbnail", headers={"Accept": "image/png"})
    assert frame.status_code == 200
    assert frame.content == client.get(base + "/thumbnail", headers={"Accept": "image/png"}).content
    assert client.get(base + "/frames/2/thumbnail").status_code == 404
    assert client.get(base + "/frames/1,1/thumbnail").status_code == 400


def test_after_a_delete_the_study_and_series_are_described_by_their_newest_remaining_instance(client):
    """As the conformance statement says (section 1): what was deleted no longer describes them."""
    study, kept, gone = generate_uid(), generate_uid(), generate_uid()
    first, later = generate_uid(), generate_uid()
    stow(client, [make_ct(study, kept, first, PatientID="KEEP", StudyDescription="first", SeriesDescription="one")])
    stow(client, [make_ct(study, kept, later, PatientID="KEEP", StudyDescription="later", SeriesDescription="two")])
    stow(client, [make_ct(study, gone, PatientID="GONE", StudyDescription="second", Modality="MR")])

    def described() -> tuple[list, list, list]:
        [found] = client.get("/dicom-web/studies", params={
            "StudyInstanceUID": study, "includefield": "StudyDescription"}).json()
        [series] = client.get(f"/dicom-web/studies/{study}/series", params={
            "SeriesInstanceUID": kept, "includefield": "SeriesDescription"}).json()
        return found["00100020"]["Value"], found["00081030"]["Value"], series["0008103E"]["Value"]

    assert client.delete(f"/dicom-web/studies/{study}/series/{gone}").status_code == 200
    assert described() == (["KEEP"], ["later"], ["two"])
    assert [item["0020000D"]["Value"] for item in client.get(
        "/dicom-web/studies", params={"PatientID": "KEEP"}).json()] == [[study]]
    assert client.delete(f"/dicom-web/studies/{study}/series/{kept}/instances/{later}").status_code == 200
    assert described() == (["KEEP"], ["first"], ["one"])


def test_delete_removes_rows_and_files(client, services):
    study, series = generate_uid(), generate_uid()
    payloads = [make_ct(study_uid=study, series_uid=series) for _ in range(2)] + [make_ct(study_uid=study)]
    stow(client, payloads)
    _, _, sop = uids_of(payloads[0])
    assert client.delete(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}").status_code == 200
    assert len(split_multipart(client.get(f"/dicom-web/studies/{study}", headers={"Accept": ANY_SYNTAX}))) == 2
    assert client.delete(f"/dicom-web/studies/{study}/series/{series}").status_code == 200
    assert client.delete(f"/dicom-web/studies/{study}").status_code == 200
    assert client.get(f"/dicom-web/studies/{study}").status_code == 404
    assert client.delete(f"/dicom-web/studies/{study}").status_code == 404
    assert list(services.store.root.rglob("*.dcm")) == []
    assert client.get("/dicom-web/studies").json() == []


def test_public_base_url_setting_overrides_the_request_host(client, services):
    services.settings.public_base_url = "https://images.example.org/pacs/"
    study = generate_uid()
    stow(client, [make_ct(study_uid=study, size=64)])
    [attributes] = client.get(f"/dicom-web/studies/{study}/metadata", headers={"X-Forwarded-Host": "ignored.example"}).json()
    assert attributes["7FE00010"]["BulkDataURI"].startswith(f"https://images.example.org/pacs/dicom-web/studies/{study}/")


def _while_streaming(client, services, monkeypatch, victim: bytes, change) -> None:
    """Sends a retrieve's instances one group each, and runs `change` (a re-send
    or a DELETE, over HTTP) just before the file of `victim`, read with the
    answer's rows, is opened: after the answer's status and first parts went out."""
    from server.dicomweb import wado

    monkeypatch.setattr(wado, "_GROUP_FILES", 1)
    before_reading(services, monkeypatch, victim, change, ("map_file", "transcode_to"))  # as stored, or transcoded


def before_reading(services, monkeypatch, victim: bytes, change, readers: tuple[str, ...], module=None) -> None:
    """Runs `change` once, just before one of the `readers` of `module` (WADO-RS
    unless named) first opens the file of `victim` read with the request's rows."""
    from server.dicomweb import wado

    module = module or wado
    _, _, sop_uid = uids_of(victim)
    with services.engine.connect() as connection:
        old_path = connection.execute(
            select(instances.c.file_path).where(instances.c.sop_instance_uid == sop_uid)
        ).scalar_one()
    read_with_rows = str(services.store.absolute(old_path))
    changed = []

    def changing_first(read):
        def reading(path: str, *args):
            if path == read_with_rows and not changed:
                changed.append(change())
            return read(path, *args)
        return reading

    for reader in readers:
        monkeypatch.setattr(module, reader, changing_first(getattr(module, reader)))


def _resend(client, payload: bytes):
    return lambda: stow(client, [payload])


def test_an_instance_resent_while_its_study_streams_goes_out_as_it_is_now(client, services, monkeypatch):
    study, series = generate_uid(), generate_uid()
    first = make_ct(study, series, InstanceNumber=1)
    victim = make_ct(study, series, InstanceNumber=2, PatientName="Doe^John")
    stow(client, [first, victim])
    newer = make_ct(study, series, uids_of(victim)[2], InstanceNumber=2, PatientName="Doe^Joan")  # same length
    assert len(newer) == len(victim) and newer != victim
    _while_streaming(client, services, monkeypatch, victim, _resend(client, newer))

    response = client.get(f"/dicom-web/studies/{study}", headers={"Accept": ANY_SYNTAX})

    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert [data for _, data in split_multipart(response)] == [first, newer]


def test_a_resent_instance_of_another_length_goes_out_when_no_length_was_declared(client, services, monkeypatch):
    """Parts transcoded as they are sent: no Content-Length, so the current
    version goes out whatever its length."""
    study, series = generate_uid(), generate_uid()
    first = make_ct(study, series, InstanceNumber=1, transfer_syntax=ImplicitVRLittleEndian)
    victim = make_ct(study, series, InstanceNumber=2, transfer_syntax=ImplicitVRLittleEndian)
    stow(client, [first, victim])
    newer = make_ct(
        study, series, uids_of(victim)[2], InstanceNumber=2, transfer_syntax=ImplicitVRLittleEndian,
        StudyDescription="corrected after the first send",
    )
    _while_streaming(client, services, monkeypatch, victim, _resend(client, newer))

    response = client.get(f"/dicom-web/studies/{study}")  # Explicit VR Little Endian: transcoded on the way

    assert response.status_code == 200
    assert "content-length" not in response.headers
    sent = [pydicom.dcmread(io.BytesIO(data)) for _, data in split_multipart(response)]
    assert [dataset.SOPInstanceUID for dataset in sent] == [uids_of(first)[2], uids_of(victim)[2]]
    assert sent[1].StudyDescription == "corrected after the first send"


# Each single-instance read of WADO-RS, and the reader that opens the file.
_ONE_INSTANCE_READS = {
    "frames": ("/frames/1", "read_pixel_frames"),
    "pixel data": ("/pixeldata", "read_pixel_frames"),
    "bulk data": ("/bulkdata/7FE00010", "read_bulk_data"),
    "rendered": ("/rendered", "render_frame"),
    "thumbnail": ("/thumbnail", "thumbnail"),
}


def _payload(response) -> object:
    """What an answer carries, without the boundary that differs from one answer to the next."""
    if response.headers["content-type"].startswith("multipart/"):
        return split_multipart(response)
    return response.content


def delete_instance(client, victim: bytes):
    study, series, sop = uids_of(victim)
    return lambda: client.delete(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}")


@pytest.mark.parametrize("read", list(_ONE_INSTANCE_READS))
def test_an_instance_deleted_just_before_its_file_is_read_is_404_not_500(client, services, monkeypatch, read):
    suffix, reader = _ONE_INSTANCE_READS[read]
    victim = make_ct(size=32)
    stow(client, [victim])
    study, series, sop = uids_of(victim)
    before_reading(services, monkeypatch, victim, delete_instance(client, victim), (reader,))

    response = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}{suffix}")

    assert response.status_code == 404, response.text
    assert "no such instance" in response.json()["message"]


@pytest.mark.parametrize("read", list(_ONE_INSTANCE_READS))
def test_an_instance_resent_just_before_its_file_is_read_is_read_as_it_is_now(client, services, monkeypatch, read):
    suffix, reader = _ONE_INSTANCE_READS[read]
    study, series = generate_uid(), generate_uid()
    victim = make_ct(study, series, size=32)
    stow(client, [victim])
    sop = uids_of(victim)[2]
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}{suffix}"
    as_first_sent = client.get(url)
    flipped = np.flipud(np.arange(32 * 32, dtype=np.int16).reshape(32, 32) * 7)
    newer = make_ct(study, series, sop, size=32, PixelData=flipped.tobytes())
    before_reading(services, monkeypatch, victim, _resend(client, newer), (reader,))

    response = client.get(url)

    assert response.status_code == 200, response.text
    assert _payload(response) != _payload(as_first_sent)
    assert _payload(response) == _payload(client.get(url))


def test_a_study_thumbnail_whose_image_is_deleted_just_before_it_is_read_shows_another(client, services, monkeypatch):
    study, series = generate_uid(), generate_uid()
    images = [make_ct(study, series, size=32, InstanceNumber=number) for number in (1, 2, 3)]
    stow(client, images)
    middle = images[1]
    before_reading(services, monkeypatch, middle, delete_instance(client, middle), ("thumbnail",))

    url = f"/dicom-web/studies/{study}/thumbnail"
    response = client.get(url, headers={"Accept": "image/png"})

    assert response.status_code == 200, response.text
    assert response.content == client.get(url, headers={"Accept": "image/png"}).content


def _rle(payload: bytes) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(payload))
    dataset.compress(RLELossless, generate_instance_uid=False)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("change", ["deleted", "resent"])
def test_a_compressed_instance_changed_before_it_is_decoded_for_the_answer_is_left_out_or_sent_as_now(
    client, services, monkeypatch, change
):
    """Compressed instances are decoded before the status goes out: one
    deleted meanwhile is not part of the study the answer describes, one
    re-sent is decoded as it is stored now."""
    study, series = generate_uid(), generate_uid()
    kept = make_ct(study, series, InstanceNumber=1)
    victim = _rle(make_ct(study, series, InstanceNumber=2, StudyDescription="first"))
    stow(client, [kept, victim])
    sop = uids_of(victim)[2]
    newer = _rle(make_ct(study, series, sop, InstanceNumber=2, StudyDescription="corrected"))
    action = delete_instance(client, victim) if change == "deleted" else _resend(client, newer)
    before_reading(services, monkeypatch, victim, action, ("transcode_to",))

    response = client.get(f"/dicom-web/studies/{study}")  # Explicit VR Little Endian: decoded first

    assert response.status_code == 200, response.text
    sent = [pydicom.dcmread(io.BytesIO(data)) for _, data in split_multipart(response)]
    if change == "deleted":
        assert [dataset.SOPInstanceUID for dataset in sent] == [uids_of(kept)[2]]
    else:
        assert [dataset.StudyDescription for dataset in sent if dataset.SOPInstanceUID == sop] == ["corrected"]


def test_the_only_instance_asked_for_deleted_before_it_is_decoded_is_404(client, services, monkeypatch):
    victim = _rle(make_ct(size=32))
    stow(client, [victim])
    study, series, sop = uids_of(victim)
    before_reading(services, monkeypatch, victim, delete_instance(client, victim), ("transcode_to",))

    response = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}")

    assert response.status_code == 404, response.text


@pytest.mark.parametrize("change", ["deleted", "deleted, transcoded on the way", "resent longer"])
def test_an_instance_that_cannot_go_out_cuts_the_stream_off(client, live_server, services, monkeypatch, caplog, change):
    """Deleted meanwhile, or re-sent with another length where the answer's
    Content-Length already went out: the connection closes short of the
    answer's end (the client knows it is incomplete; without a Content-Length,
    a body merely left without its closing boundary looked complete), and
    the log says why."""
    study, series = generate_uid(), generate_uid()
    on_the_way = "on the way" in change
    syntax = ImplicitVRLittleEndian if on_the_way else ExplicitVRLittleEndian
    first = make_ct(study, series, InstanceNumber=1, transfer_syntax=syntax)
    victim = make_ct(study, series, InstanceNumber=2, transfer_syntax=syntax)
    stow(client, [first, victim])
    _, _, sop_uid = uids_of(victim)
    accept = "application/dicom" if on_the_way else ANY_SYNTAX  # Explicit VR Little Endian: transcoded as sent
    if change.startswith("deleted"):
        action = lambda: client.delete(f"/dicom-web/studies/{study}/series/{series}/instances/{sop_uid}")  # noqa: E731
    else:
        action = _resend(client, make_ct(study, series, sop_uid, InstanceNumber=2, StudyDescription="longer now"))
    _while_streaming(client, services, monkeypatch, victim, action)

    received = cut_off(f"{live_server}/dicom-web/studies/{study}", {**admin_headers(services), "Accept": accept})

    assert uids_of(first)[2].encode() in received
    assert any(
        record.levelname == "WARNING" and "ends incomplete" in record.getMessage() and sop_uid in record.getMessage()
        for record in caplog.records
    )
