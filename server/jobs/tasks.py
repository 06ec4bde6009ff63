"""Client writes of Task, where a Task that focuses an ImagingStudy is an
order to run a model on it.

Runs inside the FHIR write's transaction (plain create, update, or an entry
of a batch or transaction Bundle), so the job row and its Task commit
together. Other Tasks stay ordinary FHIR resources.
"""

import re
from typing import Any

from sqlalchemy import Connection

from fhir_mappings import fhir_json
from fhir_mappings.errors import (
    InvalidResource,
    MethodNotAllowed,
)
from fhir_mappings.task import (
    InferenceRequest,
    client_elements,
    inference_request,
    require_transition,
)
from server.jobs.queue import CANCELLED, Job, JobQueue
from server.jobs.registry import ModelNotFound, ModelRegistry, RegisteredModel
from server.jobs.series import accepted_series, study_series


def is_inference_order(task: dict[str, Any]) -> bool:
    """A Task focused on an ImagingStudy, in any form of reference: one that
    `inference_request` cannot read (absolute, versioned, or only a type or
    a DICOM identifier) is refused as an order, not stored as a Task that
    orders nothing."""
    focus = task.get("focus")
    if not isinstance(focus, dict):
        return False
    reference, identifier = focus.get("reference"), focus.get("identifier")
    if isinstance(reference, str) and _IMAGING_STUDY_REFERENCE.search(reference) is not None:
        return True
    return focus.get("type") == "ImagingStudy" or (
        isinstance(identifier, dict) and identifier.get("system") == "urn:dicom:uid"
    )


# `ImagingStudy/x`, a URL ending so, or a conditional `ImagingStudy?...` that a transaction resolves.
_IMAGING_STUDY_REFERENCE = re.compile(r"(^|/)ImagingStudy([/?]|$)")


class InferenceTasks:
    """The `Task` write hook of the FHIR service."""

    def __init__(self, queue: JobQueue, registry: ModelRegistry) -> None:
        self.queue = queue
        self.registry = registry

    def creating(self, connection: Connection, task: dict[str, Any], task_id: str) -> dict[str, Any]:
        if not is_inference_order(task):
            return task
        request = inference_request(task)
        # 422 for a study that is not here, before anything else is judged.
        patient_id = self.queue.patient_of_study(connection, request.imaging_study_id)
        _require_subject(task, patient_id, request.imaging_study_id)
        model = self._model(connection, request)
        return self.queue.create(
            connection, task_id, model.id, request.imaging_study_id, request.series_uid, automatic=False,
            client_elements=client_elements(task),
        )

    def updating(self, connection: Connection, task: dict[str, Any], task_id: str) -> dict[str, Any]:
        job = self.queue.get(task_id, connection, lock=True)
        if job is None:
            stored = self.queue.store.current_body("Task", task_id, connection)
            if stored is None:
                return self.creating(connection, task, task_id)  # update as create, with the client's id
            if is_inference_order(task) and not is_inference_order(stored):
                # Stored as accepted, it would be an order that never runs.
                raise InvalidResource(
                    f"Task/{task_id} is not an inference job and cannot become one; order by creating a new Task"
                )
            return task  # a Task stored before it could be a job stays an ordinary one
        request = inference_request(task, creating=False)
        _require_same_order(request, job)
        _require_subject(task, job.patient_id, job.study_instance_uid)
        current = self.queue.public_status(job)
        require_transition(current, request.status)
        if request.status not in (current, CANCELLED):
            raise InvalidResource(
                f"the server moves an inference Task to {request.status!r} itself; a client may only cancel it"
            )
        kept = client_elements(task)
        # Compared as written: 1.10 for 1.1 is a change (the decimals compare equal as numbers).
        if fhir_json.dumps(kept) != fhir_json.dumps(self.queue.client_elements(job)):
            job = self.queue.keep_client_elements(connection, job, kept)
        if request.status == current:
            return self.queue.task_of(job)
        reason = (task.get("statusReason") or {}).get("text") or "cancelled by the client"
        return self.queue.task_of(self.queue.cancel(connection, task_id, str(reason)))

    def deleting(self, connection: Connection, task_id: str) -> None:
        if self.queue.get(task_id, connection) is not None:
            raise MethodNotAllowed(
                f"Task/{task_id} is an inference job and is kept as its record; cancel it by updating its status",
                "GET, HEAD, PATCH, PUT",
            )

    def _model(self, connection: Connection, request: InferenceRequest) -> RegisteredModel:
        """The model named in Task.owner, or the first active one that accepts
        the series asked for (any series of the study when none is)."""
        study_uid, series_uid = request.imaging_study_id, request.series_uid
        if series_uid is not None and series_uid not in {
            stored.series_instance_uid for stored in study_series(connection, study_uid)
        }:
            raise InvalidResource(f"Task.input: series {series_uid} is not in ImagingStudy/{study_uid}")
        if request.device_id is not None:
            try:
                model = self.registry.by_device(request.device_id, connection)
            except ModelNotFound as error:
                raise InvalidResource(f"Task.owner: {error}") from error
            if not model.active:
                raise InvalidResource(f"Task.owner: model {model.key} (Device/{request.device_id}) is not active")
            if series_uid is not None and not _accepts(connection, model, study_uid, series_uid):
                raise InvalidResource(f"Task.input: model {model.key} does not run on series {series_uid}")
            return model
        for model in self.registry.active(connection):
            if _accepts(connection, model, study_uid, series_uid):
                return model
        asked = f"series {series_uid}" if series_uid else f"a series of ImagingStudy/{study_uid}"
        raise InvalidResource(
            f"no active model runs on {asked}; name one in Task.owner, or store a series it accepts"
        )


def _accepts(connection: Connection, model: RegisteredModel, study_uid: str, series_uid: str | None) -> bool:
    accepted = accepted_series(connection, study_uid, model.bundle.card.series)
    return any(series_uid in (None, stored.series_instance_uid) for stored in accepted)


def _require_same_order(request: InferenceRequest, job: Job) -> None:
    """What a job runs is fixed once ordered: another study, model or series is another order."""
    if request.imaging_study_id != job.study_instance_uid:
        raise InvalidResource(
            f"Task.focus: this job runs on ImagingStudy/{job.study_instance_uid}; order a new Task for another study"
        )
    if request.device_id not in (None, job.device_id):
        raise InvalidResource(f"Task.owner: this job runs model Device/{job.device_id}; order a new Task for another")
    if request.series_uid not in (None, job.series_instance_uid):
        raise InvalidResource("Task.input: this job's series is fixed; order a new Task for another series")


def _require_subject(task: dict[str, Any], patient_id: str | None, study_uid: str) -> None:
    """Task.for is the study's patient, set by the server; a client may repeat it, not change it."""
    subject = task.get("for")
    if subject is not None and "reference" not in subject:
        # An identifier (an MRN, say) the server cannot compare with the study's patient: an
        # order for one patient on another's study would be taken, its `for` replaced.
        raise InvalidResource(
            f"Task.for: give the patient of ImagingStudy/{study_uid} as a reference (Patient/<id>), or leave it out"
        )
    sent = (subject or {}).get("reference")
    if sent is not None and sent != f"Patient/{patient_id}":
        expected = f"Patient/{patient_id}" if patient_id else "left out (the study names no patient)"
        raise InvalidResource(f"Task.for: ImagingStudy/{study_uid} is of {expected}, not {sent}")
