"""Synthetic DICOM data for the benchmarks.

Everything is generated in memory with pydicom + numpy: a CT series of
`n` slices (noisy ellipse, 16-bit signed, Explicit VR Little Endian, valid
CT Image Storage objects with the Patient / General Study / General Series /
Frame of Reference / General Equipment / General Image / Image Plane /
Image Pixel / CT Image / SOP Common modules) and many tiny one-instance
studies (8x8 pixels) with distinct PatientID / StudyInstanceUID.

Also builds `multipart/related; type="application/dicom"` STOW-RS bodies,
pre-chunked so that sending them costs the client almost nothing.
"""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def new_uid() -> str:
    """A UUID-derived UID (2.25.<128-bit int>), unique without a registered root."""
    return f"2.25.{uuid.uuid4().int}"


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDAIFLOWBENCH"
    return meta


def _ct_dataset(
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    frame_of_ref_uid: str,
    sop_uid: str,
    instance_number: int,
    z: float,
    pixels: np.ndarray,
    spacing: float,
    thickness: float,
    study_date: str = "20240115",
    accession: str = "",
    study_id: str = "1",
) -> Dataset:
    rows, cols = pixels.shape
    ds = Dataset()
    ds.file_meta = _file_meta(sop_uid)
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    # General Study
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MedAIFlow benchmark study"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = study_id
    # General Series
    ds.Modality = "CT"
    ds.SeriesDate = study_date
    ds.SeriesTime = "101500"
    ds.SeriesDescription = "Synthetic noisy ellipse"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.PatientPosition = "HFS"
    # General Equipment
    ds.Manufacturer = "MedAIFlow bench"
    # Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    # Frame of Reference
    ds.FrameOfReferenceUID = frame_of_ref_uid
    ds.PositionReferenceIndicator = ""
    # General Image / CT Image
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    ds.KVP = "120"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    # Image Plane
    ds.PixelSpacing = [f"{spacing:g}", f"{spacing:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    half = spacing * cols / 2.0
    ds.ImagePositionPatient = [f"{-half:g}", f"{-half:g}", f"{z:g}"]
    ds.SliceThickness = f"{thickness:g}"
    ds.SliceLocation = f"{z:g}"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class CTSeries:
    patient_id: str
    study_uid: str
    series_uid: str
    instances: list[bytes] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.instances)


def make_ct_series(
    n_slices: int = 200,
    size: int = 512,
    seed: int = 1234,
    patient_id: str = "BENCHCT0001",
) -> CTSeries:
    """A `n_slices` x `size` x `size` 16-bit CT series: a noisy ellipse whose radii vary with z."""
    rng = np.random.default_rng(seed)
    study_uid, series_uid, for_uid = new_uid(), new_uid(), new_uid()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    # normalised elliptical distance, 1.0 on an ellipse of radii 0.45/0.35 of the size
    d = np.sqrt(((xx - c) / (0.45 * size)) ** 2 + ((yy - c) / (0.35 * size)) ** 2)
    series = CTSeries(patient_id=patient_id, study_uid=study_uid, series_uid=series_uid)
    spacing, thickness = 0.7, 1.25
    for i in range(n_slices):
        t = i / max(n_slices - 1, 1)
        scale = 0.6 + 0.4 * np.sin(np.pi * t)  # body widest in the middle of the stack
        body = d <= scale
        # stored values: 0 = air (-1024 HU), ~1064 = soft tissue (40 HU), noise sigma 20
        img = np.where(body, 1064.0, 0.0) + rng.normal(0.0, 20.0, size=(size, size))
        # a brighter "bone" ring near the edge of the body
        img = np.where(body & (d > scale * 0.9), img + 700.0, img)
        pixels = np.clip(img, -2000, 4000).astype(np.int16)
        ds = _ct_dataset(
            patient_id=patient_id,
            patient_name="Bench^CT",
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_ref_uid=for_uid,
            sop_uid=new_uid(),
            instance_number=i + 1,
            z=-i * thickness,
            pixels=pixels,
            spacing=spacing,
            thickness=thickness,
            accession="BENCHCTACC1",
        )
        series.instances.append(to_bytes(ds))
    return series


@dataclass
class SmallStudies:
    patient_ids: list[str]
    study_uids: list[str]
    instances: list[bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.instances)


_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, for synthetic objects


def fixed_uid() -> str:
    """A random UID of fixed length (56 chars), so it can be swapped into a byte template."""
    return f"{_UID_ROOT}1{uuid.uuid4().int % 10**29:029d}"


def _placeholder_uid(k: int) -> str:
    return f"{_UID_ROOT}1{str(k) * 29}"


def make_small_studies(n: int, seed: int = 99, size: int = 8) -> SmallStudies:
    """`n` one-instance studies, each with its own PatientID and StudyInstanceUID.

    pydicom needs ~5 ms per object, so one template is written with fixed-length
    placeholder values, and each study is made by substituting bytes (UIDs,
    PatientID/Name, AccessionNumber, dates) and fresh random pixels
    (PixelData is the last element, so it is the tail of the file).
    """
    rng = np.random.default_rng(seed)
    ph_study, ph_series, ph_for, ph_sop = (_placeholder_uid(k) for k in (1, 2, 3, 4))
    ph_pid, ph_name, ph_acc, ph_date = (
        "BENCHP9999999",
        "Bench^Patient9999999",
        "ACC9999999",
        "20991231",
    )
    template = to_bytes(
        _ct_dataset(
            patient_id=ph_pid,
            patient_name=ph_name,
            study_uid=ph_study,
            series_uid=ph_series,
            frame_of_ref_uid=ph_for,
            sop_uid=ph_sop,
            instance_number=1,
            z=0.0,
            pixels=np.zeros((size, size), dtype=np.int16),
            spacing=1.0,
            thickness=1.0,
            study_date=ph_date,
            accession=ph_acc,
        )
    )
    npix = size * size * 2
    assert template.endswith(bytes(npix))
    head = template[:-npix]
    pieces = re.split(
        b"("
        + b"|".join(
            re.escape(x.encode())
            for x in (
                ph_study,
                ph_series,
                ph_for,
                ph_sop,
                ph_pid,
                ph_name,
                ph_acc,
                ph_date,
            )
        )
        + b")",
        head,
    )
    pixels = rng.integers(0, 2000, size=(n, size, size), dtype=np.int16).astype("<i2")
    pids, suids, blobs = [], [], []
    for i in range(n):
        pid = f"BENCHP{i:07d}"
        values = {
            ph_study: fixed_uid(),
            ph_series: fixed_uid(),
            ph_for: fixed_uid(),
            ph_sop: fixed_uid(),
            ph_pid: pid,
            ph_name: f"Bench^Patient{i:07d}",
            ph_acc: f"ACC{i:07d}",
            ph_date: f"20{10 + i % 15:02d}{1 + i % 12:02d}{1 + i % 28:02d}",
        }
        subst = {k.encode(): v.encode() for k, v in values.items()}
        blob = b"".join(subst.get(p, p) for p in pieces) + pixels[i].tobytes()
        assert len(blob) == len(template)
        pids.append(pid)
        suids.append(values[ph_study])
        blobs.append(blob)
    return SmallStudies(patient_ids=pids, study_uids=suids, instances=blobs)


@dataclass
class MultipartBody:
    content_type: str
    chunks: list[bytes]

    @property
    def length(self) -> int:
        return sum(len(c) for c in self.chunks)

    def __iter__(self):
        # a fresh iterator each time, so one body can be sent to several servers
        return iter(self.chunks)


def build_multipart(instances: list[bytes], chunk_size: int = 1 << 20) -> MultipartBody:
    """A `multipart/related; type="application/dicom"` body, split into ~chunk_size pieces."""
    boundary = f"medaiflow-bench-{uuid.uuid4().hex}"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    tail = f"--{boundary}--\r\n".encode("ascii")
    chunks: list[bytes] = []
    pending: list[bytes] = []
    pending_len = 0

    def flush() -> None:
        nonlocal pending, pending_len
        if pending:
            chunks.append(b"".join(pending))
            pending, pending_len = [], 0

    for blob in instances:
        for piece in (head, blob, b"\r\n"):
            if len(piece) >= chunk_size:
                flush()
                chunks.append(piece)
            else:
                pending.append(piece)
                pending_len += len(piece)
                if pending_len >= chunk_size:
                    flush()
    pending.append(tail)
    flush()
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return MultipartBody(content_type=ctype, chunks=chunks)


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
