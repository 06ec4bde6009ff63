"""`medaiflow import`: load files and folders through the same path as STOW."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dicom.media_directory import is_media_directory
from server.db import database_files
from server.ingest import PreparedFile, prepare
from server.services import Services
from server.storage import ReceivedFile

BATCH_SIZE = 100
_LEADS_NOWHERE = "a symbolic link that leads nowhere (its target is missing, or a loop)"


@dataclass
class ImportSummary:
    """Counts per outcome, and one line per file or path skipped or rejected."""

    stored: int = 0
    duplicate: int = 0
    skipped: int = 0
    rejected: int = 0
    skips: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped += 1
        self.skips.append(f"{path}: {reason}")

    def reject(self, path: Path, reason: str) -> None:
        self.rejected += 1
        self.rejections.append(f"{path}: {reason}")

    def describe(self) -> str:
        lines = [f"stored {self.stored}, duplicate {self.duplicate}, skipped {self.skipped}, rejected {self.rejected}"]
        return "\n".join(lines + _listed("skipped", self.skips) + _listed("rejected", self.rejections))


def _listed(outcome: str, lines: list[str], shown: int = 20) -> list[str]:
    listed = [f"  {outcome} {line}" for line in lines[:shown]]
    if len(lines) > shown:
        listed.append(f"  ... and {len(lines) - shown} more {outcome}")
    return listed


def _files(paths: list[Path], skipped: Callable[[Path], bool]) -> Iterator[Path]:
    """The files under `paths`, and the symbolic links among them that lead
    nowhere (their target missing, or a loop), which a caller reports."""
    for path in paths:
        if path.is_dir():
            yield from sorted(
                child for child in path.rglob("*")
                if (child.is_file() and not skipped(child.resolve())) or _dangling(child)
            )
        elif path.is_file() and not skipped(path.resolve()):
            yield path


def _dangling(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _servers_own(services: Services) -> Callable[[Path], bool]:
    """The server's own files, which an import of a folder holding them leaves
    alone: its data directory (the store, its keys) and its database's files
    (`server.db.database_files`: reading them would break the database's locks)."""
    data_dir = services.settings.data_dir.resolve()
    database = database_files(services.engine)
    return lambda path: path in database or path.is_relative_to(data_dir)


def import_paths(services: Services, paths: list[Path], show_progress: bool = True) -> ImportSummary:
    """Store every file under `paths`, in batches, through the STOW ingest path."""
    summary = ImportSummary()
    for path in paths:
        if _dangling(path):
            summary.reject(path, _LEADS_NOWHERE)
        elif not path.exists():
            summary.reject(path, "no such file or folder")
    files = list(_files([path for path in paths if path.exists()], _servers_own(services)))
    batch: list[tuple[Path, PreparedFile]] = []
    with tqdm(total=len(files), unit="file", disable=not show_progress) as progress:
        for source in files:
            if _dangling(source):
                summary.reject(source, _LEADS_NOWHERE)
            elif is_media_directory(source):
                # Every clean CD has one; refusing it would fail the import of any.
                summary.skip(source, "a DICOMDIR (the index of the medium's files), not an instance")
            elif isinstance(received := _copy_to_temp(services, source), str):
                # An unreadable file is one rejection, not the end of the import.
                summary.reject(source, received)
            else:
                batch.append((source, prepare(received)))
                if len(batch) >= BATCH_SIZE:
                    _flush(services, batch, summary)
                    progress.update(len(batch))
                    batch = []
                continue
            progress.update(1)
        _flush(services, batch, summary)
        progress.update(len(batch))
    return summary


def _copy_to_temp(services: Services, source: Path) -> ReceivedFile | str:
    """The file copied under the store's tmp/, or why it could not be read."""
    writer = services.store.new_temp_file()
    try:
        with open(source, "rb") as handle:
            while chunk := handle.read(1 << 20):
                writer.write(chunk)
    except OSError as error:
        writer.abort()
        return f"could not read the file: {error.strerror}"
    return writer.finish()


def _flush(services: Services, batch: list[tuple[Path, PreparedFile]], summary: ImportSummary) -> None:
    if not batch:
        return
    outcomes = services.ingestor.store_batch([prepared for _, prepared in batch])
    for (source, _), outcome in zip(batch, outcomes, strict=True):
        if outcome.failure is not None:
            summary.reject(source, outcome.detail or outcome.failure.name.lower())
        elif outcome.duplicate:
            summary.duplicate += 1
        else:
            summary.stored += 1



