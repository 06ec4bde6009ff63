"""Phantom studies sent by STOW-RS, and waiting for their jobs over FHIR."""

import time
from typing import Any

from fastapi.testclient import TestClient

from inference.demo.phantom import (
    Geometry,
    Phantom,
    make_phantom,
    phantom_datasets,
    phantom_payloads,
)
from server.services import Services
from tests.dicom_files import stow

# Small enough for a test to run the model in about a second on a CPU.
SMALL = Geometry(matrix=128, slices=48, pixel_spacing_mm=1.0, slice_spacing_mm=2.5, rescale_slope=1.0,
                 rescale_intercept=-1024.0, descending=True)


def phantom(seed: int, lesions: int = 2) -> Phantom:
    return make_phantom(seed, SMALL, lesion_count=lesions, radius_mm=(7.0, 11.0))


def series_bytes(study: Phantom) -> list[bytes]:
    return phantom_payloads(study)


def study_uid(study: Phantom) -> str:
    return str(phantom_datasets(study)[0].StudyInstanceUID)


def stored_study(client: TestClient, seed: int, lesions: int = 2) -> str:
    """A phantom study sent by STOW-RS; its Study Instance UID."""
    study = phantom(seed, lesions)
    stow(client, series_bytes(study))
    return study_uid(study)


def order(client: TestClient, uid: str, device_id: str | None = None) -> dict[str, Any]:
    """A client's Task for the study (and the model Device, when given)."""
    task: dict[str, Any] = {"resourceType": "Task", "status": "requested", "intent": "order",
                            "focus": {"reference": f"ImagingStudy/{uid}"}}
    if device_id:
        task["owner"] = {"reference": f"Device/{device_id}"}
    response = client.post("/fhir/Task", json=task)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def run_queued(services: Services, owner: str = "test-worker") -> list[str]:
    """The queued jobs (up to 10), claimed and run to the end by one runner; their task ids."""
    runner = services.jobs.make_runner()
    try:
        jobs = services.jobs.queue.claim(owner, 10)
        runner.run(jobs)
    finally:
        runner.close()
    return [job.task_id for job in jobs]


def tasks_of(client: TestClient, uid: str) -> list[dict[str, Any]]:
    bundle = client.get("/fhir/Task", params={"focus": f"ImagingStudy/{uid}"}).json()
    return [entry["resource"] for entry in bundle.get("entry", [])]


def wait_for_tasks(client: TestClient, uid: str, count: int = 1, timeout: float = 120.0) -> list[dict[str, Any]]:
    """The study's Tasks once `count` of them are final."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = tasks_of(client, uid)
        if len([task for task in tasks if task["status"] in ("completed", "failed", "cancelled")]) >= count:
            return tasks
        time.sleep(0.2)
    raise AssertionError(f"no final Task for study {uid} within {timeout} s: {tasks_of(client, uid)}")


def wait_for_task(client: TestClient, task_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/fhir/Task/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"Task/{task_id} is still {task['status']} after {timeout} s")
