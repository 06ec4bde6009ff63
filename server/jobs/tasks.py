"""Client writes of Task, where a Task that focuses an ImagingStudy is an
order to run a model on it.

Runs inside the FHIR write's transaction (plain create, update, or an entry
of a batch or transaction Bundle), so the job row and its Task commit
together. Other Tasks stay ordinary FHIR resources.
"""

from typing import Any

from sqlalchemy import Connection

from fhir_mappings.errors import (
    InvalidResource,
    MethodNotAllowed,
    ResourceGone,
    ResourceNotFound,
)
from fhir_mappings.task import inference_request, require_transition
from server.jobs.queue import CANCELLED, JobQueue
from server.jobs.registry import ModelNotFound, ModelRegistry, RegisteredModel
from server.jobs.series import accepted_series


def is_inference_order(task: dict[str, Any]) -> bool:
    reference = (task.get("focus") or {}).get("reference")
    return isinstance(reference, str) and reference.startswith("ImagingStudy/")


class InferenceTasks:
    """The `Task` write hook of the FHIR service."""

    def __init__(self, queue: JobQueue, registry: ModelRegistry) -> None:
        self.queue = queue
        self.registry = registry

    def creating(self, connection: Connection, task: dict[str, Any], task_id: str) -> dict[str, Any]:
        if not is_inference_order(task):
            return task
        request = inference_request(task)
        self.queue.patient_of_study(connection, request.imaging_study_id)  # 422 for a study not here, first
        model = self._model(connection, request.device_id, request.imaging_study_id)
        return self.queue.create(connection, task_id, model.id, request.imaging_study_id, request.series_uid, automatic=False)

    def updating(self, connection: Connection, task: dict[str, Any], task_id: str) -> dict[str, Any]:
        job = self.queue.get(task_id, connection, lock=True)
        if job is None:
            if self._exists(connection, task_id):
                return task  # a Task stored before it could be a job stays an ordinary one
            return self.creating(connection, task, task_id)  # update as create, with the client's id
        request = inference_request(task, creating=False)
        current = self.queue.public_status(job)
        require_transition(current, request.status)
        if request.status == current:
            return self.queue.task_of(job)
        if request.status != CANCELLED:
            raise InvalidResource(
                f"the server moves an inference Task to {request.status!r} itself; a client may only cancel it"
            )
        reason = (task.get("statusReason") or {}).get("text") or "cancelled by the client"
        return self.queue.task_of(self.queue.cancel(connection, task_id, str(reason)))

    def deleting(self, connection: Connection, task_id: str) -> None:
        if self.queue.get(task_id, connection) is not None:
            raise MethodNotAllowed(
                f"Task/{task_id} is an inference job and is kept as its record; cancel it by updating its status"
            )

    def _exists(self, connection: Connection, task_id: str) -> bool:
        try:
            self.queue.store.read("Task", task_id, connection)
        except (ResourceNotFound, ResourceGone):
            return False
        return True

    def _model(self, connection: Connection, device_id: str | None, study_uid: str) -> RegisteredModel:
        if device_id is not None:
            try:
                model = self.registry.by_device(device_id, connection)
            except ModelNotFound as error:
                raise InvalidResource(f"Task.owner: {error}") from error
            if not model.active:
                raise InvalidResource(f"Task.owner: model {model.key} (Device/{device_id}) is not active")
            return model
        for model in self.registry.active(connection):
            if accepted_series(connection, study_uid, model.bundle.card.series):
                return model
        raise InvalidResource(
            f"no active model runs on a series of ImagingStudy/{study_uid}; name one in Task.owner, or store a series it accepts"
        )
