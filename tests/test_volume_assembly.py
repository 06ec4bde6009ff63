"""Series to volume: ordering by position, rescale, compressed and multi-frame sources, refusals."""

import copy
import itertools
import math
import random
from collections.abc import Callable

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from inference.assembly import volume_from_datasets
from inference.demo.phantom import Geometry, Phantom, make_phantom, phantom_datasets
from inference.errors import VolumeError
from inference.volume import Volume
from tests.enhanced_ct import enhanced_ct


def phantom(descending: bool = False, slope: float = 0.5, intercept: float = -1024.0) -> Phantom:
    geometry = Geometry(
        matrix=64,
        slices=40,
        pixel_spacing_mm=0.9,
        slice_spacing_mm=2.0,
        rescale_slope=slope,
        rescale_intercept=intercept,
        descending=descending,
    )
    return make_phantom(7, geometry, lesion_count=2, radius_mm=(5.0, 8.0))


def shuffled(datasets: list[Dataset]) -> list[Dataset]:
    random.Random(3).shuffle(datasets)
    return datasets


def assert_same_volume(volume: Volume, expected: Phantom) -> None:
    """Same corners in patient space, and every voxel equal to the phantom's at the same place."""
    shape = expected.volume.voxels.shape
    assert volume.voxels.shape == shape and volume.voxels.dtype == np.float32
    corners = np.array(list(itertools.product(*((0, size - 1) for size in shape))))
    got, want = volume.to_patient(corners), expected.volume.to_patient(corners)
    assert sorted(map(tuple, np.round(got, 3))) == sorted(map(tuple, np.round(want, 3)))

    indices = np.indices(shape).reshape(3, -1).T
    patient = np.hstack([volume.to_patient(indices), np.ones((len(indices), 1))])
    in_phantom = (patient @ np.linalg.inv(expected.volume.affine).T)[:, :3]
    np.testing.assert_allclose(in_phantom, np.rint(in_phantom), atol=1e-4)
    phantom_values = expected.volume.voxels[tuple(np.rint(in_phantom).astype(int).T)]
    rounding = expected.geometry.rescale_slope / 2 + 1e-3  # stored values were rounded to integers
    np.testing.assert_allclose(volume.voxels.reshape(-1), phantom_values, atol=rounding, rtol=0)


@pytest.mark.parametrize("descending", [False, True])
def test_shuffled_series_is_ordered_by_position(descending: bool) -> None:
    source = phantom(descending)
    datasets = phantom_datasets(source)
    volume = volume_from_datasets(shuffled(list(datasets)))

    assert_same_volume(volume, source)
    z_by_uid = {dataset.SOPInstanceUID: float(dataset.ImagePositionPatient[2]) for dataset in datasets}
    z_in_order = [z_by_uid[uid] for uid in volume.source_instance_uids]
    assert z_in_order == sorted(z_in_order)  # ascending along the normal (0, 0, 1), whatever InstanceNumber says
    assert volume.spacing == pytest.approx((2.0, 0.9, 0.9))
    assert volume.frame_of_reference_uid == datasets[0].FrameOfReferenceUID
    assert volume.source_frame_numbers == ()


def test_rescale_is_applied_per_slice() -> None:
    source = phantom(slope=2.0, intercept=-2048.0)
    datasets = phantom_datasets(source)
    # One slice stored with its own rescale: each slice's values must use its own.
    relabelled = datasets[11]
    hu = source.volume.voxels[11]
    relabelled.PixelData = np.round(hu + 1024.0).astype(np.uint16).tobytes()
    relabelled.RescaleSlope, relabelled.RescaleIntercept = "1", "-1024"

    volume = volume_from_datasets(datasets)

    assert_same_volume(volume, source)
    assert volume.voxels.min() < -900  # air, not raw stored values
    np.testing.assert_allclose(volume.voxels[11], hu, atol=0.5 + 1e-3)


def test_missing_rescale_means_stored_values() -> None:
    datasets = phantom_datasets(phantom())
    del datasets[4].RescaleSlope, datasets[4].RescaleIntercept
    stored = np.frombuffer(datasets[4].PixelData, np.uint16).reshape(64, 64)

    volume = volume_from_datasets(datasets)

    np.testing.assert_array_equal(volume.voxels[4], stored.astype(np.float32))


# RLE is decoded by pydicom itself, JPEG 2000 by pylibjpeg-openjpeg (a declared dependency that also encodes).
@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_series_gives_the_same_voxels(transfer_syntax: str) -> None:
    source = phantom(descending=True)
    plain = volume_from_datasets(phantom_datasets(source))
    compressed = phantom_datasets(source)
    for dataset in compressed:
        dataset.compress(transfer_syntax)

    volume = volume_from_datasets(shuffled(compressed))

    np.testing.assert_array_equal(volume.voxels, plain.voxels)
    np.testing.assert_allclose(volume.affine, plain.affine)


@pytest.mark.parametrize("rescale_per_frame", [False, True])
def test_enhanced_ct_gives_the_same_volume_and_frame_numbers(rescale_per_frame: bool) -> None:
    source = phantom(descending=True)
    single_frame = phantom_datasets(source)
    frames = shuffled(list(single_frame))
    multi_frame = enhanced_ct(frames, rescale_per_frame)

    volume = volume_from_datasets([multi_frame])
    expected = volume_from_datasets(single_frame)

    np.testing.assert_array_equal(volume.voxels, expected.voxels)
    np.testing.assert_allclose(volume.affine, expected.affine)
    # Frame N came from frames[N - 1]: each slice's frame is the single-frame image at that place.
    assert [frames[number - 1].SOPInstanceUID for number in volume.source_frame_numbers] == list(
        expected.source_instance_uids
    )
    assert volume.source_instance_uids == (multi_frame.SOPInstanceUID,) * 40
    assert volume.frame_of_reference_uid == single_frame[0].FrameOfReferenceUID


def test_enhanced_frame_without_position_is_named() -> None:
    multi_frame = enhanced_ct(phantom_datasets(phantom()))
    del multi_frame.PerFrameFunctionalGroupsSequence[6].PlanePositionSequence

    with pytest.raises(VolumeError) as raised:
        volume_from_datasets([multi_frame])

    assert f"frame 7 of instance {multi_frame.SOPInstanceUID}" in raised.value.message
    assert "ImagePositionPatient" in raised.value.message


def drop_a_middle_slice(datasets: list[Dataset]) -> list[Dataset]:
    return datasets[:17] + datasets[18:]


def add_a_duplicate(datasets: list[Dataset]) -> list[Dataset]:
    duplicate = copy.deepcopy(datasets[9])
    duplicate.SOPInstanceUID = generate_uid()
    return [*datasets, duplicate]


def turn_one_slice_coronal(datasets: list[Dataset]) -> list[Dataset]:
    datasets[7].ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    return datasets


def tilt_the_gantry(datasets: list[Dataset]) -> list[Dataset]:
    for dataset in datasets:
        x, y, z = (float(value) for value in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [f"{x:.6f}", f"{y + z * math.tan(math.radians(12)):.6f}", f"{z:.6f}"]
    return datasets


def skew_the_cosines(datasets: list[Dataset]) -> list[Dataset]:
    for dataset in datasets:
        dataset.ImageOrientationPatient = ["1", "0", "0", "0.5", "0.5", "0"]
    return datasets


def drop_one_position(datasets: list[Dataset]) -> list[Dataset]:
    del datasets[3].ImagePositionPatient
    return datasets


def corrupt_one_compressed_slice(datasets: list[Dataset]) -> list[Dataset]:
    datasets[5].compress(RLELossless)
    payload = datasets[5].PixelData
    datasets[5].PixelData = payload[:40] + b"\xff" * (len(payload) - 40)
    return datasets


def keep_one_slice(datasets: list[Dataset]) -> list[Dataset]:
    return datasets[:1]


def make_one_slice_colour(datasets: list[Dataset]) -> list[Dataset]:
    datasets[2].SamplesPerPixel = 3
    return datasets


def change_one_pixel_spacing(datasets: list[Dataset]) -> list[Dataset]:
    datasets[8].PixelSpacing = ["0.8", "0.8"]
    return datasets


def split_frames_of_reference(datasets: list[Dataset]) -> list[Dataset]:
    datasets[12].FrameOfReferenceUID = generate_uid()
    return datasets


def mix_in_a_multi_frame_image(datasets: list[Dataset]) -> list[Dataset]:
    return [*datasets[:20], enhanced_ct(datasets[20:])]


def split_into_two_multi_frame_images(datasets: list[Dataset]) -> list[Dataset]:
    second = enhanced_ct(datasets[20:])
    second.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    return [enhanced_ct(datasets[:20]), second]


def drop_the_frame_of_reference(datasets: list[Dataset]) -> list[Dataset]:
    for dataset in datasets:
        del dataset.FrameOfReferenceUID
    return datasets


def map_values_by_a_modality_lut(datasets: list[Dataset]) -> list[Dataset]:
    table = Dataset()
    table.LUTDescriptor = [4096, 0, 16]
    table.ModalityLUTType = "HU"
    table.LUTData = list(range(4096))
    for dataset in datasets:
        del dataset.RescaleSlope, dataset.RescaleIntercept
        dataset.ModalityLUTSequence = [table]
    return datasets


def zero_one_slope(datasets: list[Dataset]) -> list[Dataset]:
    datasets[4].RescaleSlope = "0"
    return datasets


def zero_a_frames_slope(datasets: list[Dataset]) -> list[Dataset]:
    multi_frame = enhanced_ct(datasets, rescale_per_frame=True)
    multi_frame.PerFrameFunctionalGroupsSequence[4].PixelValueTransformationSequence[0].RescaleSlope = "0"
    return [multi_frame]


REFUSALS: list[tuple[Callable[[list[Dataset]], list[Dataset]], str, int | None]] = [
    (drop_a_middle_slice, "a slice may be missing", None),
    (add_a_duplicate, "at the same position", None),
    (turn_one_slice_coronal, "mixes image orientations", 7),
    (tilt_the_gantry, "gantry tilt of about 12.0 degrees", None),
    (skew_the_cosines, "not two perpendicular unit directions", None),
    (drop_one_position, "No ImagePositionPatient in", 3),
    (corrupt_one_compressed_slice, "cannot be decoded", 5),
    (keep_one_slice, "at least two slices", None),
    (make_one_slice_colour, "must be grayscale", 2),
    (change_one_pixel_spacing, "mixes pixel spacings", 8),
    (split_frames_of_reference, "different frames of reference", None),
    (mix_in_a_multi_frame_image, "mixes multi-frame and single-frame", None),
    (split_into_two_multi_frame_images, "spreads its frames over 2 multi-frame images", None),
    (drop_the_frame_of_reference, "No FrameOfReferenceUID in", 0),
    (map_values_by_a_modality_lut, "Modality LUT Sequence", 0),
    (zero_one_slope, "The RescaleSlope of", 4),
    (zero_a_frames_slope, "RescaleSlope of frame 5 of", None),
]


@pytest.mark.parametrize(("spoil", "reason", "named"), REFUSALS, ids=[spoil.__name__ for spoil, _, _ in REFUSALS])
def test_unsound_series_is_refused_with_a_reason(
    spoil: Callable[[list[Dataset]], list[Dataset]], reason: str, named: int | None
) -> None:
    datasets = phantom_datasets(phantom())
    spoilt = spoil(datasets)

    with pytest.raises(VolumeError) as raised:
        volume_from_datasets(spoilt)

    assert reason in raised.value.message
    if named is not None:
        assert datasets[named].SOPInstanceUID in raised.value.message


def test_an_empty_series_is_refused() -> None:
    with pytest.raises(VolumeError, match="no images"):
        volume_from_datasets([])


def test_spacing_tolerance_decides_how_uneven_is_too_uneven() -> None:
    datasets = phantom_datasets(phantom())
    for dataset in datasets[20:]:
        x, y, z = (float(value) for value in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [f"{x:.6f}", f"{y:.6f}", f"{z + 0.2:.6f}"]  # one gap 10% wider

    with pytest.raises(VolumeError, match="unevenly spaced"):
        volume_from_datasets(datasets)
    assert volume_from_datasets(datasets, spacing_tolerance=0.15).voxels.shape == (40, 64, 64)
