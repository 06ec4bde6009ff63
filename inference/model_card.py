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

import math
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
    def from_json(cls, value: Any, field: str) -> "Code":
        code = _object(value, field)
        return cls(*(_text(code.get(part, _MISSING), f"{field}.{part}") for part in ("system", "code", "display")))


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


_MAX_LABEL = 255


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
        if self.label > _MAX_LABEL:
            # The network's labels are read as bytes (and the SEG's label map is one): 256 would be read as 0.
            raise InvalidBundle(f"segment {self.name!r}: labels go up to {_MAX_LABEL}, not {self.label}")
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
        series = _object(extension.get("series", _MISSING), "medaiflow.series")
        authors = metadata.get("authors")
        if extension.get("manufacturer") is not None:
            manufacturer = _text(extension["manufacturer"], "medaiflow.manufacturer")
        else:  # MONAI's own field, free text; a list of names or nothing says no maker
            manufacturer = authors if isinstance(authors, str) and authors.strip() else "unknown"
        description = metadata.get("description")
        return cls(
            name=_text(metadata.get("name", _MISSING), "name"),
            version=_text(metadata.get("version", _MISSING), "version"),
            description=_text(description, "description", empty=True) if description is not None else "",
            manufacturer=manufacturer,
            series=SeriesRule(
                modality=_text(series.get("modality", _MISSING), "medaiflow.series.modality"),
                sop_class_uids=_texts(series.get("sop_class_uids", _MISSING), "medaiflow.series.sop_class_uids"),
                min_slices=_integer(series.get("min_slices", 1), "medaiflow.series.min_slices"),
                series_description=_pattern(series, "series_description"),
                body_part_examined=_pattern(series, "body_part_examined"),
            ),
            segments=tuple(
                _segment(segment, f"medaiflow.segments[{index}]")
                for index, segment in enumerate(_list(extension.get("segments", _MISSING), "medaiflow.segments"))
            ),
        )


def _pattern(series: Mapping[str, Any], key: str) -> re.Pattern[str] | None:
    # An optional field given as null is absent, as bundles registered before these checks wrote it.
    if series.get(key) is None:
        return None
    value = _text(series[key], f"medaiflow.series.{key}")
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as error:
        raise InvalidBundle(f"series pattern {value!r} is not a regular expression: {error}") from error


def _segment(value: Any, field: str) -> Segment:
    segment = _object(value, field)
    name = _text(segment.get("name", _MISSING), f"{field}.name")
    return Segment(
        label=_integer(segment.get("label", _MISSING), f"{field}.label"),
        name=name,
        finding=Code.from_json(segment.get("finding", _MISSING), f"{field}.finding"),
        min_component_ml=_number(segment.get("min_component_ml", 0.0), f"{field}.min_component_ml"),
        measurements=tuple(
            _measurement(item, f"{field}.measurements[{index}]")
            for index, item in enumerate(_list(segment.get("measurements", _MISSING), f"{field}.measurements"))
        ),
    )


def _measurement(value: Any, field: str) -> Measurement:
    measurement = _object(value, field)
    kind = _text(measurement.get("kind", _MISSING), f"{field}.kind")
    try:
        known = MeasurementKind(kind)
    except ValueError as error:
        kinds = ", ".join(item.value for item in MeasurementKind)
        raise _refused(f"{field}.kind", f"one of {kinds}", kind) from error
    code = Code.from_json(measurement.get("code", _MISSING), f"{field}.code")
    return Measurement(kind=known, code=code, unit=_text(measurement.get("unit", _MISSING), f"{field}.unit"))


# The metadata is JSON written by hand: each value is checked for the type its
# field means, never converted (str() of a string of UIDs is a tuple of its
# characters; str(None) is "None"), and each refusal names the field.
_MISSING: Any = object()


def _refused(field: str, wanted: str, value: Any) -> InvalidBundle:
    return InvalidBundle(f"configs/metadata.json: {field} must be {wanted}, not {_described(value)}")


def _described(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if value.strip() else "an empty string"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    return "a list" if isinstance(value, list) else "an object"


def _text(value: Any, field: str, empty: bool = False) -> str:
    if not isinstance(value, str) or not (empty or value.strip()):
        raise _refused(field, "a string" if empty else "a non-empty string", value)
    return value


def _texts(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _refused(field, "a non-empty list of strings", value)
    return tuple(_text(item, f"{field}[{index}]") for index, item in enumerate(value))


def _integer(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refused(field, "a whole number", value)
    return value


def _number(value: Any, field: str) -> float:
    # json.loads reads NaN and Infinity, and "nan" is a string float() would take.
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _refused(field, "a finite number", value)
    return float(value)


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _refused(field, "an object", value)
    return value


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise _refused(field, "a list", value)
    return value
