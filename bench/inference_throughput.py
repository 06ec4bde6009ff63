"""Inference throughput: one job at a time against the batched path, with the
time split by stage, and the latency from a STOW to a searchable report.

Run from the repository root:

    .venv/bin/python -m bench.inference_throughput [--studies 32] [--slices 128]
        [--matrix 256] [--batch 8] [--device auto|cpu|cuda] [--database-url URL]
        [--latency-runs 3] [--json results.json]

 1. A server's stores are built in a temp dir (SQLite unless --database-url)
    with the demo model registered. For each variant, --studies phantom CT
    studies of its own (--slices slices of --matrix x --matrix, 0.8 mm
    pixels, 2 mm slices, 1-4 lesions; study k has as many lesions in every
    variant) are stored through the STOW ingest path. That is set-up, not
    measured. Studies of their own: a variant run on studies an earlier one
    had done would withdraw its results as it published, extra work.
 2. The variant's studies get a Task each (a client's order), and the jobs
    are run to the end by the server's own runner:
      - one-at-a-time: claim one job, run it (its volume read on another
        thread, then waited for), the next;
      - batched: claim --batch jobs of the model, start reading them, claim
        and start the next batch, run the network over the patches of all
        the current batch's volumes together, publish each; as the local
        executor does.
    Reported: studies per minute (wall time of the whole variant), and the
    seconds spent per stage summed over its jobs (read, which includes the
    SEG writer's second read of the first source's header; decode and volume
    assembly; preprocessing; network; postprocessing, which includes the
    measurements; SEG writing, in two parts: building it with its file and
    description in an offload process, and the worker storing it; FHIR
    publishing) with each stage's share of their sum. Stages run side by side in the batched variant (and, with
    MEDAIFLOW_JOB_PROCESSES, in other processes), so shares are of work
    done, not of wall time. What a worker does once, as it starts (loading
    the model; starting its offload processes, which load the SEG writer's
    tables), is in no stage: the model loads before the clock starts, the
    processes start within the first jobs' wall time.
 3. Latency: a server with its local executor and MEDAIFLOW_STUDY_QUIET_SECONDS
    = --quiet receives one study by STOW-RS (in-process ASGI client) at a
    time; reported is the time from the end of the STOW to the
    DiagnosticReport being found by a search, and that time less the quiet
    period (the time the server takes once it considers the study complete).

It prints figures and checks that every job completed; it asserts nothing
about speed. The goal of issue 4: batching at least 2x the one-at-a-time
throughput on a GPU, and no stage but the network above a third of the time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

STAGES = ("read", "decode and volume assembly", "preprocessing", "network", "postprocessing", "seg writing",
          "fhir publishing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=32)
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--database-url")
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--quiet", type=float, default=1.0, help="study quiet seconds in the latency run")
    parser.add_argument("--variants", nargs="+", default=["one-at-a-time", "batched"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="run the batched variant once more under cProfile (its main"
                        " thread; every thread from Python 3.12), and write the profile here")
    args = parser.parse_args(argv)
    if not 0 < args.studies <= 1_000:
        parser.error("--studies: 1 to 1,000 (each run's phantom seeds are 1,000 apart)")
    os.environ["MEDAIFLOW_DEVICE"] = args.device

    import torch

    results: dict[str, Any] = {"machine": _machine(torch), "arguments": {k: str(v) for k, v in vars(args).items()}}
    print(f"machine: {results['machine']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="medaiflow-bench-") as directory:
        services = _services(Path(directory), args.database_url, executor="none")
        # Each run gets studies of its own, alike in geometry and lesion count: a run over studies
        # another run has done would supersede its results, work that no first run does.
        for index, variant in enumerate(args.variants):
            results[variant] = _throughput(services, _store_phantoms(services, args, index), variant, args.batch)
        if args.profile:
            # A run of its own: the profiler slows Python code, so its figures are not the variants'.
            studies = _store_phantoms(services, args, len(args.variants))
            _throughput(services, studies, "batched", args.batch, args.profile)
        services.engine.dispose()
        if args.latency_runs:
            results["latency"] = _latency(Path(directory) / "latency", args)
    _print(results, args.variants)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _machine(torch: Any) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs ({cpu}), {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def _services(directory: Path, database_url: str | None, **settings: Any) -> Any:
    from server.app import build_services
    from server.migrate import upgrade
    from server.settings import Settings

    configured = Settings(data_dir=directory, database_url=database_url, demo_model=True, **settings)
    services = build_services(configured)
    upgrade(services.engine)
    services.jobs.ensure_demo_model()
    return services


def _phantom_payloads(seed: int, args: argparse.Namespace) -> list[bytes]:
    from inference.demo.phantom import Geometry, make_phantom, phantom_payloads

    geometry = Geometry(args.matrix, args.slices, 0.8, 2.0, 1.0, -1024.0, False)
    return phantom_payloads(make_phantom(seed, geometry, lesion_count=1 + seed % 4, radius_mm=(6.0, 12.0)))


def _store_phantoms(services: Any, args: argparse.Namespace, run: int) -> list[str]:
    """--studies phantoms for the `run`-th run; each run's seeds are 1,000 apart,
    a multiple of 4, so study k of every run has the same lesion count."""
    import pydicom

    from server.ingest import prepare

    started = time.perf_counter()
    uids = []
    first = 50_000 + 1_000 * run
    for seed in range(first, first + args.studies):
        batch = []
        for payload in _phantom_payloads(seed, args):
            writer = services.store.new_temp_file()
            writer.write(payload)
            batch.append(prepare(writer.finish()))
        outcomes = services.ingestor.store_batch(batch)
        assert all(outcome.failure is None for outcome in outcomes)
        uids.append(str(pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True).StudyInstanceUID))
    print(f"stored {args.studies} studies of {args.slices} x {args.matrix}^2 in {time.perf_counter() - started:.0f} s",
          flush=True)
    return uids


def _order(services: Any, study_uids: list[str]) -> list[str]:
    from server.fhir import interactions

    return [
        interactions.create(services.fhir, "Task", {
            "resourceType": "Task", "status": "requested", "intent": "order",
            "focus": {"reference": f"ImagingStudy/{uid}"},
        }).resource_id
        for uid in study_uids
    ]


def _throughput(
    services: Any, study_uids: list[str], variant: str, batch_size: int, profile: Path | None = None,
) -> dict[str, Any]:
    task_ids = _order(services, study_uids)
    runner = services.jobs.make_runner()
    # The model loads once per worker, before its first job: not part of the run.
    runner.segmenter_for(services.jobs.registry.get("medaiflow-demo-lesions@1.0.1"))
    queue = services.jobs.queue
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    if variant == "one-at-a-time":
        while jobs := queue.claim("bench", 1):
            runner.run(jobs)
    else:
        current = runner.start(queue.claim("bench", batch_size))
        while current is not None:
            following = queue.claim("bench", batch_size)
            upcoming = runner.start(following) if following else None
            runner.finish(current)
            current = upcoming
    wall = time.perf_counter() - started
    if profiler and profile:
        profiler.disable()
        with profile.open("w") as out:
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
    runner.close()
    statuses = [queue.get(task_id).status for task_id in task_ids]
    assert statuses.count("completed") == len(task_ids), statuses
    totals = runner.timings.totals()
    seconds = {stage: totals.get(stage, 0.0) for stage in STAGES}
    result = {"studies": len(task_ids), "wall_s": wall, "studies_per_minute": len(task_ids) / wall * 60,
              "stage_s": seconds, "stage_part_s": runner.timings.parts()}
    print(f"{variant}: {result['studies_per_minute']:.1f} studies/min ({wall:.1f} s for {len(task_ids)})", flush=True)
    return result


def _latency(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.auth.scopes import Role, role_grant

    services = _services(directory, None if args.database_url is None else args.database_url,
                         executor="local", study_quiet_seconds=args.quiet)
    samples = []
    boundary = "bench-boundary"
    token, _ = services.auth.issuer.issue("bench", "admin", str(role_grant(Role.ADMIN)), client=False)
    with TestClient(create_app(services=services), base_url="http://bench",
                    headers={"Authorization": f"Bearer {token}"}) as client:
        for run in range(args.latency_runs):
            payloads = _phantom_payloads(60_000 + run, args)
            body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + payload + b"\r\n"
                            for payload in payloads) + b"--" + boundary.encode() + b"--\r\n"
            import pydicom

            uid = pydicom.dcmread(io.BytesIO(payloads[0]), stop_before_pixels=True).StudyInstanceUID
            response = client.post("/dicom-web/studies", content=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
            assert response.status_code == 200, response.text
            stored = time.perf_counter()
            while True:
                tasks = client.get("/fhir/Task", params={"focus": f"ImagingStudy/{uid}"}).json().get("entry", [])
                reports = [
                    client.get("/fhir/DiagnosticReport", params={"_id": entry["resource"]["id"]}).json().get("total")
                    for entry in tasks
                ]
                if any(reports):
                    break
                if time.perf_counter() - stored > 600:
                    raise RuntimeError("no DiagnosticReport within 10 minutes")
                time.sleep(0.05)
            samples.append(time.perf_counter() - stored)
    services.engine.dispose()
    print(f"latency: median {statistics.median(samples):.2f} s over {len(samples)} studies (quiet {args.quiet} s)",
          flush=True)
    return {"samples_s": samples, "median_s": statistics.median(samples), "quiet_s": args.quiet}


def _print(results: dict[str, Any], variants: list[str]) -> None:
    print()
    print(f"| stage | {' | '.join(variants)} |")
    print(f"|---|{'---|' * len(variants)}")
    for stage in STAGES:
        cells = []
        for variant in variants:
            seconds = results[variant]["stage_s"]
            share = seconds[stage] / max(sum(seconds.values()), 1e-9)
            cells.append(f"{seconds[stage]:.1f} s ({share:.0%})")
        print(f"| {stage} | {' | '.join(cells)} |")
    rates = " | ".join(f"{results[variant]['studies_per_minute']:.1f}" for variant in variants)
    print(f"| **studies/min** | {rates} |")
    for variant in variants:
        parts = ", ".join(f"{name} {spent:.1f} s" for name, spent in sorted(results[variant]["stage_part_s"].items()))
        print(f"{variant}, stages in parts: {parts}")
    if len(variants) == 2:
        ratio = results[variants[1]]["studies_per_minute"] / results[variants[0]]["studies_per_minute"]
        print(f"\n{variants[1]} / {variants[0]}: {ratio:.2f}x")
    for variant in variants:
        seconds = results[variant]["stage_s"]
        stage = max((name for name in STAGES if name != "network"), key=seconds.__getitem__)
        share = seconds[stage] / max(sum(seconds.values()), 1e-9)
        print(f"{variant}: the largest stage but the network is {stage}, {share:.0%} of the work (goal: at most 33%)")
    if "latency" in results:
        latency = results["latency"]
        print(f"STOW end -> DiagnosticReport searchable: median {latency['median_s']:.2f} s "
              f"(quiet period {latency['quiet_s']} s; {latency['median_s'] - latency['quiet_s']:.2f} s after it)")


if __name__ == "__main__":
    raise SystemExit(main())
