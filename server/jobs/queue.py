"""The durable state of inference jobs, and their Tasks in step with it.

Every change of a job row writes a new version of its Task in the same
transaction, so a client reading the Task never sees a state the database
does not hold. A worker owns a job through a lease: it is renewed while the
job runs, and a job whose lease ran out (its worker died) is queued again by
`reap`. Every write a worker makes is fenced by its lease, so a worker that
lost its job (cancelled, or taken over after a stall) cannot complete it.
"""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from dicom.workitems import derived_workitem_uid, matching_datetime
from fhir_mappings import fhir_json
from fhir_mappings.ai_results import report_id
from fhir_mappings.date_ranges import from_micros
from fhir_mappings.errors import InvalidResource, ResourceNotFound
from fhir_mappings.task import TaskRecord, task_resource
from server.db import reading, write_connection
from server.fhir.store import ResourceStore
from server.tables import ai_models, inference_jobs, workitems

log = logging.getLogger(__name__)

REQUESTED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "requested", "in-progress", "completed", "failed", "cancelled"
ON_HOLD = "on-hold"  # only ever a Task status: a job queued for another attempt
FINAL = frozenset((COMPLETED, FAILED, CANCELLED))
# What a job watcher is told of: the job's creation, a change of its status, a new stage of its run.
JobChange = Literal["created", "status", "stage"]


class Stage(str, Enum):
    """What a running job is doing, in order: its Task's businessStatus is "running: <stage>"."""

    READING = "reading the series"
    SEGMENTING = "segmenting"
    STORING = "storing the results"

    @property
    def business_status(self) -> str:
        return f"running: {self.value}"


def progress_percent(job: "Job") -> float | None:
    """Percent of the stages a running job has passed; None where it is not known (queued, waiting to retry)."""
    if job.status == COMPLETED:
        return 100.0
    if job.status == IN_PROGRESS:
        stages = [stage.business_status for stage in Stage]
        return 100.0 * stages.index(job.business_status) / len(stages) if job.business_status in stages else 0.0
    return None


def now_micros() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class QueuePolicy:
    max_attempts: int = 3
    lease_seconds: float = 60.0
    backoff_seconds: float = 5.0  # doubled on each retry
    timeout_seconds: float = 900.0  # per attempt


@dataclass(frozen=True)
class Job:
    task_id: str
    model_id: int
    study_instance_uid: str
    series_instance_uid: str | None
    patient_id: str | None
    automatic: bool
    status: str
    attempts: int
    lease_owner: str | None
    business_status: str | None
    reason: str | None
    created_at: int
    started_at: int | None
    ended_at: int | None
    updated_at: int
    client_elements_json: bytes | None  # what the client's order said beyond the job
    device_id: str  # the model's Device

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


class JobQueue:
    def __init__(self, engine: Engine, store: ResourceStore, policy: QueuePolicy) -> None:
        self.engine = engine
        self.store = store
        self.policy = policy
        # Told of every state change, in its transaction (the audit trail).
        self.on_change: Callable[[Connection, str, str, str | None, str | None], None] | None = None
        # Told of a job's creation, status changes and stages, in their transactions (UPS event reports).
        self.on_job: Callable[[Connection, Job, JobChange], None] | None = None

    # --- creating and reading -------------------------------------------------
    def create(
        self, connection: Connection, task_id: str, model_id: int, study_uid: str, series_uid: str | None,
        automatic: bool, client_elements: Mapping[str, Any] | None = None, series_content: str | None = None,
    ) -> dict[str, Any]:
        """Insert the job and return its first Task (which the caller stores).
        `series_content`: of an automatic job, what its series held (`series.series_content`)."""
        now = now_micros()
        values = {
            "task_id": task_id, "model_id": model_id, "study_instance_uid": study_uid, "series_instance_uid": series_uid,
            "patient_id": self.patient_of_study(connection, study_uid), "automatic": automatic, "status": REQUESTED,
            "attempts": 0, "not_before": now, "business_status": "queued", "created_at": now, "updated_at": now,
            "client_elements_json": _client_json(client_elements), "series_content": series_content,
        }
        connection.execute(insert(inference_jobs).values(**values))
        # Every job is a workitem for DICOM watchers; one ordered over UPS-RS takes its requester's UID and schedule.
        connection.execute(insert(workitems).values(
            workitem_uid=derived_workitem_uid(task_id), task_id=task_id, priority="MEDIUM",
            scheduled_start=matching_datetime(from_micros(now)),
        ))
        job = self.get(task_id, connection)
        assert job is not None
        if self.on_job is not None:
            self.on_job(connection, job, "created")
        if automatic and self.on_change is not None:
            # The server's own decision to run a model (an order is its client's request, recorded as such).
            self.on_change(connection, task_id, self.public_status(job), job.patient_id, None)
        return self.task_of(job)

    def get(self, task_id: str, connection: Connection | None = None, lock: bool = False) -> Job | None:
        """`lock`: inside a write transaction, hold the job row until it ends, so
        that a client's write and a worker's do not act on each other's past."""
        statement = (
            select(inference_jobs, ai_models.c.device_id)
            .join(ai_models, ai_models.c.id == inference_jobs.c.model_id)
            .where(inference_jobs.c.task_id == task_id)
        )
        with reading(self.engine, connection) as session:
            row = session.execute(statement.with_for_update(of=inference_jobs) if lock else statement).first()
        return None if row is None else Job.from_row(row)

    @staticmethod
    def public_status(job: Job) -> str:
        """The Task's status. A job waiting for another attempt is `on-hold`
        (task.html: started, then paused), never back to `requested`."""
        return ON_HOLD if job.status == REQUESTED and job.attempts > 0 else job.status

    def task_of(self, job: Job) -> dict[str, Any]:
        return task_resource(
            TaskRecord(
                task_id=job.task_id, status=self.public_status(job), imaging_study_id=job.study_instance_uid,
                patient_id=job.patient_id, device_id=job.device_id, authored_on=from_micros(job.created_at),
                last_modified=from_micros(job.updated_at), business_status=job.business_status,
                status_reason=job.reason if job.status in (FAILED, CANCELLED) else None,
                started=from_micros(job.started_at) if job.started_at else None,
                ended=from_micros(job.ended_at) if job.ended_at else None,
                series_uid=job.series_instance_uid,
                report_id=report_id(job.task_id) if job.status == COMPLETED else None,
                client_elements=self.client_elements(job),
            )
        )

    @staticmethod
    def client_elements(job: Job) -> dict[str, Any]:
        return fhir_json.loads(job.client_elements_json) if job.client_elements_json else {}

    def keep_client_elements(self, connection: Connection, job: Job, client_elements: Mapping[str, Any]) -> Job:
        """A client's update of what its order says beyond the job (an
        identifier, a note, ...), with the job row locked by `get(lock=True)`."""
        changed = self._change(
            connection, job.task_id, status=job.status, owner=job.lease_owner,
            values={"client_elements_json": _client_json(client_elements)}, write_task=False,  # the caller stores it
        )
        assert changed is not None  # the row is locked: nobody moved the job meanwhile
        return changed

    def move_to_patient(self, connection: Connection, task_id: str, patient_id: str | None) -> None:
        """The job's study now belongs to another Patient (`study_changes`)."""
        job = self.get(task_id, connection, lock=True)
        assert job is not None
        self._change(connection, task_id, status=job.status, owner=job.lease_owner, values={"patient_id": patient_id})

    def patient_of_study(self, connection: Connection, study_uid: str) -> str | None:
        study = self.store.current_body("ImagingStudy", study_uid, connection)
        if study is None:  # never stored, or deleted
            raise InvalidResource(f"Task.focus: there is no ImagingStudy/{study_uid} on this server")
        subject = study.get("subject", {}).get("reference", "")
        return subject.removeprefix("Patient/") or None

    # --- the worker's side -----------------------------------------------------
    def claim(self, owner: str, limit: int, task_id: str | None = None) -> list[Job]:
        """Take up to `limit` queued jobs of one model (the oldest job's), or
        the one named, leasing them to `owner` and moving them in progress."""
        now = now_micros()
        if not self.any_ready(task_id):
            return []
        with write_connection(self.engine) as connection:
            self._fail_jobs_of_inactive_models(connection, now)
            ready = select(inference_jobs.c.task_id, inference_jobs.c.model_id).where(
                inference_jobs.c.status == REQUESTED, inference_jobs.c.not_before <= now
            ).order_by(inference_jobs.c.created_at, inference_jobs.c.task_id).with_for_update(skip_locked=True)
            named = ready.where(inference_jobs.c.task_id == task_id) if task_id is not None else ready
            first = connection.execute(named.limit(1)).first()
            if first is None:
                return []
            same_model = connection.execute(ready.where(inference_jobs.c.model_id == first.model_id).limit(limit)).all()
            rows = [first, *[row for row in same_model if row.task_id != first.task_id]][:limit]
            claimed = []
            for row in rows:
                job = self._change(
                    connection, row.task_id, status=REQUESTED, owner=None, status_to=IN_PROGRESS,
                    values={"lease_owner": owner, "lease_expires": now + self._lease(), "attempts": inference_jobs.c.attempts + 1,
                            "started_at": now, "business_status": "running: starting"},
                )
                if job is not None:
                    claimed.append(job)
            return claimed

    def _fail_jobs_of_inactive_models(self, connection: Connection, now: int) -> None:
        """Deactivating a model withdraws it (by hand, or when a validation
        fails): its queued jobs end failed, saying so, rather than run on it.
        Done where jobs are taken, so that every way of deactivating counts."""
        orphans = connection.execute(
            select(inference_jobs.c.task_id, inference_jobs.c.automatic, ai_models.c.name, ai_models.c.version)
            .join(ai_models, ai_models.c.id == inference_jobs.c.model_id)
            .where(inference_jobs.c.status == REQUESTED, ai_models.c.active.is_(False))
            .with_for_update(of=inference_jobs, skip_locked=True)
        ).all()
        for orphan in orphans:
            self._change(
                connection, orphan.task_id, status=REQUESTED, owner=None, status_to=FAILED,
                values={"reason": f"the model {orphan.name}@{orphan.version} was deactivated before this job ran",
                        "ended_at": now, "business_status": "failed", "lease_owner": None, "lease_expires": None,
                        # It never ran: its series may run again once the model is back.
                        "series_content": released_content(orphan.task_id) if orphan.automatic else None},
            )

    def any_ready(self, task_id: str | None = None) -> bool:
        """Whether a job (or the one named) may be claimed now. A read, so that
        idle pollers (and messages for jobs taken already, or waiting out their
        backoff) never take SQLite's write lock."""
        ready = select(inference_jobs.c.task_id).where(
            inference_jobs.c.status == REQUESTED, inference_jobs.c.not_before <= now_micros()
        )
        if task_id is not None:
            ready = ready.where(inference_jobs.c.task_id == task_id)
        with reading(self.engine) as connection:
            return connection.execute(ready.limit(1)).first() is not None

    def record_series(self, job: Job, series_uid: str) -> bool:
        """The series a job ordered for a whole study runs on, once chosen: the
        Task names it, and later attempts run on it too. False when the job is
        no longer this worker's."""
        with write_connection(self.engine) as connection:
            return self._change(
                connection, job.task_id, status=IN_PROGRESS, owner=job.lease_owner,
                values={"series_instance_uid": series_uid},
            ) is not None

    def progress(self, job: Job, stage: Stage) -> bool:
        """Record a stage and renew the lease; False when the job is no longer
        this worker's (cancelled, or reaped): the worker then stops."""
        with write_connection(self.engine) as connection:
            return self._change(
                connection, job.task_id, status=IN_PROGRESS, owner=job.lease_owner,
                values={"business_status": stage.business_status, "lease_expires": now_micros() + self._lease()},
            ) is not None

    def renew(self, job: Job) -> bool:
        """Extend the lease of a job still running here; no new Task version."""
        with write_connection(self.engine) as connection:
            return connection.execute(
                update(inference_jobs)
                .where(inference_jobs.c.task_id == job.task_id, inference_jobs.c.status == IN_PROGRESS,
                       inference_jobs.c.lease_owner == job.lease_owner)
                .values(lease_expires=now_micros() + self._lease())
            ).rowcount == 1

    def complete(self, connection: Connection, job: Job, content: str) -> bool:
        """In the caller's transaction, the one that publishes the results.
        `content`: what the series held as the job read it. The job records
        it, so that the series is not run again for it (`triggers`)."""
        values = {"business_status": "completed", "lease_owner": None, "lease_expires": None, "ended_at": now_micros()}
        if not job.automatic:
            values["series_content"] = content
        else:
            self._stand_for(connection, job, content)
        return self._change(
            connection, job.task_id, status=IN_PROGRESS, owner=job.lease_owner, status_to=COMPLETED, values=values,
        ) is not None

    def _stand_for(self, connection: Connection, job: Job, content: str) -> None:
        """An automatic job that read more of its series than its trigger saw
        (instances that arrived meanwhile) stands for what it read, its
        results' content, unless another automatic job was queued for that
        content meanwhile: that one then runs, and supersedes this one."""
        try:
            with connection.begin_nested():
                connection.execute(
                    update(inference_jobs)
                    # A job queued before contents were recorded (NULL) comes to stand for what it read too.
                    .where(inference_jobs.c.task_id == job.task_id,
                           inference_jobs.c.series_content.is_distinct_from(content))
                    .values(series_content=content)
                )
        except IntegrityError:  # the automatic index: one job per model and content of a series
            log.info("job %s ran on content another automatic job was queued for", job.task_id)

    def successor(self, job: Job) -> str | None:
        """Of an automatic job whose series changed while it ran: the automatic
        job queued since for the same model and series (the change's own
        trigger), which runs on what the series holds now. Both running would
        publish twice for one content, the later superseding the earlier."""
        if not job.automatic or job.series_instance_uid is None:
            return None
        with reading(self.engine) as connection:
            return connection.execute(
                select(inference_jobs.c.task_id)
                .where(inference_jobs.c.automatic, inference_jobs.c.model_id == job.model_id,
                       inference_jobs.c.series_instance_uid == job.series_instance_uid,
                       inference_jobs.c.task_id != job.task_id, inference_jobs.c.created_at > job.created_at,
                       inference_jobs.c.status.notin_((FAILED, CANCELLED)))
                .order_by(inference_jobs.c.created_at.desc()).limit(1)
            ).scalar_one_or_none()

    def fail(self, job: Job, reason: str, retryable: bool) -> str | None:
        """Retry with backoff while attempts remain; the new status, or None
        when the job was no longer this worker's."""
        with write_connection(self.engine) as connection:
            return self._fail(connection, job.task_id, job.lease_owner, job.attempts, reason, retryable)

    def _fail(
        self, connection: Connection, task_id: str, owner: str | None, attempts: int, reason: str, retryable: bool,
        by_server: bool = False,
    ) -> str | None:
        now = now_micros()
        reason = reason[:1000]
        if retryable and attempts < self.policy.max_attempts:
            delay = self.policy.backoff_seconds * 2 ** (attempts - 1)
            changed = self._change(
                connection, task_id, status=IN_PROGRESS, owner=owner, status_to=REQUESTED,
                values={"lease_owner": None, "lease_expires": None, "not_before": now + int(delay * 1e6),
                        "dispatched_at": None, "reason": reason,
                        "business_status": f"waiting for attempt {attempts + 1} of {self.policy.max_attempts} after: {reason}"[:256]},
                by_server=by_server,
            )
            return None if changed is None else REQUESTED
        changed = self._change(
            connection, task_id, status=IN_PROGRESS, owner=owner, status_to=FAILED,
            values={"lease_owner": None, "lease_expires": None, "reason": reason, "ended_at": now, "business_status": "failed"},
            by_server=by_server,
        )
        return None if changed is None else FAILED

    def reap(self) -> list[str]:
        """Jobs whose worker stopped renewing its lease (died, or ran past the
        timeout): queued again, or failed once out of attempts."""
        now = now_micros()
        with write_connection(self.engine) as connection:
            rows = connection.execute(
                select(inference_jobs).where(inference_jobs.c.status == IN_PROGRESS, inference_jobs.c.lease_expires < now)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                self._fail(
                    connection, row.task_id, row.lease_owner, row.attempts,
                    f"the worker stopped reporting (lost, or over the {self.policy.timeout_seconds:g} s limit)", True,
                    by_server=True,
                )
        return [row.task_id for row in rows]

    def timed_out(self, job: Job) -> bool:
        return job.started_at is not None and now_micros() - job.started_at > self.policy.timeout_seconds * 1e6

    def seconds_left(self, job: Job) -> float | None:
        """Of the attempt's time limit; None before it started."""
        if job.started_at is None:
            return None
        return max(0.0, self.policy.timeout_seconds - (now_micros() - job.started_at) / 1e6)

    # --- clients' side -----------------------------------------------------------
    def cancel(self, connection: Connection, task_id: str, reason: str) -> Job:
        """In the caller's transaction, with the job row locked by `get(lock=True)`."""
        job = self.get(task_id, connection, lock=True)
        if job is None:
            raise ResourceNotFound(f"Task/{task_id} is not an inference job")
        if job.status in FINAL:
            if job.status == CANCELLED:
                return job
            raise InvalidResource(f"Task/{task_id} is {job.status} already and cannot be cancelled")
        changed = self._change(
            connection, task_id, status=job.status, owner=job.lease_owner, status_to=CANCELLED,
            values={"lease_owner": None, "lease_expires": None, "reason": reason[:1000], "ended_at": now_micros(),
                    "business_status": "cancelled"},
            write_task=False, by_server=True,
        )
        if changed is None:  # the row is locked: nothing can have moved it
            raise RuntimeError(f"Task/{task_id} changed under its row lock")
        return changed

    def undispatched(self, older_than_seconds: float) -> list[str]:
        """Queued jobs not handed to the executor lately (or ever)."""
        now = now_micros()
        stale = now - int(older_than_seconds * 1e6)
        with reading(self.engine) as connection:
            rows = connection.execute(
                select(inference_jobs.c.task_id).where(
                    inference_jobs.c.status == REQUESTED, inference_jobs.c.not_before <= now,
                    (inference_jobs.c.dispatched_at.is_(None)) | (inference_jobs.c.dispatched_at < stale),
                ).order_by(inference_jobs.c.created_at).limit(1000)
            ).all()
        return [row.task_id for row in rows]

    def note_waiting(self, task_ids: list[str], text: str, replacing: str | None = None) -> None:
        """Say on queued jobs' Tasks why they wait (once: no new Task version
        per scheduler tick); with `replacing`, only where that was said."""
        if not task_ids:
            return
        with write_connection(self.engine) as connection:
            for task_id in task_ids:
                job = self.get(task_id, connection)
                if job is None or job.status != REQUESTED or job.business_status == text:
                    continue
                if replacing is None or job.business_status == replacing:
                    self._change(connection, task_id, status=REQUESTED, owner=None, values={"business_status": text})

    def mark_dispatched(self, task_ids: list[str], dispatched: bool) -> None:
        with write_connection(self.engine) as connection:
            connection.execute(
                update(inference_jobs)
                .where(inference_jobs.c.task_id.in_(task_ids), inference_jobs.c.status == REQUESTED)
                .values(dispatched_at=now_micros() if dispatched else None)
            )

    # --- one fenced change --------------------------------------------------------
    def _change(
        self, connection: Connection, task_id: str, status: str, owner: str | None, values: dict[str, Any],
        status_to: str | None = None, write_task: bool = True, by_server: bool = False,
    ) -> Job | None:
        """Apply `values` if the job is still in `status` under `owner`; write its Task.
        `by_server`: the server moves the job over its worker's head (a cancel, a
        lease run out), and the audit trail names the server, not that worker."""
        condition = [inference_jobs.c.task_id == task_id, inference_jobs.c.status == status]
        condition.append(inference_jobs.c.lease_owner.is_(None) if owner is None else inference_jobs.c.lease_owner == owner)
        changes = {**values, "updated_at": now_micros()}
        if status_to is not None:
            changes["status"] = status_to
        if connection.execute(update(inference_jobs).where(*condition).values(**changes)).rowcount != 1:
            return None
        job = self.get(task_id, connection)
        assert job is not None
        if write_task:
            self.store.put(connection, self.task_of(job), task_id, "PUT")
        if self.on_change is not None and status_to is not None:
            actor = None if by_server else owner or job.lease_owner
            self.on_change(connection, task_id, self.public_status(job), job.patient_id, actor)
        if self.on_job is not None and (status_to is not None or "business_status" in values):
            self.on_job(connection, job, "status" if status_to is not None else "stage")
        return job

    def _lease(self) -> int:
        return int(self.policy.lease_seconds * 1e6)


# An automatic job stands for the content of its series (`series.series_content`),
# so that the same content does not run twice. One that never ran on it (its
# model withdrawn) or whose series was deleted stands for nothing: no series
# holds this content, unique per job as the automatic index asks.
_RELEASED = "released:"


def released_content(task_id: str) -> str:
    return f"{_RELEASED}{task_id}"


def is_released(content: str | None) -> bool:
    return content is not None and content.startswith(_RELEASED)


def _client_json(client_elements: Mapping[str, Any] | None) -> bytes | None:
    return fhir_json.dumps(client_elements) if client_elements else None
