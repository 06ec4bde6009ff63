"""The thread that writes `$export` files, one export at a time per server
process, and removes expired ones.

An export runs with its starter's rights, as they were at kick-off: the
types were chosen then, and rules such as "a Subscription is its owner's"
see the starter as the request being served. Its files are written anew
from the beginning whenever it is claimed. One in progress when its server
stops is put back in the queue and restarted at the next start; one whose
server died is claimed again once its heartbeat is older than a lease.
"""

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fhir_mappings.audit_event import AuditKind
from fhir_mappings.bulk_export import Level, type_filter
from fhir_mappings.group_cohort import newcomers
from server.audit.service import AuditService
from server.auth.access import Principal, acting_as
from server.auth.scopes import Grant
from server.db import write_connection
from server.fhir.bulk_export import ExportJob, ExportJobs
from server.fhir.bulk_export_query import Slice, pages, version_at
from server.fhir.open_transactions import settled_before
from server.fhir.service import FhirService

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
LEASE_SECONDS = 60.0
_CLEAN_UP_SECONDS = 60.0
# How long an export waits for the writes open at its transactionTime to commit (PostgreSQL).
_SETTLING_SECONDS = 30.0


class _Stopped(Exception):
    """The export was cancelled, or its server is stopping."""


class ExportWorker:
    def __init__(self, jobs: ExportJobs, fhir: FhirService, audit: AuditService) -> None:
        self.jobs = jobs
        self.fhir = fhir
        self.audit = audit
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._cleaned_at = 0.0

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fhir-export", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The export being written stops at its next page and goes back to the queue."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def wake(self) -> None:
        """A kick-off: look for work now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if time.monotonic() - self._cleaned_at >= _CLEAN_UP_SECONDS:
                    self._cleaned_at = time.monotonic()
                    self.jobs.remove_expired()
                job = self.jobs.claim(int(LEASE_SECONDS * 1_000_000))
            except Exception:  # the thread must outlive any one round: every export hangs on it
                log.exception("looking for exports to write failed; trying again")
                job = None
            if job is not None:
                try:
                    self.run_export(job)
                except Exception:  # failing or requeueing it failed too: its lease ends, and it is claimed again
                    log.exception("export %s could not be ended; it is written again once its lease ends",
                                  job.export_id)
                continue
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def run_export(self, job: ExportJob) -> None:
        with acting_as(Principal(job.owner, job.owner_role, Grant.parse(job.scopes), job.owner_is_client)):
            try:
                outputs = self._write(job)
                with write_connection(self.jobs.engine) as connection:
                    if self.jobs.complete(connection, job.export_id, outputs):
                        counts = ", ".join(f"{output['count']} {output['type']}" for output in outputs) or "nothing"
                        self.audit.record_in(
                            connection, AuditKind.EXPORT, job.owner, f"$export {job.export_id} written: {counts}",
                            resources=[f"Group/{job.group}"] if job.group is not None else [],
                            patients=job.patients or (),
                        )
            except _Stopped:
                self.jobs.requeue(job.export_id)
            except Exception:
                log.exception("export %s failed", job.export_id)
                self.jobs.fail(job.export_id, "the server failed to write the export; start a new one")

    def _write(self, job: ExportJob) -> list[dict[str, Any]]:
        directory = self.jobs.directory(job.export_id)
        shutil.rmtree(directory, ignore_errors=True)  # what an earlier, interrupted run left
        directory.mkdir(parents=True)
        with self.jobs.engine.connect() as connection:  # none dated before the export may commit after it is read
            settled_before(connection, job.transaction_time, _SETTLING_SECONDS)
        if "AuditEvent" in job.types:
            self.audit.recorder.flush()  # events recorded before the kick-off may still wait in its queue
            self.audit.chain.catch_up()  # AuditEvents are copies of the chain, made a moment after it
        outputs = []
        filters = [type_filter(query, self.fhir.supported_types) for query in job.type_filters]
        patients = frozenset(job.patients) if job.patients is not None else None
        joined = self._newcomers(job)
        for number, resource_type in enumerate(job.types, 1):
            conditions = tuple(search.conditions for search in filters if search.resource_type == resource_type)
            part = Slice(resource_type, job.transaction_time, job.since, job.level is not Level.SYSTEM, patients,
                         conditions, job.group, joined, job.patient_context)
            name = f"{resource_type}.ndjson"
            count = self._write_type(job, part, directory / name, f"{resource_type} ({number} of {len(job.types)})")
            if count:
                outputs.append({"type": resource_type, "file": name, "count": count})
            else:
                (directory / name).unlink()
        return outputs

    def _newcomers(self, job: ExportJob) -> frozenset[str]:
        """A Group-level export's members who joined the Group after `since`, by
        the Group's version then (its history keeps every one): the export holds
        all of their data, as export.html allows. A `since` at or after the
        kick-off leaves none: nobody joined after it."""
        if job.group is None or job.since is None or job.since >= job.transaction_time:
            return frozenset()
        then = version_at(self.jobs.engine, "Group", job.group, job.since)
        return newcomers(job.patients or (), orjson.loads(then) if then is not None else None, job.since)

    def _write_type(self, job: ExportJob, part: Slice, path: Path, progress: str) -> int:
        count = 0
        history = part.resource_type in self.fhir.store.history_types
        with path.open("wb") as out:
            for page in pages(self.fhir.engine, self.fhir.visibility, part, history):
                # Stored JSON is compact, one line each: written as stored, a line per resource.
                out.write(b"\n".join(page) + b"\n")
                count += len(page)
                self._still_wanted(job, f"{progress}: {count} written")
        self._still_wanted(job, f"{progress}: {count} written")
        return count

    def _still_wanted(self, job: ExportJob, progress: str) -> None:
        if self._stopping.is_set():
            raise _Stopped()
        if not self.jobs.beat(job.export_id, progress):
            shutil.rmtree(self.jobs.directory(job.export_id), ignore_errors=True)
            raise _Stopped()



@dataclass(frozen=True)
class BulkExports:
    jobs: ExportJobs
    worker: ExportWorker
    retry_after_seconds: float  # what a caller over its limit is told to wait


def build_exports(fhir: FhirService, audit: AuditService, data_dir: Path, retention_hours: float,
                  max_per_caller: int) -> BulkExports:
    jobs = ExportJobs(fhir.engine, data_dir, retention_hours * 3600, max_per_caller)
    return BulkExports(jobs, ExportWorker(jobs, fhir, audit), retry_after_seconds=LEASE_SECONDS / 2)
