"""DELETE of a study, series or instance: rows and files together.

The rows go and the files are journaled in one transaction; the files are
deleted after the commit. A crash in between leaves journaled files that no
row references, which start-up recovery removes.
"""

from sqlalchemy import Engine, delete, select

from dicom.errors import NotFound
from server import index
from server.db import write_connection
from server.dicomweb.patient_writes import PatientWrites
from server.fhir.patient_context import patient_studies
from server.ingest import Ingestor, StudyChange
from server.tables import instances, series, studies


def delete_resources(
    engine: Engine, ingestor: Ingestor, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None,
    patient: str | None = None,
) -> int:
    """Delete what the UIDs address, in `patient`'s compartment only when
    given (a patient context's patient/ scopes delete there alone); returns
    the number of instances removed."""
    statement = (
        select(instances.c.id, instances.c.file_path, instances.c.series_pk)
        .join_from(instances, series, instances.c.series_pk == series.c.id)
        .join(studies, instances.c.study_pk == studies.c.id)
        .where(studies.c.study_instance_uid == study_uid)
    )
    if series_uid is not None:
        statement = statement.where(series.c.series_instance_uid == series_uid)
    if sop_uid is not None:
        statement = statement.where(instances.c.sop_instance_uid == sop_uid)
    if patient is not None:  # another patient's study is, to the context, not there: as its reads find it
        statement = statement.where(patient_studies(patient))
    with write_connection(engine) as connection:
        # The study row first, as STOW's upsert does: DELETE and STOW of one
        # study then queue on it (PostgreSQL) instead of deadlocking or
        # describing the study from different snapshots.
        index.hold_studies(connection, [study_uid])
        connection.execute(select(studies.c.id).where(studies.c.study_instance_uid == study_uid).with_for_update())
        rows = connection.execute(statement).all()
        if not rows:
            within = f" in Patient/{patient}'s compartment, where this token deletes" if patient is not None else ""
            raise NotFound(_describe(study_uid, series_uid, sop_uid) + f" is not stored here{within}")
        paths = [row.file_path for row in rows]
        index.journal_files(connection, paths)
        ids = [row.id for row in rows]
        for start in range(0, len(ids), 500):
            connection.execute(delete(instances).where(instances.c.id.in_(ids[start : start + 500])))
        for series_pk in {row.series_pk for row in rows}:
            index.refresh_parents(connection, series_pk)
        ingestor.studies_changed(connection, {study_uid}, StudyChange.DELETED)
        if patient is not None:  # what the study is left with must not name another patient: rolled back if so
            PatientWrites(patient).after(connection, {study_uid})
    ingestor.discard(paths)
    return len(rows)


def _describe(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid is not None:
        return f"instance {sop_uid} of series {series_uid} in study {study_uid}"
    if series_uid is not None:
        return f"series {series_uid} in study {study_uid}"
    return f"study {study_uid}"
