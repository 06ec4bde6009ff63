"""Registered model versions, each published as a FHIR Device.

A registration copies the bundle under the data directory (the folder it
came from may move or change) and writes its row and its Device in one
transaction. Activation needs a passing validation unless forced, and a
forced activation is written on the Device for everyone to see, for good:
the results the version made meanwhile name that Device.

Each change of a version holds a lock named for it (PostgreSQL; SQLite's
writers take turns already): two registrations of one NAME@VERSION, or a
validation and an activation, each see what the other wrote. A copy is made
in a folder of its own and renamed into place only by the registration that
claimed the row, so no copy a committed row points to is ever replaced.
"""

import contextlib
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from fhir_mappings.device import ValidationMetric, device_id, model_device
from inference.bundle import MAX_BUNDLE_BYTES, Bundle, copy_bundle
from inference.errors import InvalidBundle
from server.db import advisory_locks, reading, write_connection
from server.fhir.store import ResourceStore
from server.tables import ai_models


class ModelNotFound(LookupError):
    pass


class ActivationRefused(RuntimeError):
    pass


@dataclass(frozen=True)
class Validation:
    metrics: tuple[ValidationMetric, ...]
    passed: bool
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary,
            "metrics": [{"code": m.code, "display": m.display, "value": m.value, "unit": m.unit} for m in self.metrics],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "Validation":
        return cls(tuple(ValidationMetric(**metric) for metric in value["metrics"]), value["passed"], value["summary"])


@dataclass(frozen=True)
class RegisteredModel:
    id: int
    bundle: Bundle
    device_id: str
    active: bool
    validation: Validation | None
    forced: bool  # this activation went ahead without a passing validation
    ever_forced: bool  # some activation did: results it made may stem from an unvalidated run

    @property
    def key(self) -> str:
        return self.bundle.card.key


_CONFIGS = ("configs/metadata.json", "configs/inference.json")


def _changed_configs(registered: Path, offered: Path) -> list[str]:
    """The configuration files (what results mean, how the model runs) in which
    two bundles of one name, version and weights differ."""
    return [name for name in _CONFIGS if _contents(registered / name) != _contents(offered / name)]


def _contents(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # a registered copy removed by hand is no longer what was registered
        return None


class ModelRegistry:
    def __init__(self, engine: Engine, store: ResourceStore, models_dir: Path) -> None:
        self.engine = engine
        self.store = store
        self.models_dir = models_dir
        self.max_bundle_bytes = MAX_BUNDLE_BYTES
        # Registered bundles do not change (their copy is the server's, their
        # weights are pinned by digest): each is read from disk once.
        self._bundles: dict[tuple[str, str], Bundle] = {}
        # Told of every registration and change of state, in its transaction (the audit trail).
        self.on_change: Callable[[Connection, str, str], None] | None = None

    def add(self, source: Path) -> tuple[RegisteredModel, bool]:
        """Register a bundle directory: the model, and whether it is new
        (adding the same weights again changes nothing)."""
        offered = Bundle.open(source)
        models_dir = self.models_dir.resolve()
        if offered.path.is_relative_to(models_dir):
            raise InvalidBundle(
                f"{offered.path} is inside the models directory {models_dir}, where the registered copies live; "
                "register a bundle from a folder outside it"
            )
        _remove_abandoned_staging(models_dir)
        # A name of its own, made with the umask's modes (mkdtemp's 0700 would
        # hide the copy from workers running as another user).
        staging = models_dir / f"{_STAGING_PREFIX}{secrets.token_hex(8)}"
        staging.mkdir(parents=True)
        try:
            copy_bundle(offered, staging, self.max_bundle_bytes)
            # What is registered is the copy, read again: the source may change meanwhile.
            return self._register(Bundle.open(staging), models_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed into place

    def _register(self, copied: Bundle, models_dir: Path) -> tuple[RegisteredModel, bool]:
        card = copied.card
        try:
            with write_connection(self.engine) as connection:
                advisory_locks(connection, [_lock_name(card.key)])
                existing = self._row(connection, card.key)
                if existing is not None:
                    return self._as_registered(existing, copied), False
                target = models_dir / card.name / card.version
                # The row first: once it is claimed no committed row can point at
                # `target`, and what lies there was left by a registration that did not commit.
                connection.execute(
                    insert(ai_models).values(
                        name=card.name, version=card.version, bundle_path=str(target),
                        weights_sha256=copied.weights_sha256, device_id=device_id(card), active=False,
                        validation_json=None, registered_at=_now(),
                    )
                )
                if target.exists():
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                copied.path.rename(target)
                row = self._row(connection, card.key)
                model = self._model(row)
                self._publish(connection, model)
                return model, True
        except IntegrityError:
            # A writer that took no lock (a server of an older version) committed it first.
            with reading(self.engine) as connection:
                existing = self._row(connection, card.key)
            if existing is None:
                raise
            return self._as_registered(existing, copied), False

    def _as_registered(self, existing: Any, offered: Bundle) -> RegisteredModel:
        """The registered version `offered` is again; InvalidBundle where it differs."""
        key = offered.card.key
        if existing.weights_sha256 != offered.weights_sha256:
            raise InvalidBundle(f"{key} is registered already with other weights; give the new ones a new version")
        changed = _changed_configs(Path(existing.bundle_path), offered.path)
        if changed:
            # Ignoring them would leave the administrator believing the new rules or codes apply.
            raise InvalidBundle(
                f"{key} is registered already with another {' and '.join(changed)}; "
                "give the changed bundle a new version"
            )
        return self._model(existing)

    def any_registered(self) -> bool:
        """Whether any version is registered, reading no bundle: one that can
        no longer be read (its files changed by hand) is a matter for
        `models list`, not a reason to stop the server starting."""
        with reading(self.engine) as connection:
            return connection.execute(select(ai_models.c.id).limit(1)).first() is not None

    def registered(self) -> list[RegisteredModel]:
        with reading(self.engine) as connection:
            rows = connection.execute(select(ai_models).order_by(ai_models.c.name, ai_models.c.id)).all()
        return [self._model(row) for row in rows]

    def get(self, key: str, connection: Connection | None = None) -> RegisteredModel:
        with reading(self.engine, connection) as session:
            row = self._row(session, key)
        if row is None:
            raise ModelNotFound(f"no model version {key} is registered (see `medaiflow models list`)")
        return self._model(row)

    def by_id(self, model_id: int, connection: Connection | None = None) -> RegisteredModel:
        with reading(self.engine, connection) as session:
            row = session.execute(select(ai_models).where(ai_models.c.id == model_id)).first()
        if row is None:
            raise ModelNotFound(f"no model version with id {model_id}")
        return self._model(row)

    def by_device(self, device_resource_id: str, connection: Connection | None = None) -> RegisteredModel:
        with reading(self.engine, connection) as session:
            row = session.execute(select(ai_models).where(ai_models.c.device_id == device_resource_id)).first()
        if row is None:
            raise ModelNotFound(f"Device/{device_resource_id} is not a registered model version")
        return self._model(row)

    def active(self, connection: Connection | None = None) -> list[RegisteredModel]:
        with reading(self.engine, connection) as session:
            rows = session.execute(select(ai_models).where(ai_models.c.active).order_by(ai_models.c.id)).all()
        return [self._model(row) for row in rows]

    def activate(self, key: str, force: bool = False) -> RegisteredModel:
        with write_connection(self.engine) as connection:
            model = self._held(connection, key)
            passed = model.validation is not None and model.validation.passed
            if not passed and not force:
                why = "its validation did not pass" if model.validation else "it has not been validated"
                raise ActivationRefused(
                    f"{key} cannot be activated: {why} (`medaiflow models validate {key} DIR`, or --force)"
                )
            return self._set(connection, model, True, model.validation, forced=not passed)

    def deactivate(self, key: str) -> RegisteredModel:
        with write_connection(self.engine) as connection:
            model = self._held(connection, key)
            return self._set(connection, model, False, model.validation, model.forced)

    def record_validation(self, key: str, validation: Validation) -> RegisteredModel:
        """A failing validation deactivates the version, even a forced one."""
        with write_connection(self.engine) as connection:
            model = self._held(connection, key)
            return self._set(connection, model, model.active and validation.passed, validation, forced=False)

    def _held(self, connection: Connection, key: str) -> RegisteredModel:
        """The version, locked until `connection`'s transaction ends: what is
        written back from it is not what another change overwrote meanwhile."""
        advisory_locks(connection, [_lock_name(key)])
        return self.get(key, connection)

    def _set(
        self, connection: Connection, model: RegisteredModel, active: bool, validation: Validation | None, forced: bool
    ) -> RegisteredModel:
        stored = {
            "validation": validation.to_json() if validation else None,
            "forced": forced,
            "ever_forced": model.ever_forced or forced,
        }
        connection.execute(
            update(ai_models).where(ai_models.c.id == model.id).values(active=active, validation_json=orjson.dumps(stored))
        )
        changed = self.get(model.key, connection)
        self._publish(connection, changed)
        return changed

    def _publish(self, connection: Connection, model: RegisteredModel) -> None:
        if self.on_change is not None:
            state = "active" if model.active else "inactive"
            forced = ", activated without a passing validation" if model.forced and model.active else ""
            validated = "" if model.validation is None else f", validation {'passed' if model.validation.passed else 'failed'}"
            self.on_change(connection, model.device_id, f"model {model.key}: {state}{validated}{forced}")
        metrics = model.validation.metrics if model.validation else ()
        device = model_device(
            model.bundle.card, model.bundle.weights_sha256, model.active, metrics, ever_forced=model.ever_forced
        )
        self.store.put(connection, device, model.device_id, "PUT")

    @staticmethod
    def _row(connection: Connection, key: str) -> Any:
        name, _, version = key.partition("@")
        return connection.execute(
            select(ai_models).where(ai_models.c.name == name, ai_models.c.version == version)
        ).first()

    def _model(self, row: Any) -> RegisteredModel:
        stored = orjson.loads(row.validation_json) if row.validation_json else {"validation": None, "forced": False}
        validation = Validation.from_json(stored["validation"]) if stored["validation"] else None
        key = (row.bundle_path, row.weights_sha256)
        if key not in self._bundles:
            self._bundles[key] = Bundle.open(Path(row.bundle_path), row.weights_sha256)
        return RegisteredModel(
            id=row.id, bundle=self._bundles[key], device_id=row.device_id, active=row.active,
            # Rows written before the record was kept: a forced activation still in force was one.
            validation=validation, forced=stored["forced"], ever_forced=stored.get("ever_forced", stored["forced"]),
        )


def _remove_abandoned_staging(models_dir: Path) -> None:
    """Copies whose registration was killed before its `finally` ran: a
    living one (in this or another process) has touched its folder within
    the last day; a copy of even the largest bundle takes minutes."""
    if not models_dir.is_dir():
        return
    cutoff = time.time() - _STAGING_ABANDONED_SECONDS
    for staging in models_dir.glob(f"{_STAGING_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            if staging.stat().st_mtime < cutoff:
                shutil.rmtree(staging, ignore_errors=True)


def _lock_name(key: str) -> str:
    return f"ai-model:{key}"


_STAGING_PREFIX = ".incoming-"
_STAGING_ABANDONED_SECONDS = 24 * 3600


def _now() -> int:
    return time.time_ns() // 1000
