"""fhir_mappings/task.py: the inference job as a FHIR Task."""

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from fhir_mappings.errors import InvalidRequest, InvalidResource
from fhir_mappings.resources import validated
from fhir_mappings.task import (
    SOURCE_SERIES,
    InferenceRequest,
    TaskRecord,
    inference_request,
    require_transition,
    task_resource,
)
from conformance.fhir_schema import validate_fhir

STUDY_ID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"
TASK_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
AUTHORED = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
ORDER = {
    "resourceType": "Task",
    "status": "requested",
    "intent": "order",
    "focus": {"reference": f"ImagingStudy/{STUDY_ID}"},
}


def _order(**changes) -> dict:
    task = {**ORDER, **changes}
    return {key: value for key, value in task.items() if value is not None}


def _series_input(uid: object = SERIES_UID) -> dict:
    return {"type": {"coding": [SOURCE_SERIES]}, "valueId": uid}


def test_minimal_order():
    assert inference_request(_order()) == InferenceRequest("requested", STUDY_ID, None, None)


def test_order_naming_the_model_and_the_series():
    task = _order(owner={"reference": "Device/demo-1.0.0-a3e904fc01"},
                  input=[{"type": {"text": "note"}, "valueString": "urgent"}, _series_input()])
    assert inference_request(task) == InferenceRequest("requested", STUDY_ID, "demo-1.0.0-a3e904fc01", SERIES_UID)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"intent": "plan"}, "Task.intent must be 'order'"),
        ({"status": "draft"}, "must have status 'requested', got 'draft'"),
        ({"status": "in-progress"}, "must have status 'requested'"),
        ({"focus": None}, "Task.focus must reference the ImagingStudy"),
        ({"focus": {"reference": "Patient/p1"}}, r"Task.focus must reference a ImagingStudy, as 'ImagingStudy/<id>', got 'Patient/p1'"),
        ({"focus": {"display": "the CT"}}, "Task.focus must reference a ImagingStudy"),
        ({"focus": {"reference": "http://elsewhere/fhir/ImagingStudy/1"}}, "Task.focus must reference a ImagingStudy"),
        ({"owner": {"reference": "Practitioner/dr"}}, "Task.owner must reference a Device, as 'Device/<id>'"),
        ({"input": [_series_input("not-a-uid")]}, "Series Instance UID"),
        ({"input": [_series_input(), _series_input()]}, "may name one series"),
        ({"intent": "wish"}, "required value set"),
        ({"status": "started"}, "required value set"),
        ({"intent": None}, "intent"),
    ],
)
def test_bad_orders_are_refused_with_a_reason(changes, message):
    with pytest.raises(InvalidResource, match=message):
        inference_request(_order(**changes))


def test_not_a_task():
    with pytest.raises(InvalidRequest, match="the body is a Patient, the URL names Task"):
        inference_request({"resourceType": "Patient"})


def test_updates_may_carry_any_status():
    assert inference_request(_order(status="cancelled"), creating=False).status == "cancelled"
    with pytest.raises(InvalidResource, match="intent"):
        inference_request(_order(status="cancelled", intent="proposal"), creating=False)


@pytest.mark.parametrize(
    ("old", "new"),
    [("requested", "in-progress"), ("requested", "cancelled"), ("in-progress", "completed"),
     ("in-progress", "failed"), ("in-progress", "cancelled"), ("requested", "requested"),
     ("in-progress", "in-progress"), ("completed", "completed")],
)
def test_allowed_transitions(old, new):
    require_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("requested", "completed", "from 'requested' it can go to cancelled, in-progress"),
        ("requested", "failed", "cannot go from 'requested' to 'failed'"),
        ("in-progress", "requested", "from 'in-progress' it can go to cancelled, completed, failed"),
        ("completed", "in-progress", "'completed' is final"),
        ("failed", "requested", "'failed' is final"),
        ("cancelled", "in-progress", "'cancelled' is final"),
        ("requested", "on-hold", "cannot go from 'requested' to 'on-hold'"),
    ],
)
def test_other_transitions_are_refused(old, new, message):
    with pytest.raises(InvalidResource, match=message):
        require_transition(old, new)


def _record(**changes) -> TaskRecord:
    record = TaskRecord(
        task_id=TASK_ID,
        status="requested",
        imaging_study_id=STUDY_ID,
        patient_id=None,
        device_id=None,
        authored_on=AUTHORED,
        last_modified=AUTHORED,
    )
    return dataclasses.replace(record, **changes)


def test_new_task():
    task = task_resource(_record(business_status="queued"))
    assert task == {
        "resourceType": "Task",
        "id": TASK_ID,
        "status": "requested",
        "intent": "order",
        "focus": {"reference": f"ImagingStudy/{STUDY_ID}"},
        "authoredOn": "2024-05-01T10:00:00.000000Z",
        "lastModified": "2024-05-01T10:00:00.000000Z",
        "businessStatus": {"text": "queued"},
    }
    validate_fhir(task)
    assert inference_request(task) == InferenceRequest("requested", STUDY_ID, None, None)


def test_completed_task():
    started, ended = AUTHORED + timedelta(seconds=5), AUTHORED + timedelta(seconds=65)
    record = _record(status="completed", patient_id="dcm-p1", device_id="demo-1.0.0-a3e904fc01", last_modified=ended,
                     business_status="done", started=started, ended=ended, series_uid=SERIES_UID, report_id=TASK_ID)
    task = task_resource(record)
    validated(task)
    validate_fhir(task)
    assert task["for"] == {"reference": "Patient/dcm-p1"}
    assert task["owner"] == {"reference": "Device/demo-1.0.0-a3e904fc01"}
    assert task["executionPeriod"] == {"start": "2024-05-01T10:00:05.000000Z", "end": "2024-05-01T10:01:05.000000Z"}
    assert task["input"] == [{"type": {"coding": [SOURCE_SERIES]}, "valueId": SERIES_UID}]
    assert task["output"] == [
        {"type": {"text": "DiagnosticReport"}, "valueReference": {"reference": f"DiagnosticReport/{TASK_ID}"}}
    ]
    assert inference_request(task, creating=False) == InferenceRequest(
        "completed", STUDY_ID, "demo-1.0.0-a3e904fc01", SERIES_UID
    )


def test_running_and_failed_tasks():
    running = task_resource(_record(status="in-progress", business_status="running: decoding",
                                    started=AUTHORED, last_modified=AUTHORED + timedelta(seconds=1)))
    assert running["businessStatus"] == {"text": "running: decoding"}
    assert running["executionPeriod"] == {"start": "2024-05-01T10:00:00.000000Z"}
    failed = task_resource(_record(status="failed", business_status="failed", status_reason="the series has 3 slices, the model needs 20",
                                   started=AUTHORED, ended=AUTHORED))
    assert failed["statusReason"] == {"text": "the series has 3 slices, the model needs 20"}
    assert "output" not in failed
    for task in (running, failed):
        validate_fhir(task)


def test_bad_records_are_refused():
    with pytest.raises(ValueError, match="modified before it was authored"):
        _record(last_modified=AUTHORED - timedelta(seconds=1))
    with pytest.raises(ValueError, match="end before it started"):
        _record(started=AUTHORED, ended=AUTHORED - timedelta(seconds=1))
    with pytest.raises(ValueError, match="time zone"):
        _record(started=datetime(2024, 5, 1, 10, 0))
    with pytest.raises(ValueError, match="not a DICOM UID"):
        _record(series_uid="series-1")
    with pytest.raises(InvalidResource, match="required value set"):
        task_resource(_record(status="queued"))
