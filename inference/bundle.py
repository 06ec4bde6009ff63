"""A MONAI bundle on local disk: its card, its weights' digest, its network.

Only `monai.bundle.ConfigParser` reads the configs, from the directory given:
nothing is ever downloaded. Torch and MONAI are imported when a network is
loaded, not when a bundle is only described (the CLI lists models fast).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.errors import InvalidBundle
from inference.model_card import ModelCard

WEIGHT_FILES = ("models/model.ts", "models/model.pt")


@dataclass(frozen=True)
class Bundle:
    path: Path
    card: ModelCard
    weights: Path
    weights_sha256: str

    @classmethod
    def open(cls, path: Path, known_sha256: str | None = None) -> "Bundle":
        """`known_sha256` skips hashing the weights (a registry that hashed
        them at registration); whoever loads the network checks it again."""
        try:
            path = path.resolve()
            is_bundle = (path / "configs" / "inference.json").is_file()
        except (OSError, ValueError) as error:  # a NUL in the name, a name too long
            raise InvalidBundle(f"{str(path)[:200]!r} is not a usable folder: {error}") from error
        if not is_bundle:
            raise InvalidBundle(f"{path} is not a MONAI bundle: configs/inference.json is missing")
        try:
            metadata = json.loads((path / "configs" / "metadata.json").read_bytes())
        except FileNotFoundError as error:
            raise InvalidBundle(f"{path}: configs/metadata.json is missing") from error
        except ValueError as error:
            raise InvalidBundle(f"{path}: configs/metadata.json is not JSON: {error}") from error
        if not isinstance(metadata, dict):
            raise InvalidBundle(f"{path}: configs/metadata.json must hold an object")
        weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if weights is None:
            raise InvalidBundle(f"{path}: no weights ({' or '.join(WEIGHT_FILES)})")
        return cls(path, ModelCard.from_metadata(metadata), weights, known_sha256 or _sha256(weights))

    def verify_weights(self) -> None:
        if _sha256(self.weights) != self.weights_sha256:
            raise InvalidBundle(f"{self.weights}: the weights changed since {self.card.key} was registered")

    def config(self) -> Any:
        """The parsed `configs/inference.json` (a monai.bundle.ConfigParser)."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.path / "configs" / "inference.json"))
        parser.update({"bundle_root": str(self.path)})
        return parser


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
