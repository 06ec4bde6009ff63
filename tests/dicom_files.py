"""Test data: pydicom's bundled files and small generated instances."""

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom.multipart import (
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    multipart_related_type,
    parse_content_type,
)

_BUNDLED = Path(pydicom.data.__file__).parent / "test_files"


def pydicom_files_with_uids() -> list[str]:
    """Every bundled Part 10 file that carries Study, Series and SOP Instance UIDs."""
    chosen = []
    # The files shipped inside the package; `get_testdata_files` would also try
    # to download optional ones, which this network-less machine cannot.
    for path in sorted(str(p) for p in _BUNDLED.rglob("*.dcm")):
        if "truncated" in path:
            continue  # deliberately cut short; `truncated_files` covers them
        try:
            # A full read: the bundle's deliberately truncated files are
            # rightly refused by STOW and so are no round-trip material.
            dataset = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - the bundle has deliberately broken files
            continue
        meta = getattr(dataset, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            continue
        if all(keyword in dataset for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")):
            chosen.append(path)
    return chosen


def truncated_files() -> list[str]:
    return sorted(str(p) for p in _BUNDLED.rglob("*truncated*.dcm"))


def bundled_file(name: str) -> str:
    [path] = _BUNDLED.rglob(name)
    return str(path)


def make_ct(
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    size: int = 16,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **attributes: object,
) -> bytes:
    """A small, valid CT Image Storage Part 10 file in an uncompressed `transfer_syntax`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "Doe^John"
    ds.PatientID = "PID-1"
    ds.StudyDate = "20240115"
    ds.StudyTime = "101530"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = (np.arange(size * size, dtype=np.int16).reshape(size, size) * 7).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def multipart_body(payloads: Iterable[bytes], boundary: str = "medaiflow-test-boundary", part_type: str | None = "application/dicom") -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type."""
    body = b""
    for payload in payloads:
        body += b"--" + boundary.encode() + b"\r\n"
        if part_type:
            body += f"Content-Type: {part_type}\r\n".encode()
        body += b"\r\n" + payload + b"\r\n"
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, multipart_related_type(boundary, "application/dicom")


def multipart_parts(response) -> list[tuple[PartStart, bytes]]:
    """Each part of a multipart/related answer: its start (headers, content
    type) and its body; the answer must be complete."""
    content_type = parse_content_type(response.headers["content-type"])
    assert content_type.media_type == "multipart/related"
    reader = MultipartReader(content_type.params["boundary"], content_type.params.get("type", ""))
    parts: list[tuple[PartStart, bytes]] = []
    start, body = None, b""
    for event in reader.feed(response.content):
        if isinstance(event, PartStart):
            start, body = event, b""
        elif isinstance(event, PartData):
            body += event.data
        elif isinstance(event, PartEnd):
            assert start is not None
            parts.append((start, body))
    reader.close()
    return parts


def stow(client, payloads: list[bytes], answered: tuple[int, ...] = (200,)) -> dict:
    """The payloads sent by STOW-RS; its answer, whose status must be one of `answered`."""
    body, content_type = multipart_body(payloads)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code in answered, response.text
    return response.json()  # type: ignore[no-any-return]
