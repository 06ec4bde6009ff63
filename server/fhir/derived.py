"""ImagingStudy, Patient and Endpoint kept in step with the DICOM index.

`sync_studies` runs inside the transaction that changed the index (a STOW
batch or a DELETE), so FHIR readers never see a study the DICOM side does
not have, or the reverse. Resources are written in one global order
(ImagingStudies by UID, then Patients by id) so that concurrent batches on
PostgreSQL queue instead of deadlocking.
"""

import functools
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import Connection, bindparam, false, func, select

from dicom.instance import ParentDescription
from fhir_mappings.endpoint import dicomweb_endpoints
from fhir_mappings.errors import FhirError
from fhir_mappings.imaging_study import (
    InstanceRecord,
    SeriesRecord,
    StudyRecord,
    imaging_study_from_dicom,
)
from fhir_mappings.patient import PatientRecord, patient_body, patient_resource_id
from fhir_mappings.resources import validated
from server.db import advisory_locks, note_study_patients
from server.fhir.store import ResourceStore
from server.tables import fhir_references, fhir_resources, instances, series, studies

DERIVED_TYPES = frozenset(("ImagingStudy", "Patient", "Endpoint"))


def sync_studies(store: ResourceStore, connection: Connection, study_uids: Iterable[str]) -> dict[str, str | None]:
    """Each study's Patient id as written now, None for a study gone. Raises
    SQLAlchemyError, or ValueError for a study that cannot be described in
    FHIR (which the mappings avoid by leaving odd values out)."""
    try:
        return _sync(store, connection, study_uids)
    except (ValidationError, FhirError) as error:
        raise ValueError(f"a study could not be mapped to FHIR: {error}") from error


def _sync(store: ResourceStore, connection: Connection, study_uids: Iterable[str]) -> dict[str, str | None]:
    study_writes: list[tuple[str, dict | None]] = []
    patient_keys: dict[str, PatientRecord | None] = {}
    patients: dict[str, str | None] = {}
    # All the studies at once: a STOW of 500 one-instance studies would otherwise ask four times per study.
    uids = sorted(set(study_uids))
    rows = {row.study_instance_uid: row for row in connection.execute(_study_rows_statement(), {"uids": uids})}
    contents = _study_contents(connection, [row.id for row in rows.values()])
    # The ImagingStudies as they are, locked (all of them first, in the one order): their Patients may
    # change too, their instances need no validating again, and `put_many` need not read them again.
    current = store.lock_current(connection, "ImagingStudy", uids)
    stored = {uid: version.document for uid, version in current.items() if not version.deleted}
    for study_uid in uids:
        row = rows.get(study_uid)
        if row is None:
            patients[study_uid] = None
            study_writes.append((study_uid, None))
        else:
            attributes = orjson.loads(row.attributes_json)
            patient = _patient_record(row, attributes)
            patients[study_uid] = patient_resource_id(patient)
            patient_keys.setdefault(patients[study_uid], None)
            record = _study_record(row, attributes, patient, contents.get(row.id, ()))
            study_writes.append((study_uid, imaging_study_from_dicom(record, stored.get(study_uid))))
        if study_uid in stored:
            patient_keys.setdefault(stored[study_uid]["subject"]["reference"].removeprefix("Patient/"), None)
    for study_uid, body in study_writes:
        if body is None:
            store.delete(connection, "ImagingStudy", study_uid)
    store.put_many(
        connection, [(body, study_uid) for study_uid, body in study_writes if body is not None], "PUT",
        skip_unchanged=True, locked=current,
    )
    patient_ids = sorted(patient_keys)
    _lock_patients(connection, patient_ids)
    newest = _newest_studies_of(connection, patient_ids)
    for patient_id in patient_ids:
        if patient_id not in newest:
            store.delete(connection, "Patient", patient_id)
    store.put_many(connection, [
        (patient_body(_patient_record(row, orjson.loads(row.attributes_json))), patient_id)
        for patient_id, row in sorted(newest.items())
    ], "PUT", skip_unchanged=True, check=validated)
    note_study_patients(connection, patients)
    return patients


def _lock_patients(connection: Connection, patient_ids: list[str]) -> None:
    """Serialize writers of each Patient before they decide its fate.

    Two studies of one patient change in two transactions that lock different
    study rows; without this, a DELETE could read "no study left" just before
    a STOW commits a new one, and delete a Patient that is still referenced.
    The Patient row may not exist yet, hence advisory locks."""
    advisory_locks(connection, (f"fhir-patient:{patient_id}" for patient_id in patient_ids))


def ensure_endpoints(store: ResourceStore, connection: Connection, address: str) -> None:
    """Write the DICOMweb Endpoints when missing or when the address changed."""
    store.put_many(connection, [(body, str(body["id"])) for body in dicomweb_endpoints(address)], "PUT",
                   skip_unchanged=True)


def _patient_record(row, attributes: dict) -> PatientRecord:  # type: ignore[no-untyped-def]
    """`attributes`: the row's stored attributes (`attributes_json`), parsed."""
    return PatientRecord(
        # From the stored attributes, not the index columns, which are cut at
        # 64 characters: two long PatientIDs that share their first 64 are two
        # patients, not one.
        patient_id=_full_text(attributes, "00100020", row.patient_id),
        issuer_of_patient_id=_full_text(attributes, "00100021", row.issuer_of_patient_id),
        name=row.patient_name,
        birth_date=row.patient_birth_date,
        sex=row.patient_sex,
        study_instance_uid=row.study_instance_uid,
    )


def _study_contents(connection: Connection, study_pks: list[int]) -> dict[int, list[SeriesRecord]]:
    """Each study's series with their instances, in the ImagingStudy's order."""
    series_statement, instances_statement = _study_contents_statements()
    by_series: dict[int, list[InstanceRecord]] = {}
    # Tuples, not named columns: a study sent an instance per STOW reads all its instances each time.
    for series_pk, sop_instance_uid, sop_class_uid, instance_number in connection.execute(
        instances_statement, {"study_pks": study_pks}
    ):
        by_series.setdefault(series_pk, []).append(InstanceRecord(sop_instance_uid, sop_class_uid, instance_number))
    by_study: dict[int, list[SeriesRecord]] = {}
    for s in connection.execute(series_statement, {"study_pks": study_pks}):
        by_study.setdefault(s.study_pk, []).append(SeriesRecord(
            s.series_instance_uid, s.series_number, s.modality, s.body_part_examined, s.series_description,
            tuple(by_series.get(s.id, ())),
        ))
    return by_study


@functools.cache
def _study_rows_statement() -> Any:
    """The study rows `_sync` reads, built once (every STOW runs it)."""
    return select(studies).where(studies.c.study_instance_uid.in_(bindparam("uids", expanding=True)))


@functools.cache
def _study_contents_statements() -> tuple[Any, Any]:
    """The queries of `_study_contents`, built once. The instances' follows
    the index `ix_instances_study_contents`, which holds every column read."""
    wanted = bindparam("study_pks", expanding=True)
    return (
        select(
            series.c.id, series.c.study_pk, series.c.series_instance_uid, series.c.series_number, series.c.modality,
            series.c.body_part_examined, series.c.series_description,
        ).where(series.c.study_pk.in_(wanted)).order_by(series.c.series_number, series.c.series_instance_uid),
        select(
            instances.c.series_pk, instances.c.sop_instance_uid, instances.c.sop_class_uid, instances.c.instance_number,
        ).where(instances.c.study_pk.in_(wanted)).order_by(instances.c.instance_number, instances.c.sop_instance_uid),
    )


def _study_record(  # type: ignore[no-untyped-def]
    row, attributes: dict, patient: PatientRecord, contents: Iterable[SeriesRecord]
) -> StudyRecord:
    return StudyRecord(
        study_instance_uid=row.study_instance_uid,
        accession_number=_full_text(attributes, "00080050", row.accession_number),
        study_date=row.study_date,
        description=row.study_description,
        patient_resource_id=patient_resource_id(patient),
        series=tuple(contents),
    )


def instance_patient_id(description: ParentDescription) -> str:
    """The id of the Patient an instance names, as its study would be written with it (`_patient_record`)."""
    study, attributes = description.study, description.study_attributes
    return patient_resource_id(PatientRecord(
        patient_id=_full_text(attributes, "00100020", study.patient_id),
        issuer_of_patient_id=_full_text(attributes, "00100021", study.issuer_of_patient_id),
        name=None, birth_date=None, sex=None, study_instance_uid=study.study_instance_uid,
    ))


def _full_text(attributes: dict, tag: str, indexed: str | None) -> str | None:
    """A text attribute as stored (DICOM JSON); the indexed value when it is not there."""
    values = attributes.get(tag, {}).get("Value") or []
    return values[0] if values and isinstance(values[0], str) else indexed


def study_patients(connection: Connection, study_uids: Iterable[str]) -> dict[str, str]:
    """The Patient id of each stored study (by its ImagingStudy), in one query."""
    rows = connection.execute(
        select(fhir_resources.c.resource_id, fhir_references.c.target_id)
        .join(fhir_resources, fhir_resources.c.id == fhir_references.c.resource_pk)
        .where(
            fhir_resources.c.resource_type == "ImagingStudy",
            fhir_resources.c.resource_id.in_(sorted(set(study_uids))),
            fhir_references.c.param == "patient",
        )
    )
    return {study_uid: patient_id for study_uid, patient_id in rows}


def _newest_studies_of(connection: Connection, patient_ids: list[str]) -> dict[str, Any]:
    """For each Patient id with a study left, its most recently updated study row."""
    if not patient_ids:
        return {}
    rows = connection.execute(_newest_studies_statement(), {"patient_ids": patient_ids})
    return {row.fhir_patient_id: row for row in rows}


@functools.cache
def _newest_studies_statement() -> Any:
    """The query of `_newest_studies_of`, built once: building it took SQLAlchemy
    0.6 ms, a twentieth of a one-instance STOW (it runs in every one)."""
    subject = fhir_references.c.target_id.label("fhir_patient_id")
    ranked = (
        select(studies, subject, func.row_number().over(
            partition_by=fhir_references.c.target_id, order_by=(studies.c.updated_at.desc(), studies.c.id.desc()),
        ).label("rank"))
        .join(fhir_resources, fhir_resources.c.resource_id == studies.c.study_instance_uid)
        .join(fhir_references, fhir_references.c.resource_pk == fhir_resources.c.id)
        .where(
            fhir_resources.c.resource_type == "ImagingStudy",
            fhir_resources.c.deleted == false(),
            fhir_references.c.param == "patient",
            fhir_references.c.target_id.in_(bindparam("patient_ids", expanding=True)),
        )
        .subquery()
    )
    return select(ranked).where(ranked.c.rank == 1)
