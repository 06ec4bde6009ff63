"""The model registry on its own: what a registration copies (configs and
weights, never through links, within a size), where it may copy from, that
a forced activation stays on the Device, and, on PostgreSQL, that changes of
one version made at once each see the other."""

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from fhir_mappings.device import FORCED_ACTIVATION, ValidationMetric
from inference.errors import InvalidBundle
from server.jobs.registry import ModelRegistry, Validation
from server.jobs.service import DEMO_BUNDLE
from server.services import Services
from tests.conftest import POSTGRES_URL

DEMO = "medaiflow-demo-lesions@1.0.1"
PASSED = Validation((ValidationMetric("dice", "Dice", 0.9, "1"),), True, "passed")
FAILED = Validation((ValidationMetric("dice", "Dice", 0.1, "1"),), False, "failed")


@pytest.fixture
def registry(services: Services) -> ModelRegistry:
    return services.jobs.registry


def _bundle(tmp_path: Path, name: str = "bundle") -> Path:
    return Path(shutil.copytree(DEMO_BUNDLE, tmp_path / name))


def _outside(tmp_path: Path) -> Path:
    """A folder outside the bundle, where a link may lead (a small one: a test must not copy "/")."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("not the bundle's")
    return outside


def _left_in(models_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(models_dir)) for path in models_dir.rglob("*")) if models_dir.exists() else []


def _forced_flag(registry: ModelRegistry, model_device_id: str) -> str:
    device = orjson.loads(registry.store.read("Device", model_device_id).body or b"{}")
    (flag,) = [item for item in device["property"] if item["type"]["coding"][0]["code"] == FORCED_ACTIVATION]
    return str(flag["valueCode"][0]["coding"][0]["code"])


def test_only_the_configs_and_the_weights_are_copied(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "loop").symlink_to(".")  # copied by following links, this never ended
    (bundle / "outside").symlink_to(_outside(tmp_path))
    (bundle / "docs").mkdir()
    (bundle / "docs" / "README.md").write_text("not read by the server")
    (bundle / "configs" / "extra").mkdir()
    (bundle / "configs" / "extra" / "logging.conf").write_text("[loggers]\n")

    model, created = registry.add(bundle)

    assert created
    copy = model.bundle.path
    assert sorted(str(path.relative_to(copy)) for path in copy.rglob("*")) == [
        "configs", "configs/extra", "configs/extra/logging.conf", "configs/inference.json", "configs/metadata.json",
        "models", "models/model.pt",
    ]
    model.bundle.verify_weights()


@pytest.mark.parametrize("link", ["configs/outside", "configs/inference.json", "models/model.pt", "configs"])
def test_a_link_within_the_configs_or_weights_is_refused_leaving_nothing(
    registry: ModelRegistry, tmp_path: Path, link: str
) -> None:
    bundle = _bundle(tmp_path)
    elsewhere = _bundle(tmp_path, "elsewhere")
    if (bundle / link).is_dir():
        shutil.rmtree(bundle / link)
    else:
        (bundle / link).unlink(missing_ok=True)
    (bundle / link).symlink_to(elsewhere / link if (elsewhere / link).exists() else _outside(tmp_path))

    with pytest.raises(InvalidBundle, match="symbolic link"):
        registry.add(bundle)
    assert _left_in(registry.models_dir) == []


def test_a_pipe_among_the_configs_is_refused_not_waited_on(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    os.mkfifo(bundle / "configs" / "pipe")
    with pytest.raises(InvalidBundle, match="neither a plain file nor a folder"):
        registry.add(bundle)
    assert _left_in(registry.models_dir) == []


def test_a_bundle_beyond_the_size_limit_is_refused_leaving_nothing(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.max_bundle_bytes = 100_000  # the demo weights are 620 kB
    with pytest.raises(InvalidBundle, match="more than the 100000 bytes a bundle may"):
        registry.add(_bundle(tmp_path))
    assert _left_in(registry.models_dir) == []


def test_a_bundle_inside_the_models_directory_is_refused_and_kept(registry: ModelRegistry) -> None:
    model, _ = registry.add(DEMO_BUNDLE)
    registered = model.bundle.path
    inside = Path(shutil.copytree(DEMO_BUNDLE, registry.models_dir / "incoming" / "demo"))
    for source in (registered, inside):
        with pytest.raises(InvalidBundle, match="inside the models directory"):
            registry.add(source)
    assert (inside / "models" / "model.pt").is_file()
    registry.get(DEMO).bundle.verify_weights()


def test_a_copy_left_by_a_registration_that_did_not_commit_is_replaced(registry: ModelRegistry) -> None:
    leftover = registry.models_dir / "medaiflow-demo-lesions" / "1.0.1"
    leftover.mkdir(parents=True)
    (leftover / "half-written").write_bytes(b"x")
    model, created = registry.add(DEMO_BUNDLE)
    assert created and model.bundle.path == leftover.resolve()
    assert not (leftover / "half-written").exists()
    assert [name for name in os.listdir(registry.models_dir) if name.startswith(".incoming-")] == []


def test_a_copy_whose_registration_was_killed_is_removed_once_abandoned(registry: ModelRegistry) -> None:
    """A kill -9 mid-copy runs no `finally`: a bundle of gigabytes stayed in the models directory for good."""
    abandoned, living = registry.models_dir / ".incoming-dead", registry.models_dir / ".incoming-busy"
    for staging in (abandoned, living):
        (staging / "models").mkdir(parents=True)
        (staging / "models" / "model.pt").write_bytes(b"x" * 1024)
    day_ago = time.time() - 25 * 3600
    os.utime(abandoned, (day_ago, day_ago))
    registry.add(DEMO_BUNDLE)
    assert not abandoned.exists() and living.exists()


def test_a_version_whose_bundle_can_no_longer_be_read_does_not_stop_the_server_starting(services: Services) -> None:
    model, _ = services.jobs.registry.add(DEMO_BUNDLE)
    (model.bundle.path / "configs" / "metadata.json").write_text("{")  # edited by hand
    fresh = ModelRegistry(services.engine, services.store, services.jobs.registry.models_dir)
    services.jobs.registry = fresh
    services.jobs.ensure_demo_model()  # it is registered: nothing to do, and nothing read
    with pytest.raises(InvalidBundle):
        fresh.registered()  # `models list` names what is wrong with it


def test_a_forced_activation_stays_on_the_device_after_a_passing_validation(registry: ModelRegistry) -> None:
    model, _ = registry.add(DEMO_BUNDLE)
    assert _forced_flag(registry, model.device_id) == "N"
    registry.activate(DEMO, force=True)
    assert _forced_flag(registry, model.device_id) == "Y"

    # Results made while it ran unvalidated name this Device: it may not come to say it never did.
    validated = registry.record_validation(DEMO, PASSED)
    assert validated.active and not validated.forced and validated.ever_forced
    assert _forced_flag(registry, model.device_id) == "Y"
    registry.deactivate(DEMO)
    registry.activate(DEMO)  # validated now: not forced
    assert registry.get(DEMO).ever_forced
    assert _forced_flag(registry, model.device_id) == "Y"


# PostgreSQL: concurrent changes of one version, made to meet deterministically.
postgres_only = pytest.mark.skipif(not POSTGRES_URL, reason="the race needs PostgreSQL's concurrent writers")


def _paused(registry: ModelRegistry, method: str, thread_name: str, reached: threading.Event,
            go_on: threading.Event) -> Callable[..., object]:
    """`registry.method`, which in the thread named `thread_name` stops after
    it ran (in that thread's transaction, before its commit) until `go_on`."""
    original = getattr(registry, method)

    def paused(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        if threading.current_thread().name == thread_name and not reached.is_set():
            reached.set()
            assert go_on.wait(30)
        return result

    return paused


def _until_waiting(services: Services, thread: threading.Thread, lock_kind: str) -> None:
    """Until `thread` has finished or a backend of this database waits for a
    lock of `lock_kind` (advisory, transactionid): it then waits on the paused one."""
    deadline = time.monotonic() + 10
    # Autocommit: within a transaction pg_stat_activity is read once and kept.
    with services.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        while thread.is_alive() and time.monotonic() < deadline:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid)"
                     " WHERE NOT granted AND locktype = :kind AND datname = current_database()"),
                {"kind": lock_kind},
            ).scalar()
            if waiting:
                return
            time.sleep(0.02)


def _run(name: str, work: Callable[[], object], outcome: dict[str, object]) -> threading.Thread:
    def record() -> None:
        try:
            outcome[name] = work()
        except Exception as error:  # noqa: BLE001 - the outcome is what the test checks
            outcome[name] = error

    thread = threading.Thread(target=record, name=name)
    thread.start()
    return thread


def _other_weights(tmp_path: Path) -> Path:
    bundle = _bundle(tmp_path, "other-weights")
    with (bundle / "models" / "model.pt").open("ab") as weights:
        weights.write(b"\0")  # another digest; never loaded here
    return bundle


@postgres_only
@pytest.mark.parametrize("locking", [True, False], ids=["locked", "a-writer-that-takes-no-lock"])
def test_two_registrations_of_one_version_at_once(
    services: Services, registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locking: bool
) -> None:
    import server.jobs.registry as registry_module

    if not locking:  # as a server of an older version would: the unique row decides, not the lock
        monkeypatch.setattr(registry_module, "advisory_locks", lambda connection, names: None)
    reached, go_on = threading.Event(), threading.Event()
    monkeypatch.setattr(registry, "_publish", _paused(registry, "_publish", "first", reached, go_on))
    outcome: dict[str, object] = {}
    first = _run("first", lambda: registry.add(DEMO_BUNDLE), outcome)
    assert reached.wait(30)  # the first has its row and its copy in place, not committed
    second = _run("second", lambda: registry.add(_other_weights(tmp_path)), outcome)
    _until_waiting(services, second, "advisory" if locking else "transactionid")
    go_on.set()
    first.join(30)
    second.join(30)

    model, created = outcome["first"]  # type: ignore[misc]
    assert created
    assert isinstance(outcome["second"], InvalidBundle), outcome["second"]
    assert "registered already with other weights" in outcome["second"].message
    registered = registry.get(DEMO)
    assert registered.bundle.weights_sha256 == model.bundle.weights_sha256
    registered.bundle.verify_weights()  # the copy on disk is still the one its row names
    assert [name for name in os.listdir(registry.models_dir) if name.startswith(".incoming-")] == []


@postgres_only
def test_a_failing_validation_during_an_activation_is_not_lost(
    services: Services, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add(DEMO_BUNDLE)
    registry.record_validation(DEMO, PASSED)
    reached, go_on = threading.Event(), threading.Event()
    monkeypatch.setattr(registry, "get", _paused(registry, "get", "activation", reached, go_on))
    outcome: dict[str, object] = {}
    activation = _run("activation", lambda: registry.activate(DEMO), outcome)
    assert reached.wait(30)  # it has read the passing validation
    validation = _run("validation", lambda: registry.record_validation(DEMO, FAILED), outcome)
    _until_waiting(services, validation, "advisory")
    go_on.set()
    activation.join(30)
    validation.join(30)

    model = registry.get(DEMO)
    assert model.validation == FAILED and not model.active, (model.active, model.validation)
