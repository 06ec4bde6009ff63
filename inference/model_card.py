"""What a model bundle declares about itself, read from `configs/metadata.json`.

MONAI's bundle metadata (name, version, authors, network_data_format) is
extended by one `medaiflow` object, so that which series a model runs on and
what each output means are data shipped with the weights, not code here:

    "medaiflow": {
      "manufacturer": "...",
      "series": {"modality": "CT", "sop_class_uids": [...], "min_slices": 20,
                 "series_description": "regex", "body_part_examined": "regex"},
      "segments": [{"label": 1, "name": "lesion",
                    "finding": {"system": ..., "code": ..., "display": ...},
                    "min_component_ml": 0.05,
                    "measurements": [{"kind": "count", "code": {...}, "unit": "{lesions}"}, ...]}]
    }

Every class validates itself when built: a card that exists is usable.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from inference.errors import InvalidBundle

# UCUM units each measurement kind may be reported in (ucum.org; FHIR R4
# Observation.valueQuantity with system http://unitsofmeasure.org).
_UNITS = {
    "count": ("1", "{lesions}", "{findings}", "{count}"),
    "total_volume": ("mL", "cm3", "mm3"),
    "finding_volume": ("mL", "cm3", "mm3"),
    "centroid": ("mm",),
    "longest_diameter": ("mm", "cm"),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}")


class MeasurementKind(Enum):
    COUNT = "count"  # connected components above the minimum volume
    TOTAL_VOLUME = "total_volume"  # of all those components together
    FINDING_VOLUME = "finding_volume"  # one per component
    CENTROID = "centroid"  # one per component, LPS patient coordinates
    LONGEST_DIAMETER = "longest_diameter"  # one per component

    @property
    def per_finding(self) -> bool:
        return self in (MeasurementKind.FINDING_VOLUME, MeasurementKind.CENTROID, MeasurementKind.LONGEST_DIAMETER)


@dataclass(frozen=True)
class Code:
    system: str
    code: str
    display: str

    def __post_init__(self) -> None:
        if not (self.system and self.code and self.display):
            raise InvalidBundle(f"a code needs a system, a code and a display, got {self!r}")

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Code":
        if not isinstance(value, Mapping):
            raise InvalidBundle(f"{where} must be an object with system, code and display")
        return cls(str(value.get("system", "")), str(value.get("code", "")), str(value.get("display", "")))


@dataclass(frozen=True)
class Measurement:
    kind: MeasurementKind
    code: Code
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in _UNITS[self.kind.value]:
            raise InvalidBundle(
                f"a {self.kind.value} measurement is reported in one of {', '.join(_UNITS[self.kind.value])}, "
                f"not {self.unit!r}"
            )


@dataclass(frozen=True)
class Segment:
    """One label value of the network's segmentation output."""

    label: int
    name: str
    finding: Code
    min_component_ml: float
    measurements: tuple[Measurement, ...]

    def __post_init__(self) -> None:
        if self.label < 1:
            raise InvalidBundle(f"segment {self.name!r}: label 0 is the background; labels start at 1")
        if self.min_component_ml < 0:
            raise InvalidBundle(f"segment {self.name!r}: min_component_ml cannot be negative")
        kinds = [measurement.kind for measurement in self.measurements]
        if len(set(kinds)) != len(kinds):
            raise InvalidBundle(f"segment {self.name!r} declares a measurement kind twice")

    def measurement(self, kind: MeasurementKind) -> Measurement | None:
        return next((measurement for measurement in self.measurements if measurement.kind is kind), None)


@dataclass(frozen=True)
class SeriesRule:
    """Which series the model runs on; every given condition must hold."""

    modality: str
    sop_class_uids: tuple[str, ...]
    min_slices: int
    series_description: re.Pattern[str] | None = None
    body_part_examined: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        if not self.modality or not self.sop_class_uids:
            raise InvalidBundle("the series rule needs a modality and at least one SOP class UID")
        if self.min_slices < 1:
            raise InvalidBundle("the series rule's min_slices must be at least 1")

    def matches(
        self,
        modality: str | None,
        sop_class_uid: str | None,
        slices: int,
        series_description: str | None,
        body_part_examined: str | None,
    ) -> bool:
        return (
            modality == self.modality
            and sop_class_uid in self.sop_class_uids
            and slices >= self.min_slices
            and _matches(self.series_description, series_description)
            and _matches(self.body_part_examined, body_part_examined)
        )


def _matches(pattern: re.Pattern[str] | None, value: str | None) -> bool:
    return pattern is None or (value is not None and pattern.search(value) is not None)


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    description: str
    manufacturer: str
    series: SeriesRule
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InvalidBundle(f"model name {self.name!r}: letters, digits, '.', '_' and '-', at most 64")
        if not _VERSION.fullmatch(self.version):
            raise InvalidBundle(f"model version {self.version!r} is not a plain version string")
        if not self.segments:
            raise InvalidBundle(f"model {self.name} declares no segment outputs")
        labels = [segment.label for segment in self.segments]
        if len(set(labels)) != len(labels):
            raise InvalidBundle(f"model {self.name} declares a label twice")

    @property
    def key(self) -> str:
        """NAME@VERSION, how the CLI and the admin API name a model version."""
        return f"{self.name}@{self.version}"

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "ModelCard":
        extension = metadata.get("medaiflow")
        if not isinstance(extension, Mapping):
            raise InvalidBundle("configs/metadata.json has no 'medaiflow' object describing series and outputs")
        try:
            series = extension["series"]
            return cls(
                name=str(metadata["name"]),
                version=str(metadata["version"]),
                description=str(metadata.get("description", "")),
                manufacturer=str(extension.get("manufacturer") or metadata.get("authors") or "unknown"),
                series=SeriesRule(
                    modality=str(series["modality"]),
                    sop_class_uids=tuple(str(uid) for uid in series["sop_class_uids"]),
                    min_slices=int(series.get("min_slices", 1)),
                    series_description=_pattern(series.get("series_description")),
                    body_part_examined=_pattern(series.get("body_part_examined")),
                ),
                segments=tuple(_segment(segment) for segment in extension["segments"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as error:  # Overflow: Infinity where a count belongs
            raise InvalidBundle(f"configs/metadata.json: missing or malformed {error}") from error


def _pattern(value: Any) -> re.Pattern[str] | None:
    if value is None:
        return None
    try:
        return re.compile(str(value), re.IGNORECASE)
    except re.error as error:
        raise InvalidBundle(f"series pattern {value!r} is not a regular expression: {error}") from error


def _segment(value: Mapping[str, Any]) -> Segment:
    name = str(value["name"])
    return Segment(
        label=int(value["label"]),
        name=name,
        finding=Code.from_json(value["finding"], f"segment {name!r} finding"),
        min_component_ml=float(value.get("min_component_ml", 0.0)),
        measurements=tuple(
            Measurement(
                kind=MeasurementKind(item["kind"]),
                code=Code.from_json(item["code"], f"segment {name!r} measurement code"),
                unit=str(item["unit"]),
            )
            for item in value["measurements"]
        ),
    )
