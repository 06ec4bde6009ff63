"""What one model run found on one series: plain values, ready to publish."""

from dataclasses import dataclass

from inference.model_card import Segment


@dataclass(frozen=True)
class Finding:
    """One connected component of a segment's mask."""

    volume_ml: float
    centroid_lps: tuple[float, float, float]  # patient coordinates, mm
    longest_diameter_mm: float
    voxel_count: int

    def __post_init__(self) -> None:
        if self.volume_ml <= 0 or self.voxel_count <= 0 or self.longest_diameter_mm < 0:
            raise ValueError(f"a finding needs a positive size, got {self!r}")


@dataclass(frozen=True)
class SegmentFindings:
    """A segment's components above its minimum volume, largest first."""

    segment: Segment
    findings: tuple[Finding, ...]

    @property
    def count(self) -> int:
        return len(self.findings)

    @property
    def total_volume_ml(self) -> float:
        return sum(finding.volume_ml for finding in self.findings)
