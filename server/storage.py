"""Instance files on disk, written so that a crash never leaves half a file.

Every file is first written under `tmp/` (in a folder of the process that
writes it: server/store_sharing.py), synced, then renamed into
`<study>/<series>/<sop>.<token>.dcm`. The token makes each stored version a
new name, so replacing an instance never overwrites the file that the index
still points to until the new row is committed.
"""

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dicom.uids import require_uid
from server.store_sharing import clear_abandoned_temp, ingest_window, no_ingest_window, own_temp_folder


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python does not wrap; None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start write-out, do not wait
_FLUSH_THREADS = 8


def _fdatasync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(descriptor)
    finally:
        os.close(descriptor)


def disk_out_of_room(error: OSError) -> bool:
    """A write refused for want of room (a full disk, a spent quota), not for what was written."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class ReceivedFile:
    """A payload written and fsynced under `tmp/`, not yet part of the store."""

    temp_path: Path
    size: int
    sha256: str


class TempFileWriter:
    """Receives one payload in chunks, hashing as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "wb")
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def abort(self) -> None:
        # Closing flushes what is buffered, which fails again on a full disk: it is being thrown away.
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)

    def finish(self) -> ReceivedFile:
        """Close without waiting for the disk; `FileStore.flush_payloads` waits later,
        off the event loop. Write-out starts now, so that by then most of a
        batch is already on disk and each wait is short."""
        self._file.flush()
        if _sync_file_range is not None:
            _sync_file_range(self._file.fileno(), 0, 0, _SYNC_FILE_RANGE_WRITE)
        self._file.close()
        return ReceivedFile(self.path, self._size, self._hash.hexdigest())


class FileStore:
    """`helper_of`: the temp folder of the process that will store what this
    one writes (a helper process writing a SEG for its parent), so that the
    payload lives as long as the process that needs it; by default the
    process's own folder (server/store_sharing.py)."""

    def __init__(self, root: Path, helper_of: Path | None = None) -> None:
        self.root = root.resolve()
        self.temp_root = self.root / "tmp"
        self._helper_of = helper_of

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.temp_root.mkdir(exist_ok=True)

    @property
    def temp_dir(self) -> Path:
        """Where this process writes payloads before they are stored."""
        if self._helper_of is not None:
            return self._helper_of
        return own_temp_folder(self.temp_root)

    def clear_abandoned_temp(self) -> None:
        """Payloads of processes that died before their files were stored."""
        clear_abandoned_temp(self.temp_root)

    def ingest_window(self) -> AbstractContextManager[None]:
        return ingest_window(self.temp_root)

    def no_ingest_window(self, wait_seconds: float) -> AbstractContextManager[bool]:
        return no_ingest_window(self.temp_root, wait_seconds)

    def new_temp_file(self) -> TempFileWriter:
        name = f"{secrets.token_hex(12)}.part"
        try:
            return TempFileWriter(self.temp_dir / name)
        except FileNotFoundError:
            # Someone removed the folder under a running server: while its lock
            # file is there it is still ours, so it is made again; with the lock
            # file gone `temp_dir` is a new folder.
            folder = self.temp_dir
            folder.mkdir(parents=True, exist_ok=True)
            return TempFileWriter(folder / name)

    @staticmethod
    def flush_payloads(files: list[Path]) -> None:
        """Wait until these files' data is on disk (their write-out began in `finish`).

        The waits overlap in a few threads: each is mostly waiting for the
        device, and one after another they add up to a good part of a STOW.
        """
        with ThreadPoolExecutor(max_workers=_FLUSH_THREADS) as pool:
            for _ in pool.map(_fdatasync, files):
                pass

    def flush_placements(self, relative_paths: list[str]) -> None:
        """Make renames into the store durable: the series folders that received
        files, and the study folders and root in case those folders are new."""
        folders: set[Path] = set()
        for relative_path in relative_paths:
            series_folder = self.absolute(relative_path).parent
            folders.update((series_folder, series_folder.parent, self.root))
        for folder in folders:
            descriptor = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    @staticmethod
    def relative_path_for(study_uid: str, series_uid: str, sop_uid: str) -> str:
        for uid, what in ((study_uid, "Study"), (series_uid, "Series"), (sop_uid, "SOP Instance")):
            require_uid(uid, f"{what} Instance UID")
        return f"{study_uid}/{series_uid}/{sop_uid}.{secrets.token_hex(4)}.dcm"

    def place(self, received: ReceivedFile, relative_path: str) -> None:
        target = self.absolute(relative_path)
        # A concurrent `remove` of a series' last file may delete the folder
        # between mkdir and rename, and did three times in a row under
        # concurrent STOWs and DELETEs of one series. Each time the folder is
        # made again: while the payload is there, nothing else makes a rename
        # into an existing folder fail so, and each removal needs the folder
        # emptied of another file first, so the race ends.
        while True:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(received.temp_path, target)
                return
            except FileNotFoundError:
                if not received.temp_path.exists():
                    raise

    def absolute(self, relative_path: str) -> Path:
        return self.root / relative_path

    def remove(self, relative_path: str) -> None:
        path = self.absolute(relative_path)
        path.unlink(missing_ok=True)
        # Empty series and study folders go with their last file.
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def is_reachable(self) -> bool:
        return all(folder.is_dir() and os.access(folder, os.W_OK) for folder in (self.root, self.temp_root))
