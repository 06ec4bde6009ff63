import base64
import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom import config
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom import json_model
from dicom.bulkdata import format_tag_path, parse_tag_path, read_bulk_data
from dicom.errors import InvalidDicom, InvalidRequest, NotFound
from dicom.json_model import dataset_to_json, read_dataset_for_metadata

CT = get_testdata_file("CT_small.dcm")
KEY = re.compile(r"^[0-9A-F]{8}$")


def _readable_test_files() -> list[str]:
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files():
            if os.path.isdir(path):
                continue
            try:
                pydicom.dcmread(path, defer_size=2048)
            except Exception:
                continue
            paths.append(path)
    return paths


def _uri(path: tuple[int, ...]) -> str:
    return "bulk/" + format_tag_path(path)


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _check_model(model: dict[str, Any]) -> None:
    keys = list(model)
    assert keys == sorted(keys)
    for key, element in model.items():
        assert KEY.match(key)
        assert not key.endswith("0000"), "group length tags are left out"
        assert "vr" in element
        value = element.get("Value")
        assert value is None or (isinstance(value, list) and value), "Value is a non-empty array or absent"
        vr = element["vr"]
        for item in value or []:
            if vr == "PN" and item is not None:
                assert isinstance(item, dict) and set(item) <= {"Alphabetic", "Ideographic", "Phonetic"}
            elif vr == "AT":
                assert KEY.match(item)
            elif vr in ("IS", "DS") and isinstance(item, str):
                assert not _is_finite_number(item), "numbers that parse are JSON numbers"
            elif vr == "SQ":
                _check_model(item)
        if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN"):
            assert "Value" not in element
            assert len({"InlineBinary", "BulkDataURI"} & set(element)) <= 1


@pytest.mark.parametrize("path", _readable_test_files(), ids=os.path.basename)
def test_every_readable_test_file_converts(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=2048)
        model = dataset_to_json(ds, _uri)
    assert not any(key.startswith("0002") for key in model)
    _check_model(model)
    orjson.loads(orjson.dumps(model))


def test_values_match_pydicom() -> None:
    ds = pydicom.dcmread(CT)
    model = dataset_to_json(read_dataset_for_metadata(CT), _uri)
    assert model["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": str(ds.PatientName)}]}
    assert model["00280010"] == {"vr": "US", "Value": [ds.Rows]}
    assert model["00280030"]["Value"] == [float(v) for v in ds.PixelSpacing]
    assert model["00200013"] == {"vr": "IS", "Value": [int(ds.InstanceNumber)]}
    assert model["00080008"]["Value"] == list(ds.ImageType)
    assert model["00080005"] == {"vr": "CS", "Value": ["ISO_IR 100"]}


def test_pixel_data_becomes_bulk_data_without_being_read() -> None:
    ds = read_dataset_for_metadata(CT)
    model = dataset_to_json(ds, _uri)
    assert model["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk/7FE00010"}
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None


def test_encapsulated_pixel_data_is_always_bulk_data() -> None:
    path = get_testdata_file("JPEG2000.dcm")
    model = dataset_to_json(read_dataset_for_metadata(path), _uri, inline_threshold=1 << 30)
    assert model["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulk/7FE00010"}


def test_without_bulk_data_uri_everything_is_inline() -> None:
    ds = read_dataset_for_metadata(CT)
    model = dataset_to_json(ds, None)
    assert base64.b64decode(model["7FE00010"]["InlineBinary"]) == pydicom.dcmread(CT).PixelData


def test_small_binary_is_inline_base64() -> None:
    ds = Dataset()
    ds.add_new(0x00420011, "OB", b"\x00\x01\xfe\xff")  # Encapsulated Document
    ds.add_new(0x00091010, "UN", b"")
    model = dataset_to_json(ds, _uri)
    assert model["00420011"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"\x00\x01\xfe\xff").decode()}
    assert model["00091010"] == {"vr": "UN"}


def test_nested_binary_gets_a_tag_path_that_resolves() -> None:
    path = get_testdata_file("examples_overlay.dcm")
    model = dataset_to_json(read_dataset_for_metadata(path), _uri, inline_threshold=64)
    icon = model["00880200"]["Value"][0]["7FE00010"]
    assert icon == {"vr": "OW", "BulkDataURI": "bulk/00880200/0/7FE00010"}
    expected = pydicom.dcmread(path).IconImageSequence[0].PixelData
    assert read_bulk_data(path, parse_tag_path("00880200/0/7FE00010")) == expected


def test_read_bulk_data_top_level_and_missing() -> None:
    assert read_bulk_data(CT, (0x7FE00010,)) == pydicom.dcmread(CT).PixelData
    with pytest.raises(NotFound):
        read_bulk_data(CT, (0x00420011,))
    with pytest.raises(NotFound):
        read_bulk_data(CT, (0x00880200, 0, 0x7FE00010))
    with pytest.raises(NotFound, match="not bulk data"):
        read_bulk_data(CT, (0x00100010,))  # PatientName: its value is in the metadata


def test_tag_path_text_round_trip_and_errors() -> None:
    path = (0x00540016, 0, 0x00181072)
    assert format_tag_path(path) == "00540016/0/00181072"
    assert parse_tag_path("00540016/0/00181072") == path
    assert parse_tag_path("7fe00010") == (0x7FE00010,)
    for bad in ("", "7FE0001", "00540016/0", "00540016/x/00181072", "00540016/01/00181072", "../etc"):
        with pytest.raises(InvalidRequest):
            parse_tag_path(bad)


def test_empty_values_multi_values_and_odd_numbers() -> None:
    ds = Dataset()
    ds.add_new(0x00080050, "SH", "")
    ds.add_new(0x00080060, "CS", ["OT", "", "MR"])
    ds.add_new(0x00100010, "PN", "Yamada^Tarou=山田^太郎=やまだ^たろう")
    ds.add_new(0x00101001, "PN", ["A^B", ""])
    ds.add_new(0x00181063, "DS", "33.3")
    ds.add_new(0x00200013, "IS", "7")
    ds.add_new(0x00209165, "AT", [0x00100020, 0x7FE00010])
    ds.add_new(0x00189087, "FD", [float("nan"), float("inf"), -1.5])
    ds.add_new(0x00280106, "US or SS", 3)
    ds.add_new(0x00280103, "US", 1)
    ds.add_new(0x00081140, "SQ", [Dataset()])
    ds.add_new(0x00081150, "SQ", [])
    model = dataset_to_json(ds, _uri)
    assert model["00080050"] == {"vr": "SH"}
    assert model["00080060"]["Value"] == ["OT", None, "MR"]
    assert model["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert model["00101001"]["Value"] == [{"Alphabetic": "A^B"}, None]
    assert model["00181063"]["Value"] == [33.3]
    assert model["00200013"]["Value"] == [7]
    assert model["00209165"]["Value"] == ["00100020", "7FE00010"]
    assert model["00189087"]["Value"] == ["NaN", "Infinity", -1.5]
    assert model["00280106"] == {"vr": "SS", "Value": [3]}
    assert model["00081140"] == {"vr": "SQ", "Value": [{}]}
    assert model["00081150"] == {"vr": "SQ"}
    _check_model(model)


def _write(ds: Dataset, tmp_path: Path, name: str = "x.dcm") -> str:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = str(tmp_path / name)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 144", "Люкceмбypг"),
        ("ISO_IR 192", "Wang^XiaoDong=王^小東"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        (["ISO 2022 IR 6", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),
    ],
)
def test_text_is_decoded_from_the_specific_character_set(charset: Any, name: str, tmp_path: Path) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    path = _write(ds, tmp_path)
    model = dataset_to_json(read_dataset_for_metadata(path), _uri)
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), name.split("=")))
    assert model["00100010"]["Value"] == [groups]
    assert model["00080005"]["vr"] == "CS"


def _legacy_file(tmp_path: Path) -> str:
    """An implicit VR data set with invalid IS/DS strings, written byte by byte."""

    def element(group: int, elem: int, value: bytes) -> bytes:
        return group.to_bytes(2, "little") + elem.to_bytes(2, "little") + len(value).to_bytes(4, "little") + value

    body = (
        element(0x0008, 0x0060, b"CT")
        + element(0x0018, 0x0050, b"abc ")
        + element(0x0018, 0x0088, b"1.5\\\\2 ")
        + element(0x0020, 0x0012, b"x1")
        + element(0x0020, 0x0013, b"5.0 ")
        + element(0x0028, 0x0030, b"nan\\1")
    )
    path = tmp_path / "legacy.dcm"
    path.write_bytes(body)
    return str(path)


@pytest.mark.parametrize("mode", [config.WARN, config.RAISE])
def test_invalid_is_and_ds_are_kept_as_text(mode: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.settings, "reading_validation_mode", mode)
    path = _legacy_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dataset_to_json(read_dataset_for_metadata(path), _uri)
    assert model["00180050"]["Value"] == ["abc"]
    assert model["00180088"]["Value"] == [1.5, None, 2]
    assert model["00200012"]["Value"] == ["x1"]
    assert model["00200013"]["Value"] == [5]
    assert model["00280030"]["Value"] == ["nan", 1]
    _check_model(model)


def test_reads_files_without_preamble() -> None:
    model = dataset_to_json(read_dataset_for_metadata(get_testdata_file("rtstruct.dcm")), _uri)
    assert "30060020" in model  # Structure Set ROI Sequence


def test_reads_file_objects_and_path_objects() -> None:
    with open(CT, "rb") as fp:
        ds = read_dataset_for_metadata(fp)
        assert dataset_to_json(ds, None)["7FE00010"]["InlineBinary"]
    with open(get_testdata_file("rtstruct.dcm"), "rb") as fp:
        assert "30060020" in read_dataset_for_metadata(fp)
    assert "PixelData" in read_dataset_for_metadata(Path(CT))


@pytest.mark.parametrize(
    "data",
    [os.urandom(4096), b"", b"DICM", Path(CT).read_bytes()[:1000], Path(CT).read_bytes()[:5000]],
    ids=["random", "empty", "tiny", "cut-in-header", "cut-in-pixels"],
)
def test_not_dicom_is_rejected(data: bytes) -> None:
    with pytest.raises(InvalidDicom):
        read_dataset_for_metadata(io.BytesIO(data))


def _all_bundled_datasets() -> list[str]:
    root = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(str(path) for path in root.rglob("*.dcm"))


@pytest.mark.parametrize("path", _all_bundled_datasets(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_fast_path_gives_the_same_json_as_the_general_path(path, monkeypatch):
    try:
        fast = json_model.dataset_to_json(json_model.read_dataset_for_metadata(path), lambda tags: "bulk")
    except InvalidDicom:
        pytest.skip("not a readable data set")
    monkeypatch.setattr(json_model, "_fast_element", lambda ds, elem, encoding: None)
    general = json_model.dataset_to_json(json_model.read_dataset_for_metadata(path), lambda tags: "bulk")
    assert fast == general
