"""FHIR ImagingStudy from the DICOM index of one study.

Identifiers follow FHIR R4 imagingstudy.html: the Study Instance UID as
`urn:dicom:uid` / `urn:oid:<uid>`, the accession number typed ACSN (v2-0203);
series and instance UIDs are plain; SOP classes are `urn:oid:` codes of
system `urn:ietf:rfc:3986`; modalities are codes of the DICOM DCM system.
"""

from dataclasses import dataclass
from typing import Any

from fhir_mappings.date_ranges import date_from_dicom
from fhir_mappings.endpoint import WADO_ENDPOINT_ID
from fhir_mappings.resources import validated

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
# BodyPartExamined to SNOMED CT, from PS3.16 Annex L (CID 4031), the common ones.
_BODY_PARTS = {
    "HEAD": ("69536005", "Head"),
    "BRAIN": ("12738006", "Brain"),
    "NECK": ("45048000", "Neck"),
    "CHEST": ("51185008", "Thorax"),
    "LUNG": ("39607008", "Lung"),
    "HEART": ("80891009", "Heart"),
    "BREAST": ("76752008", "Breast"),
    "ABDOMEN": ("818981001", "Abdomen"),
    "LIVER": ("10200004", "Liver"),
    "KIDNEY": ("64033007", "Kidney"),
    "PELVIS": ("12921003", "Pelvis"),
    "PROSTATE": ("41216001", "Prostate"),
    "KNEE": ("72696002", "Knee"),
}


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None


@dataclass(frozen=True)
class SeriesRecord:
    series_instance_uid: str
    series_number: int | None
    modality: str | None
    body_part_examined: str | None
    description: str | None
    instances: tuple[InstanceRecord, ...]


@dataclass(frozen=True)
class StudyRecord:
    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    description: str | None
    patient_resource_id: str
    series: tuple[SeriesRecord, ...]


def imaging_study_from_dicom(study: StudyRecord) -> dict[str, Any]:
    """The ImagingStudy as JSON, validated against the R4 model."""
    identifiers: list[dict[str, object]] = [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"}
    ]
    accession = _text(study.accession_number)
    if accession:
        identifiers.append(
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": accession,
            }
        )
    modalities = sorted({series.modality for series in study.series if series.modality})
    body: dict[str, object] = {
        "resourceType": "ImagingStudy",
        "id": study.study_instance_uid,
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": f"Patient/{study.patient_resource_id}"},
        "endpoint": [{"reference": f"Endpoint/{WADO_ENDPOINT_ID}"}],
        "numberOfSeries": len(study.series),
        "numberOfInstances": sum(len(series.instances) for series in study.series),
        "series": [_series(series) for series in study.series],
    }
    if modalities:
        body["modality"] = [{"system": DCM, "code": code} for code in modalities]
    started = date_from_dicom(study.study_date)
    if started:
        # StudyTime has no zone unless TimezoneOffsetFromUTC is sent, and an
        # R4 dateTime with a time must have one: the date alone is honest.
        body["started"] = started
    if _text(study.description):
        body["description"] = _text(study.description)
    return validated(body)


def _series(series: SeriesRecord) -> dict[str, object]:
    item: dict[str, object] = {
        "uid": series.series_instance_uid,
        "modality": {"system": DCM, "code": series.modality or "OT"},
        "numberOfInstances": len(series.instances),
        "instance": [_instance(instance) for instance in series.instances],
    }
    if _unsigned(series.series_number) is not None:
        item["number"] = series.series_number
    if _text(series.description):
        item["description"] = _text(series.description)
    site = body_site(series.body_part_examined)
    if site is not None:
        item["bodySite"] = site
    return item


def body_site(body_part_examined: str | None) -> dict[str, str] | None:
    """BodyPartExamined as a Coding: SNOMED CT where the table knows it, else its text as display."""
    if not body_part_examined or not body_part_examined.strip():
        return None
    known = _BODY_PARTS.get(body_part_examined.strip().upper())
    return {"system": SNOMED, "code": known[0], "display": known[1]} if known else {"display": body_part_examined.strip()}


def _instance(instance: InstanceRecord) -> dict[str, object]:
    item: dict[str, object] = {
        "uid": instance.sop_instance_uid,
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{instance.sop_class_uid}"},
    }
    if _unsigned(instance.instance_number) is not None:
        item["number"] = instance.instance_number
    return item


# DICOM IS may be negative or huge and LO may be blank; FHIR unsignedInt and
# string may not. Such values are left out rather than refusing the instance.
def _unsigned(value: int | None) -> int | None:
    return value if value is not None and 0 <= value < 2**31 else None


def _text(value: str | None) -> str | None:
    return value.strip() or None if value else None
