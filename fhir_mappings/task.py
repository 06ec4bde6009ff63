"""An inference job as a FHIR R4 Task (task.html).

A client orders a run by creating a Task: intent `order`, status `requested`,
`focus` the ImagingStudy, `owner` optionally the model's Device, and
optionally an `input` naming the series. The server then moves the Task along
the task state machine (task.html#statemachine, the part a job uses) and
stores the whole Task as `task_resource` builds it.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dicom.uids import is_safe_uid
from fhir_mappings.date_ranges import instant_text, to_micros
from fhir_mappings.errors import InvalidResource
from fhir_mappings.resources import validate_resource, validated

# The series a model runs on: DICOM PS3.16 DCM 121232, the concept a SEG's
# source series has in SR; the value is the plain UID, as ImagingStudy.series.uid.
SOURCE_SERIES = {
    "system": "http://dicom.nema.org/resources/ontology/DCM",
    "code": "121232",
    "display": "Source series for segmentation",
}
_REFERENCE = re.compile(r"(?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")
# task.html#statemachine, restricted to the states an inference job passes through.
_NEXT_STATUSES = {
    "requested": frozenset({"in-progress", "cancelled"}),
    "in-progress": frozenset({"completed", "failed", "cancelled", "on-hold"}),
    # Waiting for another attempt after a failure that may pass.
    "on-hold": frozenset({"in-progress", "failed", "cancelled"}),
}


@dataclass(frozen=True)
class InferenceRequest:
    """What a client's Task asks for."""

    status: str
    imaging_study_id: str
    device_id: str | None  # None: the active model that accepts the series
    series_uid: str | None  # None: the series the model accepts with the most slices


@dataclass(frozen=True)
class TaskRecord:
    """A job as the server tracks it."""

    task_id: str
    status: str
    imaging_study_id: str
    patient_id: str | None
    device_id: str | None
    authored_on: datetime
    last_modified: datetime
    business_status: str | None = None  # progress: "queued", "running: decoding", ...
    status_reason: str | None = None  # why it failed or was cancelled
    started: datetime | None = None
    ended: datetime | None = None
    series_uid: str | None = None
    report_id: str | None = None
    # What the client's order said beyond the job (`client_elements`), kept as sent.
    client_elements: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        moments = [self.authored_on, self.last_modified, self.started, self.ended]
        if any(moment is not None and moment.tzinfo is None for moment in moments):
            raise ValueError("Task times need a time zone: a FHIR dateTime with a time must have one")
        if self.last_modified < self.authored_on:  # Task invariant inv-1
            raise ValueError("a Task cannot be modified before it was authored")
        if self.started and self.ended and self.ended < self.started:  # Period invariant per-1
            raise ValueError("a Task cannot end before it started")
        if self.series_uid is not None and not is_safe_uid(self.series_uid):
            raise ValueError(f"{self.series_uid!r} is not a DICOM UID")


def inference_request(task: Mapping[str, Any], *, creating: bool = True) -> InferenceRequest:
    """The order in a client's Task (POST or PUT); InvalidResource naming what is wrong.

    `creating`: a new Task must be `requested`; on update any status may be
    sent, and `require_transition` judges it against the stored one.
    """
    validate_resource(dict(task), "Task")
    if task["intent"] != "order":
        raise InvalidResource(f"Task.intent must be 'order' for an inference job, got {task['intent']!r}")
    if creating and task["status"] != "requested":
        raise InvalidResource(f"a new inference Task must have status 'requested', got {task['status']!r}")
    imaging_study_id = _reference_id(task.get("focus"), "ImagingStudy", "Task.focus")
    if imaging_study_id is None:
        raise InvalidResource("Task.focus must reference the ImagingStudy to run on, as 'ImagingStudy/<id>'")
    return InferenceRequest(
        status=task["status"],
        imaging_study_id=imaging_study_id,
        device_id=_reference_id(task.get("owner"), "Device", "Task.owner"),
        series_uid=_series_uid(task.get("input", [])),
    )


def require_transition(old_status: str, new_status: str) -> None:
    """Allow only the moves of a job's life; InvalidResource for any other."""
    if new_status == old_status or new_status in _NEXT_STATUSES.get(old_status, ()):
        return
    allowed = sorted(_NEXT_STATUSES.get(old_status, ()))
    raise InvalidResource(
        f"an inference Task cannot go from {old_status!r} to {new_status!r}; "
        + (f"from {old_status!r} it can go to {', '.join(allowed)}" if allowed else f"{old_status!r} is final")
    )


# The elements of an inference Task that the server sets from the job. A
# client's order may hold more (identifier, priority, requester, note,
# basedOn, further inputs, ...): those are the client's, kept as sent.
_JOB_ELEMENTS = frozenset({
    "resourceType", "id", "status", "intent", "focus", "for", "owner", "authoredOn", "lastModified",
    "businessStatus", "statusReason", "executionPeriod", "output",
})


def client_elements(task: Mapping[str, Any]) -> dict[str, Any]:
    """What a client's Task says beyond the job: every element but the job's,
    every input but the source series, and meta but its version and time
    (the store sets those)."""
    kept = {key: value for key, value in task.items() if key not in _JOB_ELEMENTS and key not in ("input", "meta")}
    inputs = [item for item in task.get("input", []) if not _is_source_series(item.get("type", {}))]
    if inputs:
        kept["input"] = inputs
    meta = {key: value for key, value in (task.get("meta") or {}).items() if key not in ("versionId", "lastUpdated")}
    if meta:
        kept["meta"] = meta
    return kept


def task_resource(record: TaskRecord) -> dict[str, Any]:
    """The Task as JSON, validated against the R4 model: the job's elements,
    and the client's order's others as it sent them."""
    body: dict[str, Any] = {
        **record.client_elements,
        "resourceType": "Task",
        "id": record.task_id,
        "status": record.status,
        "intent": "order",
        "focus": {"reference": f"ImagingStudy/{record.imaging_study_id}"},
        "authoredOn": _instant(record.authored_on),
        "lastModified": _instant(record.last_modified),
    }
    if record.patient_id:
        body["for"] = {"reference": f"Patient/{record.patient_id}"}
    if record.device_id:
        body["owner"] = {"reference": f"Device/{record.device_id}"}
    if record.business_status:
        body["businessStatus"] = {"text": record.business_status}
    if record.status_reason:
        body["statusReason"] = {"text": record.status_reason}
    period = {key: _instant(moment) for key, moment in (("start", record.started), ("end", record.ended)) if moment}
    if period:
        body["executionPeriod"] = period
    inputs = [{"type": {"coding": [SOURCE_SERIES]}, "valueId": record.series_uid}] if record.series_uid else []
    inputs += record.client_elements.get("input", [])
    if inputs:
        body["input"] = inputs
    if record.report_id:
        body["output"] = [
            {"type": {"text": "DiagnosticReport"}, "valueReference": {"reference": f"DiagnosticReport/{record.report_id}"}}
        ]
    return validated(body)


def _reference_id(reference: Any, resource_type: str, element: str) -> str | None:
    if reference is None:
        return None
    text = reference.get("reference", "")
    match = _REFERENCE.fullmatch(text)
    if not match or match["type"] != resource_type:
        raise InvalidResource(f"{element} must reference a {resource_type}, as '{resource_type}/<id>', got {text!r}")
    return match["id"]


def _series_uid(inputs: list[dict[str, Any]]) -> str | None:
    """The value of the input typed SOURCE_SERIES; other inputs are not ours to judge."""
    series = [item for item in inputs if _is_source_series(item.get("type", {}))]
    if not series:
        return None
    if len(series) > 1 or not is_safe_uid(str(series[0].get("valueId", ""))):
        raise InvalidResource(
            "Task.input may name one series to run on: type DCM#121232 (Source series for segmentation), "
            "valueId the Series Instance UID"
        )
    return str(series[0]["valueId"])


def _is_source_series(concept: Mapping[str, Any]) -> bool:
    return any(
        coding.get("system") == SOURCE_SERIES["system"] and coding.get("code") == SOURCE_SERIES["code"]
        for coding in concept.get("coding", [])
    )


def _instant(moment: datetime) -> str:
    return instant_text(to_micros(moment))
