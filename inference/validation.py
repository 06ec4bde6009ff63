"""A model version measured against reference segmentations (`medaiflow models validate`).

A labelled set is a directory tree of DICOM files: image series, and DICOM
Segmentations (SEG, Modality SEG) drawn on them. Each SEG is one case: the
series it references (its Referenced Series Sequence, else the series of the
instances its frames were derived from) is assembled into a volume, the model
segments that volume, and its mask is compared with the SEG's on the same grid.

Which SEG segments are the reference for a card segment: those whose Segment
Label is the card segment's name, ignoring case. If no SEG segment is named
like any card segment, a single-segment card takes the union of all the SEG's
segments (an annotator's "tumour" for a model's "lesion"); a card of several
segments cannot be paired that way and the SEG is refused. A card segment
left without a same-named SEG segment has an empty reference.

Per case and card segment: Dice of the two masks; the relative error of the
total volume and the component count, both from `measure` with the card
segment's `min_component_ml`, so they are the numbers the model would report.
Cases are read and run one at a time; only file headers are held for the rest.
"""

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from inference.assembly import volume_from_datasets
from inference.errors import InvalidLabelledSet, VolumeError
from inference.findings import SegmentFindings
from inference.measurements import measure
from inference.model_card import ModelCard, Segment
from inference.volume import Volume

# A FRACTIONAL SEG's voxel is inside from this value (highdicom rescales to 0..1).
_INSIDE = 0.5


@dataclass(frozen=True)
class Thresholds:
    """What a model version must reach, on average over the set, to pass."""

    min_dice: float = 0.7
    max_volume_error_percent: float = 15.0
    min_count_accuracy: float = 0.9

    def __post_init__(self) -> None:
        # Written as "not inside" so that NaN is refused too.
        if not 0.0 <= self.min_dice <= 1.0:
            raise ValueError(f"min_dice is between 0 and 1, got {self.min_dice}")
        if not 0.0 <= self.max_volume_error_percent < float("inf"):
            raise ValueError(f"max_volume_error_percent is a percentage of at least 0, got {self.max_volume_error_percent}")
        if not 0.0 <= self.min_count_accuracy <= 1.0:
            raise ValueError(f"min_count_accuracy is a fraction between 0 and 1, got {self.min_count_accuracy}")

    def met_by(self, mean_dice: float, mean_volume_error_percent: float, count_accuracy: float) -> bool:
        return (
            mean_dice >= self.min_dice
            and mean_volume_error_percent <= self.max_volume_error_percent
            and count_accuracy >= self.min_count_accuracy
        )


@dataclass(frozen=True)
class ValidationReport:
    cases: int
    mean_dice: float  # over every case and card segment
    mean_volume_error_percent: float  # mean absolute relative error of the total volume, same pairs
    count_accuracy: float  # fraction of cases where every card segment's count equals the reference's
    passed: bool
    lines: tuple[str, ...]  # one per case, in path order
    thresholds: Thresholds = Thresholds()  # what `passed` was judged against

    @property
    def summary(self) -> str:
        limits = self.thresholds
        return (
            f"{'Passed' if self.passed else 'Failed'} on {self.cases} case{'' if self.cases == 1 else 's'}: "
            f"mean Dice {self.mean_dice:.3f} (at least {limits.min_dice:g}), "
            f"mean volume error {self.mean_volume_error_percent:.1f}% (at most {limits.max_volume_error_percent:g}%), "
            f"count accuracy {self.count_accuracy:.0%} (at least {limits.min_count_accuracy:.0%})."
        )


@dataclass(frozen=True)
class _Case:
    name: str  # the SEG's path within the labelled set
    seg_path: Path
    image_paths: tuple[Path, ...]


@dataclass(frozen=True)
class _Comparison:
    """One card segment on one case."""

    dice: float
    predicted: SegmentFindings
    reference: SegmentFindings

    @property
    def volume_error_percent(self) -> float:
        """Signed, relative to the reference. Undefined for an empty reference:
        0 if the model found nothing either, else 100 (a full miss, not a dropped case)."""
        reference, predicted = self.reference.total_volume_ml, self.predicted.total_volume_ml
        if reference == 0:
            return 0.0 if predicted == 0 else 100.0
        return (predicted - reference) / reference * 100.0

    @property
    def count_matches(self) -> bool:
        return self.predicted.count == self.reference.count

    def describe(self) -> str:
        return (
            f"{self.reference.segment.name} Dice {self.dice:.3f}, "
            f"{self.predicted.total_volume_ml:.2f} mL against {self.reference.total_volume_ml:.2f} mL "
            f"({self.volume_error_percent:+.1f}%), {self.predicted.count} found against {self.reference.count}"
        )


@dataclass(frozen=True)
class LabelledSet:
    """The cases of a labelled set, resolved from file headers alone: read
    before a model is loaded, so that a folder that is no labelled set is
    refused before any bundle's configs run."""

    directory: Path
    cases: tuple[_Case, ...]

    @classmethod
    def read(cls, directory: Path, untouchable: frozenset[Path] = frozenset()) -> "LabelledSet":
        """`untouchable` files under `directory` are not even opened (a live database's, say)."""
        return cls(directory, tuple(_cases(directory, untouchable)))


def validate(
    segment: Callable[[Volume], np.ndarray],
    card: ModelCard,
    labelled_set: LabelledSet,
    thresholds: Thresholds = Thresholds(),
) -> ValidationReport:
    """`segment` gives the model's labels on a volume's grid (Segmenter.segment);
    `card` says which label values are which segment."""
    lines = []
    results: list[list[_Comparison]] = []
    for case in labelled_set.cases:
        comparisons = _run_case(case, segment, card)
        results.append(comparisons)
        lines.append(f"{case.name}: " + "; ".join(comparison.describe() for comparison in comparisons))
    pairs = [comparison for comparisons in results for comparison in comparisons]
    mean_dice = float(np.mean([pair.dice for pair in pairs]))
    mean_volume_error = float(np.mean([abs(pair.volume_error_percent) for pair in pairs]))
    count_accuracy = float(np.mean([all(pair.count_matches for pair in comparisons) for comparisons in results]))
    return ValidationReport(
        cases=len(labelled_set.cases),
        mean_dice=mean_dice,
        mean_volume_error_percent=mean_volume_error,
        count_accuracy=count_accuracy,
        passed=thresholds.met_by(mean_dice, mean_volume_error, count_accuracy),
        lines=tuple(lines),
        thresholds=thresholds,
    )


def _cases(directory: Path, untouchable: frozenset[Path]) -> list[_Case]:
    """One case per SEG under `directory`, with the image files of the series it references."""
    try:
        is_directory = directory.is_dir()
    except (OSError, ValueError):  # a NUL in the name, a name too long
        is_directory = False
    if not is_directory:
        raise InvalidLabelledSet(f"{str(directory)[:200]!r} is not a directory")
    try:
        os.scandir(directory).close()  # the walk below passes over folders it may not list, silently
    except OSError as error:
        raise InvalidLabelledSet(f"{directory} cannot be read: {error.strerror}") from error
    series_paths: dict[str, list[Path]] = defaultdict(list)
    series_of_instance: dict[str, str] = {}
    segs: list[tuple[Path, Dataset]] = []
    for path in sorted(path for path in directory.rglob("*") if path.is_file() and path.resolve() not in untouchable):
        header = _header(path)
        # No series: not a composite instance (a DICOMDIR, for one), nothing to validate on.
        if header is None or "SeriesInstanceUID" not in header:
            continue
        if header.get("Modality") == "SEG":
            segs.append((path, header))
        else:
            series_paths[str(header.SeriesInstanceUID)].append(path)
            series_of_instance[str(header.get("SOPInstanceUID", ""))] = str(header.SeriesInstanceUID)
    if not segs:
        found = "image files but" if series_paths else "no DICOM files and"
        raise InvalidLabelledSet(f"{directory} holds {found} no DICOM Segmentation (SEG); a labelled set needs a reference SEG per case")
    cases = []
    for path, header in segs:
        name = str(path.relative_to(directory))
        series = _source_series(name, header, series_of_instance)
        if series not in series_paths:
            raise InvalidLabelledSet(f"{name}: its source series {series} is not under {directory}")
        cases.append(_Case(name, path, tuple(series_paths[series])))
    return cases


def _header(path: Path) -> Dataset | None:
    """The file's elements up to its pixel data; None for a file that is not DICOM (Part 10)."""
    try:
        return dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except OSError as error:
        raise InvalidLabelledSet(f"{path} cannot be read: {error.strerror}") from error


def _source_series(name: str, header: Dataset, series_of_instance: dict[str, str]) -> str:
    referenced = {str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in item}
    if not referenced:
        # Some writers omit the Common Instance Reference module; the frames still name their sources.
        referenced = {series_of_instance[uid] for uid in _source_instance_uids(header) if uid in series_of_instance}
    if not referenced:
        raise InvalidLabelledSet(
            f"{name}: its source series is unknown: it has no Referenced Series Sequence and "
            "none of the instances it was derived from is in the labelled set"
        )
    if len(referenced) > 1:
        raise InvalidLabelledSet(f"{name}: it references {len(referenced)} series ({', '.join(sorted(referenced))}); a case is one series")
    return referenced.pop()


def _source_instance_uids(header: Dataset) -> set[str]:
    items = list(header.get("SourceImageSequence", []))
    for frame in header.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            items.extend(derivation.get("SourceImageSequence", []))
    return {str(item.ReferencedSOPInstanceUID) for item in items if "ReferencedSOPInstanceUID" in item}


def _run_case(case: _Case, segment: Callable[[Volume], np.ndarray], card: ModelCard) -> list[_Comparison]:
    volume = _volume(case)
    references = _reference_masks(case, volume, card)
    labels = np.asarray(segment(volume))
    if labels.shape != volume.voxels.shape:
        raise InvalidLabelledSet(f"{case.name}: the model gave labels of shape {labels.shape} for a volume of shape {volume.voxels.shape}")
    return [_compare(labels == item.label, references[item.label], volume, item) for item in card.segments]


def _volume(case: _Case) -> Volume:
    # The datasets go out of scope here: only the decoded voxels are kept.
    datasets = [dcmread(path) for path in case.image_paths]
    try:
        return volume_from_datasets(datasets)
    except VolumeError as error:
        raise VolumeError(f"{case.name}: {error.message}") from error


def _reference_masks(case: _Case, volume: Volume, card: ModelCard) -> dict[int, np.ndarray]:
    """Card label -> the reference mask on the volume's grid."""
    seg = highdicom.seg.Segmentation.from_dataset(dcmread(case.seg_path), copy=False)
    numbers = list(seg.segment_numbers)
    try:
        pixels = _pixels(seg, volume, numbers) >= _INSIDE
    except ValueError as error:
        raise InvalidLabelledSet(f"{case.name}: its frames cannot be placed on the series' slices: {error}") from error
    if pixels.shape[:3] != volume.voxels.shape:
        # highdicom places frames by source instance, whatever their size: compared
        # with the model's labels, a mask of another grid could not be broadcast.
        found, wanted = ("x".join(map(str, shape)) for shape in (pixels.shape[:3], volume.voxels.shape))
        raise InvalidLabelledSet(
            f"{case.name}: its frames make a mask of {found} (slices x rows x columns) for a series of {wanted}; "
            "a reference is drawn on its series' grid"
        )
    paired = _paired_segments(case.name, seg, card)
    return {label: pixels[..., [numbers.index(number) for number in chosen]].any(axis=-1) for label, chosen in paired.items()}


def _pixels(seg: highdicom.seg.Segmentation, volume: Volume, numbers: Sequence[int]) -> np.ndarray:
    """(slices, rows, columns, segments) in the volume's slice order; source slices without a frame are empty."""
    if volume.source_frame_numbers:
        return seg.get_pixels_by_source_frame(
            volume.source_instance_uids[0], list(volume.source_frame_numbers),
            segment_numbers=numbers, assert_missing_frames_are_empty=True,
        )
    return seg.get_pixels_by_source_instance(
        list(volume.source_instance_uids), segment_numbers=numbers, assert_missing_frames_are_empty=True,
    )


def _paired_segments(name: str, seg: highdicom.seg.Segmentation, card: ModelCard) -> dict[int, list[int]]:
    """Card label -> the SEG segment numbers that make its reference (the rule in the module docstring)."""
    labels = {number: str(seg.get_segment_description(number).segment_label) for number in seg.segment_numbers}
    by_name = {
        item.label: [number for number, label in labels.items() if label.casefold() == item.name.casefold()]
        for item in card.segments
    }
    if any(by_name.values()):
        return by_name
    if len(card.segments) == 1:
        return {card.segments[0].label: list(labels)}
    raise InvalidLabelledSet(
        f"{name}: none of its segments ({', '.join(labels.values())}) is named like a segment of {card.key} "
        f"({', '.join(item.name for item in card.segments)}), so they cannot be paired"
    )


def _compare(predicted: np.ndarray, reference: np.ndarray, volume: Volume, segment: Segment) -> _Comparison:
    return _Comparison(
        dice=_dice(predicted, reference),
        predicted=measure(predicted, volume, segment),
        reference=measure(reference, volume, segment),
    )


def _dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    total = int(np.count_nonzero(predicted)) + int(np.count_nonzero(reference))
    # Two empty masks agree perfectly; the formula would divide by zero.
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(predicted & reference)) / total
