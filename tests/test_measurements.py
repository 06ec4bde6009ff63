"""Findings from masks: phantom lesions with known size and place, filters, degenerate components."""

import math

import numpy as np
import pytest

from inference.demo.phantom import Geometry, make_phantom
from inference.measurements import measure
from inference.model_card import Code, Measurement, MeasurementKind, Segment
from inference.volume import Volume, affine_from_dicom


def lesion_segment(min_component_ml: float = 0.0) -> Segment:
    def code(value: str) -> Code:
        return Code("http://example.org/test", value, value)

    return Segment(
        label=1,
        name="lesion",
        finding=code("lesion"),
        min_component_ml=min_component_ml,
        measurements=(
            Measurement(MeasurementKind.COUNT, code("count"), "{lesions}"),
            Measurement(MeasurementKind.FINDING_VOLUME, code("volume"), "mL"),
            Measurement(MeasurementKind.CENTROID, code("centroid"), "mm"),
            Measurement(MeasurementKind.LONGEST_DIAMETER, code("diameter"), "mm"),
        ),
    )


def grid(shape: tuple[int, int, int] = (12, 20, 24), spacing: tuple[float, float, float] = (2.5, 0.8, 0.6)) -> Volume:
    """An anisotropic grid whose slice axis runs head to feet, as in a descending series."""
    affine = affine_from_dicom(
        np.array([-10.0, 20.0, 30.0]),
        np.array([1.0, 0.0, 0.0]),
        np.array([0.0, 1.0, 0.0]),
        np.array([0.0, 0.0, -spacing[0]]),
        (spacing[1], spacing[2]),
    )
    return Volume(np.zeros(shape, np.float32), affine)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_phantom_lesions_are_found_at_their_size_and_place(seed: int) -> None:
    geometry = Geometry(
        matrix=96,
        slices=48,
        pixel_spacing_mm=0.75,
        slice_spacing_mm=1.25,
        rescale_slope=1.0,
        rescale_intercept=-1024.0,
        descending=seed % 2 == 1,
    )
    phantom = make_phantom(seed, geometry, lesion_count=3, radius_mm=(6.0, 10.0))

    result = measure(phantom.label.astype(bool), phantom.volume, lesion_segment())

    assert result.count == len(phantom.lesions) > 0
    volumes = [finding.volume_ml for finding in result.findings]
    assert volumes == sorted(volumes, reverse=True)
    voxel_mm = max(phantom.volume.spacing)
    for lesion in phantom.lesions:
        finding = min(result.findings, key=lambda found: math.dist(found.centroid_lps, lesion.center_lps))
        assert math.dist(finding.centroid_lps, lesion.center_lps) < 1.0
        assert finding.volume_ml == pytest.approx(lesion.volume_ml, rel=0.03)
        assert finding.voxel_count * phantom.volume.voxel_volume_mm3 / 1000 == pytest.approx(finding.volume_ml)
        # Voxel centres lie inside the lesion, so the diameter falls short of it by at most about two voxels.
        assert 2 * max(lesion.radii_mm) - 2 * voxel_mm <= finding.longest_diameter_mm <= 2 * max(lesion.radii_mm)
    assert result.total_volume_ml == pytest.approx(phantom.total_lesion_volume_ml, rel=0.03)


def test_sphere_on_an_oblique_anisotropic_grid_is_measured_in_millimetres() -> None:
    angle = math.radians(30)
    row_direction = np.array([math.cos(angle), math.sin(angle), 0.0])
    column_direction = np.array([0.0, 0.0, -1.0])
    normal = np.cross(row_direction, column_direction)
    affine = affine_from_dicom(np.array([-20.0, -15.0, 25.0]), row_direction, column_direction, 1.5 * normal, (0.7, 0.6))
    volume = Volume(np.zeros((30, 70, 70), np.float32), affine)
    centre, radius = volume.to_patient(np.array([[14.2, 33.7, 35.1]]))[0], 9.0
    indices = np.indices(volume.voxels.shape).reshape(3, -1).T
    mask = (np.linalg.norm(volume.to_patient(indices) - centre, axis=1) <= radius).reshape(volume.voxels.shape)

    (finding,) = measure(mask, volume, lesion_segment()).findings

    assert finding.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.03)
    assert math.dist(finding.centroid_lps, centre) < 0.5
    assert 2 * radius - 3.0 <= finding.longest_diameter_mm <= 2 * radius


def test_components_below_the_minimum_volume_are_dropped() -> None:
    volume = grid()  # 1.2 mm3 voxels
    mask = np.zeros(volume.voxels.shape, bool)
    mask[1:3, 2:4, 2:4] = True  # 8 voxels, 0.0096 mL
    mask[5:10, 8:18, 8:20] = True  # 600 voxels, 0.72 mL
    mask[1:4, 15:19, 2:6] = True  # 48 voxels, 0.0576 mL

    kept = measure(mask, volume, lesion_segment(min_component_ml=0.05))
    everything = measure(mask, volume, lesion_segment())

    assert [finding.voxel_count for finding in kept.findings] == [600, 48]
    assert [finding.voxel_count for finding in everything.findings] == [600, 48, 8]
    assert kept.findings[0].volume_ml == pytest.approx(0.72)


def test_an_empty_mask_has_no_findings() -> None:
    volume = grid()

    result = measure(np.zeros(volume.voxels.shape, bool), volume, lesion_segment())

    assert result.count == 0 and result.total_volume_ml == 0


def test_a_single_voxel_is_a_finding_without_extent() -> None:
    volume = grid()
    mask = np.zeros(volume.voxels.shape, bool)
    mask[4, 7, 9] = True

    (finding,) = measure(mask, volume, lesion_segment()).findings

    assert finding.voxel_count == 1 and finding.longest_diameter_mm == 0
    assert finding.volume_ml == pytest.approx(volume.voxel_volume_mm3 / 1000)
    np.testing.assert_allclose(finding.centroid_lps, volume.to_patient(np.array([[4, 7, 9]]))[0])


def test_components_at_opposite_corners_are_placed_where_they_lie() -> None:
    volume = grid()
    mask = np.zeros(volume.voxels.shape, bool)
    mask[:2, :2, :2] = True
    mask[-3:, -1:, -2:] = True

    findings = measure(mask, volume, lesion_segment()).findings

    centroids = {finding.voxel_count: finding.centroid_lps for finding in findings}
    np.testing.assert_allclose(centroids[8], volume.to_patient(np.array([[0.5, 0.5, 0.5]]))[0])
    np.testing.assert_allclose(centroids[6], volume.to_patient(np.array([[10.0, 19.0, 22.5]]))[0])


def test_flat_and_linear_components_are_measured() -> None:
    volume = grid()
    mask = np.zeros(volume.voxels.shape, bool)
    mask[2, 3:8, 4:11] = True  # one slice thick: 5 rows by 7 columns
    mask[4:10, 15, 20] = True  # a line across 6 slices

    flat, line = measure(mask, volume, lesion_segment()).findings

    assert flat.longest_diameter_mm == pytest.approx(math.hypot(4 * 0.8, 6 * 0.6))
    assert line.longest_diameter_mm == pytest.approx(5 * 2.5)


def test_voxels_touching_at_a_corner_are_one_component() -> None:
    volume = grid()
    mask = np.zeros(volume.voxels.shape, bool)
    mask[3, 3, 3] = mask[4, 4, 4] = True

    (finding,) = measure(mask, volume, lesion_segment()).findings

    assert finding.voxel_count == 2
    assert finding.longest_diameter_mm == pytest.approx(math.sqrt(2.5**2 + 0.8**2 + 0.6**2))


def test_a_mask_of_another_shape_is_rejected() -> None:
    volume = grid()

    with pytest.raises(ValueError, match="shape"):
        measure(np.zeros((3, 3, 3), bool), volume, lesion_segment())
