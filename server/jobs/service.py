"""The inference side's parts, built once per server (or worker) process.

A scheduler thread ticks once a second: it starts the jobs of studies that
have gone quiet, queues again the jobs whose worker stopped reporting, and
lets the executor hand over what is queued.
"""

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from server.fhir.store import ResourceStore
from server.ingest import Ingestor
from server.jobs.executors import (
    CeleryExecutor,
    Executor,
    LocalExecutor,
    NoExecutor,
    Runner,
)
from server.jobs.queue import JobQueue, QueuePolicy
from server.jobs.registry import ModelRegistry
from server.jobs.seg_patients import refresh_seg_patients
from server.jobs.tasks import InferenceTasks
from server.jobs.triggers import StudyTriggers
from server.jobs.withdrawal import sweep
from server.settings import Settings
from server.storage import FileStore

log = logging.getLogger(__name__)

DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "inference" / "demo" / "bundle"
TICK_SECONDS = 1.0


@dataclass
class JobsService:
    settings: Settings
    registry: ModelRegistry
    queue: JobQueue
    tasks: InferenceTasks
    triggers: StudyTriggers
    files: FileStore
    ingestor: Ingestor
    executor: Executor = field(default_factory=NoExecutor)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _scheduler: threading.Thread | None = None

    def make_runner(self) -> Runner:
        from server.jobs.offload import default_processes
        from server.jobs.run import JobRunner  # torch and MONAI: only where jobs run

        # The local executor runs a runner per job thread in every server process.
        runners = self.settings.workers * self.settings.local_workers if self.settings.executor == "local" else 1
        processes = default_processes(runners) if self.settings.job_processes is None else self.settings.job_processes
        return JobRunner(self.queue, self.registry, self.files, self.ingestor, self.settings.report_status, processes)

    def start(self) -> None:
        if self.settings.demo_model:
            self.ensure_demo_model()
        if self.settings.executor == "none":
            return  # nothing starts or runs jobs in this process
        self.executor.start()
        self._stopping.clear()
        self._scheduler = threading.Thread(target=self._schedule, name="inference-scheduler", daemon=True)
        self._scheduler.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)
        self.executor.stop()

    def tick(self) -> None:
        self.triggers.scan()
        self.queue.reap()
        sweep(self.queue, self.ingestor)
        refresh_seg_patients(self.queue.engine, self.ingestor, self.files)
        self.executor.dispatch()

    def ensure_demo_model(self) -> None:
        """On a first start (no model registered yet), the shipped demo model,
        active at once so that `make serve` runs real inference. It has not
        been validated on this site's data, and its Device says so (forced)."""
        if self.registry.any_registered():
            return
        model, _ = self.registry.add(DEMO_BUNDLE)
        self.registry.activate(model.key, force=True)
        log.info("registered and activated the demo model %s", model.key)

    def _schedule(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception:  # the thread must outlive any one tick: triggers, reaping and dispatch hang on it
                log.exception("an inference scheduler tick failed; trying again")


def build_jobs(settings: Settings, engine: Engine, store: ResourceStore, files: FileStore, ingestor: Ingestor) -> JobsService:
    registry = ModelRegistry(engine, store, settings.models_dir)
    policy = QueuePolicy(
        max_attempts=settings.job_max_attempts, lease_seconds=settings.job_lease_seconds,
        backoff_seconds=settings.job_retry_backoff_seconds, timeout_seconds=settings.job_timeout_seconds,
    )
    queue = JobQueue(engine, store, policy)
    jobs = JobsService(
        settings=settings, registry=registry, queue=queue, tasks=InferenceTasks(queue, registry),
        triggers=StudyTriggers(engine, queue, registry, settings.study_quiet_seconds), files=files, ingestor=ingestor,
    )
    if settings.executor == "local":
        jobs.executor = LocalExecutor(queue, jobs.make_runner, settings.local_workers, settings.batch_size)
    elif settings.executor == "celery":
        jobs.executor = CeleryExecutor(queue, settings.broker_url, settings.broker_queue)
    return jobs


def build_worker_jobs() -> JobsService:
    """For `medaiflow worker`: the same stores as the server (migrated), no
    scheduler: the server decides what runs."""
    from server.app import build_services
    from server.migrate import upgrade
    from server.settings import load_settings

    services = build_services(load_settings(executor="none"))
    upgrade(services.engine)
    return services.jobs
