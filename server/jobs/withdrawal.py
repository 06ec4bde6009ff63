"""Taking back the SEG of a job whose results are gone.

A job stores its SEG before it publishes its FHIR results, and the two
cannot share a transaction (the SEG goes through the STOW ingest path). A
job that then fails for good, or is cancelled, must not leave its SEG in
the study: the worker that saw it end takes it back at once, and the
scheduler sweeps up after workers that died or were cut off first.

Nor may a completed job's SEG stay once its results are withdrawn while its
study stays (`study_changes`: its series deleted, or a later run of its
model superseding it); that transaction marks the job, and the sweep takes
the SEG out of the study.
"""

import logging

from sqlalchemy import exists, select, update

from dicom.errors import NotFound
from inference.seg import SegIdentity
from server.db import reading, write_connection
from server.dicomweb.delete import delete_resources
from server.ingest import Ingestor
from server.jobs.queue import CANCELLED, FAILED, JobQueue
from server.tables import inference_jobs, series

log = logging.getLogger(__name__)
_BATCH = 100


def withdraw_results(queue: JobQueue, ingestor: Ingestor, task_id: str) -> None:
    """If the job has ended without results, delete its SEG series (if any)
    and record that it is gone. A job queued again, or taken over by another
    worker, keeps it: its next run stores the same instance again."""
    job = queue.get(task_id)
    if job is None or job.status not in (FAILED, CANCELLED):
        return
    _delete_seg(queue, ingestor, job.study_instance_uid, task_id)
    with write_connection(queue.engine) as connection:
        connection.execute(
            update(inference_jobs).where(inference_jobs.c.task_id == task_id).values(results_withdrawn=True)
        )


def sweep(queue: JobQueue, ingestor: Ingestor) -> None:
    with reading(queue.engine) as connection:
        ended = connection.execute(
            select(inference_jobs.c.task_id)
            .where(inference_jobs.c.status.in_((FAILED, CANCELLED)), inference_jobs.c.results_withdrawn.is_(False))
            .limit(_BATCH)
        ).scalars().all()
        withdrawn = connection.execute(
            select(inference_jobs.c.task_id, inference_jobs.c.study_instance_uid)
            .where(inference_jobs.c.seg_removal_due).limit(_BATCH)
        ).all()
    for task_id in ended:
        withdraw_results(queue, ingestor, task_id)
    for job in withdrawn:
        _delete_seg(queue, ingestor, job.study_instance_uid, job.task_id)
        # Done only if the SEG is gone: another server process may have stored it again meanwhile
        # (`seg_patients`), and then the next sweep takes it out again. A crash before this leaves it due.
        seg_uid = SegIdentity.for_job(job.task_id).series_instance_uid
        with write_connection(queue.engine) as connection:
            connection.execute(
                update(inference_jobs)
                .where(inference_jobs.c.task_id == job.task_id,
                       ~exists().where(series.c.series_instance_uid == seg_uid))
                .values(seg_removal_due=False)
            )


def _delete_seg(queue: JobQueue, ingestor: Ingestor, study_uid: str, task_id: str) -> None:
    try:
        delete_resources(queue.engine, ingestor, study_uid, SegIdentity.for_job(task_id).series_instance_uid)
    except NotFound:
        pass
