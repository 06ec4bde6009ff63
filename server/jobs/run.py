"""Running claimed jobs (imported by the executors only: it loads torch): series -> volume -> labels -> findings -> SEG + FHIR.

Identities of everything a job publishes come from its task id (resource
ids, SEG UIDs), so a second run of the same job (a retry, a redelivery)
writes the same resources again instead of a second set. The FHIR results
and the job's completion commit in one transaction, fenced by the lease: a
worker that lost its job publishes nothing, and removes the SEG it stored.
"""

import io
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.exc import SQLAlchemyError

from dicom.errors import NotFound
from fhir_mappings.ai_results import FinishedJob, result_resources
from inference.assembly import volume_from_datasets
from inference.errors import InferenceError, NoMatchingSeries
from inference.findings import SegmentFindings
from inference.measurements import measure
from inference.seg import SegIdentity, segmentation
from inference.segmenter import Segmenter
from inference.timings import Timings
from inference.volume import Volume
from server.db import reading, write_connection
from server.dicomweb.delete import delete_resources
from server.ingest import Ingestor, prepare
from server.jobs.queue import Job, JobQueue
from server.jobs.registry import ModelRegistry, RegisteredModel
from server.jobs.series import accepted_series
from server.storage import FileStore

log = logging.getLogger(__name__)


class JobLost(Exception):
    """The job stopped being this worker's: cancelled, or taken over."""


@dataclass(frozen=True)
class PreparedSeries:
    datasets: list[Dataset]
    volume: Volume


class JobRunner:
    def __init__(
        self, queue: JobQueue, registry: ModelRegistry, files: FileStore, ingestor: Ingestor, report_status: str,
        prepare_threads: int = 2,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.files = files
        self.ingestor = ingestor
        self.report_status = report_status
        self.timings = Timings()
        self._segmenters: dict[int, Segmenter] = {}
        self._preparing = ThreadPoolExecutor(prepare_threads, thread_name_prefix="prepare-volume")

    def close(self) -> None:
        self._preparing.shutdown(wait=False, cancel_futures=True)

    def run(self, jobs: list[Job]) -> None:
        """Jobs of one model: volumes are read and assembled on other threads
        while the network runs on the job before."""
        with self._heartbeat(jobs):
            futures = [self._preparing.submit(self._prepare, job) for job in jobs]
            for job, future in zip(jobs, futures):
                self._run_one(job, future)

    @contextmanager
    def _heartbeat(self, jobs: list[Job]) -> Iterator[None]:
        """Renew the leases while the jobs run: a lease runs out only when
        this worker stops (dies, hangs), not during a long stage."""
        stop = threading.Event()
        interval = self.queue.policy.lease_seconds / 3

        def beat() -> None:
            while not stop.wait(interval):
                for job in jobs:
                    if not self.queue.timed_out(job):
                        try:
                            self.queue.renew(job)
                        except SQLAlchemyError:
                            log.warning("could not renew the lease of job %s", job.task_id)

        thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _run_one(self, job: Job, prepared: "Future[PreparedSeries]") -> None:
        seg_identity = SegIdentity.for_job(job.task_id)
        stored_seg = False
        try:
            model = self.registry.by_id(job.model_id)
            prepared_series = prepared.result()
            self._progress(job, "segmenting")
            segmenter = self._segmenter(model)
            labels = segmenter.segment(prepared_series.volume, self.timings)
            self._progress(job, "measuring")
            with self.timings.stage("postprocessing"):
                findings = [
                    measure(labels == segment.label, prepared_series.volume, segment) for segment in model.bundle.card.segments
                ]
            self._progress(job, "writing the segmentation")
            with self.timings.stage("seg writing"):
                seg = segmentation(prepared_series.datasets, prepared_series.volume, labels, model.bundle.card, seg_identity)
                stored_seg = True
                self._store(seg)
            with self.timings.stage("fhir publishing"):
                self._publish(job, model, findings, seg_identity)
        except JobLost:
            log.info("job %s is no longer this worker's; its results are withdrawn", job.task_id)
            self._withdraw(job, seg_identity, stored_seg)
        except InferenceError as error:
            self._withdraw(job, seg_identity, stored_seg)
            self.queue.fail(job, error.message, retryable=False)
        except Exception as error:  # a fault of this attempt, not of the input: retried
            log.exception("job %s failed", job.task_id)
            self._withdraw(job, seg_identity, stored_seg)
            self.queue.fail(job, f"{type(error).__name__}: {error}", retryable=True)

    def _prepare(self, job: Job) -> PreparedSeries:
        """Runs on a preparing thread; errors surface in `_run_one`."""
        model = self.registry.by_id(job.model_id)
        self._progress(job, "reading the series")
        with self.timings.stage("read"):
            datasets = [pydicom.dcmread(self.files.absolute(path)) for path in self._series_files(job, model)]
        # Decoding happens frame by frame into the volume: one stage.
        with self.timings.stage("decode and volume assembly"):
            volume = volume_from_datasets(datasets)
        return PreparedSeries(datasets, volume)

    def _series_files(self, job: Job, model: RegisteredModel) -> tuple[str, ...]:
        rule = model.bundle.card.series
        with reading(self.queue.engine) as connection:
            accepted = accepted_series(connection, job.study_instance_uid, rule)
        if job.series_instance_uid:
            accepted = [stored for stored in accepted if stored.series_instance_uid == job.series_instance_uid]
        if not accepted:
            wanted = f"Series {job.series_instance_uid}" if job.series_instance_uid else "No series"
            raise NoMatchingSeries(
                f"{wanted} of study {job.study_instance_uid} is one {model.key} runs on "
                f"({rule.modality}, at least {rule.min_slices} slices of one supported SOP class)"
            )
        return accepted[0].file_paths

    def _segmenter(self, model: RegisteredModel) -> Segmenter:
        """Loaded once per worker and model version."""
        if model.id not in self._segmenters:
            model.bundle.verify_weights()
            self._segmenters[model.id] = Segmenter(model.bundle)
        return self._segmenters[model.id]

    def _store(self, seg: Dataset) -> None:
        buffer = io.BytesIO()
        seg.save_as(buffer, enforce_file_format=True)
        writer = self.files.new_temp_file()
        writer.write(buffer.getvalue())
        outcome = self.ingestor.store_batch([prepare(writer.finish())])[0]
        if outcome.failure is not None:
            raise RuntimeError(f"the segmentation could not be stored: {outcome.detail or outcome.failure}")

    def _publish(self, job: Job, model: RegisteredModel, findings: list[SegmentFindings], seg_identity: SegIdentity) -> None:
        now = datetime.now(UTC)
        resources = result_resources(
            FinishedJob(
                task_id=job.task_id, imaging_study_id=job.study_instance_uid, patient_id=job.patient_id,
                device_id=model.device_id, card=model.bundle.card, findings=findings,
                seg_series_uid=seg_identity.series_instance_uid, effective=now, issued=now,
                report_status=self.report_status,
            )
        )
        with write_connection(self.queue.engine) as connection:
            for resource in resources.all():
                self.queue.store.put(connection, resource, resource["id"], "PUT")
            if not self.queue.complete(connection, job):
                raise JobLost()  # rolls the results back with the transaction

    def _withdraw(self, job: Job, seg_identity: SegIdentity, stored_seg: bool) -> None:
        if not stored_seg:
            return
        try:
            delete_resources(self.queue.engine, self.ingestor, job.study_instance_uid, seg_identity.series_instance_uid)
        except NotFound:
            pass

    def _progress(self, job: Job, text: str) -> None:
        if self.queue.timed_out(job):
            raise TimeoutError(f"the job ran past its {self.queue.policy.timeout_seconds:g} s limit")
        if not self.queue.progress(job, text):
            raise JobLost()
