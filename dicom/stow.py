"""STOW-RS outcomes and the response data set (PS3.18 §10.5.3).

Status rules (PS3.18 §10.5.3, Table 10.5.3-1): 200 when every instance was
stored, 202 when some were (or were stored with warnings), 409 when none was.
"""

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class FailureReason(IntEnum):
    """FailureReason (0008,1197) values, PS3.18 Table 10.5.3-3 and PS3.4 Annex GG.4."""

    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    STUDY_UID_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class InstanceOutcome:
    """What happened to one part of a STOW request."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    failure: FailureReason | None = None
    detail: str | None = None
    duplicate: bool = False

    @property
    def stored(self) -> bool:
        return self.failure is None


def stow_status(outcomes: list[InstanceOutcome]) -> int:
    stored = sum(outcome.stored for outcome in outcomes)
    if stored == len(outcomes) and stored:
        return 200
    return 202 if stored else 409


def stow_response(outcomes: list[InstanceOutcome], dicomweb_root: str, study_uid: str | None) -> dict[str, Any]:
    """The response data set in the DICOM JSON model (PS3.18 Table I.1-1)."""
    referenced = [_referenced_item(outcome, dicomweb_root) for outcome in outcomes if outcome.stored]
    failed = [_failed_item(outcome) for outcome in outcomes if not outcome.stored]
    body: dict[str, Any] = {"00081190": _study_retrieve_url(outcomes, dicomweb_root, study_uid)}
    # Each sequence is present only when it has items (PS3.18 Table 10.5.3-2:
    # required if any instance failed / was stored).
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return body


def _study_retrieve_url(outcomes: list[InstanceOutcome], root: str, study_uid: str | None) -> dict[str, Any]:
    """The study's Retrieve URL, Type 2 (PS3.18 Table I.1-1), so always there:
    the study the request named, else the one study of what it stored;
    empty when what it stored spans studies, or nothing was stored."""
    if study_uid is None:
        stored = {outcome.study_instance_uid for outcome in outcomes if outcome.stored}
        study_uid = stored.pop() if len(stored) == 1 else None
    return {"vr": "UR", "Value": [f"{root}/studies/{study_uid}"]} if study_uid else {"vr": "UR"}


def _uid_element(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _referenced_item(outcome: InstanceOutcome, root: str) -> dict[str, Any]:
    url = (
        f"{root}/studies/{outcome.study_instance_uid}/series/{outcome.series_instance_uid}"
        f"/instances/{outcome.sop_instance_uid}"
    )
    return {
        "00081150": _uid_element(outcome.sop_class_uid),
        "00081155": _uid_element(outcome.sop_instance_uid),
        "00081190": {"vr": "UR", "Value": [url]},
    }


def _failed_item(outcome: InstanceOutcome) -> dict[str, Any]:
    assert outcome.failure is not None
    return {
        "00081150": _uid_element(outcome.sop_class_uid),
        "00081155": _uid_element(outcome.sop_instance_uid),
        "00081197": {"vr": "US", "Value": [int(outcome.failure)]},
    }
