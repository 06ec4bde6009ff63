"""The job queue's promises: cancel, retry, leases, redelivery, restarts.

Jobs run here by a runner called from the test (no executor thread), so each
step happens when the test says, on the real database and store.
"""

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from server.app import build_services, create_app
from server.jobs import run as run_module
from server.jobs.executors import LocalExecutor
from server.jobs.queue import QueuePolicy, Stage, now_micros
from server.jobs.service import DEMO_BUNDLE
from server.jobs.withdrawal import sweep
from server.migrate import upgrade
from server.services import Services
from server.settings import Settings
from server.tables import inference_jobs, instances, study_activity
from tests.conftest import admin_headers
from tests.dicom_files import make_ct, multipart_body
from tests.inference_checks import (
    order,
    run_queued,
    stored_study,
    wait_for_task,
    wait_for_tasks,
)

DEMO = "medaiflow-demo-lesions@1.0.1"


def _total(client: TestClient, path: str, **params: str) -> int:
    return client.get(path, params={**params, "_summary": "count"}).json()["total"]


def test_a_queued_task_is_cancelled_by_updating_its_status(queued):
    client, services = queued
    task = order(client, stored_study(client, 51))
    cancelled = client.put(f"/fhir/Task/{task['id']}", json={**task, "status": "cancelled", "statusReason": {"text": "ordered twice"}})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["statusReason"]["text"] == "ordered twice"
    assert run_queued(services) == []
    again = client.put(f"/fhir/Task/{task['id']}", json={**task, "status": "requested"})
    assert again.status_code == 422
    assert "cancelled" in again.json()["issue"][0]["diagnostics"]
    assert client.delete(f"/fhir/Task/{task['id']}").status_code == 405


def test_queued_jobs_of_a_deactivated_model_end_failed_saying_why(queued):
    client, services = queued
    task = order(client, stored_study(client, 53))
    services.jobs.registry.deactivate(DEMO)
    assert run_queued(services) == []
    failed = client.get(f"/fhir/Task/{task['id']}").json()
    assert failed["status"] == "failed"
    assert f"the model {DEMO} was deactivated" in failed["statusReason"]["text"]



def test_a_series_whose_automatic_job_ended_with_its_model_withdrawn_runs_once_the_model_is_back(queued):
    client, services = queued
    services.jobs.triggers.quiet_seconds = 0
    uid = stored_study(client, 54)
    [first] = services.jobs.triggers.scan()
    services.jobs.registry.deactivate(DEMO)
    assert run_queued(services) == []
    services.jobs.registry.activate(DEMO, force=True)
    body, content_type = multipart_body([make_ct(uid)])  # the study changes (a one-slice series no model takes)
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    [second] = services.jobs.triggers.scan()
    assert second != first
    assert run_queued(services) == [second]
    assert client.get(f"/fhir/Task/{second}").json()["status"] == "completed"


def test_a_client_cannot_complete_a_job_itself(queued):
    client, _ = queued
    task = order(client, stored_study(client, 52))
    response = client.put(f"/fhir/Task/{task['id']}", json={**task, "status": "in-progress"})
    assert response.status_code == 422
    assert "may only cancel" in response.json()["issue"][0]["diagnostics"]


def test_a_job_run_twice_publishes_one_result_set(queued):
    client, services = queued
    uid = stored_study(client, 53)
    task = order(client, uid)
    assert run_queued(services) == [task["id"]]
    assert client.get(f"/fhir/Task/{task['id']}").json()["status"] == "completed"
    observations = _total(client, "/fhir/Observation", **{"derived-from": f"ImagingStudy/{uid}"})
    assert observations > 0

    # A redelivery after a crash: the job is handed out again and runs again.
    with services.engine.begin() as connection:
        connection.execute(update(inference_jobs).values(status="requested", lease_owner=None, ended_at=None))
    assert run_queued(services, owner="second-worker") == [task["id"]]

    assert _total(client, "/fhir/Observation", **{"derived-from": f"ImagingStudy/{uid}"}) == observations
    assert _total(client, "/fhir/DiagnosticReport", subject=client.get(f"/fhir/Task/{task['id']}").json()["for"]["reference"]) == 1
    assert _total(client, "/fhir/Provenance") == 1
    seg_series = client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json()
    assert len(seg_series) == 1
    assert seg_series[0]["00201209"]["Value"] == [1]


def test_a_job_whose_worker_died_is_queued_again_and_completes_once(queued):
    client, services = queued
    task = order(client, stored_study(client, 54))
    (dead,) = services.jobs.queue.claim("worker-that-dies", 1)
    with services.engine.begin() as connection:
        connection.execute(update(inference_jobs).values(lease_expires=now_micros() - 1))
    assert services.jobs.queue.reap() == [task["id"]]
    requeued = client.get(f"/fhir/Task/{task['id']}").json()
    assert requeued["status"] == "on-hold"  # started once: waiting for its next attempt
    assert "stopped reporting" in requeued["businessStatus"]["text"]

    # The dead worker wakes up: its lease is gone, so it may not publish.
    assert services.jobs.queue.progress(dead, Stage.SEGMENTING) is False
    with services.engine.begin() as connection:
        connection.execute(update(inference_jobs).values(not_before=0))
    assert run_queued(services) == [task["id"]]
    done = client.get(f"/fhir/Task/{task['id']}").json()
    assert done["status"] == "completed"
    with services.engine.connect() as connection:
        assert connection.execute(select(inference_jobs.c.attempts)).scalar_one() == 2


def test_a_job_cancelled_while_it_runs_publishes_nothing(queued):
    client, services = queued
    uid = stored_study(client, 55)
    task = order(client, uid)
    runner = services.jobs.make_runner()
    jobs = services.jobs.queue.claim("test-worker", 1)
    running = client.get(f"/fhir/Task/{task['id']}").json()
    assert running["status"] == "in-progress"
    assert client.put(f"/fhir/Task/{task['id']}", json={**running, "status": "cancelled"}).status_code == 200
    runner.run(jobs)
    runner.close()
    assert client.get(f"/fhir/Task/{task['id']}").json()["status"] == "cancelled"
    assert _total(client, "/fhir/DiagnosticReport") == 0
    assert client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json() == []


def _raising_bundle(tmp_path: Path) -> Path:
    """The demo model with an inferer that feeds it whole volumes of any
    size: its UNet raises on sizes its strides do not divide."""
    bundle = tmp_path / "raising-bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["name"] = "raising-model"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["inferer"] = {"_target_": "SimpleInferer"}
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    return bundle


def test_a_model_that_raises_is_retried_with_backoff_then_fails(queued, tmp_path):
    client, services = queued
    model, _ = services.jobs.registry.add(_raising_bundle(tmp_path))
    services.jobs.registry.activate(model.key, force=True)
    task = order(client, stored_study(client, 56), model.device_id)
    for attempt in range(services.settings.job_max_attempts):
        with services.engine.begin() as connection:
            connection.execute(update(inference_jobs).values(not_before=0))  # skip the backoff wait
        assert run_queued(services) == [task["id"]]
        status = client.get(f"/fhir/Task/{task['id']}").json()
        if attempt < services.settings.job_max_attempts - 1:
            assert status["status"] == "on-hold"
            assert f"attempt {attempt + 2} of" in status["businessStatus"]["text"]
    assert status["status"] == "failed"
    assert "RuntimeError" in status["statusReason"]["text"]
    assert _total(client, "/fhir/DiagnosticReport") == 0


def test_a_file_missing_from_the_store_is_said_so_retried_and_no_path_is_shown(queued):
    """Not taken for a re-send (the index names the same files): a worker
    whose data directory is not the server's, or a store that lost a file."""
    client, services = queued
    task = order(client, stored_study(client, 57))
    with services.engine.connect() as connection:
        stored = connection.execute(select(instances.c.file_path).limit(1)).scalar_one()
    path = services.store.root / stored
    moved = path.with_name("elsewhere")
    path.rename(moved)
    assert run_queued(services) == [task["id"]]
    waiting = client.get(f"/fhir/Task/{task['id']}")
    assert waiting.json()["status"] == "on-hold"
    said = waiting.json()["businessStatus"]["text"]
    assert "sent again" not in said and "missing from the file store" in said, said
    assert str(services.store.root) not in waiting.text
    moved.rename(path)
    with services.engine.begin() as connection:
        connection.execute(update(inference_jobs).values(not_before=0))
    assert run_queued(services) == [task["id"]]
    assert client.get(f"/fhir/Task/{task['id']}").json()["status"] == "completed"


def test_a_fault_named_to_clients_names_no_server_path():
    assert run_module._public_reason(PermissionError(13, "Permission denied", "/srv/data/x.dcm")) == (
        "PermissionError: Permission denied"
    )


@pytest.fixture
def restartable(settings: Settings) -> Iterator[list[Services]]:
    started: list[Services] = []
    yield started
    for services in started:
        services.engine.dispose()


def _start(settings: Settings, started: list[Services], **changes: object) -> Services:
    services = build_services(settings.model_copy(update=changes))
    upgrade(services.engine)
    started.append(services)
    return services


def test_queued_jobs_and_pending_triggers_survive_a_restart(settings, restartable):
    first = _start(settings, restartable, demo_model=True, study_quiet_seconds=0.0)
    with TestClient(create_app(services=first), base_url="http://testserver", headers=admin_headers(first)) as client:
        ordered_uid = stored_study(client, 57)
        task = order(client, ordered_uid)
        triggered_uid = stored_study(client, 58)
        with first.engine.connect() as connection:
            pending = connection.execute(select(study_activity.c.study_instance_uid)).scalars().all()
        assert triggered_uid in pending  # no executor ran: its trigger waits

    second = _start(settings, restartable, executor="local", demo_model=True, study_quiet_seconds=0.0)
    with TestClient(create_app(services=second), base_url="http://testserver", headers=admin_headers(second)) as client:
        assert wait_for_task(client, task["id"])["status"] == "completed"
        (triggered,) = wait_for_tasks(client, triggered_uid)
        assert triggered["status"] == "completed"


def test_a_job_over_its_time_limit_is_ended_with_the_reason(queued):
    client, services = queued
    services.jobs.queue.policy = QueuePolicy(max_attempts=1, timeout_seconds=0.001)
    task = order(client, stored_study(client, 59))
    assert run_queued(services) == [task["id"]]
    ended = client.get(f"/fhir/Task/{task['id']}").json()
    assert ended["status"] == "failed"
    assert "ran past its 0.001 s limit" in ended["statusReason"]["text"]


def test_the_segmentation_of_a_job_that_ended_without_results_is_swept_away(queued):
    client, services = queued
    uid = stored_study(client, 60)
    task = order(client, uid)
    assert run_queued(services) == [task["id"]]
    assert len(client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json()) == 1
    # As if its worker died after storing the SEG on its last attempt and the reaper failed the job.
    with services.engine.begin() as connection:
        connection.execute(update(inference_jobs).values(status="failed", reason="worker lost"))
    sweep(services.jobs.queue, services.ingestor)
    assert client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json() == []
    with services.engine.connect() as connection:
        assert connection.execute(select(inference_jobs.c.results_withdrawn)).scalar_one() is True


def test_a_study_deleted_while_its_job_runs_is_not_brought_back(queued):
    client, services = queued
    uid = stored_study(client, 61)
    task = order(client, uid)
    runner = services.jobs.make_runner()
    batch = runner.start(services.jobs.queue.claim("test-worker", 1))
    for future in batch.prepared:
        future.result()  # the volume is read before the study goes
    assert client.delete(f"/dicom-web/studies/{uid}").status_code in (200, 204)
    runner.finish(batch)
    runner.close()
    ended = client.get(f"/fhir/Task/{task['id']}").json()
    assert ended["status"] == "failed"
    assert "deleted while the job ran" in ended["statusReason"]["text"]
    assert client.get("/dicom-web/studies", params={"StudyInstanceUID": uid}).json() == []


def test_a_step_stuck_in_the_offload_pool_ends_its_job_at_the_time_limit(queued, monkeypatch):
    client, services = queued
    services.jobs.queue.policy = QueuePolicy(max_attempts=1, timeout_seconds=8.0)
    entered, released, finished = threading.Event(), threading.Event(), threading.Event()
    real_write_results = run_module.write_results

    def stuck(*args, **kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        released.wait(120)
        try:
            return real_write_results(*args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(run_module, "write_results", stuck)
    task = order(client, stored_study(client, 62))
    runner = services.jobs.make_runner()
    try:
        started = time.monotonic()
        runner.run(services.jobs.queue.claim("test-worker", 1))
        assert entered.is_set()  # it got as far as the stuck step
        assert time.monotonic() - started < 60  # and ended at its limit, not when the step came back
        ended = client.get(f"/fhir/Task/{task['id']}").json()
        assert ended["status"] == "failed"
        assert "ran past its 8 s limit" in ended["statusReason"]["text"]
    finally:
        released.set()
        runner.close()
    # The SEG the step wrote once released is nobody's: it is removed, not left under tmp/.
    assert finished.wait(60)
    deadline = time.monotonic() + 10
    while any(services.store.temp_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(services.store.temp_dir.iterdir())


def test_a_batch_prepared_while_the_one_before_runs_has_its_whole_time_limit(queued, monkeypatch):
    """The local executor claims and reads the next batch while the network
    runs on the one before: that wait is not the next batch's own time. Each
    job here takes well under the limit, both together well over it."""
    client, services = queued
    services.jobs.queue.policy = QueuePolicy(max_attempts=1, timeout_seconds=24.0)
    real_segment_many = run_module.Segmenter.segment_many

    def slow_network(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(12.0)  # a model that takes its time, as larger ones do
        return real_segment_many(self, *args, **kwargs)

    monkeypatch.setattr(run_module.Segmenter, "segment_many", slow_network)
    tasks = [order(client, stored_study(client, seed)) for seed in (63, 64)]
    executor = LocalExecutor(services.jobs.queue, services.jobs.make_runner, threads=1, batch_size=1)
    executor.start()
    try:
        ended = [wait_for_task(client, task["id"], timeout=120) for task in tasks]
    finally:
        executor.stop()
    outcomes = [(task["status"], task.get("statusReason"), task["executionPeriod"]) for task in ended]
    assert [task["status"] for task in ended] == ["completed", "completed"], outcomes
