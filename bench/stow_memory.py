"""Memory during one large STOW-RS request: MedAIFlow against Orthanc.

Run from the repository root:

    .venv/bin/python -m bench.stow_memory [--gigabytes 2] [--only orthanc ours-sqlite]

One request carries about `--gigabytes` GB of 1024x1024 16-bit CT instances
(2 MiB each), generated while it is sent so that the client holds one
instance at a time. The server's RSS (with its children) is sampled every
100 ms; the script prints the RSS before the request, the peak during it, and
the difference, for each server. The target for MedAIFlow is a rise of at
most about 200 MB for 2 GB. It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import httpx
import numpy as np

from bench import datagen
from bench.dicomweb_vs_orthanc import (
    OrthancServer,
    OursServer,
    RssSampler,
    Server,
    ServerError,
)

MB = 1e6
_SIZE = 1024


def _template() -> tuple[bytes, bytes, str]:
    """One CT instance with a placeholder SOP Instance UID of fixed length, and the study UID."""
    placeholder = datagen._placeholder_uid(4)
    study_uid = datagen.fixed_uid()
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 2000, size=(_SIZE, _SIZE), dtype=np.int16)
    dataset = datagen._ct_dataset(
        patient_id="BENCHMEM1",
        patient_name="Bench^Memory",
        study_uid=study_uid,
        series_uid=datagen.fixed_uid(),
        frame_of_ref_uid=datagen.fixed_uid(),
        sop_uid=placeholder,
        instance_number=1,
        z=0.0,
        pixels=pixels,
        spacing=0.5,
        thickness=1.0,
    )
    return datagen.to_bytes(dataset), placeholder.encode(), study_uid


def _body(count: int, boundary: str) -> Iterator[bytes]:
    template, placeholder, _ = _template()
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    for _ in range(count):
        yield (
            head + template.replace(placeholder, datagen.fixed_uid().encode()) + b"\r\n"
        )
    yield f"--{boundary}--\r\n".encode()


def measure(server: Server, gigabytes: float) -> dict[str, float]:
    template, _, _ = _template()
    count = max(1, int(gigabytes * 1e9 / len(template)))
    boundary = "medaiflow-bench-memory"
    server.start()
    try:
        assert server.proc is not None
        sampler = RssSampler(server.proc.pid).start()
        time.sleep(1.0)
        before = sampler.sample()
        started = time.perf_counter()
        with httpx.Client(timeout=3600, trust_env=False, auth=server.auth) as client:
            response = client.post(
                f"{server.base_url}/studies",
                content=_body(count, boundary),
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
                },
            )
        elapsed = time.perf_counter() - started
        time.sleep(0.5)
        sampler.stop()
        return {
            "instances": count,
            "gigabytes_sent": count * len(template) / 1e9,
            "status": response.status_code,
            "seconds": elapsed,
            "rss_before_mb": before / MB,
            "rss_peak_mb": sampler.peak / MB,
            "rss_rise_mb": (sampler.peak - before) / MB,
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument(
        "--only",
        nargs="+",
        default=["ours-sqlite", "orthanc"],
        choices=["ours-sqlite", "ours-postgres", "orthanc"],
    )
    parser.add_argument(
        "--pg-admin-dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=test"
    )
    args = parser.parse_args(argv)
    factories = {
        "ours-sqlite": lambda: OursServer(
            "sqlite", args.pg_admin_dsn, "medaiflow_bench_memory"
        ),
        "ours-postgres": lambda: OursServer(
            "postgres", args.pg_admin_dsn, "medaiflow_bench_memory"
        ),
        "orthanc": lambda: OrthancServer(),
    }
    print(
        f"{'server':<14} {'status':>6} {'GB':>6} {'s':>7} {'RSS before MB':>14} {'peak MB':>9} {'rise MB':>9}"
    )
    failed = False
    for name in args.only:
        try:
            result = measure(factories[name](), args.gigabytes)
        except ServerError as error:
            print(f"{name:<14} failed: {error}")
            failed = True
            continue
        print(
            f"{name:<14} {result['status']:>6} {result['gigabytes_sent']:>6.2f} {result['seconds']:>7.1f}"
            f" {result['rss_before_mb']:>14.0f} {result['rss_peak_mb']:>9.0f} {result['rss_rise_mb']:>9.0f}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
