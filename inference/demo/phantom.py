"""Synthetic CT phantoms with known lesions: training data and ground truth.

A phantom is a body ellipse of soft tissue (about 40 HU, with noise) in air,
holding spheres and ellipsoids of 120-250 HU whose volumes are known
analytically. Geometry varies the way real CT does (matrix, pixel spacing,
slice spacing, slice count, rescale), and `phantom_datasets` writes it as a
real CT Image Storage series, so the whole path from STOW to measurements is
exercised on it.
"""

import datetime
import io
import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from inference.volume import Volume, affine_from_dicom

AIR_HU = -1000.0
TISSUE_HU = 40.0
NOISE_HU = 12.0
LESION_HU = (120.0, 250.0)
LESION_RADIUS_MM = (4.0, 15.0)


@dataclass(frozen=True)
class Lesion:
    center_lps: tuple[float, float, float]
    radii_mm: tuple[float, float, float]  # along L, P, S
    hu: float

    @property
    def volume_ml(self) -> float:
        a, b, c = self.radii_mm
        return 4.0 / 3.0 * math.pi * a * b * c / 1000.0


@dataclass(frozen=True)
class Geometry:
    matrix: int  # rows = columns
    slices: int
    pixel_spacing_mm: float
    slice_spacing_mm: float
    rescale_slope: float
    rescale_intercept: float
    descending: bool  # slices stored from head to feet, instance numbers reversed

    def __post_init__(self) -> None:
        if self.matrix < 16 or self.slices < 2 or self.pixel_spacing_mm <= 0 or self.slice_spacing_mm <= 0:
            raise ValueError(f"not a usable phantom geometry: {self!r}")
        if self.rescale_slope <= 0:
            raise ValueError("the rescale slope must be positive")

    @property
    def extent_mm(self) -> tuple[float, float]:
        """(in-plane field of view, scan length)."""
        return self.matrix * self.pixel_spacing_mm, self.slices * self.slice_spacing_mm


def random_geometry(rng: np.random.Generator) -> Geometry:
    """Anywhere in the ranges the demo model promises to handle."""
    return Geometry(
        matrix=int(rng.choice([256, 512])),
        slices=int(rng.integers(40, 201)),
        pixel_spacing_mm=float(rng.uniform(0.5, 1.0)),
        slice_spacing_mm=float(rng.uniform(1.0, 3.0)),
        rescale_slope=float(rng.choice([0.5, 1.0, 2.0])),
        rescale_intercept=float(rng.choice([-1024.0, -1000.0, -2048.0])),
        descending=bool(rng.integers(0, 2)),
    )


@dataclass(frozen=True)
class Phantom:
    seed: int
    geometry: Geometry
    volume: Volume  # HU on the scan grid
    lesions: tuple[Lesion, ...]
    label: np.ndarray  # uint8, 1 where a voxel centre lies inside a lesion

    @property
    def total_lesion_volume_ml(self) -> float:
        return sum(lesion.volume_ml for lesion in self.lesions)


def make_phantom(
    seed: int,
    geometry: Geometry | None = None,
    lesion_count: int | None = None,
    radius_mm: tuple[float, float] = LESION_RADIUS_MM,
) -> Phantom:
    rng = np.random.default_rng(seed)
    geometry = geometry or random_geometry(rng)
    affine = _affine(geometry)
    volume = Volume(np.zeros((geometry.slices, geometry.matrix, geometry.matrix), np.float32), affine)
    lesions = _place_lesions(rng, geometry, lesion_count if lesion_count is not None else int(rng.integers(1, 6)), radius_mm)

    in_plane = (np.arange(geometry.matrix) - (geometry.matrix - 1) / 2) * geometry.pixel_spacing_mm
    body_x, body_y = _body_semi_axes(geometry)
    inside_body = (in_plane[None, :] / body_x) ** 2 + (in_plane[:, None] / body_y) ** 2 <= 1.0
    hu = np.where(inside_body, TISSUE_HU, AIR_HU).astype(np.float32)[None, :, :].repeat(geometry.slices, axis=0)
    hu += rng.normal(0.0, NOISE_HU, hu.shape).astype(np.float32) * inside_body[None]
    label = np.zeros(hu.shape, np.uint8)
    for lesion in lesions:
        _paint(hu, label, volume, lesion, rng)
    return Phantom(seed, geometry, volume.with_voxels(hu), lesions, label)


def _affine(geometry: Geometry) -> np.ndarray:
    half_field = (geometry.matrix - 1) / 2 * geometry.pixel_spacing_mm
    length = (geometry.slices - 1) * geometry.slice_spacing_mm
    step = np.array([0.0, 0.0, -geometry.slice_spacing_mm if geometry.descending else geometry.slice_spacing_mm])
    first = np.array([-half_field, -half_field, length / 2 if geometry.descending else -length / 2])
    spacing = (geometry.pixel_spacing_mm, geometry.pixel_spacing_mm)
    return affine_from_dicom(first, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), step, spacing)


def _body_semi_axes(geometry: Geometry) -> tuple[float, float]:
    field = geometry.matrix * geometry.pixel_spacing_mm
    return 0.45 * field, 0.35 * field


def _place_lesions(
    rng: np.random.Generator, geometry: Geometry, count: int, radius_mm: tuple[float, float]
) -> tuple[Lesion, ...]:
    """Lesions wholly inside the body and the scan, apart from one another
    by at least a few voxels so that each is one connected component."""
    body_x, body_y = _body_semi_axes(geometry)
    _, length = geometry.extent_mm
    gap = 3 * max(geometry.pixel_spacing_mm, geometry.slice_spacing_mm)
    placed: list[Lesion] = []
    for _ in range(count * 200):
        if len(placed) == count:
            break
        radius = float(rng.uniform(*radius_mm))
        radii = (radius, radius, radius) if rng.random() < 0.5 else tuple(
            float(radius * factor) for factor in rng.uniform(0.7, 1.0, 3)
        )
        reach = max(radii) + gap
        half_length = length / 2 - reach - geometry.slice_spacing_mm
        if half_length <= 0 or reach >= body_y:
            continue
        center = (
            float(rng.uniform(-(body_x - reach), body_x - reach)),
            float(rng.uniform(-(body_y - reach), body_y - reach)),
            float(rng.uniform(-half_length, half_length)),
        )
        if (center[0] / (body_x - reach)) ** 2 + (center[1] / (body_y - reach)) ** 2 > 1.0:
            continue
        if any(math.dist(center, other.center_lps) < reach + max(other.radii_mm) + gap for other in placed):
            continue
        placed.append(Lesion(center, radii, float(rng.uniform(*LESION_HU))))  # type: ignore[arg-type]
    return tuple(placed)


def _paint(hu: np.ndarray, label: np.ndarray, volume: Volume, lesion: Lesion, rng: np.random.Generator) -> None:
    """Fill the lesion with partial-volume edges: a voxel's value mixes lesion
    and tissue by how much of it lies inside, as a scanner's would."""
    inverse = np.linalg.inv(volume.affine)
    reach = np.array(lesion.radii_mm) + 2 * max(volume.spacing)
    corners = np.array([[lesion.center_lps[axis] + sign * reach[axis] for axis in range(3)] for sign in (-1, 1)])
    index_corners = np.hstack([corners, np.ones((2, 1))]) @ inverse.T
    low = np.clip(np.floor(index_corners[:, :3].min(axis=0)).astype(int), 0, None)
    high = np.minimum(np.ceil(index_corners[:, :3].max(axis=0)).astype(int) + 1, hu.shape)
    grid = np.stack(np.meshgrid(*(np.arange(lo, hi) for lo, hi in zip(low, high)), indexing="ij"), axis=-1)
    points = volume.to_patient(grid.reshape(-1, 3)).reshape(grid.shape)
    scaled = (points - np.array(lesion.center_lps)) / np.array(lesion.radii_mm)
    radial = np.sqrt(np.sum(scaled**2, axis=-1))
    # Distance to the surface in mm along the radius, against half a voxel.
    surface_distance = (radial - 1.0) * min(lesion.radii_mm)
    half_voxel = 0.5 * float(np.mean(volume.spacing))
    inside_fraction = np.clip(0.5 - surface_distance / (2 * half_voxel), 0.0, 1.0).astype(np.float32)
    region = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    noise = rng.normal(0.0, NOISE_HU, inside_fraction.shape).astype(np.float32)
    hu[region] = hu[region] * (1 - inside_fraction) + (lesion.hu + noise) * inside_fraction
    label[region] |= (radial <= 1.0).astype(np.uint8)


def phantom_datasets(phantom: Phantom, patient_id: str | None = None) -> list[Dataset]:
    """The phantom as a CT Image Storage series, one dataset per slice,
    with UIDs derived from the seed (the same phantom is the same study)."""
    geometry = phantom.geometry
    seed = phantom.seed

    def uid(name: str) -> str:
        return generate_uid(entropy_srcs=[f"medaiflow-phantom-{seed}-{name}"])

    study_uid, series_uid, frame_of_reference = uid("study"), uid("series"), uid("frame-of-reference")
    stored = np.round(
        (phantom.volume.voxels - geometry.rescale_intercept) / geometry.rescale_slope
    ).clip(0, 65535).astype(np.uint16)
    when = datetime.datetime(2026, 1, 1) + datetime.timedelta(minutes=seed % 500_000)
    datasets = []
    for index in range(geometry.slices):
        position = phantom.volume.affine[:3, 3] + index * phantom.volume.affine[:3, 0]
        dataset = Dataset()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
        dataset.file_meta.MediaStorageSOPInstanceUID = uid(f"instance-{index}")
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        dataset.SpecificCharacterSet = "ISO_IR 100"
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.StudyDate = dataset.SeriesDate = dataset.ContentDate = when.strftime("%Y%m%d")
        dataset.StudyTime = dataset.SeriesTime = dataset.ContentTime = when.strftime("%H%M%S")
        dataset.AccessionNumber = f"PH{seed}"
        dataset.ReferringPhysicianName = ""
        dataset.Modality = "CT"
        dataset.Manufacturer = "MedAIFlow phantom"
        dataset.StudyDescription = "Synthetic lesion phantom"
        dataset.SeriesDescription = "Phantom axial"
        dataset.PatientName = f"Phantom^{seed}"
        dataset.PatientID = patient_id or f"PHANTOM-{seed}"
        dataset.PatientBirthDate = "19700101"
        dataset.PatientSex = "O"
        dataset.BodyPartExamined = "ABDOMEN"
        dataset.SliceThickness = f"{geometry.slice_spacing_mm:.4f}"
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.StudyID = str(seed % 10**8)
        dataset.SeriesNumber = 1
        dataset.AcquisitionNumber = 1
        dataset.PatientPosition = "HFS"
        dataset.KVP = "120"
        # Numbered against the storage order when descending, so that
        # readers sorting by InstanceNumber get it wrong.
        dataset.InstanceNumber = geometry.slices - index if geometry.descending else index + 1
        dataset.ImagePositionPatient = [f"{value:.6f}" for value in position]
        dataset.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        dataset.FrameOfReferenceUID = frame_of_reference
        dataset.PositionReferenceIndicator = ""
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.Rows = dataset.Columns = geometry.matrix
        dataset.PixelSpacing = [f"{geometry.pixel_spacing_mm:.6f}"] * 2
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        dataset.RescaleIntercept = f"{geometry.rescale_intercept:g}"
        dataset.RescaleSlope = f"{geometry.rescale_slope:g}"
        dataset.RescaleType = "HU"
        dataset.WindowCenter = "40"
        dataset.WindowWidth = "400"
        dataset.PixelData = stored[index].tobytes()
        datasets.append(dataset)
    return datasets


def phantom_payloads(phantom: Phantom, patient_id: str | None = None) -> list[bytes]:
    """The series as Part 10 files in memory, as a STOW-RS request carries them."""
    payloads = []
    for dataset in phantom_datasets(phantom, patient_id):
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        payloads.append(buffer.getvalue())
    return payloads
