"""Validating a model version on a labelled phantom set: the demo model passes, a blind one fails, bad sets are refused."""

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread

from inference.bundle import Bundle
from inference.demo.labelled_set import (
    REFERENCE_FILE,
    SMALL_GEOMETRY,
    VALIDATION_RADIUS_MM,
    reference_segmentation,
    write_labelled_set,
)
from inference.demo.phantom import make_phantom, phantom_datasets
from inference.errors import InvalidLabelledSet
from inference.model_card import ModelCard
from inference.segmenter import Segmenter
from inference.validation import LabelledSet, Thresholds, validate
from inference.volume import Volume
from tests.enhanced_ct import enhanced_ct

DEMO_BUNDLE = Path("inference/demo/bundle")
FIRST_SEED = 20000
CASES = 3

Segment = Callable[[Volume], np.ndarray]


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("labelled")
    write_labelled_set(directory, CASES, FIRST_SEED, SMALL_GEOMETRY)
    (directory / "README.txt").write_text("not DICOM: skipped\n")
    return directory


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(DEMO_BUNDLE)


@pytest.fixture(scope="module")
def card(bundle: Bundle) -> ModelCard:
    return bundle.card


def ground_truth(seeds: range, multi_frame_uid: str | None = None) -> Segment:
    """A 'model' answering each phantom's true label, found by source instance (and frame), never by position."""
    slices: dict[tuple[str, int], np.ndarray] = {}
    for seed in seeds:
        phantom = make_phantom(seed, SMALL_GEOMETRY, radius_mm=VALIDATION_RADIUS_MM)
        for index, dataset in enumerate(phantom_datasets(phantom)):
            key = (multi_frame_uid, index + 1) if multi_frame_uid else (str(dataset.SOPInstanceUID), 1)
            slices[key] = phantom.label[index]

    def segment(volume: Volume) -> np.ndarray:
        frames = volume.source_frame_numbers or (1,) * len(volume.source_instance_uids)
        return np.stack([slices[key] for key in zip(volume.source_instance_uids, frames)])

    return segment


def test_the_demo_model_passes(labelled_set: Path, bundle: Bundle) -> None:
    segmenter = Segmenter(bundle, torch.device("cpu"))

    report = validate(segmenter.segment, bundle.card, LabelledSet.read(labelled_set))

    assert report.passed, report.lines
    assert report.cases == CASES == len(report.lines)
    assert report.mean_dice > 0.8
    assert report.count_accuracy == 1.0
    assert report.mean_volume_error_percent < Thresholds().max_volume_error_percent
    assert report.lines[0].startswith(f"case-{FIRST_SEED}/{REFERENCE_FILE}: lesion Dice ")
    assert report.summary.startswith(f"Passed on {CASES} cases: mean Dice ")


def test_a_model_that_finds_nothing_fails(labelled_set: Path, card: ModelCard) -> None:
    report = validate(lambda volume: np.zeros(volume.voxels.shape, np.uint8), card, LabelledSet.read(labelled_set))

    assert not report.passed
    assert report.mean_dice == 0.0
    assert report.count_accuracy == 0.0
    assert report.mean_volume_error_percent == pytest.approx(100.0)
    assert report.summary.startswith("Failed")


def test_the_reference_itself_scores_perfectly(labelled_set: Path, card: ModelCard) -> None:
    # SMALL is stored head to feet: a slice-order slip between SEG frames and the volume would show here.
    report = validate(ground_truth(range(FIRST_SEED, FIRST_SEED + CASES)), card, LabelledSet.read(labelled_set))

    assert (report.mean_dice, report.mean_volume_error_percent, report.count_accuracy) == (1.0, 0.0, 1.0)


def test_a_multi_frame_source_is_read_by_frame_numbers(tmp_path: Path, card: ModelCard) -> None:
    phantom = make_phantom(FIRST_SEED, SMALL_GEOMETRY, radius_mm=VALIDATION_RADIUS_MM)
    slices = phantom_datasets(phantom)
    image = enhanced_ct(slices)
    for keyword in ("StudyDate", "StudyTime", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        setattr(image, keyword, slices[0].data_element(keyword).value)  # what a SEG copies from its source
    image.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    reference_segmentation(phantom, [image]).save_as(tmp_path / REFERENCE_FILE, enforce_file_format=True)

    segment = ground_truth(range(FIRST_SEED, FIRST_SEED + 1), str(image.SOPInstanceUID))
    report = validate(segment, card, LabelledSet.read(tmp_path))

    assert (report.cases, report.mean_dice, report.count_accuracy) == (1, 1.0, 1.0)


def test_a_seg_without_referenced_series_is_matched_by_its_source_instances(
    labelled_set: Path, tmp_path: Path, card: ModelCard
) -> None:
    case = shutil.copytree(labelled_set / f"case-{FIRST_SEED}", tmp_path / "case")
    seg = dcmread(case / REFERENCE_FILE)
    del seg.ReferencedSeriesSequence
    seg.save_as(case / REFERENCE_FILE)

    report = validate(ground_truth(range(FIRST_SEED, FIRST_SEED + 1)), card, LabelledSet.read(tmp_path))

    assert (report.cases, report.mean_dice) == (1, 1.0)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidLabelledSet, match="no DICOM files"):
        LabelledSet.read(tmp_path)


def test_a_seg_whose_series_is_absent_is_refused_naming_it(labelled_set: Path, tmp_path: Path) -> None:
    shutil.copy(labelled_set / f"case-{FIRST_SEED}" / REFERENCE_FILE, tmp_path / REFERENCE_FILE)
    series = str(dcmread(tmp_path / REFERENCE_FILE).ReferencedSeriesSequence[0].SeriesInstanceUID)

    with pytest.raises(InvalidLabelledSet, match=f"source series {series} is not under"):
        LabelledSet.read(tmp_path)


def test_a_labelled_case_is_the_same_study_every_time(tmp_path: Path) -> None:
    first, second = (write_labelled_set(tmp_path / name, 1, FIRST_SEED, SMALL_GEOMETRY)[0] for name in ("a", "b"))

    assert (first / "image-001.dcm").read_bytes() == (second / "image-001.dcm").read_bytes()
    reference, again = dcmread(first / REFERENCE_FILE), dcmread(second / REFERENCE_FILE)
    assert (reference.SOPInstanceUID, reference.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    image = dcmread(first / "image-001.dcm")
    assert reference.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert reference.StudyInstanceUID == image.StudyInstanceUID
    segment = reference.SegmentSequence[0]
    assert (segment.SegmentLabel, segment.SegmentAlgorithmType) == ("lesion", "MANUAL")
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"


def test_a_reference_drawn_on_another_grid_is_refused_not_a_crash(tmp_path: Path, card: ModelCard) -> None:
    # The same seed makes the same instance UIDs: a SEG of a 64-pixel phantom references the 128-pixel series.
    (case,) = write_labelled_set(tmp_path, 1, FIRST_SEED, SMALL_GEOMETRY)
    coarse = make_phantom(FIRST_SEED, dataclasses.replace(SMALL_GEOMETRY, matrix=64), radius_mm=VALIDATION_RADIUS_MM)
    reference_segmentation(coarse, phantom_datasets(coarse)).save_as(case / REFERENCE_FILE, enforce_file_format=True)
    labelled_set = LabelledSet.read(tmp_path)

    with pytest.raises(InvalidLabelledSet, match=r"mask of 48x64x64 .* for a series of 48x128x128"):
        validate(lambda volume: np.zeros(volume.voxels.shape, np.uint8), card, labelled_set)


@pytest.mark.parametrize("directory", ["does-not-exist", "a\x00b", "a-file"])
def test_a_folder_that_is_not_there_is_refused(tmp_path: Path, directory: str) -> None:
    (tmp_path / "a-file").write_bytes(b"not a folder")
    with pytest.raises(InvalidLabelledSet, match="is not a directory"):
        LabelledSet.read(tmp_path / directory)


def test_untouchable_files_are_left_alone(labelled_set: Path) -> None:
    case = labelled_set / f"case-{FIRST_SEED}"
    untouchable = frozenset(path.resolve() for path in case.iterdir())
    with pytest.raises(InvalidLabelledSet, match="no DICOM files"):  # the SEG and its images are there, unread
        LabelledSet.read(case, untouchable=untouchable)


@pytest.mark.parametrize(
    "values", [{"min_dice": 1.5}, {"max_volume_error_percent": -1.0}, {"min_count_accuracy": float("nan")}]
)
def test_thresholds_out_of_range_are_refused(values: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**values)
