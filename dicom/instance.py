"""What the index needs to know about one stored instance, read once at ingest.

`describe_instance` is the only way to build an `InstanceDescription`, and it
refuses a data set that lacks the identifying UIDs, so an instance that
cannot be filed correctly never reaches the index.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydicom import Dataset
from pydicom.filereader import read_file_meta_info

from dicom.bulkdata import format_tag_path
from dicom.errors import InvalidDicom
from dicom.json_model import dataset_to_json, read_dataset_for_metadata
from dicom.matching import name_search_key, normalise_time, person_name_groups, person_name_text
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


Attributes = dict[str, Any]


@dataclass(frozen=True)
class StudyFields:
    study_instance_uid: str
    patient_id: str | None
    issuer_of_patient_id: str | None
    patient_name: str | None
    patient_name_search: str | None
    # The component groups of the name, each indexed so that a group matches alone (`PersonNameMatch`).
    patient_name_alphabetic: str | None
    patient_name_ideographic: str | None
    patient_name_phonetic: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    referring_physician_name_search: str | None
    referring_physician_name_alphabetic: str | None
    referring_physician_name_ideographic: str | None
    referring_physician_name_phonetic: str | None


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
class ParentDescription:
    """What one instance says of its study and series: the index describes
    each by one of its instances (the conformance statement's rule)."""

    study: StudyFields
    series: SeriesFields
    study_attributes: dict[str, Any]
    series_attributes: dict[str, Any]


@dataclass(frozen=True)
class InstanceDescription(ParentDescription):
    instance: InstanceFields
    metadata: dict[str, Any]


def describe_instance(path: Path) -> InstanceDescription:
    """Read a Part 10 file's header (bulk data stays on disk) and describe it."""
    return describe_dataset(read_dataset_for_metadata(str(path)))


def claimed_sop_uids(path: Path) -> tuple[str | None, str | None]:
    """The SOP Class and SOP Instance UIDs that a payload's File Meta
    Information names (0002,0002 and 0002,0003), each None where it cannot
    be read or is no valid UID: all that a refusal of a payload whose data
    set could not be read can say of which instance it was."""
    try:
        meta = read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - pydicom signals malformed input with many exception types
        return None, None
    keywords = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")
    claimed = (str(meta.get(keyword, "")).strip() for keyword in keywords)
    class_uid, instance_uid = (uid if is_safe_uid(uid) else None for uid in claimed)
    return class_uid, instance_uid


def describe_dataset(dataset: Dataset) -> InstanceDescription:
    """A Part 10 data set as read, or as written by this server (with its file
    meta): one that it just wrote need not be parsed again.

    The index fields are taken from the DICOM JSON built here, so each value
    is converted once, by one set of rules.
    """
    transfer_syntax = _file_meta_transfer_syntax(dataset)
    uids = {keyword: _required_uid(dataset, keyword) for keyword in _IDENTIFYING_UIDS}
    instance_path = (
        f"{BULK_DATA_BASE_MARKER}/studies/{uids['StudyInstanceUID']}/series/{uids['SeriesInstanceUID']}"
        f"/instances/{uids['SOPInstanceUID']}/bulkdata/"
    )
    metadata = dataset_to_json(dataset, lambda tag_path: instance_path + format_tag_path(tag_path))
    _refuse_nul(metadata)
    return InstanceDescription(
        **vars(describe_parents(metadata, uids["StudyInstanceUID"], uids["SeriesInstanceUID"])),
        instance=InstanceFields(
            sop_instance_uid=uids["SOPInstanceUID"],
            sop_class_uid=uids["SOPClassUID"],
            transfer_syntax_uid=transfer_syntax,
            instance_number=_int(metadata, "00200013"),
            rows=_int(metadata, "00280010"),
            columns=_int(metadata, "00280011"),
            bits_allocated=_int(metadata, "00280100"),
            number_of_frames=_int(metadata, "00280008"),
        ),
        metadata=metadata,
    )


def describe_parents(metadata: Attributes, study_uid: str, series_uid: str) -> ParentDescription:
    """From an instance's DICOM JSON, as `describe_dataset` builds it or as
    the index keeps it: the study and series of a deleted instance are
    described again by one that remains."""
    return ParentDescription(
        study=study_fields(metadata, study_uid),
        series=series_fields(metadata, series_uid),
        study_attributes=_select(metadata, lambda tag: tag in _STUDY_TAGS or tag >> 16 == _PATIENT_GROUP),
        series_attributes=_select(metadata, lambda tag: tag in _SERIES_TAGS),
    )


_TAG_KEY = re.compile(r"[0-9A-F]{8}")


def _refuse_nul(metadata: dict[str, Any]) -> None:
    """A NUL inside a text value (padding is already gone) is no DICOM text
    (PS3.5 6.1.2), and neither PostgreSQL text nor FHIR strings can hold it:
    the instance is refused on its own, the same on every database.

    JSON writes a NUL as \\u0000: a data set whose JSON has no such text has
    none, which one pass in C tells a tenth of the time the walk below takes
    (a tenth of describing an instance). A text that holds a backslash then
    "u0000" is told apart by the walk."""
    if b"\\u0000" not in orjson.dumps(metadata):
        return
    pending: list[tuple[str, Any]] = [(tag, element) for tag, element in metadata.items()]
    while pending:
        tag, node = pending.pop()
        if isinstance(node, str):
            if "\x00" in node:
                raise InvalidDicom(f"the value of ({tag[:4]},{tag[4:]}) holds a NUL character, which DICOM text may not")
        elif isinstance(node, dict):
            pending.extend((key if _TAG_KEY.fullmatch(key) else tag, value) for key, value in node.items())
        elif isinstance(node, list):
            pending.extend((tag, item) for item in node)


_IDENTIFYING_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _file_meta_transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not is_safe_uid(syntax):
        raise InvalidDicom("the file meta information has no valid Transfer Syntax UID (0002,0010)")
    return syntax


def _required_uid(dataset: Dataset, keyword: str) -> str:
    # Read before the JSON is built: the BulkDataURIs name these UIDs.
    try:
        value = str(dataset.get(keyword) or "").strip()
    except (ValueError, TypeError):
        value = ""
    if not value:
        raise InvalidDicom(f"the data set has no {keyword}")
    if not is_safe_uid(value):
        raise InvalidDicom(f"{keyword} {value[:70]!r} is not a valid UID")
    return value


def study_fields(metadata: Attributes, study_uid: str) -> StudyFields:
    """The study's index fields, from an instance's metadata or from the
    study attributes kept with its row (which hold every attribute read here)."""
    patient_name = _text(metadata, "00100010")
    referring = _text(metadata, "00080090")
    patient_groups = person_name_groups(patient_name or "")
    referring_groups = person_name_groups(referring or "")
    return StudyFields(
        study_instance_uid=study_uid,
        patient_id=_text(metadata, "00100020"),
        issuer_of_patient_id=_text(metadata, "00100021"),
        patient_name=patient_name,
        patient_name_search=name_search_key(patient_name) if patient_name else None,
        patient_name_alphabetic=patient_groups[0],
        patient_name_ideographic=patient_groups[1],
        patient_name_phonetic=patient_groups[2],
        patient_birth_date=_text(metadata, "00100030"),
        patient_sex=_text(metadata, "00100040"),
        study_date=_text(metadata, "00080020"),
        study_time=_time(metadata, "00080030"),
        accession_number=_text(metadata, "00080050"),
        study_id=_text(metadata, "00200010"),
        study_description=_text(metadata, "00081030"),
        referring_physician_name=referring,
        referring_physician_name_search=name_search_key(referring) if referring else None,
        referring_physician_name_alphabetic=referring_groups[0],
        referring_physician_name_ideographic=referring_groups[1],
        referring_physician_name_phonetic=referring_groups[2],
    )


def series_requests_of(metadata: Attributes) -> tuple[SeriesRequest, ...]:
    """The items of an instance's RequestAttributesSequence that QIDO matches on."""
    return tuple(
        SeriesRequest(
            requested_procedure_id=_text(item, "00401001"),
            scheduled_procedure_step_id=_text(item, "00400009"),
        )
        for item in _values(metadata, "00400275")
    )


def series_fields(metadata: Attributes, series_uid: str) -> SeriesFields:
    requests = series_requests_of(metadata)
    return SeriesFields(
        series_instance_uid=series_uid,
        modality=_text(metadata, "00080060"),
        series_number=_int(metadata, "00200011"),
        series_description=_text(metadata, "0008103E"),
        body_part_examined=_text(metadata, "00180015"),
        performed_procedure_step_start_date=_text(metadata, "00400244"),
        performed_procedure_step_start_time=_time(metadata, "00400245"),
        requests=requests,
    )


def _select(metadata: Attributes, keep: Callable[[int], bool]) -> Attributes:
    return {key: value for key, value in metadata.items() if keep(int(key, 16))}


def _values(metadata: Attributes, tag: str) -> list[Any]:
    element = metadata.get(tag)
    return list(element.get("Value") or []) if element else []


def _text(metadata: Attributes, tag: str) -> str | None:
    """The first value as text; a PN as its component groups joined by '='."""
    values = _values(metadata, tag)
    if not values or values[0] is None:
        return None
    first = values[0]
    if isinstance(first, dict):
        first = person_name_text(first)
    text = str(first).strip()
    return text or None


def _time(metadata: Attributes, tag: str) -> str | None:
    """TM values are indexed at full precision so that range matching compares like with like."""
    text = _text(metadata, tag)
    return normalise_time(text) if text else None


def _int(metadata: Attributes, tag: str) -> int | None:
    values = _values(metadata, tag)
    # Legacy files carry IS values that are not numbers; the index leaves them out.
    return values[0] if values and isinstance(values[0], int) and not isinstance(values[0], bool) else None
