"""UPS-RS (PS3.18 chapter 11): the inference jobs as UPS workitems.

Creating a workitem orders a job through the very path of `POST /fhir/Task`
(the FHIR create interaction and its Task hook), in one transaction with the
workitem's row: the same checks, the same queue, and nothing left behind when
either refuses. Reading one reads the job. Cancelling takes the job's
cancellation path, as a Task updated to `cancelled` does. This server is the
performer of every workitem (it runs the models): nobody else claims one,
changes its state, or updates it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Select, and_, case, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from dicom.errors import (
    Conflict,
    DicomError,
    InvalidRequest,
    NotFound,
    UnsupportedMediaType,
)
from dicom.matching import TRANSPORT_PARAMETERS, Condition, QidoQuery, SequenceMatch
from dicom.uids import require_uid
from dicom.workitems import (
    CANCELED,
    COMPLETED,
    FINAL_STATES,
    IN_PROGRESS,
    SEGMENTATION_SOP_CLASS,
    STATE_OF_TASK_STATUS,
    CancellationRequest,
    JobFacts,
    SegOutput,
    WorkitemOrder,
    modified_on_creation,
    new_workitem_uid,
    require_dataset,
    workitem_dataset,
)
from fhir_mappings.date_ranges import from_micros
from fhir_mappings.errors import FhirError
from fhir_mappings.task import SOURCE_SERIES
from inference.seg import SegIdentity
from server.audit.middleware import note_resources, note_studies
from server.db import reading, write_connection
from server.dicomweb.qido import SearchPage, column_matches, selected_attributes
from server.dicomweb.workitem_subscriptions import report_cancel_requested
from server.fhir import interactions
from server.fhir.negotiation import read_body
from server.jobs.queue import COMPLETED as JOB_COMPLETED
from server.jobs.queue import REQUESTED, Job, JobQueue, progress_percent
from server.jobs.registry import ModelNotFound, ModelRegistry
from server.services import Services
from server.tables import (
    ai_models,
    inference_jobs,
    instances,
    series,
    studies,
    workitems,
)

_DICOM_JSON_BODIES = frozenset(("application/dicom+json", "application/json"))
_INCONSISTENT = "The submitted request is inconsistent with the state of the UPS Instance."
_PERFORMED_HERE = (
    "this server performs its workitems itself (it runs the model), so no one else claims one, changes its state "
    "or updates it; to stop one, POST .../cancelrequest"
)
# The job's Task status (`JobQueue.public_status`) in SQL, and from it the UPS state, for matching.
_TASK_STATUS = case(
    (and_(inference_jobs.c.status == REQUESTED, inference_jobs.c.attempts > 0), "on-hold"),
    else_=inference_jobs.c.status,
)
_STATE = case(*((_TASK_STATUS == status, state) for status, state in STATE_OF_TASK_STATUS.items()))
# Where each matching key of the workitem level (`dicom.qido_attributes`) lives.
_COLUMNS: dict[int, Any] = {
    0x00080018: workitems.c.workitem_uid,
    0x00100010: studies.c.patient_name,
    0x00100020: studies.c.patient_id,
    0x0020000D: inference_jobs.c.study_instance_uid,
    0x0020000E: inference_jobs.c.series_instance_uid,
    0x00404005: workitems.c.scheduled_start,
    0x00741000: _STATE,
    0x00741200: workitems.c.priority,
}


def workitem_url(dicomweb_root: str, uid: str) -> str:
    return f"{dicomweb_root}/workitems/{uid}"


# --- reading -------------------------------------------------------------------
def _statement() -> Select[Any]:
    return (
        select(
            workitems.c.workitem_uid, workitems.c.scheduled_start, workitems.c.priority, workitems.c.dataset_json,
            inference_jobs, ai_models.c.device_id, ai_models.c.name.label("model_name"),
            ai_models.c.version.label("model_version"), studies.c.attributes_json.label("study_json"),
        )
        .join_from(workitems, inference_jobs, workitems.c.task_id == inference_jobs.c.task_id)
        .join(ai_models, ai_models.c.id == inference_jobs.c.model_id)
        # A job outlives its study (deleted): its workitem stays, without the patient.
        .outerjoin(studies, studies.c.study_instance_uid == inference_jobs.c.study_instance_uid)
    )


def _datasets(connection: Connection, rows: Sequence[Any], dicomweb_root: str) -> list[dict[str, Any]]:
    jobs = [Job.from_row(row) for row in rows]
    note_studies(job.study_instance_uid for job in jobs)  # whose patients the answer names, for its audit record
    outputs = _seg_outputs(connection, [job.task_id for job in jobs if job.status == JOB_COMPLETED], dicomweb_root)
    return [
        workitem_dataset(JobFacts(
            workitem_uid=row.workitem_uid, task_status=JobQueue.public_status(job), priority=row.priority,
            scheduled_start=row.scheduled_start, created=from_micros(job.created_at),
            started=from_micros(job.started_at) if job.started_at else None,
            ended=from_micros(job.ended_at) if job.ended_at else None,
            study_uid=job.study_instance_uid, series_uid=job.series_instance_uid,
            model_name=row.model_name, model_version=row.model_version, business_status=job.business_status,
            reason=job.reason, progress=progress_percent(job), study_attributes=orjson.loads(row.study_json or b"{}"),
            outputs=outputs.get(job.task_id, ()),
            requested=orjson.loads(row.dataset_json) if row.dataset_json else None,
        ))
        for row, job in zip(rows, jobs)
    ]


def _seg_outputs(connection: Connection, task_ids: list[str], dicomweb_root: str) -> dict[str, tuple[SegOutput, ...]]:
    """The SEG each completed job stored, as far as it is still stored (its results may have been withdrawn)."""
    if not task_ids:
        return {}
    by_series = {SegIdentity.for_job(task_id).series_instance_uid: task_id for task_id in task_ids}
    rows = connection.execute(
        select(studies.c.study_instance_uid, series.c.series_instance_uid, instances.c.sop_class_uid,
               instances.c.sop_instance_uid)
        .join_from(instances, series, instances.c.series_pk == series.c.id)
        .join(studies, instances.c.study_pk == studies.c.id)
        .where(series.c.series_instance_uid.in_(by_series), instances.c.sop_class_uid == SEGMENTATION_SOP_CLASS)
        .order_by(instances.c.id)
    ).all()
    outputs: dict[str, tuple[SegOutput, ...]] = {}
    for row in rows:
        url = f"{dicomweb_root}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
        task_id = by_series[row.series_instance_uid]
        outputs[task_id] = (*outputs.get(task_id, ()), SegOutput(
            row.study_instance_uid, row.series_instance_uid, row.sop_class_uid, row.sop_instance_uid, url,
        ))
    return outputs


def retrieve(current: Services, uid: str, dicomweb_root: str) -> dict[str, Any]:
    """Retrieve Workitem (PS3.18 §11.5); NotFound for a UID that names no workitem."""
    require_uid(uid, "the workitem UID")
    with reading(current.engine) as connection:
        rows = connection.execute(_statement().where(workitems.c.workitem_uid == uid)).all()
        if not rows:
            raise NotFound(f"there is no workitem {uid} on this server")
        note_resources([f"Task/{rows[0].task_id}"])  # which workitem was read, for the audit record
        return _datasets(connection, rows, dicomweb_root)[0]


def search(current: Services, query: QidoQuery, dicomweb_root: str) -> SearchPage:
    """Search Workitems (PS3.18 §11.9), with QIDO-RS matching; oldest first, so that pages are stable."""
    dialect = current.engine.dialect.name
    statement = (
        _statement().where(*(_clause(condition, dialect) for condition in query.conditions))
        .order_by(inference_jobs.c.created_at, workitems.c.workitem_uid)
        .limit(query.limit + 1).offset(query.offset)
    )
    with reading(current.engine) as connection:
        rows = connection.execute(statement).all()
        datasets = _datasets(connection, rows[: query.limit], dicomweb_root)
    keep = None if query.include_all else query.result_tags
    return SearchPage([selected_attributes(dataset, keep) for dataset in datasets], len(rows) > query.limit)


def _clause(condition: Condition, dialect: str) -> Any:
    if isinstance(condition, SequenceMatch):  # InputInformationSequence: the job's own study and series
        return and_(*(_clause(item, dialect) for item in condition.conditions))
    return column_matches(_COLUMNS[condition.tag], condition, dialect)


# --- writing -------------------------------------------------------------------
@dataclass(frozen=True)
class CreatedWorkitem:
    uid: str
    modified: bool  # the server changed what the requester sent (PS3.18 §11.4.3.2)


def create(current: Services, order: WorkitemOrder) -> CreatedWorkitem:
    """Create Workitem (PS3.18 §11.4): the job ordered, and its workitem UID."""
    uid = order.uid or new_workitem_uid()
    try:
        with write_connection(current.engine) as connection:
            if connection.execute(select(workitems.c.task_id).where(workitems.c.workitem_uid == uid)).first():
                raise Conflict(f"the workitem {uid} exists already")
            study_attributes = _study_attributes(connection, order)
            modified = uid != order.uid or modified_on_creation(order, study_attributes)
            note_studies([order.study_uid])
            task = _task(order, _device(current.jobs.registry, connection, order.model))
            try:
                version = interactions.create(current.fhir, "Task", task, connection)
            except FhirError as error:
                raise InvalidRequest(f"the job cannot be ordered: {error.diagnostics}") from error
            connection.execute(
                update(workitems).where(workitems.c.task_id == version.resource_id).values(
                    workitem_uid=uid, scheduled_start=order.scheduled_start, priority=order.priority,
                    dataset_json=orjson.dumps(order.dataset),
                )
            )
    except IntegrityError:  # created by another request since the check
        raise Conflict(f"the workitem {uid} exists already") from None
    return CreatedWorkitem(uid, modified)


def _study_attributes(connection: Connection, order: WorkitemOrder) -> dict[str, Any]:
    """The input study's attributes (its patient's among them), once it is known to be the requester's patient's."""
    row = connection.execute(
        select(studies.c.patient_id, studies.c.attributes_json).where(studies.c.study_instance_uid == order.study_uid)
    ).first()
    if row is None:
        raise InvalidRequest(
            f"InputInformationSequence (0040,4021): the study {order.study_uid} is not stored on this server"
        )
    if order.patient_id is not None and order.patient_id != row.patient_id:
        raise InvalidRequest(
            f"PatientID (0010,0020) {order.patient_id!r}: the study {order.study_uid} is of patient {row.patient_id!r}"
        )
    return orjson.loads(row.attributes_json or b"{}")  # type: ignore[no-any-return]


def _device(registry: ModelRegistry, connection: Connection, model: str | None) -> str | None:
    """The Device of the model a workitem names: NAME@VERSION, or NAME for its newest active version."""
    if model is None:
        return None
    where = "ScheduledWorkitemCodeSequence (0040,4018)"
    if "@" in model:
        try:
            named = registry.get(model, connection)
        except ModelNotFound as error:
            raise InvalidRequest(f"{where}: {error}") from None
        if not named.active:
            raise InvalidRequest(f"{where}: the model {model} is not active")
        return named.device_id
    active = [candidate for candidate in registry.active(connection) if candidate.bundle.card.name == model]
    if not active:
        raise InvalidRequest(
            f"{where}: no active model is named {model!r} (name NAME or NAME@VERSION of a registered model)"
        )
    return active[-1].device_id


def _task(order: WorkitemOrder, device_id: str | None) -> dict[str, Any]:
    """The FHIR Task that orders what the workitem asks for (`fhir_mappings.task.inference_request`)."""
    task: dict[str, Any] = {
        "resourceType": "Task", "status": "requested", "intent": "order",
        "focus": {"reference": f"ImagingStudy/{order.study_uid}"},
    }
    if device_id is not None:
        task["owner"] = {"reference": f"Device/{device_id}"}
    if order.series_uid is not None:
        task["input"] = [{"type": {"coding": [SOURCE_SERIES]}, "valueId": order.series_uid}]
    return task


def request_cancellation(current: Services, uid: str, request: CancellationRequest) -> str | None:
    """Request Cancellation (PS3.18 §11.8, PS3.4 CC.2.4.3): subscribers are
    told of the request, then this server, the performer, cancels the job at
    once. The Warning text for a workitem canceled already (status B304, a success)."""
    queue = current.jobs.queue
    with write_connection(current.engine) as connection:
        job = queue.get(_task_id(connection, uid), connection, lock=True)
        assert job is not None  # a workitem's job is never deleted
        state = STATE_OF_TASK_STATUS[queue.public_status(job)]
        if state == CANCELED:
            return "The UPS is already in the requested state of CANCELED."
        if state == COMPLETED:
            raise Conflict(f"the workitem {uid} is COMPLETED and can no longer be canceled", _INCONSISTENT)
        report_cancel_requested(connection, job.task_id, request)
        cancelled = queue.cancel(connection, job.task_id, request.text)
        queue.store.put(connection, queue.task_of(cancelled), job.task_id, "PUT")
    return None


def refuse_state_change(current: Services, uid: str, requested_state: str) -> str:
    """Change Workitem State (PS3.18 §11.7): only the performer changes a
    workitem's state, and the performer is this server, which keeps its
    claim's Transaction UID to itself. So any Transaction UID sent for a
    workitem IN PROGRESS is incorrect (400, PS3.4 C301); a SCHEDULED one may
    not be claimed (409); asking for the final state a workitem is in already
    is a success with a Warning (B304/B306), returned here."""
    state = _state(current, uid)
    if state == IN_PROGRESS:
        raise InvalidRequest(f"the workitem {uid} is IN PROGRESS under this server's own claim",
                             "The Transaction UID is incorrect.")
    if requested_state == state and state in FINAL_STATES:
        return f"The UPS is already in the requested state of {state}."
    raise Conflict(f"the workitem {uid} is {state}: {_PERFORMED_HERE}", _INCONSISTENT)


def update_refusal(current: Services, uid: str, transaction: str | None) -> DicomError:
    """Update Workitem (PS3.18 §11.6), always refused: the order is fixed once
    made, as a Task's is. A workitem in a final state may no longer be updated
    (400); one IN PROGRESS only with its performer's Transaction UID, which
    this server keeps (400: missing, or incorrect); a SCHEDULED one is
    inconsistent with this server's taking no updates (409)."""
    state = _state(current, uid)
    if state in FINAL_STATES:
        return InvalidRequest(f"the workitem {uid} is {state} and may no longer be updated",
                              "The submitted request is inconsistent with the current state of the Workitem.")
    if state == IN_PROGRESS:
        warning = "The Transaction UID is missing." if transaction is None else "The Transaction UID is incorrect."
        return InvalidRequest(f"the workitem {uid} is IN PROGRESS under this server's own claim", warning)
    return Conflict(f"the workitem {uid} is {state}: {_PERFORMED_HERE}",
                    "The submitted request is inconsistent with the current state of the Workitem.")


def _state(current: Services, uid: str) -> str:
    with reading(current.engine) as connection:
        job = current.jobs.queue.get(_task_id(connection, uid), connection)
    assert job is not None
    return STATE_OF_TASK_STATUS[JobQueue.public_status(job)]


def _task_id(connection: Connection, uid: str) -> str:
    require_uid(uid, "the workitem UID")
    row = connection.execute(select(workitems.c.task_id).where(workitems.c.workitem_uid == uid)).first()
    if row is None:
        raise NotFound(f"there is no workitem {uid} on this server")
    return str(row.task_id)


# --- request bodies ------------------------------------------------------------
async def dataset_body(request: Request, current: Services, optional: bool = False) -> dict[str, Any] | None:
    """The DICOM JSON data set a UPS-RS request carries; None for an optional one left out."""
    raw = await read_body(request, current.settings.fhir_max_body_bytes)
    if optional and not raw.strip():
        return None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _DICOM_JSON_BODIES:
        raise UnsupportedMediaType(f"a workitem is sent as application/dicom+json, not {content_type or 'untyped'}")
    try:
        body = await run_in_threadpool(orjson.loads, raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}") from None
    return require_dataset(body)


def workitem_uid_parameter(query: list[tuple[str, str]]) -> str | None:
    """The workitem UID of `POST /workitems?{workitem}` (PS3.18 §11.4.1.1):
    the bare query, or AffectedSOPInstanceUID=..., as some clients write it."""
    given = [(name, value) for name, value in query if name not in TRANSPORT_PARAMETERS]
    if not given:
        return None
    if len(given) == 1 and given[0][0] == "AffectedSOPInstanceUID":
        return require_uid(given[0][1], "the workitem UID")
    if len(given) == 1 and not given[0][1]:
        return require_uid(given[0][0], "the workitem UID")
    raise InvalidRequest("the query of a Create Workitem request is the workitem UID alone, as /workitems?{UID}")
