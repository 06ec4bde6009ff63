"""The `medaiflow` command line: import, db upgrade, help, the console script."""

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, inspect, select, text

from server import bulk_import
from server.cli import main
from server.tables import instances, series, storage_journal, studies
from tests.dicom_files import bundled_file, make_ct


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment `medaiflow` reads its settings from; returns the data dir."""
    data_dir = tmp_path / "cli-data"
    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MEDAIFLOW_DATABASE_URL", database_url)
    return data_dir


Counts = Callable[[], dict[str, int]]


@pytest.fixture
def index_counts(database_url: str) -> Iterator[Counts]:
    """Rows per index table, read on a connection of the test's own."""
    engine = create_engine(database_url)

    def counts() -> dict[str, int]:
        with engine.connect() as connection:
            return {
                table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (studies, series, instances, storage_journal)
            }

    yield counts
    engine.dispose()


def dicom_tree(root: Path) -> Path:
    """Two generated CTs in one series, two bundled files, a duplicate, and a text file."""
    study_uid, series_uid = generate_uid(), generate_uid()
    (root / "scanner" / "series1").mkdir(parents=True)
    (root / "bundled" / "nested").mkdir(parents=True)
    for number in (1, 2):
        payload = make_ct(study_uid=study_uid, series_uid=series_uid, InstanceNumber=number)
        (root / "scanner" / "series1" / f"IM{number:04d}").write_bytes(payload)
    shutil.copy(bundled_file("CT_small.dcm"), root / "bundled" / "ct.dcm")
    shutil.copy(bundled_file("MR_small.dcm"), root / "bundled" / "mr.dcm")
    shutil.copy(bundled_file("CT_small.dcm"), root / "bundled" / "nested" / "ct-copy.dcm")
    (root / "README.txt").write_text("not DICOM\n")
    return root


def test_import_tree_counts_and_indexes(
    tmp_path: Path, cli_env: Path, index_counts: Counts, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = dicom_tree(tmp_path / "incoming")

    exit_code = main(["import", "--quiet", str(tree)])

    out = capsys.readouterr().out
    assert out.splitlines()[0] == "stored 4, duplicate 1, skipped 0, rejected 1"
    assert "README.txt" in out
    assert exit_code == 1  # something was left out
    assert index_counts() == {"studies": 3, "series": 3, "instances": 4, "storage_journal": 0}
    assert len(list((cli_env / "dicom").rglob("*.dcm"))) == 4
    assert list((cli_env / "dicom" / "tmp").rglob("*.part")) == []  # no payload left behind


def test_import_of_a_folder_holding_the_server_leaves_its_files_alone(
    tmp_path: Path, cli_env: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store, the keys and the database stay unread: opening and closing a
    live SQLite file drops this process's locks on it (sqlite.org/howtocorrupt.html, 2.2)."""
    dicom_tree(tmp_path / "incoming")
    assert main(["import", "--quiet", str(tmp_path / "incoming" / "bundled" / "ct.dcm")]) == 0  # the database exists now
    capsys.readouterr()

    main(["import", "--quiet", str(tmp_path)])

    out = capsys.readouterr().out
    assert "index.sqlite3" not in out and str(cli_env) not in out
    rejected = int(out.splitlines()[0].rsplit(" ", 1)[1])
    assert rejected == 1  # README.txt alone
    if database_url.startswith("sqlite"):
        assert (tmp_path / "index.sqlite3").exists()


def test_import_again_is_all_duplicates(
    tmp_path: Path, cli_env: Path, index_counts: Counts, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = dicom_tree(tmp_path / "incoming")
    (tree / "README.txt").unlink()
    assert main(["import", "--quiet", str(tree)]) == 0
    capsys.readouterr()

    assert main(["import", "--quiet", str(tree / "bundled"), str(tree / "scanner" / "series1" / "IM0001")]) == 0

    assert capsys.readouterr().out.strip() == "stored 0, duplicate 4, skipped 0, rejected 0"
    assert index_counts()["instances"] == 4
    assert len(list((cli_env / "dicom").rglob("*.dcm"))) == 4


def test_import_missing_and_vanished_files_are_rejections(
    tmp_path: Path, cli_env: Path, index_counts: Counts, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = dicom_tree(tmp_path / "incoming")
    (tree / "README.txt").unlink()
    vanishing = tree / "bundled" / "mr.dcm"
    listed = bulk_import._files

    def files_then_one_disappears(paths: list[Path], skipped: Callable[[Path], bool]) -> Iterator[Path]:
        # The file is deleted after the folder walk found it, before it is read.
        for path in listed(paths, skipped):
            if path == vanishing:
                path.unlink()
            yield path

    monkeypatch.setattr(bulk_import, "_files", files_then_one_disappears)

    exit_code = main(["import", "--quiet", str(tree), str(tmp_path / "nowhere")])

    out = capsys.readouterr().out
    assert exit_code == 1
    assert out.splitlines()[0] == "stored 3, duplicate 1, skipped 0, rejected 2"
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in out
    assert f"{vanishing}: could not read the file" in out
    assert index_counts()["instances"] == 3
    assert list((cli_env / "dicom" / "tmp").rglob("*.part")) == []  # no payload left behind


def test_import_of_a_cd_skips_its_dicomdir(
    tmp_path: Path, cli_env: Path, index_counts: Counts, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clean CD holds a DICOMDIR beside its instances: it is skipped (known by
    its Media Storage SOP Class, whatever its name), and the import succeeds."""
    cd = tmp_path / "cd"
    (cd / "DICOM" / "ST1").mkdir(parents=True)
    for number in (1, 2):
        (cd / "DICOM" / "ST1" / f"IM{number}").write_bytes(make_ct(InstanceNumber=number))
    dicomdir = get_testdata_file("DICOMDIR")
    shutil.copy(dicomdir, cd / "DICOMDIR")
    shutil.copy(dicomdir, cd / "INDEX")  # renamed: still a DICOMDIR

    exit_code = main(["import", "--quiet", str(cd)])

    out = capsys.readouterr().out.splitlines()
    assert exit_code == 0
    assert out[0] == "stored 2, duplicate 0, skipped 2, rejected 0"
    assert f"  skipped {cd / 'DICOMDIR'}: a DICOMDIR (the index of the medium's files), not an instance" in out
    assert any(line.startswith(f"  skipped {cd / 'INDEX'}: a DICOMDIR") for line in out)
    assert index_counts()["instances"] == 2


def test_import_reports_symbolic_links_that_lead_nowhere(
    tmp_path: Path, cli_env: Path, index_counts: Counts, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    (source / "IM1").write_bytes(make_ct())
    (source / "IM2").symlink_to(tmp_path / "moved-away")
    (source / "loop").symlink_to(source / "loop")
    named = tmp_path / "named-link"
    named.symlink_to(tmp_path / "also-gone")

    exit_code = main(["import", "--quiet", str(source), str(named)])

    out = capsys.readouterr().out.splitlines()
    assert exit_code == 1
    assert out[0] == "stored 1, duplicate 0, skipped 0, rejected 3"
    for link in (source / "IM2", source / "loop", named):
        assert f"  rejected {link}: a symbolic link that leads nowhere (its target is missing, or a loop)" in out
    assert index_counts()["instances"] == 1


def test_import_shows_progress_unless_quiet(
    tmp_path: Path, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "one.dcm"
    source.write_bytes(make_ct())

    assert main(["import", str(source)]) == 0

    captured = capsys.readouterr()
    assert captured.out.strip() == "stored 1, duplicate 0, skipped 0, rejected 0"
    assert "1/1" in captured.err  # tqdm's bar, on stderr so stdout stays parseable


def test_db_upgrade_is_idempotent(cli_env: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0

    assert capsys.readouterr().out.splitlines() == ["database schema is up to date"] * 2
    engine = create_engine(database_url)
    try:
        names = set(inspect(engine).get_table_names())
        assert {"studies", "series", "instances", "series_requests", "storage_journal", "alembic_version"} <= names
        with engine.connect() as connection:
            assert len(connection.execute(text("SELECT version_num FROM alembic_version")).all()) == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["serve", "db", "import"]),
        (["serve"], ["--host", "--port", "--workers"]),
        (["db"], ["upgrade"]),
        (["db", "upgrade"], ["usage: medaiflow db upgrade"]),
        (["import"], ["PATH", "--quiet"]),
    ],
)
def test_help(argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "usage: medaiflow" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "medaiflow"
    assert script.is_file(), "run `pip install -e .` to install the console script"

    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    assert "usage: medaiflow" in result.stdout
    assert "import" in result.stdout


ADMIN = ("admin", "the first admin's password")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_names_the_port_it_was_given_from_each_worker(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """`serve --port P [--workers 2]`: migrations and recovery once, then the
    processes, each of which names itself by P (Endpoint addresses, audit
    source), not by the default port."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(sys.executable).parent / "medaiflow"
    # The first start makes the admin (with this password) before the workers start.
    monkeypatch.setenv("MEDAIFLOW_ADMIN_PASSWORD", ADMIN[1])
    process = subprocess.Popen(
        [str(script), "serve", "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: list[str] = []

    def note_starts() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if "Started server process" in line:
                started.append(line)

    reader = threading.Thread(target=note_starts, daemon=True)
    reader.start()
    try:
        base = f"http://127.0.0.1:{port}"
        # Every worker up before the requests, so that any may answer them: the first alone answers /readyz.
        for _ in range(600):
            try:
                if len(started) == workers and httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"server did not start: {len(started)} of {workers} workers")
        endpoint = httpx.get(f"{base}/fhir/Endpoint/dicomweb-wado-rs", timeout=5, auth=ADMIN).json()
        assert endpoint["address"] == f"http://127.0.0.1:{port}/dicom-web"
        assert all(httpx.get(f"{base}/fhir/Endpoint", timeout=5, auth=ADMIN).status_code == 200 for _ in range(10))
        audit = httpx.get(f"{base}/fhir/AuditEvent", params={"_count": "1"}, timeout=5, auth=ADMIN).json()
        assert audit["entry"][0]["resource"]["source"]["observer"]["identifier"]["value"] == base
        # Without MEDAIFLOW_TRUSTED_PROXIES no client names another: uvicorn believed loopback's X-Forwarded-For.
        httpx.get(f"{base}/fhir/Endpoint", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5, auth=ADMIN)
        events = httpx.get(f"{base}/fhir/AuditEvent", params={"_count": "200"}, timeout=5, auth=ADMIN).json()
        addresses = {agent.get("network", {}).get("address") for entry in events["entry"]
                     for agent in entry["resource"]["agent"]}
        assert "127.0.0.1" in addresses and "203.0.113.9" not in addresses
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=10)
    assert len(started) == workers


def test_a_serving_process_leaves_its_startup_objects_out_of_full_collections(cli_env: Path) -> None:
    """What a worker process builds before serving lives until it exits;
    full garbage collections walking it all cost 110 ms each."""
    program = (
        "import gc\n"
        "from server.app import create_app_from_environment\n"
        "create_app_from_environment()\n"
        "print(gc.get_freeze_count(), len(gc.get_objects()))\n"
    )

    frozen, collected = map(int, _printed_by(program))
    assert frozen > 100_000
    assert collected < frozen / 100


def test_settling_again_frees_what_died_since_the_last_time() -> None:
    """A job worker settles at each model it loads; what an earlier settling
    froze and what has died since (an app a test discarded) must still be freed."""
    program = (
        "import weakref\n"
        "from server.settling import settle_process\n"
        "class Held:\n"
        "    def __init__(self):\n"
        "        self.itself = self\n"
        "settle_process()\n"
        "held = Held()\n"
        "gone = weakref.ref(held)\n"
        "settle_process()\n"
        "del held\n"
        "settle_process()\n"
        "print(gone() is None)\n"
    )

    assert _printed_by(program) == ["True"]


def _printed_by(program: str) -> list[str]:
    """The words a fresh Python process running `program` prints; it must succeed.
    Garbage collection is process-wide state: a test process must not be settled."""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()
