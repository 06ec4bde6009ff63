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
from fhir_mappings.resources import fhir_code, fhir_text, validated

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


def imaging_study_from_dicom(study: StudyRecord, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ImagingStudy as JSON, validated against the R4 model.

    `stored`: the study's current ImagingStudy, which was validated when it
    was written. Its instances that are still the same are not validated
    again: a study sent an instance at a time (as PACS forward them) would
    otherwise have its earlier instances validated at every arrival, 50 ms a
    STOW by the 1,000th. An instance's validity depends on nothing around
    it: R4 has no invariant across ImagingStudy's elements."""
    identifiers: list[dict[str, object]] = [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"}
    ]
    accession = fhir_text(study.accession_number)
    if accession:
        identifiers.append(
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": accession,
            }
        )
    modalities = sorted({modality for series in study.series if (modality := fhir_code(series.modality))})
    known = _instances_of(stored)
    series_items, unchecked_items = [], []
    for series in study.series:
        instances = [_instance(instance) for instance in series.instances]
        series_items.append(_series(series, instances))
        unchecked_items.append(_series(series, [item for item in instances if known.get(item["uid"]) != item]))
    body: dict[str, object] = {
        "resourceType": "ImagingStudy",
        "id": study.study_instance_uid,
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": f"Patient/{study.patient_resource_id}"},
        "endpoint": [{"reference": f"Endpoint/{WADO_ENDPOINT_ID}"}],
        "numberOfSeries": len(study.series),
        "numberOfInstances": sum(len(series.instances) for series in study.series),
        "series": unchecked_items,
    }
    if modalities:
        body["modality"] = [{"system": DCM, "code": code} for code in modalities]
    started = date_from_dicom(study.study_date)
    if started:
        # StudyTime has no zone unless TimezoneOffsetFromUTC is sent, and an
        # R4 dateTime with a time must have one: the date alone is honest.
        body["started"] = started
    description = fhir_text(study.description)
    if description:
        body["description"] = description
    validated(body)
    body["series"] = series_items
    return body


def _instances_of(stored: dict[str, Any] | None) -> dict[str, Any]:
    """The instance elements of a stored ImagingStudy, by UID."""
    if stored is None:
        return {}
    return {instance["uid"]: instance for series in stored.get("series", ()) for instance in series.get("instance", ())}


def _series(series: SeriesRecord, instances: list[dict[str, object]]) -> dict[str, object]:
    item: dict[str, object] = {
        "uid": series.series_instance_uid,
        "modality": {"system": DCM, "code": fhir_code(series.modality) or "OT"},
        "numberOfInstances": len(series.instances),
    }
    if instances:  # every series has some; only the part left to validate may have none
        item["instance"] = instances
    if _unsigned(series.series_number) is not None:
        item["number"] = series.series_number
    description = fhir_text(series.description)
    if description:
        item["description"] = description
    site = body_site(series.body_part_examined)
    if site is not None:
        item["bodySite"] = site
    return item


def body_site(body_part_examined: str | None) -> dict[str, str] | None:
    """BodyPartExamined as a Coding: SNOMED CT where the table knows it, else its text as display."""
    text = fhir_text(body_part_examined)
    if text is None:
        return None
    known = _BODY_PARTS.get(text.upper())
    return {"system": SNOMED, "code": known[0], "display": known[1]} if known else {"display": text}


def _instance(instance: InstanceRecord) -> dict[str, object]:
    # Nothing here needs `fhir_text`: the STOW took only UIDs of digits and dots.
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
