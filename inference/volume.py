"""A 3D image on a grid placed in patient space.

Array axes are (slice, row, column), numpy order. `affine` maps a homogeneous
index (slice, row, column, 1) to DICOM patient coordinates (LPS, mm), so the
same matrix serves measurements (centroids), resampling and the SEG writer.
"""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Volume:
    voxels: np.ndarray  # float32, modality values (HU for CT), shape (slices, rows, columns)
    affine: np.ndarray  # 4x4 float64
    source_instance_uids: tuple[str, ...] = ()  # SOPInstanceUID of each slice, in slice order
    frame_of_reference_uid: str = ""
    # For a multi-frame source: the frame number (1-based) of each slice.
    source_frame_numbers: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3 or min(self.voxels.shape) < 1:
            raise ValueError(f"a volume is three-dimensional, got shape {self.voxels.shape}")
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise ValueError("a volume's affine is a finite 4x4 matrix")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise ValueError("a volume's affine is singular")
        if self.source_instance_uids and len(self.source_instance_uids) != self.voxels.shape[0]:
            raise ValueError("one source instance per slice")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Distance in mm between neighbours along (slice, row, column)."""
        slice_step, row_step, column_step = (float(np.linalg.norm(self.affine[:3, axis])) for axis in range(3))
        return slice_step, row_step, column_step

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def to_patient(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) array of (slice, row, column) indices to (N, 3) LPS mm."""
        indices = np.asarray(indices, dtype=np.float64)
        return indices @ self.affine[:3, :3].T + self.affine[:3, 3]

    def with_voxels(self, voxels: np.ndarray) -> "Volume":
        """The same grid carrying other values (a mask, probabilities)."""
        return Volume(voxels, self.affine, self.source_instance_uids, self.frame_of_reference_uid, self.source_frame_numbers)


def affine_from_dicom(
    first_position: np.ndarray,
    row_direction: np.ndarray,
    column_direction: np.ndarray,
    slice_step: np.ndarray,
    pixel_spacing: tuple[float, float],
) -> np.ndarray:
    """PS3.3 C.7.6.2.1.1: pixel (row r, column c) of the first slice lies at
    position + c * PixelSpacing[1] * row_direction + r * PixelSpacing[0] * column_direction
    (the first direction cosine runs along a row, i.e. with the column index)."""
    affine = np.eye(4)
    affine[:3, 0] = slice_step
    affine[:3, 1] = column_direction * pixel_spacing[0]
    affine[:3, 2] = row_direction * pixel_spacing[1]
    affine[:3, 3] = first_position
    return affine
