"""The shipped demo model keeps its promise on held-out phantoms (seeds it
was not trained on) across the geometries it claims: every lesion of radius
6 mm and up counted, total volume within 10% of the analytic volume.

Database-independent, so it runs in the SQLite pass of CI only."""

import os
from pathlib import Path

import pytest
import torch

from inference.bundle import Bundle
from inference.demo.phantom import Geometry, make_phantom
from inference.measurements import measure
from inference.segmenter import Segmenter
from server.jobs.service import DEMO_BUNDLE

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("MEDAIFLOW_TEST_DATABASE_URL")), reason="no database involved: the SQLite pass runs it"
)

# The corners of the promised ranges: fine and coarse pixels, thin and thick
# slices, short and long series, 256 and 512 matrices, odd rescales, both slice orders.
HELD_OUT = [
    (10_100, Geometry(512, 60, 0.5, 3.0, 2.0, -2048.0, True)),
    (10_101, Geometry(256, 200, 1.0, 1.0, 0.5, -1000.0, False)),
    (10_102, Geometry(256, 40, 0.75, 3.0, 1.0, -1024.0, False)),
    (10_103, Geometry(512, 120, 0.9, 1.7, 1.0, -1024.0, True)),
]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(Bundle.open(Path(DEMO_BUNDLE)), torch.device("cpu"))


@pytest.mark.parametrize(("seed", "geometry"), HELD_OUT, ids=[str(seed) for seed, _ in HELD_OUT])
def test_held_out_phantoms_are_counted_and_measured(segmenter, seed, geometry):
    study = make_phantom(seed, geometry, lesion_count=3, radius_mm=(6.0, 15.0))
    assert study.lesions, "the phantom has room for lesions"
    segment = segmenter.bundle.card.segments[0]
    found = measure(segmenter.segment(study.volume) == segment.label, study.volume, segment)
    assert found.count == len(study.lesions)
    assert found.total_volume_ml == pytest.approx(study.total_lesion_volume_ml, rel=0.10)
