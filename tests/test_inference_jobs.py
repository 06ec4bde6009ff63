"""Phantom studies through the whole path: STOW-RS -> job -> Task completed ->
DiagnosticReport + Observations with the right count and volume -> SEG
retrievable over DICOMweb and aligned with its source slices."""

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from fhir_mappings.device import device_id
from server.app import build_services, create_app
from server.migrate import upgrade
from server.services import Services
from server.settings import Settings
from tests.conftest import admin_headers
from tests.inference_checks import (
    phantom,
    series_bytes,
    stow,
    study_uid,
    wait_for_task,
    wait_for_tasks,
)

DEMO = "medaiflow-demo-lesions@1.0.1"


@pytest.fixture
def inference_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "executor": "local", "demo_model": True, "study_quiet_seconds": 0.3, "job_retry_backoff_seconds": 0.1,
    })


@pytest.fixture
def running(inference_settings: Settings) -> Iterator[tuple[TestClient, Services]]:
    services = build_services(inference_settings)
    upgrade(services.engine)
    with TestClient(create_app(services=services), base_url="http://testserver", headers=admin_headers(services)) as client:
        yield client, services
    services.engine.dispose()


def _resource(client: TestClient, reference: str) -> dict[str, Any]:
    response = client.get(f"/fhir/{reference}")
    assert response.status_code == 200, response.text
    return response.json()


def _measurements(client: TestClient, report: dict[str, Any]) -> tuple[int, float]:
    count = total = None
    for reference in report["result"]:
        observation = _resource(client, reference["reference"])
        if "valueInteger" in observation:
            count = observation["valueInteger"]
        elif observation.get("valueQuantity", {}).get("code") == "mL" and "hasMember" not in observation:
            total = observation["valueQuantity"]["value"]
    assert count is not None and total is not None, report
    return count, total


def test_a_stored_study_is_segmented_and_published(running):
    client, _ = running
    study = phantom(seed=41, lesions=3)
    stow(client, series_bytes(study))
    uid = study_uid(study)

    (task,) = wait_for_tasks(client, uid)
    assert task["status"] == "completed", task
    assert task["focus"]["reference"] == f"ImagingStudy/{uid}"
    assert task["for"]["reference"].startswith("Patient/")
    assert task["owner"]["reference"].startswith("Device/")
    report = _resource(client, task["output"][0]["valueReference"]["reference"])
    assert report["status"] == "preliminary"
    assert report["code"]["coding"][0]["code"] == "18748-4"
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{uid}"}]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST"}.items() <= (
        report["meta"]["security"][0].items()
    )
    count, total = _measurements(client, report)
    assert count == len(study.lesions)
    first = _resource(client, report["result"][0]["reference"])
    # When the lesions were imaged, as the study's ImagingStudy.started says; when measured is `issued`.
    started = _resource(client, f"ImagingStudy/{uid}")["started"]
    assert report["effectiveDateTime"] == first["effectiveDateTime"] == started != report["issued"][:10]
    assert first["bodySite"]["coding"][0]["code"] == "818981001"  # the series' BodyPartExamined, ABDOMEN
    assert total == pytest.approx(study.total_lesion_volume_ml, rel=0.10)

    device = _resource(client, task["owner"]["reference"])
    assert device["status"] == "active"
    assert device["type"]["coding"][0]["code"] == "Artificial-Intelligence"
    provenance = _resource(client, f"Provenance/{task['id']}")
    assert provenance["agent"][0]["who"]["reference"] == task["owner"]["reference"]
    assert {"reference": f"DiagnosticReport/{report['id']}"} in provenance["target"]


def test_the_segmentation_is_found_retrieved_and_aligned(running):
    client, _ = running
    study = phantom(seed=42, lesions=2)
    sources = series_bytes(study)
    stow(client, sources)
    uid = study_uid(study)
    (task,) = wait_for_tasks(client, uid)
    assert task["status"] == "completed", task

    found = client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json()
    assert len(found) == 1
    seg_series = found[0]["0020000E"]["Value"][0]
    response = client.get(f"/dicom-web/studies/{uid}/series/{seg_series}", headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    seg = highdicom.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(_only_part(response))))
    assert "medaiflow-demo-lesions" in seg.SeriesDescription
    assert "medaiflow-demo-lesions" in {item.get("ManufacturerModelName") for item in seg.ContributingEquipmentSequence}

    # Each SEG frame lies on its source slice: rebuild the mask on the source grid.
    source_uids = [pydicom.dcmread(io.BytesIO(payload)).SOPInstanceUID for payload in sources]
    mask = _mask_on_sources(seg, source_uids)
    truth = study.label.astype(bool)
    dice = 2 * np.logical_and(mask, truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.8

    # The ImagingStudy lists the SEG series, and the report names it.
    imaging_study = _resource(client, f"ImagingStudy/{uid}")
    assert seg_series in {series["uid"] for series in imaging_study["series"]}
    report = _resource(client, task["output"][0]["valueReference"]["reference"])
    assert seg_series in report["conclusion"]


def _only_part(response) -> bytes:
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    parts = [part for part in response.content.split(b"--" + boundary) if part.strip() not in (b"", b"--")]
    assert len(parts) == 1
    return parts[0].split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n")


def _mask_on_sources(seg: highdicom.seg.Segmentation, source_uids: list[str]) -> np.ndarray:
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[1])
    return pixels[..., 0].astype(bool)


def test_a_task_posted_by_a_client_runs_the_named_model(running):
    client, services = running
    study = phantom(seed=43, lesions=1)
    services.jobs.triggers.quiet_seconds = 3600  # no automatic job: the client orders it
    stow(client, series_bytes(study))
    uid = study_uid(study)
    model = services.jobs.registry.get(DEMO)
    response = client.post("/fhir/Task", json={
        "resourceType": "Task", "status": "requested", "intent": "order",
        "focus": {"reference": f"ImagingStudy/{uid}"}, "owner": {"reference": f"Device/{model.device_id}"},
    })
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["businessStatus"]["text"] == "queued"
    task = wait_for_task(client, created["id"])
    assert task["status"] == "completed", task
    history = client.get(f"/fhir/Task/{created['id']}/_history").json()
    statuses = [entry["resource"]["status"] for entry in reversed(history["entry"])]
    assert statuses[0] == "requested" and "in-progress" in statuses and statuses[-1] == "completed"


def test_a_batch_bundle_orders_one_job_per_study(running):
    client, services = running
    services.jobs.triggers.quiet_seconds = 3600
    studies = [phantom(seed=44, lesions=1), phantom(seed=45, lesions=2)]
    for study in studies:
        stow(client, series_bytes(study))
    bundle = {
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Task", "status": "requested", "intent": "order",
                          "focus": {"reference": f"ImagingStudy/{study_uid(study)}"}},
             "request": {"method": "POST", "url": "Task"}}
            for study in studies
        ],
    }
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 200, response.text
    assert [entry["response"]["status"][:3] for entry in response.json()["entry"]] == ["201", "201"]
    for study in studies:
        (task,) = wait_for_tasks(client, study_uid(study))
        report = _resource(client, task["output"][0]["valueReference"]["reference"])
        assert _measurements(client, report)[0] == len(study.lesions)


def test_a_study_the_model_does_not_accept_fails_its_task_with_the_reason(running):
    client, services = running
    services.jobs.triggers.quiet_seconds = 3600
    study = phantom(seed=46, lesions=1)
    stow(client, series_bytes(study)[:10])  # under the model's 20 slices
    uid = study_uid(study)
    without_owner = client.post("/fhir/Task", json={
        "resourceType": "Task", "status": "requested", "intent": "order", "focus": {"reference": f"ImagingStudy/{uid}"},
    })
    assert without_owner.status_code == 422
    assert "no active model" in without_owner.json()["issue"][0]["diagnostics"]

    model = services.jobs.registry.get(DEMO)
    created = client.post("/fhir/Task", json={
        "resourceType": "Task", "status": "requested", "intent": "order", "focus": {"reference": f"ImagingStudy/{uid}"},
        "owner": {"reference": f"Device/{model.device_id}"},
    }).json()
    task = wait_for_task(client, created["id"])
    assert task["status"] == "failed"
    assert "at least 20 slices" in task["statusReason"]["text"]
    assert client.get("/fhir/DiagnosticReport", params={"_id": created["id"]}).json()["total"] == 0


def test_a_corrupt_series_fails_with_a_clear_reason_and_publishes_nothing(running):
    client, services = running
    study = phantom(seed=47, lesions=1)
    payloads = series_bytes(study)
    broken = pydicom.dcmread(io.BytesIO(payloads[5]))
    broken.PixelData = broken.PixelData[:100]
    buffer = io.BytesIO()
    broken.save_as(buffer, enforce_file_format=True)
    payloads[5] = buffer.getvalue()
    stow(client, payloads)
    uid = study_uid(study)
    (task,) = wait_for_tasks(client, uid)
    assert task["status"] == "failed"
    assert broken.SOPInstanceUID in task["statusReason"]["text"]
    assert client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json() == []
    assert client.get("/fhir/Observation", params={"derived-from": f"ImagingStudy/{uid}"}).json()["total"] == 0


def test_unknown_studies_and_inactive_models_are_refused(running):
    client, services = running
    missing = client.post("/fhir/Task", json={
        "resourceType": "Task", "status": "requested", "intent": "order", "focus": {"reference": "ImagingStudy/1.2.3"},
    })
    assert missing.status_code == 422
    assert "no ImagingStudy/1.2.3" in missing.json()["issue"][0]["diagnostics"]
    study = phantom(seed=48)
    services.jobs.triggers.quiet_seconds = 3600
    stow(client, series_bytes(study))
    model = services.jobs.registry.deactivate(DEMO)
    inactive = client.post("/fhir/Task", json={
        "resourceType": "Task", "status": "requested", "intent": "order",
        "focus": {"reference": f"ImagingStudy/{study_uid(study)}"}, "owner": {"reference": f"Device/{model.device_id}"},
    })
    assert inactive.status_code == 422
    assert "not active" in inactive.json()["issue"][0]["diagnostics"]
    assert device_id(model.bundle.card) == model.device_id


_FIRST_JOB_OF_A_FRESH_PROCESS = """
import sys, time
from fastapi.testclient import TestClient
from server.app import build_services, create_app
from server.migrate import upgrade
from server.settings import Settings
from tests.conftest import admin_headers
from tests.inference_checks import phantom, series_bytes, stow, study_uid, wait_for_tasks

assert "torch" not in sys.modules
settings = Settings.model_validate_json(sys.argv[1])
services = build_services(settings)
upgrade(services.engine)
with TestClient(create_app(services=services), base_url="http://testserver", headers=admin_headers(services)) as client:
    study = phantom(seed=75, lesions=1)
    stow(client, series_bytes(study))
    (task,) = wait_for_tasks(client, study_uid(study), timeout=120)
    print(task["status"], task.get("statusReason", {}).get("text", ""))
"""


def test_the_first_job_of_a_server_is_not_lost_while_torch_loads(inference_settings: Settings, tmp_path):
    """Torch loads with the first job, in a process that has not loaded it
    yet (here a fresh one, where its import takes longer than this lease):
    the job's lease must not run out meanwhile."""
    settings = inference_settings.model_copy(update={"job_lease_seconds": 5.0, "job_max_attempts": 1})
    finished = subprocess.run(
        [sys.executable, "-c", _FIRST_JOB_OF_A_FRESH_PROCESS, settings.model_dump_json()],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip() == "completed", finished.stdout
