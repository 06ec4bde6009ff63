"""A series of DICOM images as one Volume (PS3.3 C.7.6.2 Image Plane, C.7.6.16 functional groups).

Slices are ordered by where they lie, never by InstanceNumber: each
position is projected on the slice normal (the cross product of the two
direction cosines), and the spacing is taken from those positions, not from
SliceThickness. A series that would not make a regular grid (duplicate or
missing slices, mixed orientations, gantry tilt), or whose values or
places cannot be read (a Modality LUT table, a zero rescale slope, no frame
of reference), is refused with a VolumeError whose message is the failed
job's reason, so it says what is wrong with the images.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from inference.errors import VolumeError
from inference.volume import Volume, affine_from_dicom

# How far, as a fraction of the usual slice gap (or of a pixel sideways), a
# slice may sit from the regular grid. Positions rounded to a few decimals
# stay well below it; a missing slice (a gap twice the rest) is far above it.
DEFAULT_SPACING_TOLERANCE = 0.05
# Slices of one acquisition repeat the same cosines; 1e-4 is about 0.006 degrees.
_ORIENTATION_TOLERANCE = 1e-4
# Slices of one series repeat the same Pixel Spacing; relative.
_PIXEL_SPACING_TOLERANCE = 1e-4
# Cosines are written to a few decimals, so unit length and a right angle hold only approximately.
_ORTHONORMAL_TOLERANCE = 1e-3
# Closer than this along the normal, two slices are at the same place.
_SAME_POSITION_MM = 1e-3
# What pydicom and its decoding plugins raise for pixel data they cannot turn into an array.
_DECODE_ERRORS = (AttributeError, NotImplementedError, RuntimeError, ValueError)


@dataclass(frozen=True)
class _Plane:
    """One frame of the series: where it lies and how its stored values scale."""

    source: int  # index of its dataset in the input
    frame_index: int  # 0-based within that dataset's pixel data
    instance_uid: str
    multi_frame: bool
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # the six direction cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        instance = _instance_name(self.instance_uid)
        return f"frame {self.frame_index + 1} of {instance}" if self.multi_frame else instance


def volume_from_datasets(
    datasets: Sequence[Dataset], spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE
) -> Volume:
    """Float32 modality values (HU for CT) on the grid the positions define, slices ascending along the normal."""
    if not 0 < spacing_tolerance < 0.5:
        raise ValueError("spacing_tolerance is a fraction of a slice gap between 0 and 0.5")
    if len(datasets) == 0:
        raise VolumeError("The series has no images.")
    rows, columns = _shared_matrix(datasets)
    frame_of_reference_uid = _shared_frame_of_reference(datasets)
    planes = [plane for source, dataset in enumerate(datasets) for plane in _planes(source, dataset)]
    if len(planes) < 2:
        raise VolumeError("The series has a single image; a volume needs at least two slices.")
    if len({plane.multi_frame for plane in planes}) > 1:
        raise VolumeError("The series mixes multi-frame and single-frame images; they cannot be stacked into one volume.")
    if planes[0].multi_frame and len(datasets) > 1:
        # A SEG of multi-frame sources references the frames of one image only (highdicom
        # places its frames by that image's plane positions): the job would fail after the network ran.
        raise VolumeError(
            f"The series spreads its frames over {len(datasets)} multi-frame images; "
            "only a series of one multi-frame image (or of single-frame images) can be segmented."
        )

    row_direction, column_direction = _shared_orientation(planes)
    pixel_spacing = _shared_pixel_spacing(planes)
    normal = np.cross(row_direction, column_direction)
    normal /= np.linalg.norm(normal)
    planes.sort(key=lambda plane: float(plane.position @ normal))
    positions = np.array([plane.position for plane in planes])
    _check_positions(planes, positions, normal, min(pixel_spacing), spacing_tolerance)

    slice_step = (positions[-1] - positions[0]) / (len(planes) - 1)
    return Volume(
        voxels=_voxels(datasets, planes, rows, columns),
        affine=affine_from_dicom(positions[0], row_direction, column_direction, slice_step, pixel_spacing),
        source_instance_uids=tuple(plane.instance_uid for plane in planes),
        frame_of_reference_uid=frame_of_reference_uid,
        source_frame_numbers=tuple(plane.frame_index + 1 for plane in planes) if planes[0].multi_frame else (),
    )


def _shared_matrix(datasets: Sequence[Dataset]) -> tuple[int, int]:
    matrices = set()
    for dataset in datasets:
        if dataset.get("SamplesPerPixel") != 1:
            raise VolumeError(
                f"The images must be grayscale: {_instance_name(_uid(dataset))} has Samples per Pixel "
                f"{dataset.get('SamplesPerPixel', '(none)')}, not 1."
            )
        if dataset.get("Rows") is None or dataset.get("Columns") is None:
            raise VolumeError(f"The image size of {_instance_name(_uid(dataset))} is unknown (no Rows or Columns).")
        matrices.add((int(dataset.Rows), int(dataset.Columns)))
    if len(matrices) > 1:
        sizes = ", ".join(f"{rows}x{columns}" for rows, columns in sorted(matrices))
        raise VolumeError(f"The images of the series differ in size ({sizes}); a volume needs one matrix.")
    return matrices.pop()


def _shared_frame_of_reference(datasets: Sequence[Dataset]) -> str:
    uids = {str(dataset.get("FrameOfReferenceUID", "")) for dataset in datasets}
    if "" in uids:
        # Positions mean nothing outside a frame of reference (PS3.3 C.7.4.1, Type 1), and the SEG needs one.
        unplaced = next(dataset for dataset in datasets if not dataset.get("FrameOfReferenceUID"))
        raise VolumeError(
            f"No FrameOfReferenceUID in {_instance_name(_uid(unplaced))}, so its ImagePositionPatient "
            "is in no known space."
        )
    if len(uids) > 1:
        raise VolumeError(
            "The images of the series belong to different frames of reference, so their positions cannot be compared."
        )
    return uids.pop()


def _planes(source: int, dataset: Dataset) -> list[_Plane]:
    frames = int(dataset.get("NumberOfFrames") or 1)
    if "PerFrameFunctionalGroupsSequence" in dataset:
        return [_enhanced_plane(source, dataset, frame_index) for frame_index in range(frames)]
    if frames > 1:
        raise VolumeError(
            f"The frames of {_instance_name(_uid(dataset))} cannot be placed: it has {frames} frames "
            "but no per-frame positions (Per-frame Functional Groups)."
        )
    where = _instance_name(_uid(dataset))
    if "ModalityLUTSequence" in dataset:
        # Its table's values are unsigned (PS3.3 C.11.1.1), so no HU below zero; rescale is what CT uses.
        raise VolumeError(
            f"The modality values of {where} come from a Modality LUT Sequence, not RescaleSlope and "
            "RescaleIntercept; this server does not read such tables."
        )
    return [
        _Plane(
            source=source,
            frame_index=0,
            instance_uid=_uid(dataset),
            multi_frame=False,
            position=_numbers(dataset, "ImagePositionPatient", 3, where),
            orientation=_numbers(dataset, "ImageOrientationPatient", 6, where),
            pixel_spacing=_spacing_pair(_numbers(dataset, "PixelSpacing", 2, where)),
            slope=_slope(dataset, where),
            intercept=_optional_number(dataset, "RescaleIntercept", 0.0, where),
        )
    ]


def _enhanced_plane(source: int, dataset: Dataset, frame_index: int) -> _Plane:
    """A frame of an Enhanced CT/MR image: its macros sit in the per-frame item or, if alike for all, the shared one."""
    where = f"frame {frame_index + 1} of {_instance_name(_uid(dataset))}"
    per_frame = dataset.PerFrameFunctionalGroupsSequence
    if frame_index >= len(per_frame):
        raise VolumeError(
            f"The frames of {_instance_name(_uid(dataset))} are not all described: it has "
            f"{dataset.get('NumberOfFrames')} frames and per-frame groups for only {len(per_frame)}."
        )
    groups = [per_frame[frame_index], *dataset.get("SharedFunctionalGroupsSequence", [])[:1]]

    def macro(keyword: str) -> Dataset:
        return next((group[keyword][0] for group in groups if len(group.get(keyword, []))), Dataset())

    transformation = macro("PixelValueTransformationSequence")
    return _Plane(
        source=source,
        frame_index=frame_index,
        instance_uid=_uid(dataset),
        multi_frame=True,
        position=_numbers(macro("PlanePositionSequence"), "ImagePositionPatient", 3, where),
        orientation=_numbers(macro("PlaneOrientationSequence"), "ImageOrientationPatient", 6, where),
        pixel_spacing=_spacing_pair(_numbers(macro("PixelMeasuresSequence"), "PixelSpacing", 2, where)),
        slope=_slope(transformation, where),
        intercept=_optional_number(transformation, "RescaleIntercept", 0.0, where),
    )


def _uid(dataset: Dataset) -> str:
    return str(dataset.get("SOPInstanceUID", ""))


def _instance_name(uid: str) -> str:
    return f"instance {uid or '(no SOP Instance UID)'}"


def _numbers(item: Dataset, keyword: str, count: int, where: str) -> np.ndarray:
    if item.get(keyword) is None:
        raise VolumeError(f"No {keyword} in {where}, so its place in the volume is unknown.")
    try:
        values = np.array([float(value) for value in item[keyword].value], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise VolumeError(f"The {keyword} of {where} is malformed: expected {count} numbers.")
    return values


def _slope(item: Dataset, where: str) -> float:
    """A slope of 0 would turn every stored value into the intercept: an image of nothing, read as such."""
    slope = _optional_number(item, "RescaleSlope", 1.0, where)
    if slope == 0:
        raise VolumeError(f"The RescaleSlope of {where} is 0, so its stored values cannot be read as modality values.")
    return slope


def _optional_number(item: Dataset, keyword: str, default: float, where: str) -> float:
    if item.get(keyword) is None:
        return default
    try:
        value = float(item[keyword].value)
    except (TypeError, ValueError):
        value = np.nan
    if not np.isfinite(value):
        raise VolumeError(f"The {keyword} of {where} is not a number.")
    return value


def _spacing_pair(values: np.ndarray) -> tuple[float, float]:
    return float(values[0]), float(values[1])


def _shared_orientation(planes: Sequence[_Plane]) -> tuple[np.ndarray, np.ndarray]:
    first = planes[0]
    for plane in planes[1:]:
        if np.max(np.abs(plane.orientation - first.orientation)) > _ORIENTATION_TOLERANCE:
            raise VolumeError(
                f"The series mixes image orientations ({plane.name} differs from {first.name}); "
                "a volume needs all slices parallel."
            )
    row_direction, column_direction = first.orientation[:3], first.orientation[3:]
    lengths = np.linalg.norm(first.orientation.reshape(2, 3), axis=1)
    if np.max(np.abs(lengths - 1)) > _ORTHONORMAL_TOLERANCE or abs(row_direction @ column_direction) > _ORTHONORMAL_TOLERANCE:
        raise VolumeError(
            "The series' ImageOrientationPatient is not two perpendicular unit directions "
            f"({', '.join(f'{value:g}' for value in first.orientation)}); the image plane is undefined."
        )
    return row_direction, column_direction


def _shared_pixel_spacing(planes: Sequence[_Plane]) -> tuple[float, float]:
    first = planes[0]
    if min(first.pixel_spacing) <= 0:
        raise VolumeError(f"The PixelSpacing of {first.name} is not positive.")
    for plane in planes[1:]:
        if not np.allclose(plane.pixel_spacing, first.pixel_spacing, rtol=_PIXEL_SPACING_TOLERANCE, atol=0):
            raise VolumeError(
                f"The series mixes pixel spacings ({plane.name}: {plane.pixel_spacing[0]:g} x "
                f"{plane.pixel_spacing[1]:g} mm, {first.name}: {first.pixel_spacing[0]:g} x {first.pixel_spacing[1]:g} mm)."
            )
    return first.pixel_spacing


def _check_positions(
    planes: Sequence[_Plane], positions: np.ndarray, normal: np.ndarray, pixel_mm: float, tolerance: float
) -> None:
    """The sorted positions must step evenly along the normal and not drift sideways."""
    offsets = positions - positions[0]
    along = offsets @ normal
    gaps = np.diff(along)
    closest = int(np.argmin(gaps))
    if gaps[closest] < _SAME_POSITION_MM:
        raise VolumeError(
            f"Two images lie at the same position ({planes[closest].name} and {planes[closest + 1].name}); "
            "the series holds duplicates or several stacks."
        )
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    farthest = int(np.argmax(sideways))
    if sideways[farthest] > tolerance * pixel_mm:
        tilt = np.degrees(np.arctan2(sideways[farthest], along[farthest]))
        raise VolumeError(
            f"The slices are not stacked straight along their normal: {planes[farthest].name} is offset "
            f"{sideways[farthest]:.2f} mm sideways (a gantry tilt of about {tilt:.1f} degrees); "
            "the series must be resampled before analysis."
        )
    usual = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - usual)))
    if abs(gaps[worst] - usual) > tolerance * usual:
        raise VolumeError(
            f"The slices are unevenly spaced: {gaps[worst]:.2f} mm between {planes[worst].name} and "
            f"{planes[worst + 1].name}, where the usual spacing is {usual:.2f} mm; a slice may be missing."
        )


def _voxels(datasets: Sequence[Dataset], planes: Sequence[_Plane], rows: int, columns: int) -> np.ndarray:
    """Decode one frame at a time into the output, so no second copy of the series is held."""
    voxels = np.empty((len(planes), rows, columns), dtype=np.float32)
    for slot, plane in enumerate(planes):
        voxels[slot] = _frame(datasets[plane.source], plane, rows, columns)
        voxels[slot] *= np.float32(plane.slope)
        voxels[slot] += np.float32(plane.intercept)
    return voxels


def _frame(dataset: Dataset, plane: _Plane, rows: int, columns: int) -> np.ndarray:
    try:
        # The function, unlike Dataset.pixel_array, keeps no decoded copy on the caller's dataset.
        frame = pixel_array(dataset, index=plane.frame_index)
    except _DECODE_ERRORS as error:
        reason = " ".join(str(error).split())  # decoders report over several lines
        raise VolumeError(f"The pixel data of {plane.name} cannot be decoded: {reason}") from error
    if frame.shape != (rows, columns):
        raise VolumeError(f"The pixel data of {plane.name} decodes to {frame.shape}, not {rows}x{columns}.")
    return frame
