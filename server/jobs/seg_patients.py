"""A job's SEG follows its study's patient.

A SEG copies the patient module from the images it was made from. When a
corrected PatientID moves the study to another patient (`study_changes`),
a PACS retrieving the study must not get a segmentation filed under the old
patient. The SEG cannot be stored again inside the transaction of that change
(storing goes through the ingest path), so `study_changes` marks the job and
the scheduler's tick stores the SEG again with the study's patient module:
same instance, same UIDs, the patient's attributes (group 0010) replaced.
"""

import logging
from typing import Any

import orjson
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import Connection, Engine, select, update

from inference.seg import SegIdentity
from server.db import reading, write_connection
from server.ingest import Ingestor, prepare_dataset
from server.storage import FileStore
from server.tables import inference_jobs, instances, series, studies

log = logging.getLogger(__name__)

_PATIENT_GROUP = 0x0010
# Type 2 in the SEG IOD's Patient Module: present, if empty (PS3.3 C.7.1.1).
_REQUIRED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")


def refresh_seg_patients(engine: Engine, ingestor: Ingestor, files: FileStore, limit: int = 20) -> None:
    with reading(engine) as connection:
        stale = connection.execute(
            select(inference_jobs.c.task_id, inference_jobs.c.study_instance_uid)
            # A withdrawn job's SEG is on its way out of the study (`withdrawal`): not stored again.
            .where(inference_jobs.c.seg_patient_stale, inference_jobs.c.results_withdrawn.is_(False)).limit(limit)
        ).all()
    for job in stale:
        try:
            _refresh(engine, ingestor, files, job.task_id, job.study_instance_uid)
        except Exception:  # one SEG (a file gone, say) must not hold up the others; the next tick tries again
            log.exception("could not give the SEG of job %s its study's patient", job.task_id)


def _refresh(engine: Engine, ingestor: Ingestor, files: FileStore, task_id: str, study_uid: str) -> None:
    seg_uid = SegIdentity.for_job(task_id).series_instance_uid
    patient = _study_patient(engine, study_uid)
    with reading(engine) as connection:
        paths = connection.execute(
            select(instances.c.file_path).join(series, instances.c.series_pk == series.c.id)
            .where(series.c.series_instance_uid == seg_uid)
        ).scalars().all()
    if patient is not None and paths:
        prepared = [prepare_dataset(files, _with_patient(files, path, patient)) for path in paths]
        failed = [outcome for outcome in ingestor.store_batch(prepared) if outcome.failure is not None]
        if failed:
            raise RuntimeError(f"the SEG could not be stored again: {failed[0].detail or failed[0].failure}")
    with write_connection(engine) as connection:
        # Done unless the patient changed again meanwhile (then it is marked again, or stays marked).
        if _study_patient(engine, study_uid, connection) == patient:
            connection.execute(
                update(inference_jobs).where(inference_jobs.c.task_id == task_id).values(seg_patient_stale=False)
            )
        # Withdrawn while it was stored again (another server process's sweep may already have taken the
        # SEG out, before it came back): the sweep takes it out again.
        connection.execute(
            update(inference_jobs).where(inference_jobs.c.task_id == task_id, inference_jobs.c.results_withdrawn)
            .values(seg_removal_due=True)
        )


def _study_patient(engine: Engine, study_uid: str, connection: Connection | None = None) -> dict[str, Any] | None:
    """The study's patient attributes (DICOM JSON); None when the study is gone."""
    with reading(engine, connection) as session:
        stored = session.execute(
            select(studies.c.attributes_json).where(studies.c.study_instance_uid == study_uid)
        ).scalar_one_or_none()
    if stored is None:
        return None
    return {
        tag: element for tag, element in orjson.loads(stored).items()
        if int(tag, 16) >> 16 == _PATIENT_GROUP and "BulkDataURI" not in element
    }


def _with_patient(files: FileStore, path: str, patient: dict[str, Any]) -> Dataset:
    """The SEG file at `path` with the patient module replaced."""
    dataset = pydicom.dcmread(files.absolute(path))
    for element in [element for element in dataset if element.tag.group == _PATIENT_GROUP]:
        del dataset[element.tag]
    dataset.update(Dataset.from_json(patient))
    for keyword in _REQUIRED:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    return dataset
