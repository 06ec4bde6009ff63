"""The per-data-directory secret keys (paging cursors, audit checkpoints)."""

import threading

import pytest

from server.keys import load_or_create_key


def test_a_key_is_made_once_and_read_back(tmp_path):
    key = load_or_create_key(tmp_path / "data" / "a.key")
    assert len(key) == 32 and load_or_create_key(tmp_path / "data" / "a.key") == key


def test_a_key_another_process_is_still_writing_is_waited_for(tmp_path):
    """Its file exists, still empty, from the moment the other process creates it until it writes the key."""
    path = tmp_path / "a.key"
    path.touch()
    written = bytes(range(32))
    writer = threading.Timer(0.1, path.write_bytes, (written,))
    writer.start()
    try:
        assert load_or_create_key(path) == written
    finally:
        writer.join()


@pytest.mark.parametrize("left", [b"", b"short"], ids=["empty", "truncated"])
def test_a_key_file_left_incomplete_is_an_error_not_a_weak_key(tmp_path, left):
    """A crash between creating the file and writing the key: an empty key would sign cursors anyone can forge."""
    path = tmp_path / "a.key"
    path.write_bytes(left)
    with pytest.raises(RuntimeError, match="no complete key"):
        load_or_create_key(path)
