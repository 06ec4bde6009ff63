"""Registered model versions, each published as a FHIR Device.

A registration copies the bundle under the data directory (the folder it
came from may move or change) and writes its row and its Device in one
transaction. Activation needs a passing validation unless forced, and a
forced activation is written on the Device for everyone to see.
"""

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, select, update

from fhir_mappings.device import ValidationMetric, device_id, model_device
from inference.bundle import Bundle
from inference.errors import InvalidBundle
from server.db import reading, write_connection
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
    forced: bool

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
        # Registered bundles do not change (their copy is the server's, their
        # weights are pinned by digest): each is read from disk once.
        self._bundles: dict[tuple[str, str], Bundle] = {}
        # Told of every registration and change of state, in its transaction (the audit trail).
        self.on_change: Callable[[Connection, str, str], None] | None = None

    def add(self, source: Path) -> tuple[RegisteredModel, bool]:
        """Register a bundle directory: the model, and whether it is new
        (adding the same weights again changes nothing)."""
        bundle = Bundle.open(source)
        card = bundle.card
        with write_connection(self.engine) as connection:
            existing = self._row(connection, card.key)
            if existing is not None:
                if existing.weights_sha256 != bundle.weights_sha256:
                    raise InvalidBundle(
                        f"{card.key} is registered already with other weights; give the new ones a new version"
                    )
                changed = _changed_configs(Path(existing.bundle_path), bundle.path)
                if changed:
                    # Ignoring them would leave the administrator believing the new rules or codes apply.
                    raise InvalidBundle(
                        f"{card.key} is registered already with another {' and '.join(changed)}; "
                        "give the changed bundle a new version"
                    )
                return self._model(existing), False
            target = self.models_dir / card.name / card.version
            if target.exists():  # a copy left by a registration that did not commit
                shutil.rmtree(target)
            shutil.copytree(bundle.path, target)
            copied = Bundle.open(target)
            connection.execute(
                insert(ai_models).values(
                    name=card.name, version=card.version, bundle_path=str(target), weights_sha256=copied.weights_sha256,
                    device_id=device_id(card), active=False, validation_json=None, registered_at=_now(),
                )
            )
            row = self._row(connection, card.key)
            assert row is not None
            model = self._model(row)
            self._publish(connection, model)
            return model, True

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
            model = self.get(key, connection)
            passed = model.validation is not None and model.validation.passed
            if not passed and not force:
                why = "its validation did not pass" if model.validation else "it has not been validated"
                raise ActivationRefused(
                    f"{key} cannot be activated: {why} (`medaiflow models validate {key} DIR`, or --force)"
                )
            return self._set(connection, model, True, model.validation, forced=not passed)

    def deactivate(self, key: str) -> RegisteredModel:
        with write_connection(self.engine) as connection:
            model = self.get(key, connection)
            return self._set(connection, model, False, model.validation, model.forced)

    def record_validation(self, key: str, validation: Validation) -> RegisteredModel:
        """A failing validation deactivates the version, even a forced one."""
        with write_connection(self.engine) as connection:
            model = self.get(key, connection)
            return self._set(connection, model, model.active and validation.passed, validation, forced=False)

    def _set(
        self, connection: Connection, model: RegisteredModel, active: bool, validation: Validation | None, forced: bool
    ) -> RegisteredModel:
        stored = {"validation": validation.to_json() if validation else None, "forced": forced}
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
        device = model_device(model.bundle.card, model.bundle.weights_sha256, model.active, metrics, forced=model.forced)
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
            validation=validation, forced=stored["forced"],
        )


def _now() -> int:
    return time.time_ns() // 1000
