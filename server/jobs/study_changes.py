"""Jobs and their results follow the study they were made from.

Runs in the transaction that changed the DICOM index (a STOW batch, a
DELETE), after the study's ImagingStudy and Patient were written
(`server.fhir.derived.sync_studies`), so FHIR readers never see results that
contradict the study:
- When a study's Patient changes (a corrected PatientID), its jobs and their
  published results name the new Patient: the old one no longer exists. Their
  SEGs are given the study's patient soon after (`seg_patients`).
- When the series a job ran on is deleted (or its whole study), the job's
  published results are withdrawn: marked `entered-in-error`, the status R4
  gives a report or observation that should not be relied on. They stay
  readable, with their history, as the record of what was published. Its SEG
  leaves the study soon after (`withdrawal`), unless it went with the study.
  An automatic job then no longer stands for its series' content, so the
  series sent again is run again (the trigger compares contents, and a series
  row made anew may reuse the old one's id).
- When a model runs on a series again (its content changed, or an order
  asked), the new results supersede those of its earlier runs there
  (`supersede_earlier_runs`): those are withdrawn the same way, in the
  transaction that publishes the new ones, and the new Provenance names each
  earlier report as the one it revises.
"""

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select, update

from fhir_mappings.ai_results import report_id
from server.fhir.store import ResourceStore
from server.jobs.queue import COMPLETED, JobQueue, is_released, released_content
from server.jobs.series import series_exists
from server.tables import inference_jobs

WITHDRAWN = "entered-in-error"


def lock_study_jobs(connection: Connection, study_uids: Iterable[str]) -> Sequence[Row[Any]]:
    """The studies' job rows, held until the transaction ends. Every writer
    that changes more than one job of a study takes them all, in one order
    (by study, then task), so no two wait on each other: a STOW or DELETE of
    studies here (all of its studies in one statement), a worker publishing
    results (`JobRunner._publish`)."""
    return connection.execute(_study_jobs_statement(), {"study_uids": sorted(set(study_uids))}).all()


@functools.cache
def _study_jobs_statement() -> Any:
    """The query of `lock_study_jobs`, built once: every STOW runs it."""
    return (
        select(inference_jobs).where(inference_jobs.c.study_instance_uid.in_(bindparam("study_uids", expanding=True)))
        .order_by(inference_jobs.c.study_instance_uid, inference_jobs.c.task_id).with_for_update()
    )


def follow_studies(queue: JobQueue, connection: Connection, patients: Mapping[str, str | None]) -> None:
    """`patients`: each changed study's Patient id as `sync_studies` wrote it, None for a study gone."""
    for job in lock_study_jobs(connection, patients):
        patient_id = patients[job.study_instance_uid]
        source_gone = patient_id is None or (
            job.series_instance_uid is not None and not series_exists(connection, job.series_instance_uid)
        )
        if source_gone:
            if job.status == COMPLETED and not job.results_withdrawn:
                _withdraw(queue.store, connection, job.task_id, remove_seg=patient_id is not None)
            _release_content(connection, job)
            continue
        if patient_id != job.patient_id:
            queue.move_to_patient(connection, job.task_id, patient_id)
            if job.status == COMPLETED:
                _rewrite_results(queue.store, connection, job.task_id, {"subject": _patient_reference(patient_id)})
                # Its SEG too, which cannot be stored again inside this transaction: the scheduler does it.
                connection.execute(
                    update(inference_jobs).where(inference_jobs.c.task_id == job.task_id)
                    .values(seg_patient_stale=True)
                )


def supersede_earlier_runs(
    store: ResourceStore, connection: Connection, study_jobs: Sequence[Row[Any]], publishing: str, model_id: int,
    series_uid: str, content: str,
) -> list[str]:
    """Withdraw the results of the model's earlier completed runs on the
    series, for job `publishing`'s, made from `content`, which replace them;
    `study_jobs` as `lock_study_jobs` gave them. Returns the ids of their
    reports. A run of another model, or another version of this one, stands
    beside it."""
    earlier = [
        job for job in study_jobs
        if job.model_id == model_id and job.series_instance_uid == series_uid and job.task_id != publishing
        and job.status == COMPLETED and not job.results_withdrawn
    ]
    for job in earlier:
        _withdraw(store, connection, job.task_id, remove_seg=True)
        if job.series_content != content:
            # It stood for content the series no longer holds: should it hold that again, it runs again.
            # (For the content it holds, the new run stands.)
            _release_content(connection, job)
    return [report_id(job.task_id) for job in earlier]


def _release_content(connection: Connection, job: Row[Any]) -> None:
    """An automatic job that no longer stands for its series' content (`queue.released_content`)."""
    if job.automatic and not is_released(job.series_content):
        connection.execute(
            update(inference_jobs).where(inference_jobs.c.task_id == job.task_id)
            .values(series_content=released_content(job.task_id))
        )


def _withdraw(store: ResourceStore, connection: Connection, task_id: str, remove_seg: bool) -> None:
    """`remove_seg`: the study stays, so the job's SEG must leave it."""
    _rewrite_results(store, connection, task_id, {"status": WITHDRAWN})
    connection.execute(
        update(inference_jobs).where(inference_jobs.c.task_id == task_id)
        .values(results_withdrawn=True, seg_removal_due=remove_seg)
    )


def _rewrite_results(store: ResourceStore, connection: Connection, task_id: str, changes: dict[str, Any]) -> None:
    """A new version of the job's report and of each of its Observations, with `changes`."""
    report = store.current_body("DiagnosticReport", report_id(task_id), connection)
    if report is None:
        return
    pending = [reference["reference"] for reference in report.get("result", [])]
    seen: set[str] = set()
    _put_changed(store, connection, report, changes)
    while pending:
        reference = pending.pop()
        if reference in seen or not reference.startswith("Observation/"):
            continue
        seen.add(reference)
        observation = store.current_body("Observation", reference.removeprefix("Observation/"), connection)
        if observation is not None:
            pending += [member["reference"] for member in observation.get("hasMember", [])]
            _put_changed(store, connection, observation, changes)


def _put_changed(store: ResourceStore, connection: Connection, resource: dict[str, Any], changes: dict[str, Any]) -> None:
    changed = {key: value for key, value in {**resource, **changes}.items() if value is not None}
    if changed != resource:
        store.put(connection, changed, resource["id"], "PUT")


def _patient_reference(patient_id: str | None) -> dict[str, str] | None:
    return None if patient_id is None else {"reference": f"Patient/{patient_id}"}
