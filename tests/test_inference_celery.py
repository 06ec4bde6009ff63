"""The Celery executor against the machine's real brokers, with real
`medaiflow worker` processes: jobs run, and a worker killed mid-job leaves
exactly one result set once another worker has taken the job over."""

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from inference.demo.phantom import Geometry, make_phantom
from server.app import build_services, create_app
from server.migrate import upgrade
from server.settings import Settings
from server.tables import inference_jobs
from tests.conftest import admin_headers
from tests.inference_checks import (
    phantom,
    series_bytes,
    stow,
    study_uid,
    tasks_of,
    wait_for_tasks,
)

ROOT = Path(__file__).resolve().parent.parent
BROKERS = {
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}
LEASE_SECONDS = 3.0


def _worker_environment(settings: Settings) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAIFLOW_")}
    environment.update({
        "MEDAIFLOW_DATA_DIR": str(settings.data_dir),
        "MEDAIFLOW_DATABASE_URL": settings.resolved_database_url,
        "MEDAIFLOW_BROKER_URL": settings.broker_url,
        "MEDAIFLOW_BROKER_QUEUE": settings.broker_queue,
        "MEDAIFLOW_JOB_LEASE_SECONDS": str(settings.job_lease_seconds),
        "MEDAIFLOW_DEMO_MODEL": "false",
        "MEDAIFLOW_DEVICE": "cpu",
    })
    return environment


class Workers:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"worker-{len(self.processes)}.log", "wb")  # noqa: SIM115 (the process owns it)
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "worker"], cwd=ROOT, env=_worker_environment(self.settings),
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _celery_settings(settings: Settings, broker: str) -> Settings:
    return settings.model_copy(update={
        "executor": "celery", "demo_model": True, "study_quiet_seconds": 0.2, "broker_url": broker,
        "broker_queue": f"medaiflow-test-{secrets.token_hex(6)}", "job_lease_seconds": LEASE_SECONDS,
        "job_retry_backoff_seconds": 0.1,
    })


@pytest.fixture
def celery_server(request, settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Workers]]:
    configured = _celery_settings(settings, BROKERS[request.param])
    services = build_services(configured)
    upgrade(services.engine)
    workers = Workers(configured, tmp_path)
    with TestClient(create_app(services=services), base_url="http://testserver", headers=admin_headers(services)) as client:
        try:
            yield client, workers
        finally:
            workers.stop()
    services.engine.dispose()


@pytest.mark.parametrize("celery_server", list(BROKERS), indirect=True)
def test_a_celery_worker_runs_the_job(celery_server):
    client, workers = celery_server
    workers.start()
    study = phantom(seed=61, lesions=2)
    stow(client, series_bytes(study))
    (task,) = wait_for_tasks(client, study_uid(study), timeout=180)
    assert task["status"] == "completed", task
    report = client.get(f"/fhir/{task['output'][0]['valueReference']['reference']}").json()
    assert report["status"] == "preliminary"


@pytest.mark.parametrize("celery_server", ["redis"], indirect=True)
def test_a_worker_killed_mid_job_leaves_exactly_one_result_set(celery_server):
    client, workers = celery_server
    first = workers.start()
    # Large enough that the job is still running when the worker is killed.
    study = make_phantom(62, Geometry(512, 160, 0.7, 1.5, 1.0, -1024.0, False), lesion_count=2, radius_mm=(7.0, 11.0))
    stow(client, series_bytes(study))
    uid = study_uid(study)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        tasks = tasks_of(client, uid)
        if tasks and tasks[0]["status"] == "in-progress":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the job never started: {tasks_of(client, uid)}")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    workers.start()

    (task,) = wait_for_tasks(client, uid, timeout=240)
    assert task["status"] == "completed", task
    history = client.get(f"/fhir/Task/{task['id']}/_history", params={"_count": 100}).json()
    assert any("stopped reporting" in entry["resource"].get("businessStatus", {}).get("text", "")
               for entry in history["entry"])
    assert client.get("/fhir/DiagnosticReport", params={"_summary": "count"}).json()["total"] == 1
    segs = client.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SEG"}).json()
    assert len(segs) == 1 and segs[0]["00201209"]["Value"] == [1]


def _stored_with_its_job_held(client, study, within_seconds: float) -> None:  # type: ignore[no-untyped-def]
    """STOW `study`; its job's Task, still requested, says within the time that the broker is unreachable."""
    stow(client, series_bytes(study))
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        tasks = tasks_of(client, study_uid(study))
        if tasks and "unreachable" in tasks[0].get("businessStatus", {}).get("text", ""):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no Task says the broker is unreachable: {tasks_of(client, study_uid(study))}")
    assert tasks[0]["status"] == "requested"


def test_a_broker_down_at_submit_leaves_the_job_queued_with_the_reason(settings):
    configured = _celery_settings(settings, "redis://127.0.0.1:9/0")  # nothing listens on the discard port
    services = build_services(configured)
    upgrade(services.engine)
    with TestClient(create_app(services=services), base_url="http://testserver", headers=admin_headers(services)) as client:
        study = phantom(seed=63, lesions=1)
        _stored_with_its_job_held(client, study, within_seconds=60)
        assert client.get("/healthz").status_code == 200
    services.engine.dispose()

    # The broker is back (the server restarted with its address): the job is handed over, and its Task says so.
    reachable = build_services(configured.model_copy(update={"broker_url": BROKERS["redis"]}))
    with TestClient(create_app(services=reachable), base_url="http://testserver", headers=admin_headers(reachable)) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            [task] = tasks_of(client, study_uid(study))
            if task["businessStatus"]["text"] == "queued":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the Task still says the broker is unreachable: {task}")
    reachable.engine.dispose()


def test_a_broker_that_refuses_the_server_leaves_the_job_queued_with_the_reason(settings):
    """A broker that answers but refuses (a wrong password, a vhost it lacks)
    holds the job as one that is down does: the Task says why it waits."""
    configured = _celery_settings(settings, "amqp://guest:not-the-password@127.0.0.1:5672//")
    services = build_services(configured)
    upgrade(services.engine)
    app = create_app(services=services)
    with TestClient(app, base_url="http://testserver", headers=admin_headers(services)) as client:
        study = phantom(seed=64, lesions=1)
        _stored_with_its_job_held(client, study, within_seconds=30)
    with services.engine.connect() as connection:
        assert connection.execute(select(inference_jobs.c.dispatched_at)).scalar_one() is None  # sent on the next tick
    services.engine.dispose()


_LEAVE_A_PAYLOAD = """
import sys
from pathlib import Path
from server.storage import FileStore

writer = FileStore(Path(sys.argv[1])).new_temp_file()
writer.write(b"half a segmentation")
print(writer.finish().temp_path)
"""


def test_a_worker_clears_what_dead_processes_left_in_the_store_as_it_starts(settings, tmp_path):
    """A worker killed mid-job leaves its payloads under tmp/: the worker
    started in its place clears them, as a server's start does, rather than
    leave them until the next server start."""
    configured = _celery_settings(settings, BROKERS["redis"])
    services = build_services(configured)
    upgrade(services.engine)
    left = subprocess.run(  # a process that ends holding a payload, as a killed worker does
        [sys.executable, "-c", _LEAVE_A_PAYLOAD, str(services.store.root)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    payload = Path(left.stdout.strip())
    assert payload.read_bytes() == b"half a segmentation"
    workers = Workers(configured, tmp_path)
    workers.start()
    try:
        deadline = time.monotonic() + 120
        while payload.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not payload.exists() and not payload.parent.exists()
    finally:
        workers.stop()
        services.engine.dispose()
