"""A segment's mask as findings: connected components measured in patient space.

Components are 26-connected, so voxels touching at an edge or a corner are one
lesion. Labelling runs on the box that holds every marked voxel, and each
component is measured on its own box, so a large, mostly empty volume costs
little more than finding that box.
"""

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist

from inference.findings import Finding, SegmentFindings
from inference.model_card import Segment
from inference.volume import Volume

_TOUCHING = np.ones((3, 3, 3), dtype=bool)
# Singular values below this fraction of the largest mean the points span fewer dimensions.
_FLAT = 1e-9
# Rows of the pairwise-distance block, so a component with many hull vertices stays within memory.
_DISTANCE_BLOCK = 256


def measure(mask: np.ndarray, volume: Volume, segment: Segment) -> SegmentFindings:
    """Components of at least `segment.min_component_ml`, largest first."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != volume.voxels.shape:
        raise ValueError(f"the mask's shape {mask.shape} is not the volume's {volume.voxels.shape}")
    marked = _bounding_box(mask)
    if marked is None:
        return SegmentFindings(segment, ())
    marked_origin = np.array([axis.start for axis in marked])
    labels, _ = ndimage.label(mask[marked], structure=_TOUCHING)
    voxel_counts = np.bincount(labels.ravel())
    findings = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        volume_ml = float(voxel_counts[label]) * volume.voxel_volume_mm3 / 1000.0
        if volume_ml < segment.min_component_ml:
            continue
        origin = marked_origin + np.array([axis.start for axis in box])
        findings.append(_finding(labels[box] == label, origin, volume, volume_ml))
    findings.sort(key=lambda finding: finding.volume_ml, reverse=True)
    return SegmentFindings(segment, tuple(findings))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every marked voxel; None when none is."""
    box: list[slice] = []
    for axis in range(mask.ndim):
        others = tuple(other for other in range(mask.ndim) if other != axis)
        # Each axis is searched within the box found so far, so later passes read less.
        marked = np.flatnonzero(mask[tuple(box)].any(axis=others))
        if not len(marked):
            return None
        box.append(slice(int(marked[0]), int(marked[-1]) + 1))
    return tuple(box)


def _finding(component: np.ndarray, origin: np.ndarray, volume: Volume, volume_ml: float) -> Finding:
    indices = np.argwhere(component)
    centroid = volume.to_patient(indices.mean(axis=0, keepdims=True) + origin)[0]
    # The hull of the outer shell is the hull of the whole component: every
    # inner voxel lies between two shell voxels on the same grid line.
    shell = np.argwhere(component & ~ndimage.binary_erosion(component))
    return Finding(
        volume_ml=volume_ml,
        centroid_lps=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
        longest_diameter_mm=_longest_distance(volume.to_patient(shell + origin)),
        voxel_count=len(indices),
    )


def _longest_distance(points: np.ndarray) -> float:
    """The largest distance between two of the points, searched among their convex hull's vertices."""
    if len(points) < 2:
        return 0.0
    centred = points - points.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    # Qhull needs full-dimensional input: a flat or thin component is measured in the plane or line it spans.
    dimensions = int(np.sum(singular > _FLAT * singular[0]))
    spanned = centred @ axes[:dimensions].T
    if dimensions == 1:
        return float(np.ptp(spanned))
    return _max_pairwise(spanned[ConvexHull(spanned).vertices])


def _max_pairwise(points: np.ndarray) -> float:
    longest = 0.0
    for start in range(0, len(points), _DISTANCE_BLOCK):
        block = points[start : start + _DISTANCE_BLOCK]
        longest = max(longest, float(cdist(block, points, "sqeuclidean").max()))
    return float(np.sqrt(longest))
