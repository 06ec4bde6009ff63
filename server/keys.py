"""Secret keys made once per data directory, so that what they sign (paging
cursors, audit checkpoints) stays valid across restarts."""

import os
import secrets
import time
from pathlib import Path

_KEY_BYTES = 32


def load_or_create_key(path: Path) -> bytes:
    """32 random bytes, written once: of processes starting together, one
    writes the key and the others read it once it is whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Written by an earlier start, or by another process now: its file
        # exists, empty, from its creation until the key is written.
        return _wait_for_key(path)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(secrets.token_bytes(_KEY_BYTES))
        key_file.flush()
        os.fsync(key_file.fileno())
    return path.read_bytes()


def _wait_for_key(path: Path) -> bytes:
    """Never a shorter key: an empty one (a crash between creating the file
    and writing it) would sign what anyone can forge."""
    for _ in range(100):
        key = path.read_bytes()
        if len(key) == _KEY_BYTES:
            return key
        time.sleep(0.01)
    raise RuntimeError(f"{path} holds no complete key")
