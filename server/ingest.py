"""Storing received payloads: file and index row together, or neither.

Order of work for a batch (STYLE 7):
1. each payload is written under tmp/ and its header described;
2. the payloads are flushed to disk, the final paths journaled and committed;
3. the files are renamed into place and the renames flushed;
4. the index rows are written and the journal entries of the files now
   referenced are cleared, in one transaction;
5. files no longer referenced (resends, replaced versions, failed rows) are
   deleted and their journal entries cleared.
A crash between any two steps leaves only journaled files, which `recover`
removes unless a committed row points at them; steps 2 to 4 hold the store's
ingest window (server/store_sharing.py), so that a recovery run by another
process meanwhile never takes a batch in flight for a crash's leftover.
"""

import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from pydicom.dataset import Dataset
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from dicom.errors import DicomError
from dicom.instance import InstanceDescription, claimed_sop_uids, describe_dataset, describe_instance
from dicom.stow import FailureReason, InstanceOutcome
from server import index
from server.db import changed_nothing, database_out_of_room, write_connection
from server.storage import FileStore, ReceivedFile, disk_out_of_room
from server.tables import instances, storage_journal

log = logging.getLogger(__name__)

# How long recovery waits for a moment when no ingest batch is between its
# journal and its index commit; each batch holds that window for a second or so.
RECOVERY_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class PreparedFile:
    received: ReceivedFile
    description: InstanceDescription | None
    problem: str | None
    # For a payload that could not be described: the SOP Class and Instance
    # UIDs its file meta names, so that its Failed SOP Sequence item names it
    # (both are Type 1 there, PS3.18 Table 10.5.3-3).
    claimed_uids: tuple[str | None, str | None] = (None, None)


def prepare(received: ReceivedFile, written: Dataset | None = None) -> PreparedFile:
    """Describe one payload (`written`: the data set it was written from);
    a payload we cannot read is kept as a problem, not raised."""
    try:
        description = describe_instance(received.temp_path) if written is None else describe_dataset(written)
        return PreparedFile(received, description, None)
    except DicomError as error:
        return _refused(received, error.message)
    except OSError as error:
        return _refused(received, f"could not read the payload: {error.strerror}")
    except Exception as error:  # noqa: BLE001
        # pydicom signals malformed input with many exception types; any of
        # them means "cannot understand" for this one payload, not a 500.
        return _refused(received, f"not a readable DICOM file ({type(error).__name__})")


def _refused(received: ReceivedFile, problem: str) -> PreparedFile:
    return PreparedFile(received, None, problem, claimed_sop_uids(received.temp_path))


def prepare_dataset(files: FileStore, dataset: Dataset) -> PreparedFile:
    """A data set the server made (a SEG), written as a Part 10 file under
    the store's tmp/ and described as it was written: reading it back would
    parse its sequences again, a quarter of a SEG's cost, for the same
    description (tests/test_seg_iod.py holds the two equal)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    writer = files.new_temp_file()
    writer.write(buffer.getvalue())
    return prepare(writer.finish(), dataset)


@dataclass
class _Candidate:
    prepared: PreparedFile
    description: InstanceDescription
    relative_path: str
    outcome: InstanceOutcome | None = None


def _outcome(description: InstanceDescription, **extra: object) -> InstanceOutcome:
    return InstanceOutcome(
        sop_class_uid=description.instance.sop_class_uid,
        sop_instance_uid=description.instance.sop_instance_uid,
        study_instance_uid=description.study.study_instance_uid,
        series_instance_uid=description.series.series_instance_uid,
        **extra,  # type: ignore[arg-type]
    )


class StudyChange(Enum):
    """What happened to the instances of studies that changed."""

    STORED = "stored"
    DELETED = "deleted"


StudiesChanged = Callable[[Connection, set[str], StudyChange], None]


class BatchGuard(Protocol):
    """What a batch may change, judged in its index transaction, where the
    studies it touches are held: a judgement made before that transaction
    could be outdated by a writer that commits in between. Either check
    raises a DicomError to refuse the batch whole; nothing of it is kept."""

    def before(self, connection: Connection, described: list[InstanceDescription]) -> None:
        """Before anything is written, on the index as the batch finds it."""

    def after(self, connection: Connection, study_uids: set[str]) -> None:
        """Once written: `study_uids`, the studies the batch changed (those it
        took instances from too), as the batch leaves them."""


class Ingestor:
    """Stores instances; `on_studies_changed` runs in the transaction of every
    index change (the FHIR side keeps its ImagingStudy and Patient there). It
    may raise SQLAlchemyError, or ValueError for data it cannot represent."""

    def __init__(self, engine: Engine, store: FileStore, on_studies_changed: StudiesChanged | None = None) -> None:
        self.engine = engine
        self.store = store
        self.on_studies_changed = on_studies_changed

    def studies_changed(self, connection: Connection, study_uids: set[str], change: StudyChange) -> None:
        if self.on_studies_changed is not None and study_uids:
            self.on_studies_changed(connection, study_uids, change)

    def store_batch(
        self, batch: list[PreparedFile], required_study_uid: str | None = None, guard: BatchGuard | None = None,
    ) -> list[InstanceOutcome]:
        """Store a batch; the outcomes come back in the order of `batch`.
        Raises what `guard` raises, having kept nothing of the batch."""
        outcomes: dict[int, InstanceOutcome] = {}
        candidates: list[tuple[int, _Candidate]] = []
        for position, prepared in enumerate(batch):
            description = prepared.description
            if description is None:
                outcomes[position] = InstanceOutcome(
                    *prepared.claimed_uids, None, None, failure=FailureReason.CANNOT_UNDERSTAND, detail=prepared.problem
                )
            elif required_study_uid is not None and description.study.study_instance_uid != required_study_uid:
                outcomes[position] = _outcome(
                    description,
                    failure=FailureReason.STUDY_UID_MISMATCH,
                    detail=f"StudyInstanceUID differs from {required_study_uid} in the request URL",
                )
            else:
                path = self.store.relative_path_for(
                    description.study.study_instance_uid,
                    description.series.series_instance_uid,
                    description.instance.sop_instance_uid,
                )
                candidates.append((position, _Candidate(prepared, description, path)))
        # One lock order for every writer: concurrent requests for the same
        # studies then queue instead of deadlocking on PostgreSQL.
        candidates.sort(key=lambda item: _lock_order(item[1].description))
        self._store_candidates([candidate for _, candidate in candidates], guard)
        for position, candidate in candidates:
            assert candidate.outcome is not None
            outcomes[position] = candidate.outcome
        for prepared in batch:
            prepared.received.temp_path.unlink(missing_ok=True)
        return [outcomes[position] for position in range(len(batch))]

    def _store_candidates(self, candidates: list[_Candidate], guard: BatchGuard | None) -> None:
        if not candidates:
            return
        try:
            self.store.flush_payloads([candidate.prepared.received.temp_path for candidate in candidates])
        except OSError:
            log.exception("could not flush a STOW batch")
            self._refuse(candidates, FailureReason.OUT_OF_RESOURCES)
            return
        # From its journal commit until its rows commit, a placed file is one that
        # recovery (another process's start) would take for a crash's leftover.
        refused: DicomError | None = None
        with self.store.ingest_window():
            try:
                unreferenced = self._place_and_index(candidates, guard)
            except DicomError as error:  # the guard's: its transaction wrote no row, so no file is referenced
                refused, unreferenced = error, [candidate.relative_path for candidate in candidates]
        self.discard(unreferenced)
        if refused is not None:
            raise refused

    def _place_and_index(self, candidates: list[_Candidate], guard: BatchGuard | None) -> list[str]:
        """Steps 2 (the journal) to 4; returns the files no row references afterwards, for `discard`."""
        try:
            with write_connection(self.engine, bookkeeping=True) as connection:
                index.journal_files(connection, [candidate.relative_path for candidate in candidates])
        except SQLAlchemyError:
            log.exception("could not journal a STOW batch")
            self._refuse(candidates, FailureReason.OUT_OF_RESOURCES)
            return []
        placed: list[_Candidate] = []
        for candidate in candidates:
            try:
                self.store.place(candidate.prepared.received, candidate.relative_path)
                placed.append(candidate)
            except OSError as error:
                candidate.outcome = _outcome(
                    candidate.description, failure=FailureReason.OUT_OF_RESOURCES, detail=error.strerror
                )
        placed_paths = {candidate.relative_path for candidate in placed}
        unreferenced = [
            candidate.relative_path for candidate in candidates if candidate.relative_path not in placed_paths
        ]
        try:
            self.store.flush_placements([candidate.relative_path for candidate in placed])
            try:
                unreferenced += self._index(placed, isolate=False, guard=guard)
            except (SQLAlchemyError, index.SeriesOfAnotherStudy):
                # Some row failed: redo the batch with a savepoint per instance,
                # so that only the instances that fail are refused.
                unreferenced += self._index(placed, isolate=True, guard=guard)
        except (SQLAlchemyError, OSError, ValueError) as error:
            # ValueError: a study the FHIR side could not describe (see
            # `on_studies_changed`); the batch is refused rather than half-kept.
            log.exception("could not index a STOW batch")
            self._refuse(placed, _failure_for(error))
            unreferenced += [candidate.relative_path for candidate in placed]
        return unreferenced

    @staticmethod
    def _refuse(candidates: list[_Candidate], failure: FailureReason) -> None:
        for candidate in candidates:
            candidate.outcome = _outcome(candidate.description, failure=failure)

    def _index(self, placed: list[_Candidate], isolate: bool, guard: BatchGuard | None = None) -> list[str]:
        """Write the rows; return the files that no row references afterwards.

        Without `isolate`, all of them at once, and any failure aborts the
        whole transaction; with it, each instance has a savepoint of its own
        (a few more round trips each), and only those that fail are refused.
        """
        unreferenced: list[str] = []
        referenced: list[str] = []
        superseded: list[str] = []
        changed_studies: set[str] = set()
        files = [_placed_file(candidate) for candidate in placed]
        with write_connection(self.engine) as connection:
            if guard is not None:
                index.lock_studies(connection, files)  # taken again by the writes below, as by a writer already
                guard.before(connection, [candidate.description for candidate in placed])
            if isolate:
                index.lock_studies(connection, files)
                parents = index.WrittenParents()
                writes = [
                    self._write_alone(connection, candidate, file, parents) for candidate, file in zip(placed, files)
                ]
            else:
                writes = index.write_instances(connection, files)
            for candidate, written in zip(placed, writes):
                description = candidate.description
                if written is None:  # refused, its outcome set
                    unreferenced.append(candidate.relative_path)
                elif written.change is index.InstanceChange.UNCHANGED:
                    unreferenced.append(candidate.relative_path)
                    candidate.outcome = _outcome(description, duplicate=True)
                else:
                    referenced.append(candidate.relative_path)
                    candidate.outcome = _outcome(description)
                    changed_studies.add(description.study.study_instance_uid)
                    if written.left_study:
                        changed_studies.add(written.left_study)
                    if written.superseded_file:
                        superseded.append(written.superseded_file)
            self.studies_changed(connection, changed_studies, StudyChange.STORED)
            if guard is not None:
                guard.after(connection, changed_studies)
            index.clear_journal(connection, referenced)
            index.journal_files(connection, superseded)
            if not referenced:  # every instance refused or already stored: the answer is the request's record
                changed_nothing(connection)
        return unreferenced + superseded

    @staticmethod
    def _write_alone(
        connection: Connection, candidate: _Candidate, file: index.PlacedFile, parents: index.WrittenParents,
    ) -> index.InstanceWrite | None:
        """One instance's rows under a savepoint; None, with its outcome set,
        when refused. `parents` gains its study and series once they are committed."""
        description = candidate.description
        try:
            attempt = parents.copy()
            with connection.begin_nested():
                [written] = index.write_instances(connection, [file], attempt)
            parents.take(attempt)
            return written
        except index.SeriesOfAnotherStudy as error:
            candidate.outcome = _outcome(description, failure=FailureReason.STUDY_UID_MISMATCH, detail=str(error))
        except SQLAlchemyError as error:
            log.warning("index write failed for one instance: %s", type(error).__name__)
            candidate.outcome = _outcome(description, failure=_failure_for(error))
        return None

    def discard(self, relative_paths: Iterable[str]) -> None:
        """Delete journaled files that no row references, then their journal entries."""
        paths = list(relative_paths)
        if not paths:
            return
        for path in paths:
            self.store.remove(path)
        try:
            with write_connection(self.engine, bookkeeping=True) as connection:
                index.clear_journal(connection, paths)
        except SQLAlchemyError:
            log.exception("journal entries left for recovery")

    def recover(self, wait_seconds: float = RECOVERY_WAIT_SECONDS) -> int:
        """Finish the clean-up of processes that died; returns how many journaled files were removed.

        Other processes may be ingesting into the same store meanwhile (an
        import, a job worker, another server on the same database and data
        directory): only the temp folders of dead processes are cleared, and
        journaled files are judged only while no batch is between its journal
        and its index commit. When batches keep that window busy for
        `wait_seconds`, the journal is left for a later recovery.
        """
        self.store.clear_abandoned_temp()
        with self.store.no_ingest_window(wait_seconds) as quiet:
            if not quiet:
                log.warning("recovery left the storage journal alone: ingest batches kept it busy")
                return 0
            return self._remove_orphans()

    def _remove_orphans(self) -> int:
        with self.engine.connect() as connection:
            journaled = connection.execute(select(storage_journal.c.file_path)).scalars().all()
            referenced = set(
                connection.execute(
                    select(instances.c.file_path).where(instances.c.file_path.in_(journaled))
                ).scalars()
            ) if journaled else set()
        orphans = [path for path in journaled if path not in referenced]
        for path in orphans:
            self.store.remove(path)
        if journaled:
            with write_connection(self.engine) as connection:
                index.clear_journal(connection, list(journaled))
        return len(orphans)


def _failure_for(error: Exception) -> FailureReason:
    """0xA700 Out of Resources when the disk or the database ran out of room
    (PS3.18 Table 10.5.3-3), so that the client knows to try again later;
    0x0110 Processing Failure for anything else."""
    if isinstance(error, OSError):
        return FailureReason.OUT_OF_RESOURCES if disk_out_of_room(error) else FailureReason.PROCESSING_FAILURE
    if isinstance(error, SQLAlchemyError) and database_out_of_room(error):
        return FailureReason.OUT_OF_RESOURCES
    return FailureReason.PROCESSING_FAILURE


def _placed_file(candidate: _Candidate) -> index.PlacedFile:
    received = candidate.prepared.received
    return index.PlacedFile(candidate.description, candidate.relative_path, received.size, received.sha256)


def _lock_order(description: InstanceDescription) -> tuple[str, str, str]:
    return (
        description.study.study_instance_uid,
        description.series.series_instance_uid,
        description.instance.sop_instance_uid,
    )
