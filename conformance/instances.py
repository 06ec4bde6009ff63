"""The DICOM instances the suite brings: made fresh for each run (new UIDs, so
runs never collide), and chosen for what servers get wrong: a plain CT,
person names in other character sets (ISO_IR 192, UTF-8; ISO 2022 with
escape sequences into JIS X 0208), RLE, JPEG 2000, JPEG-LS and JPEG Baseline
(lossy, 8-bit) compressed images, and a multi-frame image whose Frame
Increment Pointer is an AT value.
"""

from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture Image Storage
FRAMES = 3
ROWS = COLUMNS = 32
# PS3.5 H.3.1: Japanese in ISO 2022, the first value empty (ASCII until an
# escape sequence), JIS X 0208 for the ideographic and phonetic groups.
ISO_2022_JAPANESE = ["", "ISO 2022 IR 87"]
IDEOGRAPHIC, PHONETIC = "山田^太郎", "やまだ^たろう"


def accession_number(run_id: str) -> str:
    """With "%" and "_", which a server that matches by SQL LIKE would take for wildcards."""
    return f"A%_{run_id}"[:16]


@dataclass(frozen=True)
class Instance:
    name: str
    dataset: Dataset
    payload: bytes  # the Part 10 file as stored

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    @property
    def transfer_syntax(self) -> str:
        return str(self.dataset.file_meta.TransferSyntaxUID)


@dataclass(frozen=True)
class TestStudy:
    study_instance_uid: str
    patient_id: str
    patient_family_name: str
    instances: tuple[Instance, ...]

    def instance(self, name: str) -> Instance:
        return next(instance for instance in self.instances if instance.name == name)


def make_study(run_id: str) -> TestStudy:
    """One study of eight instances in three series; names carry `run_id` so
    that searches find only this run's study."""
    study_uid = generate_uid()
    patient_id = f"CONF-{run_id}"
    family = f"CONFORMANCE{run_id.upper()}"
    ct_series, other_series, multiframe_series = generate_uid(), generate_uid(), generate_uid()

    def base(series_uid: str, sop_class: str, number: int, modality: str = "CT") -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = patient_id
        ds.PatientName = f"{family}^Test"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20240315"
        ds.StudyTime = "101500"
        ds.StudyID = "1"
        ds.AccessionNumber = accession_number(run_id)
        ds.ReferringPhysicianName = ""  # present and empty: JSON has no "Value" for it
        ds.StudyDescription = "Conformance suite study"
        ds.Modality = modality
        ds.SeriesNumber = number
        ds.InstanceNumber = 1
        ds.Rows = ROWS
        ds.Columns = COLUMNS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        if series_uid == ct_series:  # on every instance: which one a server reads the series from is its choice
            request = Dataset()  # for sequence matching (PS3.4 C.2.2.2.6)
            request.RequestedProcedureID = f"RP-{run_id}"
            request.ScheduledProcedureStepID = f"SPS-{run_id}"
            ds.RequestAttributesSequence = [request]
        return ds

    def pixels(seed: int, frames: int = 1) -> bytes:
        rng = np.random.default_rng(seed)
        shape = (frames, ROWS, COLUMNS) if frames > 1 else (ROWS, COLUMNS)
        return rng.integers(0, 4000, size=shape, dtype=np.uint16).tobytes()

    def compressed(instance_number: int, seed: int, syntax: str, plugin: str) -> Dataset:
        """A CT of the second series, losslessly compressed."""
        ds = base(other_series, CTImageStorage, 2)
        ds.InstanceNumber = instance_number
        ds.PixelData = pixels(seed)
        ds.compress(syntax, encoding_plugin=plugin)
        return ds

    ct = base(ct_series, CTImageStorage, 1)
    ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ct.RescaleIntercept = "-1024"
    ct.RescaleSlope = "1"
    ct.SliceThickness = "1.25"  # DS: a JSON number in metadata
    ct.ImagePositionPatient = ["0", "0", "0"]
    ct.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ct.PixelSpacing = ["0.5", "0.5"]
    ct.KVP = "120"
    ct.PixelData = pixels(1)

    utf8 = base(ct_series, CTImageStorage, 1)
    utf8.InstanceNumber = 2
    utf8.SpecificCharacterSet = "ISO_IR 192"
    utf8.PatientName = f"{family}^Test=山田^太郎"
    utf8.InstitutionName = "Hôpital Süd"
    utf8.PixelData = pixels(2)

    rle = compressed(1, 3, RLELossless, "pydicom")
    j2k = compressed(2, 5, JPEG2000Lossless, "pylibjpeg")
    jpeg_ls = compressed(3, 7, JPEGLSLossless, "pyjpegls")

    iso2022 = base(ct_series, CTImageStorage, 1)
    iso2022.InstanceNumber = 3
    iso2022.SpecificCharacterSet = ISO_2022_JAPANESE
    iso2022.PatientName = f"{family}^Test={IDEOGRAPHIC}={PHONETIC}"  # pydicom writes the escape sequences
    iso2022.PixelData = pixels(6)

    # An 8-bit Secondary Capture: CT Image Storage allows only 16-bit pixels.
    jpeg = base(multiframe_series, SecondaryCaptureImageStorage, 3, modality="OT")
    jpeg.InstanceNumber = 2
    jpeg.ConversionType = "WSD"
    _jpeg_baseline(jpeg)

    multiframe = base(multiframe_series, MULTIFRAME_SC, 3, modality="OT")
    multiframe.NumberOfFrames = FRAMES
    multiframe.FrameIncrementPointer = 0x00181063  # Frame Time: an AT value
    multiframe.FrameTime = "40"
    multiframe.PixelData = pixels(4, FRAMES)

    # The multi-frame image comes last: servers that keep the study's patient
    # attributes from the last instance stored then keep a plain name.
    instances = tuple(Instance(name, ds, _part10(ds)) for name, ds in
                      (("ct", ct), ("utf8", utf8), ("iso2022", iso2022), ("rle", rle), ("j2k", j2k),
                       ("jpeg_ls", jpeg_ls), ("jpeg", jpeg), ("multiframe", multiframe)))
    return TestStudy(study_uid, patient_id, family, instances)


def _jpeg_baseline(dataset: Dataset) -> None:
    """One 8-bit monochrome frame, JPEG-compressed by Pillow (pydicom cannot
    encode JPEG Baseline), with the attributes a lossy image must carry
    (PS3.3 C.7.6.1.1.5). A smooth gradient keeps the loss to a few levels."""
    ramp = np.add.outer(np.arange(ROWS), np.arange(COLUMNS)).astype(np.uint8) * 4
    buffer = BytesIO()
    Image.fromarray(ramp).save(buffer, format="JPEG", quality=95)
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelData = encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionRatio = f"{ramp.nbytes / len(buffer.getvalue()):.2f}"
    dataset.LossyImageCompressionMethod = "ISO_10918_1"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _part10(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart_related(payloads: list[bytes], boundary: str = "conformance-boundary") -> tuple[bytes, str]:
    """A STOW-RS request body of Part 10 files, and its Content-Type."""
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + payload + b"\r\n"
        for payload in payloads
    ) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related answer: (headers, content) each."""
    boundary = None
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if boundary is None:
        raise ValueError(f"no boundary in {content_type!r}")
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, content.removesuffix(b"\r\n")))
    return parts
