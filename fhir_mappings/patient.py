"""FHIR Patient from the DICOM Patient module (PS3.3 C.7.1.1).

One Patient per (PatientID, IssuerOfPatientID). Its id is a digest of that
pair, so the same patient arriving in many studies, in any order, maps to
one resource without a lookup table.
"""

import hashlib
import re
from dataclasses import dataclass

from fhir_mappings.date_ranges import date_from_dicom
from fhir_mappings.resources import fhir_text, validated

# PS3.3 C.7.1.1 PatientSex: M, F, O; FHIR R4 administrative-gender.
_GENDER = {"M": "male", "F": "female", "O": "other"}
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


@dataclass(frozen=True)
class PatientRecord:
    patient_id: str | None
    issuer_of_patient_id: str | None
    name: str | None
    birth_date: str | None
    sex: str | None
    # When PatientID is absent, the study stands in for the patient: studies
    # without an ID must not merge into one anonymous person.
    study_instance_uid: str


def patient_resource_id(record: PatientRecord) -> str:
    # An ID of nothing but spaces or control characters (`fhir_text`) is no ID: it must not make everyone
    # sent with it one person. Any other is keyed as sent, as Patients stored before were.
    key = (
        f"id\0{record.issuer_of_patient_id or ''}\0{record.patient_id}"
        if fhir_text(record.patient_id)
        else f"study\0{record.study_instance_uid}"
    )
    return "dcm-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def identifier_system(issuer: str | None) -> str | None:
    """IssuerOfPatientID as a URI where it is one; free text cannot be a FHIR system."""
    if not issuer:
        return None
    if _OID.fullmatch(issuer):
        return f"urn:oid:{issuer}"
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", issuer):  # a FHIR uri holds no whitespace
        return issuer
    return None


def human_name(person_name: str) -> dict[str, object] | None:
    """The alphabetic group of a DICOM PN (PS3.5 6.2.1) as a HumanName."""
    alphabetic = person_name.split("=")[0]
    family, given, middle, prefix, suffix = (alphabetic.split("^") + [""] * 5)[:5]
    name: dict[str, object] = {}
    if family.strip():
        name["family"] = family.strip()
    givens = [part.strip() for part in (given, middle) if part.strip()]
    if givens:
        name["given"] = givens
    if prefix.strip():
        name["prefix"] = [prefix.strip()]
    if suffix.strip():
        name["suffix"] = [suffix.strip()]
    if not name:
        return None
    name["text"] = " ".join(
        part for part in [prefix.strip(), given.strip(), middle.strip(), family.strip(), suffix.strip()] if part
    )
    return name


def patient_from_dicom(record: PatientRecord) -> dict[str, object]:
    """The Patient as JSON, validated against the R4 model."""
    return validated(patient_body(record))


def patient_body(record: PatientRecord) -> dict[str, object]:
    """The Patient as JSON, not yet validated: the server validates it only
    when it differs from the Patient stored (every STOW of a study builds
    its Patient again, the same as before almost always)."""
    body: dict[str, object] = {"resourceType": "Patient", "id": patient_resource_id(record)}
    patient_id, issuer = fhir_text(record.patient_id), fhir_text(record.issuer_of_patient_id)
    if patient_id:
        identifier: dict[str, object] = {"value": patient_id}
        system = identifier_system(issuer)
        if system:
            identifier["system"] = system
        elif issuer:
            identifier["assigner"] = {"display": issuer}
        body["identifier"] = [identifier]
    person_name = fhir_text(record.name)
    name = human_name(person_name) if person_name else None
    if name:
        body["name"] = [name]
    sex = fhir_text(record.sex)
    if sex:
        body["gender"] = _GENDER.get(sex.upper(), "unknown")
    date = date_from_dicom(record.birth_date)
    if date:
        body["birthDate"] = date
    return body
