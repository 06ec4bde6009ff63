"""Start-up recovery: what a crash leaves behind, and what `Ingestor.recover()` does with it.

The storage design (server/ingest.py) journals every final path before the
file is renamed into place; a crash leaves only journaled files and temp
payloads. Recovery removes journaled files that no row references, keeps
the ones that a row does, empties tmp/ and clears the journal.
"""

import io
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from server import index
from server.db import write_connection
from server.ingest import PreparedFile, prepare
from server.services import Services
from server.tables import instances, storage_journal
from tests.dicom_files import make_ct, multipart_body
from tests.store_state import files_on_disk, journal


class Crash(BaseException):
    """Stands for the process dying: nothing in the server catches it."""


def stow(client: TestClient, payloads: list[bytes]) -> None:
    body, content_type = multipart_body(payloads)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def rows(services: Services) -> dict[str, str]:
    """SOP Instance UID -> file path of every instance row."""
    with services.engine.connect() as connection:
        return dict(connection.execute(select(instances.c.sop_instance_uid, instances.c.file_path)).all())


def journal_committed(services: Services, paths: list[str]) -> None:
    with write_connection(services.engine) as connection:
        index.journal_files(connection, paths)


def leave_temp_payload(services: Services) -> Path:
    """What a process that died while receiving leaves: its temp folder, and a lock file nobody holds."""
    (services.store.temp_root / "gone-4242-0badf00d.lock").touch()
    leftover = services.store.temp_root / "gone-4242-0badf00d" / "deadbeef.part"
    leftover.parent.mkdir()
    leftover.write_bytes(b"half a payload")
    return leftover


def test_crash_between_rename_and_index_commit(client: TestClient, services: Services) -> None:
    stow(client, [make_ct()])
    [kept_path] = rows(services).values()
    # The state a STOW leaves when it dies after step 3 (renamed into place)
    # and before step 4 (rows committed): a journaled file without a row.
    study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()
    orphan = services.store.relative_path_for(study_uid, series_uid, sop_uid)
    journal_committed(services, [orphan])
    services.store.absolute(orphan).parent.mkdir(parents=True)
    services.store.absolute(orphan).write_bytes(make_ct(study_uid, series_uid, sop_uid))
    leftover = leave_temp_payload(services)

    removed = services.ingestor.recover()

    assert removed == 1
    assert not services.store.absolute(orphan).exists()
    assert not services.store.absolute(study_uid).exists()  # its empty folders went too
    assert not leftover.parent.exists()
    assert not leftover.parent.with_name(leftover.parent.name + ".lock").exists()
    assert services.store.temp_dir.is_dir()
    assert files_on_disk(services) == {kept_path}
    assert journal(services) == []


def received(services: Services, payload: bytes) -> PreparedFile:
    """A payload as STOW hands it to the ingestor: written under tmp/ and described."""
    writer = services.store.new_temp_file()
    writer.write(payload)
    return prepare(writer.finish())


def test_crash_inside_store_batch(client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same crash through the real ingest path: the process dies while rows are written."""
    stow(client, [make_ct()])
    before = rows(services)
    payloads = [make_ct(study_uid=generate_uid()) for _ in range(3)]
    batch = [received(services, payload) for payload in [*payloads, b"not DICOM"]]

    def die(*_: object, **__: object) -> None:
        raise Crash

    monkeypatch.setattr(index, "write_instances", die)
    with pytest.raises(Crash):
        services.ingestor.store_batch(batch)
    monkeypatch.undo()
    assert len(journal(services)) == 3  # journaled and renamed into place, never indexed
    assert len(files_on_disk(services)) == 4
    [unreadable] = services.store.temp_dir.iterdir()

    assert services.ingestor.recover() == 3

    assert rows(services) == before
    assert files_on_disk(services) == set(before.values())
    # The temp folder of a process that lives is left alone: this one's is
    # cleared by the first recovery after it ends (test_temp_folder_of_a_live_process_survives).
    assert unreadable.exists()
    assert journal(services) == []
    # Nothing stands in the way of the resend.
    stow(client, payloads)
    assert files_on_disk(services) == set(rows(services).values())
    assert len(rows(services)) == 4


def test_journaled_file_still_referenced_is_kept(client: TestClient, services: Services) -> None:
    """DELETE journals the files before their rows go; if it dies before the
    rows are deleted, the rows still point at the files, which must stay."""
    payload = make_ct()
    stow(client, [payload])
    [(sop_uid, path)] = rows(services).items()
    journal_committed(services, [path])

    assert services.ingestor.recover() == 0

    assert rows(services) == {sop_uid: path}
    assert services.store.absolute(path).read_bytes() == payload
    assert journal(services) == []


def test_crash_after_delete_commit(client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """DELETE committed (rows gone, files journaled) and died before removing the files."""
    study_uid = generate_uid()
    stow(client, [make_ct(study_uid=study_uid) for _ in range(2)])
    other = make_ct()
    stow(client, [other])
    doomed = [path for path in rows(services).values() if path.startswith(study_uid)]
    monkeypatch.setattr(services.ingestor, "discard", lambda paths: None)
    assert client.delete(f"/dicom-web/studies/{study_uid}").status_code == 200
    monkeypatch.undo()
    assert sorted(journal(services)) == sorted(doomed)
    assert all(services.store.absolute(path).exists() for path in doomed)

    assert services.ingestor.recover() == 2

    assert files_on_disk(services) == set(rows(services).values())
    assert len(rows(services)) == 1
    assert not services.store.absolute(study_uid).exists()
    assert journal(services) == []


def test_crash_before_superseded_version_is_removed(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resend with new content replaces the row; the old file is journaled, then removed."""
    study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()
    stow(client, [make_ct(study_uid, series_uid, sop_uid, StudyDescription="first")])
    first_path = rows(services)[sop_uid]
    monkeypatch.setattr(services.ingestor, "discard", lambda paths: None)
    stow(client, [make_ct(study_uid, series_uid, sop_uid, StudyDescription="second")])
    monkeypatch.undo()
    second_path = rows(services)[sop_uid]
    assert second_path != first_path
    assert journal(services) == [first_path]

    assert services.ingestor.recover() == 1

    assert files_on_disk(services) == {second_path}
    assert journal(services) == []


def test_recover_on_a_clean_store_changes_nothing(client: TestClient, services: Services) -> None:
    stow(client, [make_ct(), make_ct()])
    before = files_on_disk(services)

    assert services.ingestor.recover() == 0
    assert services.ingestor.recover() == 0

    assert files_on_disk(services) == before == set(rows(services).values())
    with services.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(storage_journal)).scalar_one() == 0


def uids(payload: bytes) -> tuple[str, str, str]:
    dataset = pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True)
    return dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID


def test_recovery_leaves_a_batch_between_its_journal_and_its_index_commit(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process starts (and recovers) while a batch has journaled and
    placed its files but not committed their rows: those files are not a
    crash's leftovers, and must be there when the rows commit."""
    payloads = [make_ct(study_uid=generate_uid()) for _ in range(3)]
    batch = [received(services, payload) for payload in payloads]
    inside, release = threading.Event(), threading.Event()
    flush_placements = services.store.flush_placements

    def paused(paths: list[str]) -> None:  # runs after the files are placed, before the rows are written
        inside.set()
        assert release.wait(30)
        flush_placements(paths)

    monkeypatch.setattr(services.store, "flush_placements", paused)
    outcomes: list[object] = []
    ingest = threading.Thread(target=lambda: outcomes.extend(services.ingestor.store_batch(batch)))
    ingest.start()
    try:
        assert inside.wait(30)
        placed = journal(services)
        assert len(placed) == 3 and all(services.store.absolute(path).exists() for path in placed)

        # Not waiting, it finds the window taken and leaves the journal alone.
        assert services.ingestor.recover(wait_seconds=0) == 0
        assert journal(services) == placed
        assert all(services.store.absolute(path).exists() for path in placed)
        # Waiting, it waits for the batch to be indexed.
        removed: list[int] = []
        recovery = threading.Thread(target=lambda: removed.append(services.ingestor.recover()))
        recovery.start()
        recovery.join(0.5)
        assert recovery.is_alive()
    finally:
        release.set()
        ingest.join(30)
    recovery.join(30)
    assert removed == [0]
    assert [outcome.failure for outcome in outcomes] == [None, None, None]  # type: ignore[attr-defined]
    assert journal(services) == []
    for payload in payloads:
        study_uid, series_uid, sop_uid = uids(payload)
        response = client.get(
            f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
            headers={"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"},
        )
        assert response.status_code == 200
        assert payload in response.content


_HOLD_A_PAYLOAD = """
import sys
from pathlib import Path
from server.storage import FileStore
writer = FileStore(Path(sys.argv[1])).new_temp_file()
writer.write(b"a payload on its way in")
print(writer.finish().temp_path, flush=True)
sys.stdin.read()
"""


def test_temp_folder_of_a_live_process_survives_recovery(services: Services) -> None:
    """An import or a second server writing into the same store: its payloads
    stay while it lives, and go with the first recovery after it ended."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_PAYLOAD, str(services.store.root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert holder.stdout is not None
        payload = Path(holder.stdout.readline().strip())
        assert payload.read_bytes() == b"a payload on its way in"
        ours = services.store.new_temp_file()
        ours.write(b"this process's own")
        own_payload = ours.finish().temp_path

        services.ingestor.recover()

        assert payload.read_bytes() == b"a payload on its way in"
        assert own_payload.exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    services.ingestor.recover()
    assert not payload.parent.exists()
    assert own_payload.exists()
    assert sorted(path.name for path in services.store.temp_root.iterdir()) == sorted(
        [services.store.temp_dir.name, services.store.temp_dir.name + ".lock", "ingest.lock"]
    )


def test_lock_files_can_be_taken_by_a_process_that_may_not_write_them(tmp_path: Path) -> None:
    """Workers of another user share the store: a lock file made 0600 stopped
    their STOWs, and a server of theirs at its start-up recovery."""
    import fcntl
    import os
    import stat

    from server.store_sharing import ingest_window, own_temp_folder

    previous = os.umask(0o022)
    try:
        folder = own_temp_folder(tmp_path / "tmp")
        with ingest_window(tmp_path / "tmp"):
            pass
    finally:
        os.umask(previous)
    for lock_file in (folder.with_name(folder.name + ".lock"), tmp_path / "tmp" / "ingest.lock"):
        assert stat.S_IMODE(lock_file.stat().st_mode) == 0o644
    descriptor = os.open(tmp_path / "tmp" / "ingest.lock", os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a read-only descriptor takes it
    finally:
        os.close(descriptor)
