"""STOW-RS under a patient context whose patient/ scopes alone let it
create ImagingStudies (`server.auth.scopes.PATIENT_WRITES`): every instance
must stay within the patient's compartment, before and after.

An instance names its patient (PatientID and its issuer, as
`server.fhir.derived` makes the Patient id); and since the study's patient
is the one its latest instance names (a corrected PatientID moves a study),
and an instance stored again under another study leaves its old one, an
instance may join a study, a series, or replace an instance, only where that
one is in the patient's compartment already. Otherwise an app held to one
patient could pull another patient's study into its own compartment (to
read it) or take instances out of it. One instance out refuses the request
whole, before anything is stored.

Checked before the batch is indexed: a study of another patient that is
first stored, with the same new UID, between this check and the index
commit would be joined; its UID is what such a race must guess.
"""

from collections.abc import Iterator, Sequence

from sqlalchemy import Engine, select

from dicom.errors import Forbidden
from dicom.instance import InstanceDescription
from server.auth.access import current_principal
from server.db import reading
from server.fhir.derived import instance_patient_id
from server.fhir.patient_context import patient_studies
from server.ingest import PreparedFile
from server.tables import instances, series, studies

_CHUNK = 500  # UIDs bound at once: well within every database's limit on parameters


def require_within_patient(engine: Engine, batch: Sequence[PreparedFile]) -> None:
    """Raises Forbidden when the request's patient context must keep this
    STOW to its patient's compartment, and some instance of `batch` leaves it."""
    principal = current_principal.get()
    patient = principal.write_compartment("ImagingStudy", "c") if principal is not None else None
    if patient is None:
        return
    described = [prepared.description for prepared in batch if prepared.description is not None]
    for description in described:
        if instance_patient_id(description) != patient:
            raise Forbidden(
                f"instance {description.instance.sop_instance_uid} names another patient than Patient/{patient}, "
                "the only one this token's patient/ scopes store for"
            )
    outside = ~patient_studies(patient)
    with reading(engine) as connection:
        for chunk in _chunks(described):
            study_uids = {description.study.study_instance_uid for description in chunk}
            series_uids = {description.series.series_instance_uid for description in chunk}
            sop_uids = {description.instance.sop_instance_uid for description in chunk}
            taken = connection.execute(
                select(studies.c.study_instance_uid).where(studies.c.study_instance_uid.in_(study_uids), outside)
                .union_all(
                    select(series.c.series_instance_uid).join(studies, series.c.study_pk == studies.c.id)
                    .where(series.c.series_instance_uid.in_(series_uids), outside),
                    select(instances.c.sop_instance_uid).join(studies, instances.c.study_pk == studies.c.id)
                    .where(instances.c.sop_instance_uid.in_(sop_uids), outside),
                ).limit(1)
            ).scalar()
            if taken is not None:
                raise Forbidden(
                    f"{taken} is stored outside Patient/{patient}'s compartment: this token's patient/ scopes add "
                    "to, or replace in, that compartment only"
                )


def _chunks(described: list[InstanceDescription]) -> Iterator[list[InstanceDescription]]:
    for start in range(0, len(described), _CHUNK):
        yield described[start:start + _CHUNK]
