"""Running claimed jobs (imported by the executors only: it loads torch): series -> volume -> labels -> findings -> SEG + FHIR.

Identities of everything a job publishes come from its task id (resource
ids, SEG UIDs), so a second run of the same job (a retry, a redelivery)
writes the same resources again instead of a second set. The FHIR results
and the job's completion commit in one transaction, fenced by the lease: a
worker that lost its job publishes nothing, and removes the SEG it stored.
"""

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from itertools import groupby
from typing import TypeVar

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from fhir_mappings.ai_results import FinishedJob, result_resources
from fhir_mappings.date_ranges import date_from_dicom
from inference.errors import InferenceError, NoMatchingSeries
from inference.findings import SegmentFindings
from inference.seg import SegIdentity, SourceHeaders
from inference.segmenter import Segmenter
from inference.timings import Timings
from inference.volume import Volume
from server.db import reading, write_connection
from server.ingest import Ingestor
from server.jobs.offload import OffloadPool, WrittenResults, read_series, write_results
from server.jobs.queue import Job, JobQueue, Stage, now_micros
from server.jobs.registry import ModelRegistry, RegisteredModel
from server.jobs.series import StoredSeries, accepted_series, series_content, series_exists, series_file_paths
from server.jobs.study_changes import lock_study_jobs, supersede_earlier_runs
from server.jobs.withdrawal import withdraw_results
from server.storage import FileStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobLost(Exception):
    """The job stopped being this worker's: cancelled, or taken over."""


class SeriesChanged(Exception):
    """Instances of the job's series were sent again while the job ran: its
    next attempt reads them as they are now."""


class FileMissing(Exception):
    """A file the index names for the series is not in this worker's file
    store: a worker whose data directory is not the server's, or a store
    that lost it. Retried: a shared file system may be back."""


@dataclass(frozen=True)
class PreparedSeries:
    series: StoredSeries
    sources: SourceHeaders  # what its SEG needs of the source images
    volume: Volume
    content: str  # `series_content` when the series was read


class _Heartbeat:
    """Renews the leases of a batch's jobs while they wait and run: a lease
    runs out only when this worker stops (dies, hangs), not in a long stage.

    A batch read while the network runs on the batch `behind` which it waits
    has not had its turn yet: its jobs' time limits count from the end of
    that batch (finished, or over its own limit: a hung network holds the
    jobs waiting behind it no longer), not from their claim."""

    def __init__(self, queue: JobQueue, jobs: list[Job], behind: "_Heartbeat | None") -> None:
        self.queue = queue
        self._claimed = jobs
        self._behind = behind
        self._turn_from: int | None = None if behind is not None else 0
        self._turn_lock = threading.Lock()
        self.ended_at: int | None = None  # when it stopped renewing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def jobs(self) -> list[Job] | None:
        """The batch's jobs, their clocks started at their turn; None before it.
        Asked by the heartbeat's thread and by `finish`'s."""
        with self._turn_lock:
            if self._turn_from is None:
                assert self._behind is not None
                if self._behind.ended_at is None:
                    return None
                self._turn_from, self._behind = self._behind.ended_at, None  # no chain of every batch before
            turn_from = self._turn_from
        return [replace(job, started_at=max(job.started_at or 0, turn_from)) for job in self._claimed]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.queue.policy.lease_seconds / 3):
                jobs = self.jobs()
                running = self._claimed if jobs is None else [job for job in jobs if not self.queue.timed_out(job)]
                if not running:
                    return  # every lease is left to expire: the reaper ends them
                for job in running:
                    try:
                        self.queue.renew(job)
                    except SQLAlchemyError:
                        log.warning("could not renew the lease of job %s", job.task_id)
        finally:
            self.ended_at = now_micros()


@dataclass(frozen=True)
class Batch:
    prepared: list["Future[PreparedSeries]"]
    heartbeat: _Heartbeat


class JobRunner:
    def __init__(
        self, queue: JobQueue, registry: ModelRegistry, files: FileStore, ingestor: Ingestor, report_status: str,
        processes: int = 0,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.files = files
        self.ingestor = ingestor
        self.report_status = report_status
        self.timings = Timings()
        self._segmenters: dict[int, Segmenter] = {}
        self._offload = OffloadPool(processes)
        # Each preparing thread looks up a job's series, then waits for its volume from the pool.
        self._preparing = ThreadPoolExecutor(max(2, processes), thread_name_prefix="prepare-volume")

    def close(self) -> None:
        self._preparing.shutdown(wait=False, cancel_futures=True)
        self._offload.close()

    def run(self, jobs: list[Job]) -> None:
        self.finish(self.start(jobs))

    def start(self, jobs: list[Job], behind: "Batch | None" = None) -> "Batch":
        """Begin a batch (jobs of one model): its volumes are read and
        assembled on other threads, while the caller may still be running
        the network on the batch `behind` which this one waits (`finish`)."""
        heartbeat = _Heartbeat(self.queue, jobs, behind.heartbeat if behind is not None else None)
        return Batch([self._preparing.submit(self._prepare, job) for job in jobs], heartbeat)

    def finish(self, batch: "Batch") -> None:
        """The network over the patches of all the batch's volumes at once,
        then each job's findings, SEG and FHIR results. Called once the batch
        it was started behind has finished."""
        try:
            jobs = batch.heartbeat.jobs()
            assert jobs is not None, "a batch finished before the one it waits behind"
            ready: list[tuple[Job, PreparedSeries]] = []
            for job, future in zip(jobs, batch.prepared):
                prepared = self._attempt(job, future.result)
                if prepared is not None and self._attempt(job, partial(self._progress, job, Stage.SEGMENTING)):
                    ready.append((job, prepared))
            if not ready:
                return
            model = self.registry.by_id(ready[0][0].model_id)
            try:
                all_labels = self.segmenter_for(model).segment_many([prepared.volume for _, prepared in ready], self.timings)
            except Exception:  # one bad volume must not fail the others: each alone, with its own outcome
                log.warning("the batched run failed; running its %d jobs one by one", len(ready), exc_info=True)
                for job, prepared in ready:
                    self._attempt(job, partial(self._segment_and_complete, job, model, prepared))
                return
            # Every job's measuring and SEG writing starts before the first is stored: they run side by side.
            writing = [
                (job, prepared, self._write_results(job, model, prepared, labels))
                for (job, prepared), labels in zip(ready, all_labels)
            ]
            for job, prepared, results in writing:
                self._attempt(job, partial(self._complete, job, model, prepared, results))
        finally:
            batch.heartbeat.stop()

    def _segment_and_complete(self, job: Job, model: RegisteredModel, prepared: PreparedSeries) -> bool:
        labels = self.segmenter_for(model).segment(prepared.volume, self.timings)
        return self._complete(job, model, prepared, self._write_results(job, model, prepared, labels))

    def _write_results(
        self, job: Job, model: RegisteredModel, prepared: PreparedSeries, labels: np.ndarray,
    ) -> "Future[WrittenResults]":
        return self._offload.submit(
            write_results, prepared.sources, prepared.volume.with_voxels(labels), model.bundle.card,
            SegIdentity.for_job(job.task_id), self.files.root, self.files.temp_dir,
        )

    def _complete(
        self, job: Job, model: RegisteredModel, prepared: PreparedSeries, results: "Future[WrittenResults]",
    ) -> bool:
        try:
            written = self._within_limit(job, results)
        except FileNotFoundError as error:
            self._check_series_unchanged(prepared)  # its files went: say why when the series went with them
            raise self._file_gone(prepared.series) from error
        self.timings.add(written.seconds)
        try:
            self._progress(job, Stage.STORING)
            # The SEG copies the patient and study from the sources it read: stored after a
            # correction of them, it would bring the old ones back.
            self._check_series_unchanged(prepared)
        except BaseException:
            written.segmentation.received.temp_path.unlink(missing_ok=True)
            raise
        with self.timings.stage("seg writing: storing"):
            outcome = self.ingestor.store_batch([written.segmentation])[0]
        if outcome.failure is not None:
            raise RuntimeError(f"the segmentation could not be stored: {outcome.detail or outcome.failure}")
        with self.timings.stage("fhir publishing"):
            self._publish(job, model, prepared, written.findings, SegIdentity.for_job(job.task_id))
        return True

    def _check_series_unchanged(self, prepared: PreparedSeries, connection: Connection | None = None) -> None:
        with reading(self.queue.engine, connection) as session:
            uid = prepared.series.series_instance_uid
            if not series_exists(session, uid):
                # Deleted while the job ran: a SEG now would bring the study back with only itself in it.
                raise NoMatchingSeries(f"series {uid} was deleted while the job ran")
            if series_content(session, uid) != prepared.content:
                raise SeriesChanged()

    def _file_gone(self, read: StoredSeries) -> Exception:
        """Why a file of the series as the job read it was not found: the
        series was sent again (or deleted) meanwhile, and its index names
        other files now, or the store lacks a file that the index names."""
        with reading(self.queue.engine) as connection:
            if series_file_paths(connection, read.series_instance_uid) != set(read.file_paths):
                return SeriesChanged()
        return FileMissing(
            f"a file of series {read.series_instance_uid} is missing from the file store "
            "(is this worker's data directory the server's?)"
        )

    def _attempt(self, job: Job, step: Callable[[], T]) -> T | None:
        """Run one step of a job; on failure end the job as its error says
        (and take back a SEG it stored), returning None."""
        try:
            return step()
        except JobLost:
            log.info("job %s is no longer this worker's", job.task_id)
        except InferenceError as error:
            self._end(job, error.message, retryable=False)
        except FileMissing as error:
            log.warning("job %s: %s", job.task_id, error)
            self._end(job, str(error), retryable=True)
        except SeriesChanged:
            log.info("the series of job %s changed while it ran", job.task_id)
            successor = self.queue.successor(job)
            if successor is None:
                self._end(job, "instances of the series were sent again while the job ran", retryable=True)
            else:
                self._end(job, f"instances of the series were sent again while the job ran; Task/{successor}, "
                               "queued for them, runs on what the series holds now", retryable=False)
        except Exception as error:  # a fault of this attempt, not of the input: retried
            log.exception("job %s failed", job.task_id)
            self._end(job, _public_reason(error), retryable=True)
        try:
            withdraw_results(self.queue, self.ingestor, job.task_id)
        except SQLAlchemyError:
            log.warning("could not withdraw the results of job %s; the scheduler's sweep will", job.task_id)
        return None

    def _end(self, job: Job, reason: str, retryable: bool) -> None:
        try:
            self.queue.fail(job, reason, retryable)
        except SQLAlchemyError:  # the database is away: the job's lease runs out and the reaper queues it again
            log.warning("could not record the failure of job %s", job.task_id)

    def _prepare(self, job: Job) -> PreparedSeries:
        """Runs on a preparing thread; errors surface in `_run_one`."""
        model = self.registry.by_id(job.model_id)
        self._progress(job, Stage.READING)
        with self.timings.stage("read"):
            chosen, content = self._series(job, model)
        if job.series_instance_uid is None and not self.queue.record_series(job, chosen.series_instance_uid):
            raise JobLost()
        paths = [self.files.absolute(path) for path in chosen.file_paths]
        try:
            read = self._within_limit(job, self._offload.submit(read_series, paths))
        except FileNotFoundError as error:
            raise self._file_gone(chosen) from error
        self.timings.add(read.seconds)
        return PreparedSeries(chosen, read.sources, read.volume, content)

    def _series(self, job: Job, model: RegisteredModel) -> tuple[StoredSeries, str]:
        """The series the job runs on, and what it holds now (`series_content`)."""
        rule = model.bundle.card.series
        with reading(self.queue.engine) as connection:
            accepted = accepted_series(connection, job.study_instance_uid, rule)
            chosen = self._chosen(job, model, accepted)
            return chosen, series_content(connection, chosen.series_instance_uid)

    @staticmethod
    def _chosen(job: Job, model: RegisteredModel, accepted: list[StoredSeries]) -> StoredSeries:
        rule = model.bundle.card.series
        if job.series_instance_uid:
            accepted = [stored for stored in accepted if stored.series_instance_uid == job.series_instance_uid]
        if not accepted:
            wanted = f"Series {job.series_instance_uid}" if job.series_instance_uid else "No series"
            raise NoMatchingSeries(
                f"{wanted} of study {job.study_instance_uid} is one {model.key} runs on "
                f"({rule.modality}, at least {rule.min_slices} slices of one supported SOP class)"
            )
        return accepted[0]

    def segmenter_for(self, model: RegisteredModel) -> Segmenter:
        """Loaded once per worker and model version."""
        if model.id not in self._segmenters:
            model.bundle.verify_weights()
            segmenter = Segmenter(model.bundle)
            self._offload.settle_worker()
            self._segmenters[model.id] = segmenter
        return self._segmenters[model.id]

    def _publish(
        self, job: Job, model: RegisteredModel, prepared: PreparedSeries, findings: list[SegmentFindings],
        seg_identity: SegIdentity,
    ) -> None:
        now = datetime.now(UTC)
        with write_connection(self.queue.engine) as connection:
            # The study's Patient as of now: a corrected PatientID may have moved it while the job ran.
            # The row locks order this against a STOW or DELETE of the study (`study_changes`).
            study_jobs = lock_study_jobs(connection, [job.study_instance_uid])
            current = self.queue.get(job.task_id, connection)
            if current is None:
                raise JobLost()
            self._check_series_unchanged(prepared, connection)
            revised = supersede_earlier_runs(
                self.queue.store, connection, study_jobs, job.task_id, job.model_id,
                prepared.series.series_instance_uid, prepared.content,
            )
            resources = result_resources(
                FinishedJob(
                    task_id=job.task_id, imaging_study_id=job.study_instance_uid, patient_id=current.patient_id,
                    device_id=model.device_id, card=model.bundle.card, findings=findings,
                    seg_series_uid=seg_identity.series_instance_uid,
                    effective=date_from_dicom(prepared.series.study_date), issued=now,
                    report_status=self.report_status, body_part_examined=prepared.series.body_part_examined,
                    revised_reports=tuple(revised),
                )
            )
            # The Observations in one write: a report has about 30.
            for _, of_one_type in groupby(resources.all(), key=lambda resource: resource["resourceType"]):
                self.queue.store.put_many(connection, [(resource, resource["id"]) for resource in of_one_type], "PUT")
            if not self.queue.complete(connection, job, prepared.content):
                raise JobLost()  # rolls the results back with the transaction

    def _within_limit(self, job: Job, work: "Future[T]") -> T:
        """The result of work handed to the offload pool, waited for no longer
        than the job has left: a stuck step ends the job instead of the worker."""
        try:
            return work.result(timeout=self.queue.seconds_left(job))
        except FutureTimeout:
            if work.done():  # it finished meanwhile, or raised a TimeoutError of its own: that is its outcome
                return work.result()
            if not work.cancel():  # already running: what it writes is nobody's
                work.add_done_callback(_discard_segmentation)
            raise self._over_limit() from None

    def _over_limit(self) -> TimeoutError:
        return TimeoutError(f"the job ran past its {self.queue.policy.timeout_seconds:g} s limit")

    def _progress(self, job: Job, stage: Stage) -> Job:
        """Record the stage; the job, while it is still this worker's."""
        if self.queue.timed_out(job):
            raise self._over_limit()
        if not self.queue.progress(job, stage):
            raise JobLost()
        return job


def _discard_segmentation(work: "Future[object]") -> None:
    """A step that finished after its job gave up on it: a SEG it wrote under tmp/ is removed."""
    if work.cancelled() or work.exception() is not None:
        return
    result = work.result()
    if isinstance(result, WrittenResults):
        result.segmentation.received.temp_path.unlink(missing_ok=True)


def _public_reason(error: Exception) -> str:
    """What a Task may say about a fault: the log has the rest. An OSError's
    message names its file, a path on this server that clients need not see."""
    if isinstance(error, OSError) and (error.filename or error.filename2):
        return f"{type(error).__name__}: {error.strerror or 'an input or output error'}"
    return f"{type(error).__name__}: {error}"
