"""An inference job as a UPS workitem (PS3.4 Annex CC, PS3.18 chapter 11).

A requester orders a job by creating a workitem: `order_from_dataset` checks
the dataset against the N-CREATE column of PS3.4 Table CC.2.5-3 and reads
what to run from it. `workitem_dataset` writes a job's state back as the
workitem a requester retrieves: what it sent, and over it what the server
maintains. Nothing here knows about a database or HTTP.

Conventions of this server (declared in the conformance statement):
- The model is named by an item of ScheduledWorkitemCodeSequence whose
  CodingSchemeDesignator is `MODEL_SCHEME` and whose CodeValue is the
  model's NAME (its active version) or NAME@VERSION. Without one, the first
  active model that accepts the study runs, as for a FHIR Task without owner.
- InputInformationSequence names one study (and at most one series of it);
  the results (a SEG series) are written into that study.
- The server is the workitem's only performer: no one else claims it.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dicom.errors import InvalidRequest
from dicom.json_input import require_dicom_json
from dicom.matching import datetime_bounds
from dicom.uids import require_uid

# PS3.4 Annex CC.3.1 and Table CC.3.1-1.
UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# A private coding scheme (PS3.16 §8.2: designators beginning "99" are local).
MODEL_SCHEME = "99MEDAIFLOW"

SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
# The UPS state machine (PS3.4 Table CC.1.1-2) seen from a job's FHIR Task
# status (R4 task-status value set): a retry waits `on-hold`, which UPS,
# having no way back to SCHEDULED, shows as still IN PROGRESS; a failure is
# a cancellation with its reason.
STATE_OF_TASK_STATUS = {
    "requested": SCHEDULED,
    "in-progress": IN_PROGRESS,
    "on-hold": IN_PROGRESS,
    "completed": COMPLETED,
    "failed": CANCELED,
    "cancelled": CANCELED,
}
FINAL_STATES = frozenset((COMPLETED, CANCELED))
PRIORITIES = ("HIGH", "MEDIUM", "LOW")  # PS3.3 C.30.1, Scheduled Procedure Step Priority
_WORKITEM_NAMESPACE = uuid.UUID("2b6e8d0a-5f0c-4f39-9d5e-0c3b1a8e7d41")

# Tags, by keyword, of the attributes read or written here.
_SOP_CLASS_UID, _SOP_INSTANCE_UID, _TRANSACTION_UID = 0x00080016, 0x00080018, 0x00081195
_CODE_VALUE, _CODING_SCHEME, _CODE_MEANING = 0x00080100, 0x00080102, 0x00080104
_REFERENCED_SOP_SEQUENCE, _REFERENCED_SOP_CLASS, _REFERENCED_SOP_INSTANCE = 0x00081199, 0x00081150, 0x00081155
_RETRIEVE_URL = 0x00081190
_PATIENT_ID = 0x00100020
_PATIENT_TAGS = (0x00100010, 0x00100020, 0x00100021, 0x00100030, 0x00100040)
_STUDY_UID, _SERIES_UID = 0x0020000D, 0x0020000E
_START, _MODIFIED = 0x00404005, 0x00404010
_WORKITEM_CODES, _INPUT, _OUTPUT = 0x00404018, 0x00404021, 0x00404033
_READINESS = 0x00404041
_PERFORMED_START, _PERFORMED_END, _PERFORMED_CODES = 0x00404050, 0x00404051, 0x00404019
_CANCELLATION_TIME = 0x00404052
_TYPE_OF_INSTANCES, _WADO_RS_RETRIEVAL = 0x0040E020, 0x0040E025
_STATE, _PROGRESS_INFORMATION, _PROGRESS, _PROGRESS_DESCRIPTION = 0x00741000, 0x00741002, 0x00741004, 0x00741006
_DISCONTINUATION_CODES, _CONTACT_URI, _CONTACT_NAME = 0x0074100E, 0x0074100A, 0x0074100C
_PRIORITY, _WORKLIST_LABEL, _LABEL, _PERFORMED = 0x00741200, 0x00741202, 0x00741204, 0x00741216
_REASON = 0x00741238
# Type 2 attributes of Table CC.2.5-3 that a workitem holds, empty when no one gave them.
_EMPTY_SEQUENCES = (0x00404025, 0x00404026, 0x00404027, 0x0040A370, 0x00741210)


@dataclass(frozen=True)
class WorkitemOrder:
    """What a requester's workitem asks for, checked."""

    uid: str | None  # None: the server assigns one
    study_uid: str
    series_uid: str | None
    model: str | None  # NAME or NAME@VERSION; None: any active model that accepts the study
    priority: str
    scheduled_start: str  # YYYYMMDDHHMMSS.FFFFFF in UTC, for matching
    patient_id: str | None  # as the requester gave it, to hold against the study's
    dataset: dict[str, Any]  # as sent


@dataclass(frozen=True)
class SegOutput:
    """A SEG instance a completed job stored."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    series_url: str


@dataclass(frozen=True)
class JobFacts:
    """What the server knows of a job, in the terms a workitem needs."""

    workitem_uid: str
    task_status: str  # the job's FHIR Task status
    priority: str
    scheduled_start: str  # as stored: YYYYMMDDHHMMSS.FFFFFF, UTC
    created: datetime
    started: datetime | None
    ended: datetime | None
    study_uid: str
    series_uid: str | None
    model_name: str
    model_version: str
    business_status: str | None
    reason: str | None  # why it failed or was cancelled
    progress: float | None  # percent, where known
    study_attributes: dict[str, Any]  # of the stored study (its patient's among them), as DICOM JSON; {} once deleted
    outputs: tuple[SegOutput, ...] = ()
    requested: dict[str, Any] | None = None  # the requester's dataset; None for a job ordered otherwise

    @property
    def state(self) -> str:
        return STATE_OF_TASK_STATUS[self.task_status]


def derived_workitem_uid(task_id: str) -> str:
    """The workitem UID of a job not ordered over UPS-RS (a FHIR Task, an
    automatic run): a 2.25 UID (PS3.5 §B.2) of a name-based UUID of its Task
    id, so that it is the same wherever and whenever it is computed."""
    return f"2.25.{uuid.uuid5(_WORKITEM_NAMESPACE, task_id).int}"


def new_workitem_uid() -> str:
    """A UID for a workitem whose requester left the choice to the server (PS3.5 §B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def utc_datetime(moment: datetime) -> str:
    """A DT value with its offset, so that no reader takes it for local time."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f+0000")


def matching_datetime(moment: datetime) -> str:
    """The form in which ScheduledProcedureStepStartDateTime is matched (`datetime_bounds`)."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f")


def require_dataset(body: Any) -> dict[str, Any]:
    """A DICOM JSON data set (PS3.18 Annex F), or an array holding only one."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be one DICOM JSON data set (an object, or an array of one)")
    return require_dicom_json(body)


def order_from_dataset(dataset: dict[str, Any], uid: str | None) -> WorkitemOrder:
    """The order in a Create Workitem request (PS3.18 §11.4); `uid`: from the
    URL. InvalidRequest names the attribute that does not satisfy PS3.4
    Table CC.2.5-3 (N-CREATE) or this server's conventions."""
    require_dataset(dataset)
    if _TRANSACTION_UID in _keys(dataset):
        raise InvalidRequest("TransactionUID (0008,1195) may not be sent when a workitem is created")
    sop_class = _text(dataset, _SOP_CLASS_UID)
    if sop_class not in (None, UPS_PUSH_SOP_CLASS):
        raise InvalidRequest(
            f"SOPClassUID (0008,0016) of a workitem is {UPS_PUSH_SOP_CLASS} (UPS Push), not {sop_class!r}"
        )
    sent_uid = _text(dataset, _SOP_INSTANCE_UID)
    if uid is not None and sent_uid is not None and sent_uid != uid:
        raise InvalidRequest(
            f"SOPInstanceUID (0008,0018) {sent_uid!r} differs from the workitem UID {uid!r} of the URL"
        )
    uid = uid or sent_uid
    if uid is not None:
        require_uid(uid, "the workitem UID")
    state = _required(dataset, _STATE, "ProcedureStepState (0074,1000)", empty_allowed=True)
    if state not in ("", SCHEDULED):
        raise InvalidRequest(f"ProcedureStepState (0074,1000) of a new workitem must be SCHEDULED, not {state!r}")
    priority = _required(dataset, _PRIORITY, "ScheduledProcedureStepPriority (0074,1200)")
    if priority not in PRIORITIES:
        raise InvalidRequest(
            f"ScheduledProcedureStepPriority (0074,1200) is one of {', '.join(PRIORITIES)}, not {priority!r}"
        )
    _required(dataset, _LABEL, "ProcedureStepLabel (0074,1204)")
    start = _required(dataset, _START, "ScheduledProcedureStepStartDateTime (0040,4005)")
    bounds = datetime_bounds(start)
    if bounds is None:
        raise InvalidRequest(
            f"ScheduledProcedureStepStartDateTime (0040,4005): {start[:40]!r} is not a DICOM date and time"
        )
    readiness = _required(dataset, _READINESS, "InputReadinessState (0040,4041)")
    if readiness != "READY":
        raise InvalidRequest(
            f"InputReadinessState (0040,4041) is {readiness!r}: this server runs a model on a study once it is stored, "
            "so it takes workitems whose input is READY"
        )
    study_uid, series_uid = _input(dataset)
    top_study = _text(dataset, _STUDY_UID)
    if top_study not in (None, study_uid):
        raise InvalidRequest(
            f"StudyInstanceUID (0020,000D) {top_study!r}: the results are written into the input study {study_uid}"
        )
    return WorkitemOrder(
        uid=uid, study_uid=study_uid, series_uid=series_uid, model=_model(dataset), priority=priority,
        scheduled_start=bounds[0], patient_id=_text(dataset, _PATIENT_ID) or None, dataset=dataset,
    )


def _input(dataset: dict[str, Any]) -> tuple[str, str | None]:
    items = _items(dataset, _INPUT)
    studies = {_text(item, _STUDY_UID) for item in items}
    if not items or None in studies:
        raise InvalidRequest("InputInformationSequence (0040,4021): each item names the StudyInstanceUID to run on")
    if len(studies) > 1:
        raise InvalidRequest("InputInformationSequence (0040,4021): a workitem runs on one study; order one per study")
    series = {uid for uid in (_text(item, _SERIES_UID) for item in items) if uid is not None}
    if len(series) > 1:
        raise InvalidRequest("InputInformationSequence (0040,4021): name at most one series; the model runs on one")
    study_uid = require_uid(studies.pop() or "", "InputInformationSequence StudyInstanceUID")
    series_uid = require_uid(series.pop(), "InputInformationSequence SeriesInstanceUID") if series else None
    return study_uid, series_uid


def _model(dataset: dict[str, Any]) -> str | None:
    named = [item for item in _items(dataset, _WORKITEM_CODES) if _text(item, _CODING_SCHEME) == MODEL_SCHEME]
    if len(named) > 1:
        raise InvalidRequest(f"ScheduledWorkitemCodeSequence (0040,4018): name one model ({MODEL_SCHEME}), not several")
    if not named:
        return None
    model = _text(named[0], _CODE_VALUE)
    if not model:
        raise InvalidRequest(
            f"ScheduledWorkitemCodeSequence (0040,4018): give the {MODEL_SCHEME} item a CodeValue"
        )
    return model


@dataclass(frozen=True)
class CancellationRequest:
    """What a Request Cancellation body (PS3.4 Table CC.2.2-2) says."""

    reason: str
    contact_name: str | None = None
    contact_uri: str | None = None
    discontinuation_codes: tuple[dict[str, Any], ...] = ()  # the proposed reason, as coded items

    @property
    def text(self) -> str:
        """In words, for the job's Task."""
        contact = " ".join(part for part in (self.contact_name, self.contact_uri) if part)
        return f"{self.reason} (contact: {contact})" if contact else self.reason


def cancellation_request(dataset: dict[str, Any] | None) -> CancellationRequest:
    if not dataset:
        return CancellationRequest("cancellation requested over UPS-RS")
    require_dataset(dataset)
    codes = _items(dataset, _DISCONTINUATION_CODES)
    reason = _text(dataset, _REASON) or (_text(codes[0], _CODE_MEANING) if codes else None) or "cancellation requested"
    return CancellationRequest(reason, _text(dataset, _CONTACT_NAME), _text(dataset, _CONTACT_URI), tuple(codes))


def requested_state(dataset: dict[str, Any]) -> str:
    """The state a Change Workitem State request asks for (PS3.18 §11.7.1.4),
    which must carry the Transaction UID of the performer's claim."""
    state = _required(dataset, _STATE, "ProcedureStepState (0074,1000)")
    # PS3.18 §11.7.1.4 spells it CANCELLED; the value PS3.4 defines is CANCELED.
    state = CANCELED if state == "CANCELLED" else state
    if state not in (IN_PROGRESS, COMPLETED, CANCELED):
        raise InvalidRequest(
            f"ProcedureStepState (0074,1000) may change to IN PROGRESS, COMPLETED or CANCELED, not {state!r}"
        )
    if _text(dataset, _TRANSACTION_UID) is None:
        raise InvalidRequest("a state change carries the TransactionUID (0008,1195) of its claim",
                             "The Transaction UID is missing.")
    return state


def transaction_uid(dataset: dict[str, Any]) -> str | None:
    """The TransactionUID (0008,1195) a request carries: a performer's claim."""
    return _text(dataset, _TRANSACTION_UID)


def model_code(name: str, version: str) -> dict[str, Any]:
    return {
        f"{_CODE_VALUE:08X}": _value("SH", f"{name}@{version}"),
        f"{_CODING_SCHEME:08X}": _value("SH", MODEL_SCHEME),
        f"{_CODE_MEANING:08X}": _value("LO", f"AI inference with {name} {version}"),
    }


def workitem_dataset(job: JobFacts) -> dict[str, Any]:
    """The workitem of a job: what its requester sent, and over it the
    attributes the server maintains (PS3.4 CC.2.5.1), in tag order."""
    state = job.state
    requested = dict(job.requested or {})
    code = model_code(job.model_name, job.model_version)
    defaults = {
        # What a requester may leave to the SCP, or a job ordered otherwise never said.
        f"{_LABEL:08X}": _value("LO", f"{job.model_name} {job.model_version}"),
        f"{_WORKLIST_LABEL:08X}": _value("LO", "MedAIFlow AI"),
        f"{_READINESS:08X}": _value("CS", "READY"),
        f"{_START:08X}": _value("DT", utc_datetime(job.created)),
        f"{_WORKITEM_CODES:08X}": _sequence([code]),
        f"{_INPUT:08X}": _sequence([_references(job.study_uid, job.series_uid)]),
        **{f"{tag:08X}": {"vr": "SQ"} for tag in _EMPTY_SEQUENCES},
    }
    maintained = {
        f"{_SOP_CLASS_UID:08X}": _value("UI", UPS_PUSH_SOP_CLASS),
        f"{_SOP_INSTANCE_UID:08X}": _value("UI", job.workitem_uid),
        f"{_STUDY_UID:08X}": _value("UI", job.study_uid),
        f"{_STATE:08X}": _value("CS", state),
        f"{_PRIORITY:08X}": _value("CS", job.priority),
        f"{_MODIFIED:08X}": _value("DT", utc_datetime(job.created)),
        f"{_PROGRESS_INFORMATION:08X}": _sequence([_progress(job)]),
        f"{_PERFORMED:08X}": _sequence([_performed(job, code)] if state != SCHEDULED else []),
        # The study's patient, whom the server knows for sure; the requester's are checked against it on creation.
        **{f"{tag:08X}": job.study_attributes.get(f"{tag:08X}", {"vr": _PATIENT_VRS[tag]}) for tag in _PATIENT_TAGS},
    }
    return dict(sorted((defaults | requested | maintained).items()))


# PS3.16 CID 9300 Procedure Discontinuation Reason. The why in words is ReasonForCancellation:
# a requester's codes are not kept, and a failed job's cause has no code of its own there.
_UNSPECIFIED_DISCONTINUATION = {
    f"{_CODE_VALUE:08X}": {"vr": "SH", "Value": ["110513"]},
    f"{_CODING_SCHEME:08X}": {"vr": "SH", "Value": ["DCM"]},
    f"{_CODE_MEANING:08X}": {"vr": "LO", "Value": ["Discontinued for unspecified reason"]},
}
_PATIENT_VRS = {0x00100010: "PN", 0x00100020: "LO", 0x00100021: "LO", 0x00100030: "DA", 0x00100040: "CS"}


def modified_on_creation(order: WorkitemOrder, study_attributes: dict[str, Any]) -> bool:
    """Whether the workitem differs from what its requester sent in what the
    server maintains (`workitem_dataset`): a patient attribute other than the
    study's, or an empty ProcedureStepState, which is SCHEDULED. PS3.18
    §11.4.3.2 then asks for the Warning "created with modifications"."""
    sent = order.dataset
    if f"{_STATE:08X}" in sent and _text(sent, _STATE) is None:
        return True
    return any(
        sent[key] != study_attributes.get(key, {"vr": _PATIENT_VRS[tag]})
        for tag in _PATIENT_TAGS if (key := f"{tag:08X}") in sent
    )


def _progress(job: JobFacts) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if job.progress is not None:
        item[f"{_PROGRESS:08X}"] = _value("DS", round(job.progress, 1))
    if job.business_status:
        item[f"{_PROGRESS_DESCRIPTION:08X}"] = _value("ST", job.business_status)
    if job.state == CANCELED:
        # Both have Final State "X" (PS3.4 Table CC.2.5-3): a UPS is not CANCELED without them.
        item[f"{_CANCELLATION_TIME:08X}"] = _value("DT", utc_datetime(job.ended or job.started or job.created))
        item[f"{_DISCONTINUATION_CODES:08X}"] = _sequence([_UNSPECIFIED_DISCONTINUATION])
        item[f"{_REASON:08X}"] = _value("LT", job.reason or job.task_status)
    return dict(sorted(item.items()))


def _performed(job: JobFacts, code: dict[str, Any]) -> dict[str, Any]:
    """The performed procedure (PS3.4 Table CC.2.5-3, UPS Performed Procedure
    Information Module), with what the final state requires (CC.2.5.1.3.1)."""
    item: dict[str, Any] = {f"{_PERFORMED_START:08X}": _value("DT", utc_datetime(job.started or job.created))}
    if job.state in FINAL_STATES:
        item[f"{_PERFORMED_END:08X}"] = _value("DT", utc_datetime(job.ended or job.started or job.created))
        item[f"{_PERFORMED_CODES:08X}"] = _sequence([code])
        item[f"{_OUTPUT:08X}"] = _sequence([_output(seg) for seg in job.outputs])
    return dict(sorted(item.items()))


def _output(seg: SegOutput) -> dict[str, Any]:
    """An item of the Referenced Instances and Access Macro (PS3.3 Table 10-3b)."""
    item = _references(seg.study_uid, seg.series_uid)
    item[f"{_REFERENCED_SOP_SEQUENCE:08X}"] = _sequence([{
        f"{_REFERENCED_SOP_CLASS:08X}": _value("UI", seg.sop_class_uid),
        f"{_REFERENCED_SOP_INSTANCE:08X}": _value("UI", seg.sop_instance_uid),
    }])
    item[f"{_WADO_RS_RETRIEVAL:08X}"] = _sequence([{f"{_RETRIEVE_URL:08X}": _value("UR", seg.series_url)}])
    return dict(sorted(item.items()))


def _references(study_uid: str, series_uid: str | None) -> dict[str, Any]:
    item = {f"{_STUDY_UID:08X}": _value("UI", study_uid)}
    if series_uid is not None:
        item[f"{_SERIES_UID:08X}"] = _value("UI", series_uid)
    item[f"{_TYPE_OF_INSTANCES:08X}"] = _value("CS", "DICOM")  # in tag order, as every item (PS3.18 F.2)
    return item


def _value(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _sequence(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def _keys(dataset: dict[str, Any]) -> set[int]:
    return {int(key, 16) for key in dataset}


def _text(dataset: dict[str, Any], tag: int) -> str | None:
    """The first value of a text or UID attribute; None when absent or empty."""
    element = dataset.get(f"{tag:08X}")
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values or values[0] is None:
        return None
    if not isinstance(values[0], str):
        raise InvalidRequest(f"attribute {tag:08X}: expected a text value, got {type(values[0]).__name__}")
    return values[0]


def _required(dataset: dict[str, Any], tag: int, name: str, empty_allowed: bool = False) -> str:
    if f"{tag:08X}" not in dataset:
        raise InvalidRequest(f"{name} is required to create a workitem (PS3.4 Table CC.2.5-3)")
    value = _text(dataset, tag)
    if value is None and not empty_allowed:
        raise InvalidRequest(f"{name} needs a value to create a workitem (PS3.4 Table CC.2.5-3)")
    return value or ""


def _items(dataset: dict[str, Any], tag: int) -> list[dict[str, Any]]:
    element = dataset.get(f"{tag:08X}")
    values = element.get("Value", []) if isinstance(element, dict) else []
    if not isinstance(values, list) or not all(isinstance(item, dict) for item in values):
        raise InvalidRequest(f"attribute {tag:08X}: a sequence's 'Value' is an array of data sets")
    return values
