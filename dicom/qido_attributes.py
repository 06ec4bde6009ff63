"""QIDO-RS attribute tables: which attributes each level matches on and returns.

Sources (PS3.18 2024 editions; the lists have been stable since the 2019
restructuring of §10.6):
- Required matching keys: PS3.18 §10.6.1.2.1 and Table 10.6.1-5, which refer to
  the Study Root keys of PS3.4 §C.6.2.1 (Tables C.6-5/6/7).
- Default result attributes: PS3.18 §10.6.3.3, Tables 10.6.3-3 (study),
  10.6.3-4 (series) and 10.6.3-5 (instance).
Keys marked "extra" below are optional Study Root keys (PS3.4 Table C.6-5/6)
that viewers' worklists send and that we choose to support.

Patient attributes count as study attributes: QIDO uses the Study Root model.

The "workitem" level is the UPS-RS Search Workitems transaction (PS3.18
§11.9): matching keys and return keys from PS3.4 Table CC.2.5-3 (the UPS
attribute requirements, Return Key Type column). It stands alone: it is no
level of the Study Root hierarchy.
"""

from dataclasses import dataclass
from typing import Literal

from pydicom.datadict import get_entry, keyword_for_tag, tag_for_keyword

from dicom.errors import InvalidRequest

Level = Literal["study", "series", "instance", "workitem"]
# The Study Root hierarchy, top down.
LEVELS: tuple[Level, ...] = ("study", "series", "instance")


@dataclass(frozen=True)
class QidoAttribute:
    keyword: str
    tag: int
    vr: str
    # False: a return key only ("NONE" in PS3.2 Annex K terms); a value for it is refused.
    matching: bool = True
    # Not an element of the stored data set: the server derives it (counts, URLs, ...).
    computed: bool = False
    # CS keys whose value may be a list matching any of its items (UI keys always may).
    value_list: bool = False
    # SQ keys: the item attributes that sequence matching (PS3.4 §C.2.2.2.6) accepts.
    items: tuple["QidoAttribute", ...] = ()


_a = QidoAttribute  # short name to keep the tables one row per attribute


_STUDY = (
    _a("SpecificCharacterSet", 0x00080005, "CS", matching=False),
    _a("StudyDate", 0x00080020, "DA"),
    _a("StudyTime", 0x00080030, "TM"),
    _a("AccessionNumber", 0x00080050, "SH"),
    _a("InstanceAvailability", 0x00080056, "CS", matching=False, computed=True),
    _a("ModalitiesInStudy", 0x00080061, "CS", computed=True, value_list=True),
    _a("ReferringPhysicianName", 0x00080090, "PN"),
    _a("TimezoneOffsetFromUTC", 0x00080201, "SH", matching=False),
    _a("StudyDescription", 0x00081030, "LO"),  # extra
    _a("RetrieveURL", 0x00081190, "UR", matching=False, computed=True),
    _a("PatientName", 0x00100010, "PN"),
    _a("PatientID", 0x00100020, "LO"),
    _a("IssuerOfPatientID", 0x00100021, "LO"),  # extra
    _a("PatientBirthDate", 0x00100030, "DA"),  # extra as a matching key
    _a("PatientSex", 0x00100040, "CS"),  # extra as a matching key
    _a("StudyInstanceUID", 0x0020000D, "UI"),
    _a("StudyID", 0x00200010, "SH"),
    _a("NumberOfStudyRelatedSeries", 0x00201206, "IS", matching=False, computed=True),
    _a("NumberOfStudyRelatedInstances", 0x00201208, "IS", matching=False, computed=True),
)

_SERIES = (
    _a("SpecificCharacterSet", 0x00080005, "CS", matching=False),
    _a("Modality", 0x00080060, "CS", value_list=True),
    _a("TimezoneOffsetFromUTC", 0x00080201, "SH", matching=False),
    _a("SeriesDescription", 0x0008103E, "LO"),  # extra as a matching key
    _a("RetrieveURL", 0x00081190, "UR", matching=False, computed=True),
    _a("BodyPartExamined", 0x00180015, "CS"),  # extra
    _a("SeriesInstanceUID", 0x0020000E, "UI"),
    _a("SeriesNumber", 0x00200011, "IS"),
    _a("NumberOfSeriesRelatedInstances", 0x00201209, "IS", matching=False, computed=True),
    _a("PerformedProcedureStepStartDate", 0x00400244, "DA"),
    _a("PerformedProcedureStepStartTime", 0x00400245, "TM"),
    _a(
        "RequestAttributesSequence",
        0x00400275,
        "SQ",
        items=(
            _a("RequestedProcedureID", 0x00401001, "SH"),
            _a("ScheduledProcedureStepID", 0x00400009, "SH"),
        ),
    ),
)

_INSTANCE = (
    _a("SpecificCharacterSet", 0x00080005, "CS", matching=False),
    _a("SOPClassUID", 0x00080016, "UI"),
    _a("SOPInstanceUID", 0x00080018, "UI"),
    _a("InstanceAvailability", 0x00080056, "CS", matching=False, computed=True),
    _a("TimezoneOffsetFromUTC", 0x00080201, "SH", matching=False),
    _a("RetrieveURL", 0x00081190, "UR", matching=False, computed=True),
    # The syntax the instance is stored in, from its file's meta information,
    # not from the data set: the one it is sure to be delivered in (what it can
    # be transcoded into depends on the codecs and on its pixel data).
    _a("AvailableTransferSyntaxUID", 0x00083002, "UI", matching=False, computed=True),
    _a("InstanceNumber", 0x00200013, "IS"),
    _a("Rows", 0x00280010, "US", matching=False),
    _a("Columns", 0x00280011, "US", matching=False),
    _a("BitsAllocated", 0x00280100, "US", matching=False),
    _a("NumberOfFrames", 0x00280008, "IS", matching=False),
)

# PS3.4 Table CC.2.5-3: every attribute with Return Key Type 1 or 2 that a
# workitem of this server holds, matchable where marked (the matching keys
# this server supports; all are "R" or "O" keys of that table).
_WORKITEM = (
    _a("SpecificCharacterSet", 0x00080005, "CS", matching=False),
    _a("SOPClassUID", 0x00080016, "UI", matching=False),
    _a("SOPInstanceUID", 0x00080018, "UI"),
    _a("PatientName", 0x00100010, "PN"),
    _a("PatientID", 0x00100020, "LO"),
    _a("IssuerOfPatientID", 0x00100021, "LO", matching=False),
    _a("PatientBirthDate", 0x00100030, "DA", matching=False),
    _a("PatientSex", 0x00100040, "CS", matching=False),
    # The study the results are written into, which is the input study here.
    _a("StudyInstanceUID", 0x0020000D, "UI"),
    _a("CommentsOnTheScheduledProcedureStep", 0x00400400, "LT", matching=False),
    _a("ScheduledProcedureStepStartDateTime", 0x00404005, "DT"),
    _a("ScheduledProcedureStepModificationDateTime", 0x00404010, "DT", matching=False),
    _a("ScheduledWorkitemCodeSequence", 0x00404018, "SQ", matching=False),
    _a(
        "InputInformationSequence",
        0x00404021,
        "SQ",
        items=(
            _a("StudyInstanceUID", 0x0020000D, "UI"),
            _a("SeriesInstanceUID", 0x0020000E, "UI"),
        ),
    ),
    _a("ScheduledStationNameCodeSequence", 0x00404025, "SQ", matching=False),
    _a("ScheduledStationClassCodeSequence", 0x00404026, "SQ", matching=False),
    _a("ScheduledStationGeographicLocationCodeSequence", 0x00404027, "SQ", matching=False),
    _a("InputReadinessState", 0x00404041, "CS", matching=False),
    _a("ReferencedRequestSequence", 0x0040A370, "SQ", matching=False),
    _a("ProcedureStepState", 0x00741000, "CS", value_list=True),
    _a("ProcedureStepProgressInformationSequence", 0x00741002, "SQ", matching=False),
    _a("ScheduledProcedureStepPriority", 0x00741200, "CS", value_list=True),
    _a("WorklistLabel", 0x00741202, "LO", matching=False),
    _a("ProcedureStepLabel", 0x00741204, "LO", matching=False),
    _a("ScheduledProcessingParametersSequence", 0x00741210, "SQ", matching=False),
    _a("UnifiedProcedureStepPerformedProcedureSequence", 0x00741216, "SQ", matching=False),
)

ATTRIBUTES: dict[Level, tuple[QidoAttribute, ...]] = {
    "study": _STUDY,
    "series": _SERIES,
    "instance": _INSTANCE,
    "workitem": _WORKITEM,
}


def check_level(level: str) -> Level:
    if level not in ATTRIBUTES:
        raise ValueError(f"unknown QIDO level {level!r}")
    return level  # type: ignore[return-value]


def query_attributes(level: Level) -> dict[str, QidoAttribute]:
    """Keys allowed in a query at `level`, by keyword.

    /series and /instances may be queried relationally (PS3.18 §10.6.1.2.1):
    keys of the levels above are allowed too. Attributes listed at several
    levels (RetrieveURL, SpecificCharacterSet, ...) resolve to the queried level.
    """
    if level not in LEVELS:
        return {a.keyword: a for a in ATTRIBUTES[level]}
    allowed: dict[str, QidoAttribute] = {}
    for lv in LEVELS[: LEVELS.index(level) + 1]:
        allowed.update((a.keyword, a) for a in ATTRIBUTES[lv])
    return allowed


def default_result_tags(level: Level) -> frozenset[int]:
    """Tags every result at `level` carries: its own table and those of the levels above."""
    return frozenset(a.tag for a in query_attributes(level).values())


def resolve_attribute(name: str) -> tuple[str, int]:
    """A keyword ("PatientID") or 8 hex digit tag ("00100020") as (keyword, tag).

    Tags of repeating groups and private tags have no single keyword in the
    data dictionary; they come back with an empty keyword when the dictionary
    knows them and are refused otherwise.
    """
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        tag = int(name, 16)
        try:
            get_entry(tag)
        except KeyError:
            raise InvalidRequest(f"unknown DICOM attribute tag {name!r}") from None
        return keyword_for_tag(tag), tag
    tag_or_none = tag_for_keyword(name)
    # pydicom maps "" to a dictionary entry that has no keyword.
    if not name or tag_or_none is None:
        raise InvalidRequest(f"unknown DICOM attribute {name[:64]!r}")
    return name, tag_or_none
