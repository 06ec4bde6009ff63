"""Labelled phantom cases on disk, for validating a model version.

    python -m inference.demo.labelled_set DIR [--count 8] [--first-seed 20000] [--small]

Each case is a folder `case-<seed>/` holding the phantom's CT series
(`image-<n>.dcm`, n in storage order) and `reference.dcm`, a DICOM
Segmentation of the phantom's true lesions, as an annotator's would be: one
segment "lesion", algorithm type MANUAL, referencing the source instances.
Every UID comes from the seed: the same seed writes the same study, series and instances.
"""

import argparse
import datetime
from collections.abc import Sequence
from pathlib import Path

import highdicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from inference.demo.phantom import Geometry, Phantom, make_phantom, phantom_datasets

# The demo model promises exact lesion counts from 6 mm; smaller lesions would
# measure the promise it does not make.
VALIDATION_RADIUS_MM = (6.0, 15.0)
# Like tests/inference_checks.py SMALL: the model runs on it in about a second on a CPU.
SMALL_GEOMETRY = Geometry(
    matrix=128, slices=48, pixel_spacing_mm=1.0, slice_spacing_mm=2.5, rescale_slope=1.0,
    rescale_intercept=-1024.0, descending=True,
)
REFERENCE_FILE = "reference.dcm"
REFERENCE_SERIES_NUMBER = 9801
# PS3.16 CID 7151 (Segmentation Property Types).
_LESION = Code("52988006", "SCT", "Lesion")


def write_labelled_set(directory: Path, count: int, first_seed: int = 20000, geometry: Geometry | None = None) -> list[Path]:
    """`count` case folders for seeds first_seed, first_seed + 1, ...; without
    a geometry each phantom draws its own (phantom.random_geometry)."""
    if count < 1:
        raise ValueError("a labelled set needs at least one case")
    return [_write_case(directory, make_phantom(seed, geometry, radius_mm=VALIDATION_RADIUS_MM))
            for seed in range(first_seed, first_seed + count)]


def _write_case(directory: Path, phantom: Phantom) -> Path:
    case = directory / f"case-{phantom.seed}"
    case.mkdir(parents=True, exist_ok=True)
    datasets = phantom_datasets(phantom)
    for index, dataset in enumerate(datasets, start=1):
        dataset.save_as(case / f"image-{index:03d}.dcm", enforce_file_format=True)
    reference_segmentation(phantom, datasets).save_as(case / REFERENCE_FILE, enforce_file_format=True)
    return case


def reference_segmentation(phantom: Phantom, sources: Sequence[Dataset]) -> highdicom.seg.Segmentation:
    """The phantom's label as a BINARY SEG over `sources` (phantom_datasets(phantom), storage order like the label)."""
    first = sources[0]
    # Dated like the images, not today. (highdicom still stamps its own creation and contribution times.)
    when = datetime.datetime.strptime(f"{first.StudyDate}{first.StudyTime}", "%Y%m%d%H%M%S")
    description = highdicom.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
        segmented_property_type=_LESION,
        algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return highdicom.seg.Segmentation(
        source_images=sources,
        pixel_array=phantom.label,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=_uid(phantom.seed, "reference-series"),
        series_number=REFERENCE_SERIES_NUMBER,
        sop_instance_uid=_uid(phantom.seed, "reference-instance"),
        instance_number=1,
        manufacturer="MedAIFlow phantom",
        manufacturer_model_name="Phantom ground truth",
        software_versions="1",
        device_serial_number=f"PHANTOM-{phantom.seed}",
        content_label="REFERENCE",
        content_description="Phantom ground truth",
        series_description="Reference segmentation",
        # A phantom whose lesions did not fit still gets its (empty) reference.
        omit_empty_frames=bool(phantom.label.any()),
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
    )


def _uid(seed: int, name: str) -> str:
    # The same entropy scheme as phantom_datasets, so a case's UIDs are one family.
    return generate_uid(entropy_srcs=[f"medaiflow-phantom-{seed}-{name}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=20000)
    parser.add_argument("--small", action="store_true", help="128x128, 48 slices: quick on a CPU")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    cases = write_labelled_set(args.directory, args.count, args.first_seed, SMALL_GEOMETRY if args.small else None)
    for case in cases:
        print(case)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
