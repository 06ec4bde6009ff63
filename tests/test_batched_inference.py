"""Patches of several studies in one network call give the labels that
running each study alone gives, whatever their sizes, and a batch of jobs
completes each job with its own results."""

import gc
import json
import operator
import os
import shutil
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import LoadImage, Orientation

from inference.assembly import volume_from_datasets
from inference.batched import Window, sliding_window_many
from inference.bundle import Bundle
from inference.demo.phantom import Geometry, make_phantom, phantom_datasets
from inference.errors import InvalidBundle
from inference.seg import _RememberedIodAnswers
from inference.segmenter import Segmenter, monai_image
from inference.volume import Volume
from server.jobs.offload import OffloadPool, default_processes
from server.jobs.service import DEMO_BUNDLE
from tests.inference_checks import phantom, series_bytes, stow, study_uid


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(Bundle.open(Path(DEMO_BUNDLE)), torch.device("cpu"), batch_patches=6)


def test_batched_labels_equal_one_at_a_time(segmenter):
    volumes = [
        make_phantom(301, Geometry(128, 48, 1.0, 2.5, 1.0, -1024.0, True), lesion_count=2).volume,
        make_phantom(302, Geometry(256, 60, 0.6, 2.0, 0.5, -1000.0, False), lesion_count=3).volume,
        # Shorter than one patch along the slices: padded, then cropped back.
        make_phantom(303, Geometry(128, 20, 1.0, 2.0, 2.0, -2048.0, False), lesion_count=1, radius_mm=(4.0, 6.0)).volume,
    ]
    alone = [segmenter.segment(volume) for volume in volumes]
    together = segmenter.segment_many(volumes)
    for one, batched, volume in zip(alone, together, volumes):
        assert batched.shape == volume.voxels.shape
        assert np.mean(one == batched) > 0.9999
        assert one.any()


def _bundle_with(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Bundle:
    """The demo bundle with its configs/inference.json edited."""
    copied = shutil.copytree(DEMO_BUNDLE, tmp_path / "bundle")
    config_path = copied / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    return Bundle.open(copied)


def _bundle_with_inferer(tmp_path: Path, **changes: object) -> Bundle:
    """The demo bundle with its inferer's config changed (a key set to None is removed)."""
    def edit(config: dict[str, Any]) -> None:
        config["patch"] = [64, 64, 64]
        for key, value in changes.items():
            if value is None:
                config["inferer"].pop(key, None)
            else:
                config["inferer"][key] = value

    return _bundle_with(tmp_path, edit)


@pytest.mark.parametrize(("last_step", "shown"), [
    (None, "0.5"),  # probabilities, never discretized: as bytes, all 0, nothing found
    ({"_target_": "Lambdad", "keys": "pred", "func": "$lambda labels: labels * 300"}, "300"),  # 300 as bytes is 44
])
def test_postprocessing_that_gives_no_labels_is_refused_not_read_as_nothing_found(tmp_path, last_step, shown):
    def edit(config: dict[str, Any]) -> None:
        steps = config["postprocessing"]["transforms"]
        discretize = steps.pop()
        if last_step is not None:
            steps += [discretize, last_step]
        else:  # a constant half, so that the value shown is known
            steps.append({"_target_": "Lambdad", "keys": "pred", "func": "$lambda p: p * 0 + 0.5"})

    segmenter = Segmenter(_bundle_with(tmp_path, edit), torch.device("cpu"))
    volume = make_phantom(331, Geometry(64, 24, 1.0, 2.0, 1.0, -1024.0, False), lesion_count=1).volume
    with pytest.raises(InvalidBundle, match=f"postprocessing gave {shown} as a label"):
        segmenter.segment(volume)
    with pytest.raises(InvalidBundle, match="whole numbers from 0 to 255"):
        segmenter.segment_many([volume])


def _bundle_saving(tmp_path: Path, wrap: Callable[[dict[str, torch.Tensor]], object]) -> Bundle:
    """The demo bundle with its weights saved as `wrap` makes of them."""
    copied = shutil.copytree(DEMO_BUNDLE, tmp_path / "bundle")
    weights = copied / "models" / "model.pt"
    torch.save(wrap(torch.load(weights, weights_only=True)), weights)
    return Bundle.open(copied)


@pytest.mark.parametrize("wrap", [
    lambda state: {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "epoch": 40},
    lambda state: {"network": {f"module.{name}": tensor for name, tensor in state.items()}},  # trained on GPUs
    lambda state: {f"module.{name}": tensor for name, tensor in state.items()},
], ids=["training-checkpoint", "wrapped-for-gpus-in-a-checkpoint", "wrapped-for-gpus"])
def test_weights_kept_as_training_saved_them_are_the_networks(tmp_path, segmenter, wrap):
    loaded = Segmenter(_bundle_saving(tmp_path, wrap), torch.device("cpu")).network.state_dict()
    expected = segmenter.network.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


@pytest.mark.parametrize(("wrap", "reason"), [
    (lambda state: {"model": state, "ema": state}, "holds 'ema', 'model'; more than one of them fits"),
    (lambda state: {"model": {"other." + name: tensor for name, tensor in state.items()}}, "none of them fits"),
    (lambda state: {"epoch": 40}, "holds no weights by name; none of them fits"),
])
def test_a_checkpoint_whose_network_weights_are_not_one_entry_is_refused(tmp_path, wrap, reason):
    with pytest.raises(InvalidBundle, match=reason):
        Segmenter(_bundle_saving(tmp_path, wrap), torch.device("cpu"))


def test_weights_that_cannot_be_read_without_running_code_are_refused(tmp_path):
    with pytest.raises(InvalidBundle, match="cannot be read as weights"):
        Segmenter(_bundle_saving(tmp_path, lambda state: {"model": state, "when": Path("/")}), torch.device("cpu"))
    weights = tmp_path / "bundle" / "models" / "model.pt"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidBundle, match="cannot be read as weights"):
        Segmenter(Bundle.open(tmp_path / "bundle"), torch.device("cpu"))


def test_a_window_given_by_reference_and_expression_is_the_windows_value(tmp_path):
    # Model-zoo bundles name their patch size once and refer to it.
    bundle = _bundle_with_inferer(tmp_path, roi_size="@patch", overlap="$0.5 / 2", sigma_scale=0.25)
    assert Segmenter(bundle, torch.device("cpu")).window == Window((64, 64, 64), 0.25, "gaussian", 0.25)
    one_size = _bundle_with_inferer(tmp_path / "int", roi_size=64, mode=None)  # one size for every axis; default mode
    assert Segmenter(one_size, torch.device("cpu")).window == Window((64, 64, 64), 0.25, "constant")


@pytest.mark.parametrize("changes", [{"padding_mode": "replicate"}, {"cval": 1.0}, {"roi_size": [64, 64, -1]},
                                     {"_target_": "SlidingWindowInfererAdapt"}])
def test_a_window_the_batched_run_would_not_reproduce_runs_volume_by_volume(tmp_path, changes):
    assert Segmenter(_bundle_with_inferer(tmp_path, **changes), torch.device("cpu")).window is None


def test_a_volume_reaches_the_bundle_placed_as_monais_dicom_reader_places_it(tmp_path):
    study = make_phantom(321, Geometry(32, 6, 0.8, 2.0, 1.0, -1024.0, True), lesion_count=0)
    datasets = phantom_datasets(study)
    for index, dataset in enumerate(datasets):
        dataset.save_as(tmp_path / f"{index}.dcm", enforce_file_format=True)
    monais = LoadImage(reader="PydicomReader", image_only=True)(str(tmp_path))  # (column, row, slice)
    ours = monai_image(volume_from_datasets(datasets))  # (channel, slice, row, column)

    assert ours.meta["space"] == monais.meta["space"] == "RAS"
    indices = np.array([[0, 0, 0], [5, 31, 0], [2, 7, 19], [5, 31, 31]])  # (slice, row, column)
    at_ours = np.c_[indices, np.ones(4)] @ ours.affine.numpy().T
    at_monais = np.c_[indices[:, ::-1], np.ones(4)] @ monais.affine.numpy().T
    np.testing.assert_allclose(at_ours, at_monais, atol=1e-4)


def test_a_bundle_that_orients_its_input_sees_the_patients_left_where_monai_puts_it():
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, 1], [0, 1, 0], [2, 0, 0]]  # slices go up (S), rows back (P), columns left (L)
    voxels = np.zeros((4, 8, 10), np.float32)
    voxels[:, :, -1] = 1  # the last column: the patient's left side
    oriented = Orientation(axcodes="RAS")(monai_image(Volume(voxels, affine)))
    # RAS: the first axis runs from the patient's left to the right, so the left side comes first.
    assert oriented.shape == (1, 10, 8, 4)
    assert oriented[0, 0].all() and not oriented[0, 1:].any()


def test_batched_blending_weighs_patches_as_monais_inferer_does():
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    image = torch.rand(1, 40, 50, 30)
    inferer = SlidingWindowInferer((32, 32, 32), overlap=0.5, mode="gaussian", sigma_scale=0.4)
    with torch.inference_mode():
        expected = inferer(image[None], network)[0]
        window = Window((32, 32, 32), 0.5, "gaussian", 0.4)
        [batched] = sliding_window_many([image], network, window, 3, torch.device("cpu"))
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("job_processes", [0, 2], ids=["threads", "processes"])
def test_a_batch_of_jobs_completes_each_with_its_own_results(services, client, monkeypatch, job_processes):
    monkeypatch.setattr(services.jobs.settings, "job_processes", job_processes)
    services.jobs.ensure_demo_model()
    studies = [phantom(seed=311 + index, lesions=index + 1) for index in range(3)]
    tasks = []
    for study in studies:
        stow(client, series_bytes(study))
        tasks.append(client.post("/fhir/Task", json={
            "resourceType": "Task", "status": "requested", "intent": "order",
            "focus": {"reference": f"ImagingStudy/{study_uid(study)}"},
        }).json())
    jobs = services.jobs.queue.claim("batch-worker", 3)
    assert len(jobs) == 3
    runner = services.jobs.make_runner()
    runner.run(jobs)
    runner.close()
    # Stages timed in the offload processes count too.
    totals = runner.timings.totals()
    assert all(totals[stage] > 0 for stage in ("read", "network", "postprocessing", "seg writing"))
    assert set(runner.timings.parts()) == {"seg writing: building", "seg writing: storing"}
    for study, task in zip(studies, tasks):
        done = client.get(f"/fhir/Task/{task['id']}").json()
        assert done["status"] == "completed", done
        report = client.get(f"/fhir/DiagnosticReport/{task['id']}").json()
        assert f"{len(study.lesions)} lesion" in report["conclusion"]


def test_an_offload_pool_whose_process_died_is_replaced():
    pool = OffloadPool(1)
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(os._exit, 1).result(timeout=60)
        assert pool.submit(operator.add, 1, 2).result(timeout=60) == 3
    finally:
        pool.close()


def _settled() -> tuple[bool, bool, int]:
    from highdicom import _standard_utils

    tables_loaded = _standard_utils.get_module_attribute_map.cache_info().currsize == 1
    answers_remembered = isinstance(_standard_utils.is_attribute_in_iod, _RememberedIodAnswers)
    return tables_loaded, answers_remembered, gc.get_freeze_count()


def test_an_offload_process_settles_before_its_first_job():
    pool = OffloadPool(1)
    try:
        tables_loaded, answers_remembered, frozen = pool.submit(_settled).result(timeout=60)
        assert tables_loaded
        assert answers_remembered
        assert frozen > 100_000  # its modules and the tables, out of the collector's way
    finally:
        pool.close()


@pytest.mark.parametrize(("cores", "runners", "expected"), [
    (2, 1, 0),  # a small machine: threads
    (16, 1, 8),  # at most 8 beside one runner
    (16, 4, 3),  # 15 spare cores shared by 4 runners
    (8, 2, 3),
    (4, 4, 0),  # nothing left to share: threads
])
def test_offload_processes_share_the_spare_cores(monkeypatch, cores, runners, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_processes(runners) == expected
