"""What the index needs to know about one stored instance, read once at ingest.

`describe_instance` is the only way to build an `InstanceDescription`, and it
refuses a data set that lacks the identifying UIDs, so an instance that
cannot be filed correctly never reaches the index.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue

from dicom.bulkdata import format_tag_path
from dicom.errors import InvalidDicom
from dicom.json_model import dataset_to_json, read_dataset_for_metadata
from dicom.matching import name_search_key, normalise_time
from dicom.uids import is_safe_uid

# Stored metadata names bulk data relative to this marker; responses swap it
# for the request's absolute DICOMweb root with one bytes.replace, which keeps
# BulkDataURIs absolute (PS3.18 §8.6.2) behind any proxy without reparsing.
BULK_DATA_BASE_MARKER = "medaiflow-base:"

# Attributes kept with the study and series rows, answered by QIDO at those
# levels: the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1,
# C.7.2.2) and the General Series module (C.7.3.1) with its neighbours.
_STUDY_TAGS = frozenset(
    {
        0x00080005, 0x00080020, 0x00080030, 0x00080050, 0x00080051, 0x00080090,
        0x00080201, 0x00081030, 0x00081032, 0x00081060, 0x00081080, 0x0020000D,
        0x00200010,
    }
)
_SERIES_TAGS = frozenset(
    {
        0x00080005, 0x00080021, 0x00080031, 0x00080060, 0x00080070, 0x0008103E,
        0x00081090, 0x00180015, 0x00185100, 0x0020000E, 0x00200011, 0x00200052,
        0x00200060, 0x00400244, 0x00400245, 0x00400275,
    }
)
_PATIENT_GROUP = 0x0010


@dataclass(frozen=True)
class StudyFields:
    study_instance_uid: str
    patient_id: str | None
    issuer_of_patient_id: str | None
    patient_name: str | None
    patient_name_search: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    referring_physician_name_search: str | None


@dataclass(frozen=True)
class SeriesRequest:
    requested_procedure_id: str | None
    scheduled_procedure_step_id: str | None


@dataclass(frozen=True)
class SeriesFields:
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    performed_procedure_step_start_date: str | None
    performed_procedure_step_start_time: str | None
    requests: tuple[SeriesRequest, ...]


@dataclass(frozen=True)
class InstanceFields:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None


@dataclass(frozen=True)
class InstanceDescription:
    study: StudyFields
    series: SeriesFields
    instance: InstanceFields
    metadata: dict[str, Any]
    study_attributes: dict[str, Any]
    series_attributes: dict[str, Any]


def describe_instance(path: Path) -> InstanceDescription:
    """Read a Part 10 file's header (bulk data stays on disk) and describe it."""
    dataset = read_dataset_for_metadata(str(path))
    transfer_syntax = _file_meta_transfer_syntax(dataset)
    uids = {
        keyword: _required_uid(dataset, keyword)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    }
    instance_path = (
        f"{BULK_DATA_BASE_MARKER}/studies/{uids['StudyInstanceUID']}/series/{uids['SeriesInstanceUID']}"
        f"/instances/{uids['SOPInstanceUID']}/bulkdata/"
    )
    metadata = dataset_to_json(dataset, lambda tag_path: instance_path + format_tag_path(tag_path))
    return InstanceDescription(
        study=_study_fields(dataset, uids["StudyInstanceUID"]),
        series=_series_fields(dataset, uids["SeriesInstanceUID"]),
        instance=InstanceFields(
            sop_instance_uid=uids["SOPInstanceUID"],
            sop_class_uid=uids["SOPClassUID"],
            transfer_syntax_uid=transfer_syntax,
            instance_number=_int(dataset, "InstanceNumber"),
            rows=_int(dataset, "Rows"),
            columns=_int(dataset, "Columns"),
            bits_allocated=_int(dataset, "BitsAllocated"),
            number_of_frames=_int(dataset, "NumberOfFrames"),
        ),
        metadata=metadata,
        study_attributes=_select(metadata, lambda tag: tag in _STUDY_TAGS or tag >> 16 == _PATIENT_GROUP),
        series_attributes=_select(metadata, lambda tag: tag in _SERIES_TAGS),
    )


def _file_meta_transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not is_safe_uid(syntax):
        raise InvalidDicom("the file meta information has no valid Transfer Syntax UID (0002,0010)")
    return syntax


def _required_uid(dataset: Dataset, keyword: str) -> str:
    value = str(_text(dataset, keyword) or "").strip()
    if not value:
        raise InvalidDicom(f"the data set has no {keyword}")
    if not is_safe_uid(value):
        raise InvalidDicom(f"{keyword} {value[:70]!r} is not a valid UID")
    return value


def _study_fields(dataset: Dataset, study_uid: str) -> StudyFields:
    patient_name = _text(dataset, "PatientName")
    referring = _text(dataset, "ReferringPhysicianName")
    return StudyFields(
        study_instance_uid=study_uid,
        patient_id=_text(dataset, "PatientID"),
        issuer_of_patient_id=_text(dataset, "IssuerOfPatientID"),
        patient_name=patient_name,
        patient_name_search=name_search_key(patient_name) if patient_name else None,
        patient_birth_date=_text(dataset, "PatientBirthDate"),
        patient_sex=_text(dataset, "PatientSex"),
        study_date=_text(dataset, "StudyDate"),
        study_time=_time(dataset, "StudyTime"),
        accession_number=_text(dataset, "AccessionNumber"),
        study_id=_text(dataset, "StudyID"),
        study_description=_text(dataset, "StudyDescription"),
        referring_physician_name=referring,
        referring_physician_name_search=name_search_key(referring) if referring else None,
    )


def _series_fields(dataset: Dataset, series_uid: str) -> SeriesFields:
    requests = tuple(
        SeriesRequest(
            requested_procedure_id=_text(item, "RequestedProcedureID"),
            scheduled_procedure_step_id=_text(item, "ScheduledProcedureStepID"),
        )
        for item in _sequence(dataset, "RequestAttributesSequence")
    )
    return SeriesFields(
        series_instance_uid=series_uid,
        modality=_text(dataset, "Modality"),
        series_number=_int(dataset, "SeriesNumber"),
        series_description=_text(dataset, "SeriesDescription"),
        body_part_examined=_text(dataset, "BodyPartExamined"),
        performed_procedure_step_start_date=_text(dataset, "PerformedProcedureStepStartDate"),
        performed_procedure_step_start_time=_time(dataset, "PerformedProcedureStepStartTime"),
        requests=requests,
    )


def _select(metadata: dict[str, Any], keep: Any) -> dict[str, Any]:
    return {key: value for key, value in metadata.items() if keep(int(key, 16))}


def _value(dataset: Dataset, keyword: str) -> Any:
    # Legacy files carry values pydicom refuses to convert; such a value is
    # treated as absent for the index (the file itself is kept unchanged).
    try:
        value = dataset.get(keyword)
    except (ValueError, TypeError, OverflowError):
        return None
    if value is None:
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    return value


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = _value(dataset, keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _time(dataset: Dataset, keyword: str) -> str | None:
    """TM values are indexed at full precision so that range matching compares like with like."""
    text = _text(dataset, keyword)
    return normalise_time(text) if text else None


def _int(dataset: Dataset, keyword: str) -> int | None:
    value = _value(dataset, keyword)
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def _sequence(dataset: Dataset, keyword: str) -> list[Dataset]:
    try:
        return list(dataset.get(keyword) or [])
    except (ValueError, TypeError):
        return []
