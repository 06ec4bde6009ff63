"""How several processes share one file store without removing each other's work.

Servers, their worker processes, `medaiflow import` and job workers may all
write into one store (on one host, or on several over a shared data
directory). Two things in it belong to a process that may still be running:

- payloads under `tmp/`: each process writes its own in a folder of its own,
  `tmp/<owner>/`, whose lock file `tmp/<owner>.lock` the process holds
  (flock) for as long as it lives; a folder whose lock can be taken belongs
  to a process that died, and only such a folder is cleared;
- files journaled and renamed into place whose index rows are not committed
  yet: each ingest batch holds `tmp/ingest.lock` shared from its journal
  commit to its index commit, and recovery takes it exclusively before it
  deletes journaled files that no row references.

flock locks are released by the kernel when their holder dies, however it
dies, and Linux NFS clients pass them on to the server, so they hold across
hosts that share the data directory.
"""

import fcntl
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_INGEST_LOCK = "ingest.lock"
_OWNER_LOCK_SUFFIX = ".lock"
_RECOVERY_POLL_SECONDS = 0.05
# flock needs only a descriptor, not the right to write: lock files are readable by
# all, as the umask allows, so that processes of other users sharing the store
# (workers run as another user) can take and test them.
_LOCK_FILE_MODE = 0o666


@dataclass(frozen=True)
class _OwnedFolder:
    folder: Path
    lock_descriptor: int
    pid: int


# One temp folder per store and process, held until the process exits: a
# payload may be handed between threads (and, written by a helper process,
# to its parent), so no object's lifetime shorter than the process's fits.
_owned: dict[Path, _OwnedFolder] = {}
_owned_guard = threading.Lock()


def own_temp_folder(temp_root: Path) -> Path:
    """This process's folder under `temp_root`, made and locked on first use."""
    with _owned_guard:
        owned = _owned.get(temp_root)
        if owned is not None and owned.pid == os.getpid() and _still_ours(owned):
            return owned.folder
        if owned is not None and owned.pid == os.getpid():
            os.close(owned.lock_descriptor)  # its lock file went: a folder nobody can see is held
        # A forked child inherits its parent's entry and descriptor; the parent
        # keeps holding its own, so the child only needs a folder of its own.
        owned = _take_new_folder(temp_root)
        _owned[temp_root] = owned
        return owned.folder


def _still_ours(owned: _OwnedFolder) -> bool:
    lock_path = owned.folder.with_name(owned.folder.name + _OWNER_LOCK_SUFFIX)
    try:
        return os.stat(lock_path).st_ino == os.fstat(owned.lock_descriptor).st_ino
    except FileNotFoundError:
        return False


def _take_new_folder(temp_root: Path) -> _OwnedFolder:
    temp_root.mkdir(parents=True, exist_ok=True)
    while True:
        # The host and pid only help a person reading the folder; the lock decides.
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        lock_path = temp_root / (name + _OWNER_LOCK_SUFFIX)
        descriptor = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, _LOCK_FILE_MODE)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        owned = _OwnedFolder(temp_root / name, descriptor, os.getpid())
        # A recovery may have taken the lock between the open and the flock,
        # taken the folder for a dead one and unlinked the lock file: then the
        # lock held is on a file nobody else can see, and another name is needed.
        if _still_ours(owned):
            owned.folder.mkdir()
            return owned
        os.close(descriptor)


def clear_abandoned_temp(temp_root: Path) -> None:
    """Remove the temp folders of processes that are gone, and anything else
    under `temp_root` that no process owns (payloads written straight into
    `tmp/` by versions before these folders)."""
    if not temp_root.is_dir():
        return
    for lock_path in temp_root.glob("*" + _OWNER_LOCK_SUFFIX):
        if lock_path.name != _INGEST_LOCK:
            _clear_if_abandoned(lock_path)
    for entry in temp_root.iterdir():
        if entry.name.endswith(_OWNER_LOCK_SUFFIX):
            continue
        # A folder is made only after its lock file, and loses it only after
        # it is removed: one seen without it is nobody's.
        if entry.with_name(entry.name + _OWNER_LOCK_SUFFIX).exists():
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _clear_if_abandoned(lock_path: Path) -> None:
    try:
        descriptor = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return  # another recovery cleared it
    except PermissionError:
        log.warning("%s is another user's and cannot be read: its folder is left as it is", lock_path)
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its process lives
        # The folder before its lock file: a recovery that dies in between
        # leaves a lock that the next one takes again.
        shutil.rmtree(lock_path.with_name(lock_path.name.removesuffix(_OWNER_LOCK_SUFFIX)), ignore_errors=True)
        try:
            lock_path.unlink(missing_ok=True)
        except PermissionError:
            log.warning("%s is another user's and cannot be removed", lock_path)
    finally:
        os.close(descriptor)


@contextmanager
def ingest_window(temp_root: Path) -> Iterator[None]:
    """Held (shared) by a batch from its journal commit to its index commit,
    while its placed files have no committed row yet."""
    with _ingest_lock(temp_root) as descriptor:
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield


@contextmanager
def no_ingest_window(temp_root: Path, wait_seconds: float) -> Iterator[bool]:
    """Held (exclusive) while recovery removes journaled files that no row
    references; yields False when batches kept it busy for `wait_seconds`.
    Waiting is by polling: a blocking request could wait behind a stream of
    batches for ever, since Linux lets new shared holders in ahead of it."""
    with _ingest_lock(temp_root) as descriptor:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(_RECOVERY_POLL_SECONDS)
        yield True


@contextmanager
def _ingest_lock(temp_root: Path) -> Iterator[int]:
    temp_root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(temp_root / _INGEST_LOCK, os.O_RDONLY | os.O_CREAT, _LOCK_FILE_MODE)
    try:
        yield descriptor
    finally:
        os.close(descriptor)  # releases the lock too
