"""`medaiflow import`: load files and folders through the same path as STOW."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from server.db import database_files
from server.ingest import PreparedFile, prepare
from server.services import Services
from server.storage import ReceivedFile

BATCH_SIZE = 100


@dataclass
class ImportSummary:
    """Counts per outcome, and one line per rejected file or path."""

    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"stored {self.stored}, duplicate {self.duplicate}, rejected {self.rejected}"]
        lines += [f"  rejected {problem}" for problem in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        return "\n".join(lines)


def _files(paths: list[Path], skipped: Callable[[Path], bool]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(child for child in path.rglob("*") if child.is_file() and not skipped(child.resolve()))
        elif path.is_file() and not skipped(path.resolve()):
            yield path


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
    missing = [path for path in paths if not path.exists()]
    for path in missing:
        summary.rejected += 1
        summary.problems.append(f"{path}: no such file or folder")
    files = list(_files([path for path in paths if path.exists()], _servers_own(services)))
    batch: list[tuple[Path, PreparedFile]] = []
    with tqdm(total=len(files), unit="file", disable=not show_progress) as progress:
        for source in files:
            received = _copy_to_temp(services, source)
            if isinstance(received, str):
                # An unreadable file is one rejection, not the end of the import.
                summary.rejected += 1
                summary.problems.append(f"{source}: {received}")
                progress.update(1)
                continue
            batch.append((source, prepare(received)))
            if len(batch) >= BATCH_SIZE:
                _flush(services, batch, summary)
                progress.update(len(batch))
                batch = []
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
            summary.rejected += 1
            summary.problems.append(f"{source}: {outcome.detail or outcome.failure.name.lower()}")
        elif outcome.duplicate:
            summary.duplicate += 1
        else:
            summary.stored += 1



