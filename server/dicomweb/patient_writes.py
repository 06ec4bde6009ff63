"""Writes of DICOM studies under a patient context whose patient/ scopes
alone allow them (`server.auth.scopes.PATIENT_WRITES`): every study they
touch must stay within the patient's compartment, before and after.

An instance stored names its patient (PatientID and its issuer, as
`server.fhir.derived` makes the Patient id); and since the study's patient
is the one its latest instance names (a corrected PatientID moves a study),
and an instance stored again under another study leaves its old one, an
instance may join a study, a series, or replace an instance, only where that
one is in the patient's compartment already. Otherwise an app held to one
patient could pull another patient's study into its own compartment (to
read it) or take instances out of it. One instance out refuses the request
whole, before anything is stored.

What a study is left with describes it again (`server.index.refresh_parents`):
a study whose older instances name another patient would move to that
patient's compartment when a DELETE, or a STOW that moves an instance away,
leaves one of those newest. A write that leaves a study of its compartment
in another one is refused whole too.

Judged in the transaction that writes (`server.ingest.BatchGuard`), where
the studies are held: a study of another patient first stored between a
check made earlier and the write would otherwise be joined. STOW judges
once before too, on what it has read, so that a refused request writes no
file at all.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select

from dicom.errors import Forbidden
from dicom.instance import InstanceDescription
from server.auth.access import current_principal
from server.db import reading
from server.fhir.derived import instance_patient_id
from server.fhir.patient_context import patient_studies
from server.ingest import PreparedFile
from server.tables import instances, series, studies

_CHUNK = 500  # UIDs bound at once: well within every database's limit on parameters


def writes_compartment(letter: str) -> str | None:
    """The Patient whose compartment this request's writes of DICOM studies
    (`letter`: c or d) must keep to; None when they are not held to one."""
    principal = current_principal.get()
    return principal.write_compartment("ImagingStudy", letter) if principal is not None else None


@dataclass(frozen=True)
class PatientWrites:
    """A `server.ingest.BatchGuard`: the writes of one patient context."""

    patient: str

    def before(self, connection: Connection, described: list[InstanceDescription]) -> None:
        """Raises Forbidden when an instance names another patient, or joins
        or replaces what is outside the compartment."""
        for description in described:
            if instance_patient_id(description) != self.patient:
                raise Forbidden(
                    f"instance {description.instance.sop_instance_uid} names another patient than "
                    f"Patient/{self.patient}, the only one this token's patient/ scopes store for"
                )
        outside = ~patient_studies(self.patient)
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
                    f"{taken} is stored outside Patient/{self.patient}'s compartment: this token's patient/ scopes "
                    "add to, or replace in, that compartment only"
                )

    def after(self, connection: Connection, study_uids: Iterable[str]) -> None:
        """Raises Forbidden when one of the studies is left, described again,
        in another patient's compartment (it is kept in this one, or gone)."""
        ordered = sorted(set(study_uids))
        for start in range(0, len(ordered), _CHUNK):
            moved = connection.execute(select(studies.c.study_instance_uid).where(
                studies.c.study_instance_uid.in_(ordered[start:start + _CHUNK]), ~patient_studies(self.patient),
            ).limit(1)).scalar()
            if moved is not None:
                raise Forbidden(
                    f"study {moved} would be left to another patient than Patient/{self.patient} (its remaining "
                    "instances name another): this token's patient/ scopes keep a study in that compartment, or "
                    "delete it whole"
                )


def require_within_patient(engine: Engine, batch: Sequence[PreparedFile], patient: str) -> None:
    """`PatientWrites.before` on the index as it is now: a request that
    would be refused is refused before any of its files is written."""
    with reading(engine) as connection:
        PatientWrites(patient).before(
            connection, [prepared.description for prepared in batch if prepared.description is not None])


def _chunks(described: list[InstanceDescription]) -> Iterator[list[InstanceDescription]]:
    for start in range(0, len(described), _CHUNK):
        yield described[start:start + _CHUNK]
