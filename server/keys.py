"""Secret keys made once per data directory, so that what they sign (paging
cursors, audit checkpoints) stays valid across restarts."""

import os
import secrets
import time
from pathlib import Path


def load_or_create_key(path: Path) -> bytes:
    """32 random bytes, written once: of processes starting together, one
    writes the key and the others read it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _wait_for_key(path)
        with os.fdopen(descriptor, "wb") as key_file:
            key_file.write(secrets.token_bytes(32))
            key_file.flush()
            os.fsync(key_file.fileno())
        return path.read_bytes()


def _wait_for_key(path: Path) -> bytes:
    for _ in range(100):
        key = path.read_bytes()
        if len(key) == 32:
            return key
        time.sleep(0.01)
    raise RuntimeError(f"{path} holds no complete key")
