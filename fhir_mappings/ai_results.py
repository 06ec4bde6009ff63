"""One finished inference job as FHIR R4 DiagnosticReport, Observations and Provenance.

Shape (FHIR R4 diagnosticreport.html, observation.html "Observation grouping"):
the report's `result` lists each segment's COUNT and TOTAL_VOLUME
Observations and one Observation per finding (its code the segment's finding
code), which groups that finding's measurements with `hasMember`. In R4 a
report's performer cannot be a Device, so the model is named by
`Observation.device` and by the Provenance's author agent; every report and
Observation carries the AI Transparency label AIAST in `meta.security`.

Ids come from the task id, segment label, finding number and kind alone:
publishing the same job again writes the same resources, not new ones.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dicom.uids import is_safe_uid
from fhir_mappings.date_ranges import date_range, instant_text, to_micros
from fhir_mappings.errors import InvalidResource
from fhir_mappings.imaging_study import body_site
from fhir_mappings.quantities import ucum_quantity
from fhir_mappings.resources import RESOURCE_ID, validated
from inference.findings import Finding, SegmentFindings
from inference.model_card import Code, Measurement, MeasurementKind, ModelCard

# FHIR R4 v3-ObservationValue, as HL7 AI Transparency on FHIR uses it.
AI_ASSERTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
_RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
_IMAGING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging", "display": "Imaging"}
_IMAGING_STUDY_REPORT = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
_AUTHOR = {
    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
    "code": "author",
    "display": "Author",
}

# diagnostic-report-status to observation-status (FHIR R4 valueset-*.html of
# each): `partial` has only preliminary results yet; `appended` is a kind of
# `amended` in both hierarchies, but only the report's list has its own code.
_OBSERVATION_STATUS = {
    "registered": "registered",
    "partial": "preliminary",
    "preliminary": "preliminary",
    "final": "final",
    "amended": "amended",
    "corrected": "corrected",
    "appended": "amended",
    "cancelled": "cancelled",
    "entered-in-error": "entered-in-error",
    "unknown": "unknown",
}

# Findings are measured in mL and mm (inference/findings.py); the card picks
# the UCUM unit each measurement is reported in.
_PER_ML = {"mL": 1.0, "cm3": 1.0, "mm3": 1000.0}
_PER_MM = {"mm": 1.0, "cm": 0.1}

# Centroid components: DICOM has no concept for "the x coordinate of a point"
# (110901-110903 are the corner of an image), so each component is coded by the
# patient axis it runs along, PS3.16 CID 7184; the text fixes the LPS sign.
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_CENTROID_AXES = (
    ("110860", "Left-Right Axis", "x: towards the patient's left (L), mm, DICOM patient coordinates"),
    ("110862", "Anterior-Posterior Axis", "y: towards posterior (P), mm, DICOM patient coordinates"),
    ("110861", "Head-Foot Axis", "z: towards the head (S), mm, DICOM patient coordinates"),
)

# Short kind names keep `<uuid>-s<label>-f<n>-<kind>` far below 64 characters.
_ID_KIND = {
    MeasurementKind.COUNT: "n",
    MeasurementKind.TOTAL_VOLUME: "vol",
    MeasurementKind.FINDING_VOLUME: "vol",
    MeasurementKind.CENTROID: "ctr",
    MeasurementKind.LONGEST_DIAMETER: "diam",
}


@dataclass(frozen=True)
class FinishedJob:
    """What one successful run produced, with the ids of what it is about."""

    task_id: str
    imaging_study_id: str
    patient_id: str | None
    device_id: str
    card: ModelCard
    findings: Sequence[SegmentFindings]
    seg_series_uid: str | None
    # When what was measured was imaged (R4: "usually the time of the procedure"),
    # a FHIR date as ImagingStudy.started gives it; None when the study has no date.
    # When it was measured is `issued`.
    effective: str | None
    issued: datetime
    report_status: str = "preliminary"
    body_part_examined: str | None = None  # of the source series: the Observations' bodySite
    # Reports of earlier runs of the model on the series, which these results replace.
    revised_reports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("task_id", "imaging_study_id", "patient_id", "device_id"):
            value = getattr(self, name)
            if value is not None and not RESOURCE_ID.fullmatch(value):
                raise ValueError(f"{name} {value!r} is not a FHIR id")
        if not all(RESOURCE_ID.fullmatch(revised) for revised in self.revised_reports):
            raise ValueError(f"revised_reports {self.revised_reports!r} are not all FHIR ids")
        if self.seg_series_uid is not None and not is_safe_uid(self.seg_series_uid):
            raise ValueError(f"{self.seg_series_uid!r} is not a DICOM UID")
        if self.effective is not None and date_range(self.effective) is None:
            raise ValueError(f"effective {self.effective!r} is not a FHIR date")
        if self.issued.tzinfo is None:
            raise ValueError("issued needs a time zone: a FHIR instant must have one")
        # The status may come from a client amending or finalising the report;
        # the rest comes from the server itself, so a bad value is a bug there.
        if self.report_status not in _OBSERVATION_STATUS:
            raise InvalidResource(
                f"{self.report_status!r} is not a DiagnosticReport status ({', '.join(_OBSERVATION_STATUS)})"
            )
        _check_segments(self.card, self.findings)


def _check_segments(card: ModelCard, findings: Sequence[SegmentFindings]) -> None:
    """Observation ids hold the label: two findings of one label would share ids."""
    labels = [item.segment.label for item in findings]
    if len(set(labels)) != len(labels):
        raise ValueError(f"findings list a segment label twice: {labels}")
    stray = [item.segment.name for item in findings if item.segment not in card.segments]
    if stray:
        raise ValueError(f"findings for segments model {card.key} does not declare: {stray}")


@dataclass(frozen=True)
class ResultResources:
    report: dict[str, Any]
    observations: tuple[dict[str, Any], ...]  # members before the groups that list them
    provenance: dict[str, Any]

    def all(self) -> list[dict[str, Any]]:
        """Write order: each resource after those it references."""
        return [*self.observations, self.report, self.provenance]


def report_id(task_id: str) -> str:
    """The job's DiagnosticReport (and Provenance) share the Task's id: ids are per type."""
    return task_id


def result_resources(job: FinishedJob) -> ResultResources:
    """The report, its Observations and their Provenance, each validated against the R4 model."""
    observations: list[dict[str, Any]] = []
    top_level: list[str] = []
    for segment_findings in job.findings:
        for observation, is_top_level in _segment_observations(job, segment_findings):
            observations.append(observation)
            if is_top_level:
                top_level.append(observation["id"])
    report = _report(job, top_level)
    return ResultResources(report, tuple(observations), _provenance(job, report, observations))


def _segment_observations(job: FinishedJob, found: SegmentFindings) -> list[tuple[dict[str, Any], bool]]:
    """Observations of one segment, each with whether the report lists it itself."""
    segment = found.segment
    made: list[tuple[dict[str, Any], bool]] = []
    count = segment.measurement(MeasurementKind.COUNT)
    if count:
        resource_id = _id(job, segment.label, None, count.kind)
        made.append((_observation(job, resource_id, count.code, valueInteger=found.count), True))
    total = segment.measurement(MeasurementKind.TOTAL_VOLUME)
    if total:
        resource_id = _id(job, segment.label, None, total.kind)
        quantity = ucum_quantity(found.total_volume_ml * _PER_ML[total.unit], total.unit)
        made.append((_observation(job, resource_id, total.code, valueQuantity=quantity), True))
    per_finding = [measurement for measurement in segment.measurements if measurement.kind.per_finding]
    for number, finding in enumerate(found.findings, start=1):
        members = [_finding_measurement(job, segment.label, number, finding, item) for item in per_finding]
        made += [(member, False) for member in members]
        grouping = {"hasMember": [{"reference": f"Observation/{member['id']}"} for member in members]} if members else {}
        made.append((_observation(job, _id(job, segment.label, number, None), segment.finding, **grouping), True))
    return made


def _finding_measurement(
    job: FinishedJob, label: int, number: int, finding: Finding, measurement: Measurement
) -> dict[str, Any]:
    unit = measurement.unit
    match measurement.kind:
        case MeasurementKind.FINDING_VOLUME:
            value: dict[str, Any] = {"valueQuantity": ucum_quantity(finding.volume_ml * _PER_ML[unit], unit)}
        case MeasurementKind.LONGEST_DIAMETER:
            value = {"valueQuantity": ucum_quantity(finding.longest_diameter_mm * _PER_MM[unit], unit)}
        case MeasurementKind.CENTROID:
            value = {
                "component": [
                    {
                        "code": {"coding": [{"system": _DCM, "code": code, "display": display}], "text": text},
                        "valueQuantity": ucum_quantity(coordinate, unit),
                    }
                    for (code, display, text), coordinate in zip(_CENTROID_AXES, finding.centroid_lps, strict=True)
                ]
            }
        case _:
            raise ValueError(f"{measurement.kind.value} is not measured per finding")
    return _observation(job, _id(job, label, number, measurement.kind), measurement.code, **value)


def _observation(job: FinishedJob, resource_id: str, code: Code, **value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": {"security": [AI_ASSERTED]},
        "status": _OBSERVATION_STATUS[job.report_status],
        "category": [{"coding": [_IMAGING]}],
        "code": _concept(code),
        **_subject(job),
        **_effective(job),
        "issued": _instant(job.issued),
        "device": {"reference": f"Device/{job.device_id}"},
        "derivedFrom": [{"reference": f"ImagingStudy/{job.imaging_study_id}"}],
        **value,
    }
    site = body_site(job.body_part_examined)
    if site is not None:
        body["bodySite"] = {"coding": [site]} if "code" in site else {"text": site["display"]}
    return validated(body)


def _effective(job: FinishedJob) -> dict[str, str]:
    return {"effectiveDateTime": job.effective} if job.effective is not None else {}


def _report(job: FinishedJob, results: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id(job.task_id),
        "meta": {"security": [AI_ASSERTED]},
        "status": job.report_status,
        "category": [{"coding": [_RADIOLOGY]}],
        "code": {"coding": [_IMAGING_STUDY_REPORT]},
        **_subject(job),
        **_effective(job),
        "issued": _instant(job.issued),
        "imagingStudy": [{"reference": f"ImagingStudy/{job.imaging_study_id}"}],
        "conclusion": _conclusion(job),
    }
    if results:
        body["result"] = [{"reference": f"Observation/{resource_id}"} for resource_id in results]
    return validated(body)


def _provenance(job: FinishedJob, report: dict[str, Any], observations: list[dict[str, Any]]) -> dict[str, Any]:
    targets = [report, *observations]
    return validated(
        {
            "resourceType": "Provenance",
            "id": report_id(job.task_id),
            "target": [{"reference": f"{target['resourceType']}/{target['id']}"} for target in targets],
            "recorded": _instant(job.issued),
            "agent": [{"type": {"coding": [_AUTHOR]}, "who": {"reference": f"Device/{job.device_id}"}}],
            "entity": [
                {"role": "source", "what": {"reference": f"ImagingStudy/{job.imaging_study_id}"}},
                # provenance-entity-role: the report this one is a revised version of.
                *({"role": "revision", "what": {"reference": f"DiagnosticReport/{revised}"}}
                  for revised in job.revised_reports),
            ],
        }
    )


def _conclusion(job: FinishedJob) -> str:
    """E.g. "2 lesions, 14.2 mL in total (model demo@1.0.0); segmentation: DICOM SEG series 1.2.3"."""
    parts = [_segment_summary(found) for found in job.findings] or ["no segment reported"]
    text = f"{'; '.join(parts)} (model {job.card.key})"
    if job.seg_series_uid:
        text += f"; segmentation: DICOM SEG series {job.seg_series_uid}"
    return text


def _segment_summary(found: SegmentFindings) -> str:
    noun = found.segment.name if found.count == 1 else f"{found.segment.name}s"
    if not found.count:
        return f"0 {noun}"
    return f"{found.count} {noun}, {found.total_volume_ml:.1f} mL in total"


def _id(job: FinishedJob, label: int, number: int | None, kind: MeasurementKind | None) -> str:
    parts = [job.task_id, f"s{label}"]
    if number is not None:
        parts.append(f"f{number}")
    if kind is not None:
        parts.append(_ID_KIND[kind])
    readable = "-".join(parts)
    # A client-chosen task id can be 64 characters already: then the digest
    # of the readable id, still deterministic and still distinct.
    return readable if len(readable) <= 64 else hashlib.sha256(readable.encode()).hexdigest()


def _subject(job: FinishedJob) -> dict[str, Any]:
    return {"subject": {"reference": f"Patient/{job.patient_id}"}} if job.patient_id else {}


def _concept(code: Code) -> dict[str, Any]:
    return {"coding": [{"system": code.system, "code": code.code, "display": code.display}]}


def _instant(moment: datetime) -> str:
    return instant_text(to_micros(moment))
