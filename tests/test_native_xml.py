"""DICOM XML (the Native DICOM Model, PS3.19 §A.1) for QIDO-RS, metadata and STOW-RS answers.

The writer is checked against a peer: dcmtk's `dcm2xml --native-format`
writes the same documents from the same Part 10 files.
"""

import base64
import math
import shutil
import subprocess
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicom.json_model import dataset_to_json, read_dataset_for_metadata
from dicom.multipart import parse_content_type
from dicom.native_xml import NAMESPACE, native_xml
from tests.dicom_files import make_ct, multipart_body, pydicom_files_with_uids
from tests.test_wado import split_multipart

NS = {"d": NAMESPACE}
DICOM_XML = "application/dicom+xml"
MULTIPART_XML = f'multipart/related; type="{DICOM_XML}"'
NUMERIC_VRS = frozenset({"IS", "DS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})


def parse(document: bytes) -> ET.Element:
    root = ET.fromstring(document)
    assert root.tag == f"{{{NAMESPACE}}}NativeDicomModel"
    return root


def attribute(parent: ET.Element, tag: str) -> ET.Element:
    [found] = parent.findall(f"d:DicomAttribute[@tag='{tag}']", NS)
    return found


def texts(element: ET.Element) -> list[str]:
    return [value.text or "" for value in element.findall("d:Value", NS)]


def first_value(parent: ET.Element, tag: str) -> str:
    return texts(attribute(parent, tag))[0]


# --- the writer ---------------------------------------------------------------


def test_values_names_and_escaping():
    document = parse(native_xml({
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
        "00080020": {"vr": "DA"},
        "00100020": {"vr": "LO", "Value": ["a<b&c>\"d'"]},
        "00104000": {"vr": "LT", "Value": ["line one\r\nline two\tend "]},
        "00200013": {"vr": "IS", "Value": [7]},
        "00280009": {"vr": "AT", "Value": ["00181063"]},
        "00280030": {"vr": "DS", "Value": [0.5, 1e-07]},
    }))
    image_type = attribute(document, "00080008")
    assert (image_type.get("vr"), image_type.get("keyword")) == ("CS", "ImageType")
    # An empty value keeps its place, so the third is still number 3.
    assert [(v.get("number"), v.text) for v in image_type.findall("d:Value", NS)] == [
        ("1", "ORIGINAL"), ("2", None), ("3", "AXIAL"),
    ]
    assert list(attribute(document, "00080020")) == []
    assert first_value(document, "00100020") == "a<b&c>\"d'"
    # CR survives the parser's end-of-line normalisation; leading and trailing spaces stay (xml:space).
    assert first_value(document, "00104000") == "line one\r\nline two\tend "
    assert first_value(document, "00200013") == "7"
    assert first_value(document, "00280009") == "00181063"
    assert [float(text) for text in texts(attribute(document, "00280030"))] == [0.5, 1e-07]
    assert document.get("{http://www.w3.org/XML/1998/namespace}space") == "preserve"


def test_person_names_split_into_components():
    document = parse(native_xml({"00100010": {"vr": "PN", "Value": [
        {"Alphabetic": "Yamada^Tarou^^Dr", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
        None,
        {"Alphabetic": "^^^^"},
        {"Alphabetic": "A^B^C^D^E^F"},
    ]}}))
    first, empty, blank, overlong = attribute(document, "00100010").findall("d:PersonName", NS)
    assert [name.get("number") for name in (first, empty, blank, overlong)] == ["1", "2", "3", "4"]
    groups = {group.tag.split("}")[1]: [(c.tag.split("}")[1], c.text) for c in group] for group in first}
    assert groups == {
        "Alphabetic": [("FamilyName", "Yamada"), ("GivenName", "Tarou"), ("NamePrefix", "Dr")],
        "Ideographic": [("FamilyName", "山田"), ("GivenName", "太郎")],
        "Phonetic": [("FamilyName", "やまだ"), ("GivenName", "たろう")],
    }
    assert list(empty) == [] and list(blank) == []
    assert overlong.find("d:Alphabetic/d:NameSuffix", NS).text == "E^F"


def test_sequences_binary_values_and_bulk_data():
    document = parse(native_xml({
        "00081032": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["121"]}}, {}]},
        "00081140": {"vr": "SQ"},
        "00420011": {"vr": "OB", "InlineBinary": "AAEC"},
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://host/dicom-web/studies/1/bulkdata/7FE00010?a=1&b=2"},
    }))
    first, second = attribute(document, "00081032").findall("d:Item", NS)
    assert (first.get("number"), second.get("number")) == ("1", "2")
    assert first_value(first, "00080100") == "121" and list(second) == []
    assert list(attribute(document, "00081140")) == []
    assert attribute(document, "00420011").find("d:InlineBinary", NS).text == "AAEC"
    bulk = attribute(document, "7FE00010").find("d:BulkData", NS)
    assert bulk.get("uri") == "http://host/dicom-web/studies/1/bulkdata/7FE00010?a=1&b=2"


def test_private_attributes_name_their_creator_and_drop_the_block_number():
    document = parse(native_xml({
        "00090010": {"vr": "LO", "Value": ["ACME 1.0"]},
        "00091001": {"vr": "LO", "Value": ["kept"]},
        "00111001": {"vr": "LO", "Value": ["no creator"]},
    }))
    private = attribute(document, "00090001")
    assert (private.get("privateCreator"), private.get("keyword"), texts(private)) == ("ACME 1.0", None, ["kept"])
    assert attribute(document, "00090010").get("privateCreator") is None
    # Without a creator the block cannot be named: the tag stays as it is.
    assert attribute(document, "00111001").get("privateCreator") is None


def test_characters_xml_cannot_carry_become_replacement_characters():
    document = parse(native_xml({"00100020": {"vr": "LO", "Value": ["a\x01b\x1fc\ud800"]}}))
    assert first_value(document, "00100020") == "a\ufffdb\ufffdc\ufffd"


# --- against dcmtk ------------------------------------------------------------


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # an invalid IS or DS is kept as written


def _comparable(parent: ET.Element) -> dict[str, Any]:
    """Attributes keyed by (tag, privateCreator), in a form both writers agree on.

    Where they rightly differ, the difference is left out: dcmtk's `+U8`
    rewrites SpecificCharacterSet to ISO_IR 192 (the JSON model keeps the
    stored one), keywords come from two dictionaries that know different
    retired attributes, dcmtk renumbers private elements whose creator is
    missing (so private elements count only by their creator), and writes OW
    words byte-swapped.
    """
    found: dict[str, Any] = {}
    for element in parent.findall("d:DicomAttribute", NS):
        tag, vr, creator = element.get("tag"), element.get("vr"), element.get("privateCreator")
        if tag == "00080005" or (int(tag[:4], 16) % 2 and creator is None):
            continue
        content: list[Any] = []
        for child in element:
            kind = child.tag.split("}")[1]
            if kind == "Item":
                content.append(_comparable(child))
            elif kind == "PersonName":
                content.append({g.tag: [(c.tag, c.text) for c in g] for g in child} or None)
            elif kind == "Value":
                content.append(_number_or_text(child.text or "") if vr in NUMERIC_VRS else child.text or "")
            else:
                content.append(kind)
        if all(value is None for value in content):
            content = []  # dcmtk leaves out a PN with no component; the JSON model keeps an empty value
        found[f"{tag}/{creator}"] = (vr, content)
    return found


def _differences(theirs: Any, ours: Any, path: str = "") -> list[str]:
    if isinstance(theirs, float) and isinstance(ours, float):
        return [] if math.isclose(theirs, ours, rel_tol=1e-6) else [f"{path}: {theirs} != {ours}"]
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return [d for key in theirs.keys() | ours.keys() for d in _differences(theirs.get(key), ours.get(key), f"{path}/{key}")]
    if isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple)) and len(theirs) == len(ours):
        return [d for index, pair in enumerate(zip(theirs, ours)) for d in _differences(*pair, f"{path}[{index}]")]
    return [] if theirs == ours else [f"{path}: {str(theirs)[:120]} != {str(ours)[:120]}"]


DCM2XML = shutil.which("dcm2xml")
# dcmtk cannot read these: an ISO 2022 set its iconv lacks, a broken VR, an RLE file it misparses.
DCMTK_CANNOT_READ = {"J2K_pixelrep_mismatch.dcm", "SC_rgb_jpeg.dcm", "rtdose_rle.dcm", "rtdose_rle_1frame.dcm"}


@pytest.mark.skipif(DCM2XML is None, reason="dcmtk's dcm2xml is not installed")
@pytest.mark.parametrize(
    "path", [p for p in pydicom_files_with_uids() if p.rsplit("/", 1)[-1] not in DCMTK_CANNOT_READ],
    ids=lambda p: p.rsplit("/", 1)[-1],
)
def test_same_document_as_dcmtk(path):
    theirs = subprocess.run([DCM2XML, "--native-format", "+Xn", "+Eb", "+U8", path], capture_output=True, check=True)
    ours = native_xml(dataset_to_json(read_dataset_for_metadata(path)))
    assert _differences(_comparable(parse(theirs.stdout)), _comparable(parse(ours))) == []


# --- over HTTP ----------------------------------------------------------------


def _store(client, *payloads: bytes, accept: str | None = None, study: str | None = None):
    body, content_type = multipart_body(payloads)
    headers = {"Content-Type": content_type} | ({"Accept": accept} if accept else {})
    return client.post(f"/dicom-web/studies{'/' + study if study else ''}", content=body, headers=headers)


def _xml_parts(response) -> list[ET.Element]:
    assert response.status_code == 200, response.text
    content_type = parse_content_type(response.headers["content-type"])
    assert (content_type.media_type, content_type.params["type"]) == ("multipart/related", DICOM_XML)
    parts = split_multipart(response)
    assert {part_type for part_type, _ in parts} == {DICOM_XML}
    return [parse(body) for _, body in parts]


@pytest.fixture
def study(client) -> str:
    uid = generate_uid()
    for number in (1, 2):
        assert _store(client, make_ct(study_uid=uid, size=32, InstanceNumber=number, PatientName="Doe^Jane")).status_code == 200
    return uid


@pytest.mark.parametrize("accept", [MULTIPART_XML, DICOM_XML, "multipart/related", f"{DICOM_XML}, application/dicom+json;q=0.9"])
def test_qido_answers_one_document_per_match(client, study, accept):
    json_results = client.get("/dicom-web/instances", params={"StudyInstanceUID": study}).json()
    documents = _xml_parts(client.get("/dicom-web/instances", params={"StudyInstanceUID": study}, headers={"Accept": accept}))
    assert len(documents) == len(json_results) == 2
    assert {first_value(document, "00080018") for document in documents} == {
        result["00080018"]["Value"][0] for result in json_results
    }
    name = attribute(documents[0], "00100010").find("d:PersonName/d:Alphabetic", NS)
    assert [(c.tag.split("}")[1], c.text) for c in name] == [("FamilyName", "Doe"), ("GivenName", "Jane")]


def test_qido_xml_by_query_parameter_pages_like_json(client, study):
    response = client.get(f"/dicom-web/studies/{study}/instances", params={"accept": MULTIPART_XML, "limit": "1"})
    assert len(_xml_parts(response)) == 1
    assert "Additional results" in response.headers["warning"]


def test_qido_xml_without_match_is_204(client):
    response = client.get("/dicom-web/studies", params={"PatientID": "nobody"}, headers={"Accept": MULTIPART_XML})
    assert (response.status_code, response.content) == (204, b"")


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (f"{DICOM_XML};q=0.5, application/dicom+json", "application/dicom+json"),
        (f"{DICOM_XML}, application/dicom+json", "multipart/related"),
        ("application/json;q=0.2, multipart/related; type=application/dicom+xml;q=0.3", "multipart/related"),
        ("*/*", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
        ("multipart/*", "multipart/related"),
        # q=0 refuses (RFC 9110 §12.4.2): a wider range then means the other model.
        ("application/dicom+json;q=0, */*", "multipart/related"),
        ("application/json;q=0, application/*", "multipart/related"),
        (f"{DICOM_XML};q=0, */*", "application/dicom+json"),
        (f"{MULTIPART_XML};q=0, multipart/*, application/dicom+json;q=0.1", "application/dicom+json"),
    ],
)
def test_the_preferred_model_wins(client, study, accept, media_type):
    response = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}, headers={"Accept": accept})
    assert response.status_code == 200
    assert parse_content_type(response.headers["content-type"]).media_type == media_type


@pytest.mark.parametrize("path", ["/studies", "/studies/{study}/metadata"])
def test_neither_model_acceptable_is_406(client, study, path):
    response = client.get(f"/dicom-web{path.format(study=study)}", headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert "application/dicom+xml" in response.json()["message"]


def test_metadata_as_xml_matches_the_json_model(client, study):
    [first_json, _] = client.get(f"/dicom-web/studies/{study}/metadata").json()
    documents = _xml_parts(client.get(f"/dicom-web/studies/{study}/metadata", headers={"Accept": MULTIPART_XML}))
    assert len(documents) == 2
    [first] = [d for d in documents if first_value(d, "00080018") == first_json["00080018"]["Value"][0]]
    assert [a.get("tag") for a in first.findall("d:DicomAttribute", NS)] == sorted(first_json)
    uri = attribute(first, "7FE00010").find("d:BulkData", NS).get("uri")
    assert uri == first_json["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://testserver/dicom-web/studies/")
    [(_, pixels)] = split_multipart(client.get(uri))
    assert len(pixels) == 32 * 32 * 2


def test_stow_answers_in_xml_when_preferred(client):
    sop = generate_uid()
    response = _store(client, make_ct(sop_uid=sop), accept=DICOM_XML)
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_XML
    [item] = attribute(parse(response.content), "00081199").findall("d:Item", NS)
    assert first_value(item, "00081155") == sop
    assert first_value(item, "00081190").startswith("http://testserver/dicom-web/studies/")


def test_stow_failure_in_xml(client):
    response = _store(client, make_ct(), accept=MULTIPART_XML, study=generate_uid())
    assert response.status_code == 409
    document = parse(response.content)
    [item] = attribute(document, "00081198").findall("d:Item", NS)
    assert int(first_value(item, "00081197")) == 0xA900
    assert document.findall("d:DicomAttribute[@tag='00081199']", NS) == []


@pytest.mark.parametrize("accept", [None, "application/dicom+json", "text/html", "a/b;;;q=bad", f"{DICOM_XML};q=0.1, */*",
                                    "application/dicom+json;q=0, application/dicom+xml;q=0"])
def test_stow_answers_json_otherwise_and_never_refuses_for_accept(client, accept):
    response = _store(client, make_ct(), accept=accept)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert "00081199" in response.json()


def test_encapsulated_pixel_data_is_ob_in_both_models(client):
    # This file's writer gave its JPEG 2000 pixel data VR OW; PS3.5 §A.4 makes it OB.
    [path] = [p for p in pydicom_files_with_uids() if p.endswith("/MR_small_jp2klossless.dcm")]
    json_model = dataset_to_json(read_dataset_for_metadata(path))
    assert json_model["7FE00010"]["vr"] == "OB"
    assert attribute(parse(native_xml(json_model)), "7FE00010").get("vr") == "OB"
    assert base64.b64decode(json_model["7FE00010"]["InlineBinary"])[:4] == b"\xfe\xff\x00\xe0"


def test_sequence_item_attributes_in_metadata(client):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "T-04000", "SRT"
    study = generate_uid()
    assert _store(client, make_ct(study_uid=study, AnatomicRegionSequence=Sequence([item]))).status_code == 200
    [document] = _xml_parts(client.get(f"/dicom-web/studies/{study}/metadata", headers={"Accept": DICOM_XML}))
    [region] = attribute(document, "00082218").findall("d:Item", NS)
    assert (first_value(region, "00080100"), first_value(region, "00080102")) == ("T-04000", "SRT")
