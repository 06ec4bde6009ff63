"""fhir_mappings/ai_results.py: a finished job as DiagnosticReport, Observations and Provenance."""

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from conformance.fhir_schema import validate_fhir
from fhir_mappings.ai_results import (
    AI_ASSERTED,
    FinishedJob,
    ResultResources,
    result_resources,
)
from fhir_mappings.errors import InvalidResource
from fhir_mappings.resources import RESOURCE_ID, validated
from inference.findings import Finding, SegmentFindings
from inference.model_card import ModelCard
from tests.ai_cards import CENTER, COUNT_CODE, LESION, LONG_AXIS, VOLUME, demo_card

TASK_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
STUDY_ID = "1.2.826.0.1.3680043.8.498.1"
SEG_UID = "1.2.826.0.1.3680043.8.498.99"
DEVICE_ID = "demo-1.0.0-a3e904fc01"
EFFECTIVE = "2024-05-01"
ISSUED = datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))
ISSUED_TEXT = "2024-05-01T10:30:15.250000Z"
UCUM = "http://unitsofmeasure.org"
BIG = Finding(volume_ml=10.1234, centroid_lps=(12.5, -40.25, 101.0), longest_diameter_mm=31.4, voxel_count=12000)
SMALL = Finding(volume_ml=4.1, centroid_lps=(-60.0, 10.0, 88.5), longest_diameter_mm=19.96, voxel_count=4800)


def _job(card: ModelCard | None = None, found: tuple[Finding, ...] = (BIG, SMALL), **changes) -> FinishedJob:
    card = card or demo_card()
    job = FinishedJob(
        task_id=TASK_ID,
        imaging_study_id=STUDY_ID,
        patient_id="dcm-patient-1",
        device_id=DEVICE_ID,
        card=card,
        findings=[SegmentFindings(card.segments[0], found)],
        seg_series_uid=SEG_UID,
        effective=EFFECTIVE,
        issued=ISSUED,
    )
    return dataclasses.replace(job, **changes)


def _by_id(results: ResultResources) -> dict[str, dict]:
    return {observation["id"]: observation for observation in results.observations}


def _coding(concept: dict) -> dict:
    return {key: concept["coding"][0][key] for key in ("system", "code", "display")}


def _quantity(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def test_every_resource_is_valid_r4():
    for resource in result_resources(_job()).all():
        validated(resource)
        validate_fhir(resource)


def test_publishing_twice_gives_the_same_resources():
    assert result_resources(_job()) == result_resources(_job())


def test_ids_are_valid_distinct_and_derived_from_the_task():
    results = result_resources(_job())
    ids = [observation["id"] for observation in results.observations]
    assert len(set(ids)) == len(ids) == 2 + 2 * 4
    assert all(RESOURCE_ID.fullmatch(resource_id) and resource_id.startswith(TASK_ID) for resource_id in ids)
    assert results.report["id"] == results.provenance["id"] == TASK_ID
    assert f"{TASK_ID}-s1-f2-diam" in ids


def test_a_64_character_task_id_still_gives_valid_distinct_ids():
    results = result_resources(_job(task_id="t" * 64))
    ids = [observation["id"] for observation in results.observations]
    assert len(set(ids)) == len(ids)
    assert all(RESOURCE_ID.fullmatch(resource_id) for resource_id in ids)
    assert results == result_resources(_job(task_id="t" * 64))
    for resource in results.all():
        validate_fhir(resource)


def test_report():
    report = result_resources(_job()).report
    assert report["status"] == "preliminary"
    assert _coding(report["category"][0]) == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"
    }
    assert _coding(report["code"]) == {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
    assert report["subject"] == {"reference": "Patient/dcm-patient-1"}
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{STUDY_ID}"}]
    assert report["effectiveDateTime"] == "2024-05-01"
    assert report["issued"] == ISSUED_TEXT
    assert report["meta"]["security"] == [AI_ASSERTED]
    assert report["conclusion"] == f"2 lesions, 14.2 mL in total (model demo@1.0.0); segmentation: DICOM SEG series {SEG_UID}"
    assert [item["reference"] for item in report["result"]] == [
        f"Observation/{TASK_ID}-s1-n", f"Observation/{TASK_ID}-s1-vol",
        f"Observation/{TASK_ID}-s1-f1", f"Observation/{TASK_ID}-s1-f2",
    ]


def test_every_observation_says_who_what_when_and_that_ai_asserted_it():
    for observation in result_resources(_job()).observations:
        assert observation["status"] == "preliminary"
        assert _coding(observation["category"][0]) == {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging", "display": "Imaging"
        }
        assert observation["subject"] == {"reference": "Patient/dcm-patient-1"}
        assert observation["effectiveDateTime"] == "2024-05-01"
        assert observation["issued"] == ISSUED_TEXT
        assert observation["device"] == {"reference": f"Device/{DEVICE_ID}"}
        assert observation["derivedFrom"] == [{"reference": f"ImagingStudy/{STUDY_ID}"}]
        assert observation["meta"]["security"] == [AI_ASSERTED]
        assert AI_ASSERTED["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"


def test_segment_measurements():
    observations = _by_id(result_resources(_job()))
    count = observations[f"{TASK_ID}-s1-n"]
    assert _coding(count["code"]) == COUNT_CODE
    assert count["valueInteger"] == 2
    total = observations[f"{TASK_ID}-s1-vol"]
    assert _coding(total["code"]) == VOLUME
    assert total["valueQuantity"] == _quantity(14.223, "mL")


def test_each_finding_groups_its_measurements():
    observations = _by_id(result_resources(_job()))
    finding = observations[f"{TASK_ID}-s1-f1"]
    assert _coding(finding["code"]) == LESION
    assert [member["reference"] for member in finding["hasMember"]] == [
        f"Observation/{TASK_ID}-s1-f1-vol", f"Observation/{TASK_ID}-s1-f1-ctr", f"Observation/{TASK_ID}-s1-f1-diam"
    ]
    volume = observations[f"{TASK_ID}-s1-f1-vol"]
    assert _coding(volume["code"]) == VOLUME
    assert volume["valueQuantity"] == _quantity(10.123, "mL")
    diameter = observations[f"{TASK_ID}-s1-f2-diam"]
    assert _coding(diameter["code"]) == LONG_AXIS
    assert diameter["valueQuantity"] == _quantity(19.96, "mm")


def test_centroid_is_one_observation_with_three_lps_components():
    centroid = _by_id(result_resources(_job()))[f"{TASK_ID}-s1-f1-ctr"]
    assert _coding(centroid["code"]) == CENTER
    assert "valueQuantity" not in centroid
    components = centroid["component"]
    assert [component["code"]["coding"][0]["code"] for component in components] == ["110860", "110862", "110861"]
    assert all(component["code"]["coding"][0]["system"] == "http://dicom.nema.org/resources/ontology/DCM"
               for component in components)
    assert ["(L)" in components[0]["code"]["text"], "(P)" in components[1]["code"]["text"],
            "(S)" in components[2]["code"]["text"]] == [True, True, True]
    assert [component["valueQuantity"] for component in components] == [
        _quantity(12.5, "mm"), _quantity(-40.25, "mm"), _quantity(101.0, "mm")
    ]


@pytest.mark.parametrize(
    ("total_unit", "finding_unit", "diameter_unit", "total", "finding", "diameter"),
    [("cm3", "mm3", "cm", 14.223, 10123.4, 3.14), ("mm3", "cm3", "mm", 14223.4, 10.123, 31.4)],
)
def test_values_are_converted_to_the_units_the_card_declares(total_unit, finding_unit, diameter_unit, total, finding, diameter):
    card = demo_card(measurements=[
        {"kind": "total_volume", "code": VOLUME, "unit": total_unit},
        {"kind": "finding_volume", "code": VOLUME, "unit": finding_unit},
        {"kind": "longest_diameter", "code": LONG_AXIS, "unit": diameter_unit},
    ])
    observations = _by_id(result_resources(_job(card)))
    assert observations[f"{TASK_ID}-s1-vol"]["valueQuantity"] == _quantity(total, total_unit)
    assert observations[f"{TASK_ID}-s1-f1-vol"]["valueQuantity"] == _quantity(finding, finding_unit)
    assert observations[f"{TASK_ID}-s1-f1-diam"]["valueQuantity"] == _quantity(diameter, diameter_unit)


def test_only_declared_measurements_are_published():
    card = demo_card(measurements=[{"kind": "count", "code": COUNT_CODE, "unit": "1"}])
    results = result_resources(_job(card))
    assert sorted(_by_id(results)) == [f"{TASK_ID}-s1-f1", f"{TASK_ID}-s1-f2", f"{TASK_ID}-s1-n"]
    assert all("hasMember" not in observation for observation in results.observations)
    for resource in results.all():
        validate_fhir(resource)


def test_nothing_found():
    results = result_resources(_job(found=()))
    observations = _by_id(results)
    assert sorted(observations) == [f"{TASK_ID}-s1-n", f"{TASK_ID}-s1-vol"]
    assert observations[f"{TASK_ID}-s1-n"]["valueInteger"] == 0
    assert observations[f"{TASK_ID}-s1-vol"]["valueQuantity"]["value"] == 0
    assert results.report["conclusion"].startswith("0 lesions (model demo@1.0.0)")
    for resource in results.all():
        validate_fhir(resource)


def test_one_finding_without_patient_or_seg():
    results = result_resources(_job(found=(SMALL,), patient_id=None, seg_series_uid=None))
    assert results.report["conclusion"] == "1 lesion, 4.1 mL in total (model demo@1.0.0)"
    assert all("subject" not in resource for resource in results.all())
    for resource in results.all():
        validate_fhir(resource)


@pytest.mark.parametrize(
    ("report_status", "observation_status"),
    [("preliminary", "preliminary"), ("final", "final"), ("amended", "amended"), ("corrected", "corrected"),
     ("appended", "amended"), ("partial", "preliminary"), ("entered-in-error", "entered-in-error")],
)
def test_observation_status_follows_the_report(report_status, observation_status):
    results = result_resources(_job(report_status=report_status))
    assert results.report["status"] == report_status
    assert {observation["status"] for observation in results.observations} == {observation_status}


def test_provenance():
    results = result_resources(_job())
    provenance = results.provenance
    assert [target["reference"] for target in provenance["target"]] == [f"DiagnosticReport/{TASK_ID}"] + [
        f"Observation/{observation['id']}" for observation in results.observations
    ]
    assert provenance["recorded"] == ISSUED_TEXT
    assert provenance["agent"] == [{
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                             "code": "author", "display": "Author"}]},
        "who": {"reference": f"Device/{DEVICE_ID}"},
    }]
    assert provenance["entity"] == [{"role": "source", "what": {"reference": f"ImagingStudy/{STUDY_ID}"}}]


def test_write_order_puts_each_resource_after_what_it_references():
    written: set[str] = set()
    for resource in result_resources(_job()).all():
        references = [item["reference"] for key in ("hasMember", "result", "target") for item in resource.get(key, [])]
        assert all(reference in written for reference in references), resource["id"]
        written.add(f"{resource['resourceType']}/{resource['id']}")


def test_several_segments():
    card = ModelCard.from_metadata({
        "name": "organs", "version": "2",
        "medaiflow": {
            "series": {"modality": "CT", "sop_class_uids": ["1.2.840.10008.5.1.4.1.1.2"]},
            "segments": [
                {"label": 1, "name": "cyst", "finding": LESION, "measurements": [{"kind": "count", "code": COUNT_CODE, "unit": "1"}]},
                {"label": 2, "name": "nodule", "finding": LESION,
                 "measurements": [{"kind": "finding_volume", "code": VOLUME, "unit": "mL"}]},
            ],
        },
    })
    job = dataclasses.replace(_job(), card=card, findings=[
        SegmentFindings(card.segments[0], (BIG,)), SegmentFindings(card.segments[1], (SMALL, BIG)),
    ])
    results = result_resources(job)
    assert sorted(_by_id(results)) == sorted([
        f"{TASK_ID}-s1-n", f"{TASK_ID}-s1-f1",
        f"{TASK_ID}-s2-f1", f"{TASK_ID}-s2-f1-vol", f"{TASK_ID}-s2-f2", f"{TASK_ID}-s2-f2-vol",
    ])
    assert results.report["conclusion"].startswith("1 cyst, 10.1 mL in total; 2 nodules, 14.2 mL in total (model organs@2)")


def test_bad_jobs_are_refused():
    with pytest.raises(ValueError, match="time zone"):
        _job(issued=datetime(2024, 5, 1, 12, 0))
    with pytest.raises(ValueError, match="not a FHIR date"):
        _job(effective="20240501")


def test_without_a_study_date_the_results_say_no_effective_time():
    """Not the time of the run: that is `issued`, and an EHR would file the results under it."""
    results = result_resources(_job(effective=None))
    assert all("effectiveDateTime" not in resource for resource in [results.report, *results.observations])
    with pytest.raises(InvalidResource, match="'done' is not a DiagnosticReport status"):
        _job(report_status="done")
    with pytest.raises(ValueError, match="not a FHIR id"):
        _job(task_id="task/1")
    with pytest.raises(ValueError, match="not a DICOM UID"):
        _job(seg_series_uid="seg-1")
    other = demo_card(name="other", label=2)
    with pytest.raises(ValueError, match="does not declare"):
        _job(findings=[SegmentFindings(other.segments[0], (BIG,))])
    card = demo_card()
    with pytest.raises(ValueError, match="twice"):
        _job(card, findings=[SegmentFindings(card.segments[0], ()), SegmentFindings(card.segments[0], ())])
