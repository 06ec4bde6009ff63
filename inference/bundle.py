"""A MONAI bundle on local disk: its card, its weights' digest, its network.

Only `monai.bundle.ConfigParser` reads the configs, from the directory given:
nothing is ever downloaded. Torch and MONAI are imported when a network is
loaded, not when a bundle is only described (the CLI lists models fast).

A bundle is what is read of it: `configs/` and one weights file. A copy
(`copy_bundle`, how a registry keeps its own) takes those alone, as plain
files: a symbolic link could reach anywhere, a loop of them copies forever.
"""

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.errors import InvalidBundle
from inference.model_card import ModelCard

WEIGHT_FILES = ("models/model.ts", "models/model.pt")
CONFIGS = "configs"
# Configs and weights together; large segmentation networks weigh a few GB.
MAX_BUNDLE_BYTES = 16 << 30
_CHUNK = 1 << 20


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


def copy_bundle(bundle: Bundle, destination: Path, max_bytes: int = MAX_BUNDLE_BYTES) -> None:
    """Copy `bundle`'s configs and weights into the empty folder `destination`.
    InvalidBundle for a symbolic link, anything but plain files and folders,
    more than `max_bytes`, or a file that cannot be read; the caller removes
    the folder (a partial copy) then."""
    members = _members(bundle)
    too_large = f"{bundle.path}: its configs and weights hold more than the {max_bytes} bytes a bundle may"
    if sum(size for _, size in members) > max_bytes:
        raise InvalidBundle(too_large)
    budget = max_bytes
    for relative, _ in members:
        try:
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            budget -= _copy_file(bundle.path / relative, destination / relative, budget)
        except OSError as error:
            raise InvalidBundle(f"{bundle.path}: {relative} cannot be copied: {error.strerror}") from error
        if budget < 0:  # a file that grew while it was copied
            raise InvalidBundle(too_large)


def _members(bundle: Bundle) -> list[tuple[Path, int]]:
    """(path within the bundle, size) of each file a copy takes. Bundle.open
    found configs/ and models/ folders and the weights a file, following links."""
    weights = bundle.weights.relative_to(bundle.path)
    _size(bundle.path, weights.parent)
    members = [(weights, _size(bundle.path, weights) or 0)]
    folders = [Path(CONFIGS)]
    while folders:
        folder = folders.pop()
        _size(bundle.path, folder)
        try:
            names = sorted(os.listdir(bundle.path / folder))
        except OSError as error:
            raise InvalidBundle(f"{bundle.path}: {folder} cannot be read: {error.strerror}") from error
        for name in names:
            size = _size(bundle.path, folder / name)
            if size is None:
                folders.append(folder / name)
            else:
                members.append((folder / name, size))
    return members


def _size(root: Path, relative: Path) -> int | None:
    """The size of a plain file, None for a folder; InvalidBundle for a link or another kind of file."""
    try:
        status = os.lstat(root / relative)
    except OSError as error:
        raise InvalidBundle(f"{root}: {relative} cannot be read: {error.strerror}") from error
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        raise InvalidBundle(f"{root}: {relative} is a symbolic link; a bundle is copied from plain files only")
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        raise InvalidBundle(f"{root}: {relative} is neither a plain file nor a folder")
    return status.st_size


def _copy_file(source: Path, target: Path, budget: int) -> int:
    """Bytes copied, stopping once past `budget`. O_NOFOLLOW and the check of
    the open file: a link or a pipe put in the file's place since it was listed
    is refused, not followed or waited on."""
    descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(descriptor, "rb") as reading:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise InvalidBundle(f"{source} is not a plain file")
        copied = 0
        with target.open("xb") as writing:
            while copied <= budget and (chunk := reading.read(_CHUNK)):
                writing.write(chunk)
                copied += len(chunk)
    return copied


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
