"""What a request under a patient context (a SMART launch's token that
names its patient) sees of the types it reaches through patient/ scopes
alone: its patient's compartment (R4 compartmentdefinition-patient.html, as
`$everything` finds it: the reference index's rows of each type's compartment
parameter, `patient`, or `member` for a Group), and of the Patients that
patient only. A Group naming the patient is read whole, its other members'
ids with it: R4 puts it in the compartment by `member`, and SMART's patient/
scopes reach the compartment (README, "Patient context"). A rule of `server.fhir.visibility`, so every
read path keeps to it; DICOMweb keeps to it through `visible_studies`.
"""

from typing import Any

from sqlalchemy import ColumnElement, and_, exists, literal, or_, select

from fhir_mappings.patient_compartment import COMPARTMENT_PARAMETERS, patients_of_json
from server.auth.access import current_principal
from server.auth.scopes import PATIENT_TYPES
from server.tables import fhir_references, fhir_resources, studies

_MEMBERS = fhir_resources.alias("patient_context_members")
_NAMING = fhir_references.alias("patient_context_naming")
_OTHERS = fhir_references.alias("patient_context_others")
# Types whose resource is the context's only while it names no other patient
# besides: an AuditEvent names every patient its request touched (those a
# search matched, the studies a STOW sent, a study asked for and not shown),
# so one that names the context's patient tells of the others too: whose a
# study UID is, what a user searched for. The context sees the events of its
# patient alone.
_ALONE_TYPES = frozenset(("AuditEvent",))


def within_patient_context(types: Any, ids: Any, resource_type: str | None) -> ColumnElement[bool] | None:
    """The visibility rule: None outside a patient context, or for types its other scopes reach whole."""
    principal = current_principal.get()
    if principal is None or principal.patient is None:
        return None
    if resource_type is not None:  # judged for its one type, not for every type the scopes might reach
        return _of_patient(ids, resource_type, principal.patient) if principal.within_patient(resource_type) else None
    kept = [kept_type for kept_type in sorted(PATIENT_TYPES) if principal.within_patient(kept_type)]
    if not kept:
        return None
    return or_(types.not_in(kept), *(and_(types == kept_type, _of_patient(ids, kept_type, principal.patient))
                                     for kept_type in kept))


def version_within_patient_context(resource_type: str, body: bytes) -> bool:
    """The version rule: a past version is the patient context's only if it
    names the patient too. The row rule judges a resource by its compartment
    now, and results follow their study to the Patient a corrected PatientID
    names (`server.jobs.study_changes`): their earlier versions named, and are
    in the compartment of, another patient."""
    principal = current_principal.get()
    if principal is None or principal.patient is None or resource_type == "Patient":
        return True  # a Patient's id is the row rule's test, whatever its versions hold
    if not principal.within_patient(resource_type):
        return True
    patients = patients_of_json(body)
    return principal.patient in patients and (resource_type not in _ALONE_TYPES or set(patients) == {principal.patient})


def visible_studies() -> ColumnElement[bool] | None:
    """The DICOM studies the request may see (a clause on `studies`): under a
    patient context, those whose ImagingStudy (one per study, its id the
    study's UID, its subject the Patient derived from the study's PatientID
    and issuer: `server.fhir.derived`) is in the patient's compartment."""
    return within_patient_context(literal("ImagingStudy"), studies.c.study_instance_uid, "ImagingStudy")


def patient_studies(patient_id: str) -> ColumnElement[bool]:
    """The DICOM studies in the patient's compartment (a clause on `studies`),
    whatever the request may read: what a write under its context may touch."""
    return _of_patient(studies.c.study_instance_uid, "ImagingStudy", patient_id)


def _of_patient(ids: Any, resource_type: str, patient_id: str) -> ColumnElement[bool]:
    if resource_type == "Patient":
        return ids == patient_id
    # Not correlated with the query it joins, whichever tables that one reads.
    members = (
        select(_MEMBERS.c.resource_id)
        .join(_NAMING, _NAMING.c.resource_pk == _MEMBERS.c.id)
        .where(_NAMING.c.param == COMPARTMENT_PARAMETERS[resource_type], _NAMING.c.target_type == "Patient",
               _NAMING.c.target_id == patient_id, _MEMBERS.c.resource_type == resource_type)
        .correlate(None)
    )
    if resource_type in _ALONE_TYPES:
        members = members.where(~exists().where(
            _OTHERS.c.resource_pk == _MEMBERS.c.id, _OTHERS.c.param == COMPARTMENT_PARAMETERS[resource_type],
            _OTHERS.c.target_type == "Patient", _OTHERS.c.target_id != patient_id,
        ).correlate(_MEMBERS))
    return ids.in_(members)
