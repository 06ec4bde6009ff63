"""A job's CPU work that needs neither the database nor the network: reading
the series into a volume, and measuring the labels and writing the SEG.

Python threads cannot run this side by side (the GIL), and on a GPU it is
most of a job's time, so a worker with cores to spare runs it in processes
of its own: a batch's studies are read, measured and written in parallel
while the network runs. Nothing here imports torch, so those processes start
quickly. With no processes configured the same functions run in threads.
"""

import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import pydicom

from inference.assembly import volume_from_datasets
from inference.findings import SegmentFindings
from inference.measurements import measure
from inference.model_card import ModelCard
from inference.seg import SegIdentity, SourceHeaders, prepare_seg_writer, segmentation
from inference.timings import Timings
from inference.volume import Volume
from server.ingest import PreparedFile, prepare_dataset
from server.settling import settle_process
from server.storage import FileStore

P = ParamSpec("P")
T = TypeVar("T")

# Threads when no processes are configured: one reads while another writes.
_THREADS = 2


def default_processes(runners: int = 1) -> int:
    """The cores beyond the first, shared among the `runners` job runners of
    this machine (server processes times job threads), up to 8 each; none on
    a small machine, where processes would only compete with the network."""
    cores = os.cpu_count() or 1
    return min(8, (cores - 1) // runners) if cores >= 4 else 0


@dataclass(frozen=True)
class ReadSeries:
    volume: Volume
    sources: SourceHeaders
    seconds: dict[str, float]


@dataclass(frozen=True)
class WrittenResults:
    findings: list[SegmentFindings]
    segmentation: PreparedFile  # written under the store's tmp/, described, not yet stored
    seconds: dict[str, float]


def read_series(paths: list[Path]) -> ReadSeries:
    timings = Timings()
    with timings.stage("read"):
        datasets = [pydicom.dcmread(path) for path in paths]
        kept = [SourceHeaders.kept(dataset) for dataset in datasets]
    # Decoding happens frame by frame into the volume: one stage.
    with timings.stage("decode and volume assembly"):
        volume = volume_from_datasets(datasets)
    first = volume.source_instance_uids[0]
    at = {str(dataset.SOPInstanceUID): index for index, dataset in enumerate(datasets)}[first]
    sources = SourceHeaders(paths[at], tuple(headers for index, headers in enumerate(kept) if index != at))
    return ReadSeries(volume, sources, dict(timings.seconds))


def write_results(
    sources: SourceHeaders, labels: Volume, card: ModelCard, identity: SegIdentity, store_root: Path, temp_dir: Path,
) -> WrittenResults:
    """`labels`: the network's labels on the series' volume grid (`Volume.with_voxels`:
    a quarter of the image's bytes to send). The SEG is written in `temp_dir`,
    the temp folder of the process that stores it: a helper process may end
    before its work is stored. Raises FileNotFoundError when the series was
    deleted since it was read."""
    timings = Timings()
    with timings.stage("postprocessing"):
        findings = [measure(labels.voxels == segment.label, labels, segment) for segment in card.segments]
    with timings.stage("read"):
        source_images = sources.images()
    with timings.stage("seg writing: building"):
        seg = segmentation(source_images, labels, labels.voxels, card, identity)
        prepared = prepare_dataset(FileStore(store_root, helper_of=temp_dir), seg)
    return WrittenResults(findings, prepared, dict(timings.seconds))


def _settle_seg_writer() -> None:
    prepare_seg_writer()
    settle_process()


class OffloadPool:
    """Runs the functions above in `processes` processes (spawned: the worker
    has threads, and maybe CUDA, neither of which survives a fork), or in
    threads when `processes` is 0. A process that dies (killed for memory,
    say) fails the futures it held; the next submission gets a new pool.
    Each process prepares the SEG writer (`prepare_seg_writer`) and settles
    (`settle_process`) as it starts, before it takes any work: a one-off
    cost of starting, not of the first job it runs."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._executor: Executor | None = None

    def submit(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> "Future[T]":
        with self._lock:
            if self._executor is None:
                self._executor = self._new_executor()
            try:
                return self._executor.submit(function, *args, **kwargs)
            except BrokenProcessPool:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
                return self._executor.submit(function, *args, **kwargs)

    def settle_worker(self) -> None:
        """For the worker, once it has loaded a model (`settle_process`); with
        threads it writes the SEGs itself, so it prepares the SEG writer first."""
        if self.processes == 0:
            _settle_seg_writer()
        else:
            settle_process()

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def _new_executor(self) -> Executor:
        if self.processes == 0:
            return ThreadPoolExecutor(_THREADS, thread_name_prefix="job-cpu-work")
        return ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_settle_seg_writer,
        )
