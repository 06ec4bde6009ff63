"""DIMSE benchmark: MedAIFlow's DIMSE gateway beside Orthanc's DICOM server.

Run from the repository root:

    .venv/bin/python -m bench.dimse_vs_orthanc [--rounds 3] [--slices 200] [--size 512]
        [--only orthanc ours-sqlite ours-postgres] [--json results.json]

Each server listens for DIMSE on 127.0.0.1, with this script's AE title
(BENCHSCU) known to it: registered as a peer with the admin role over the
admin API (ours), or as a DicomModalities entry (Orthanc). All servers are
started first and idle while another is measured. In each of --rounds
rounds, the server order rotating by one each round:

 1. C-STORE: a fresh CT series (--slices x --size^2 16-bit slices, Explicit
    VR Little Endian, new UIDs) sent by dcmtk's storescu over one
    association -> instances/s and MB/s of storescu's wall time (its start,
    about 10 ms, included).
 2. C-FIND: --finds STUDY-level queries over one pynetdicom association,
    alternately by the round's PatientID and by PatientName=Bench* (every
    study so far) -> median ms per query, its responses included.
 3. C-GET: the round's series back by dcmtk's getscu over one association,
    as stored -> MB/s.
 4. C-ECHO: --echoes over one association -> median ms.

Reported: the median over rounds per server, and the median of the
per-round ratios ours/orthanc. MedAIFlow runs without its demo model, as
in bench.dicomweb_vs_orthanc. MB means 10^6 bytes. This prints figures; it
asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pynetdicom import AE, Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification  # type: ignore[attr-defined]

from bench import datagen
from bench.dicomweb_vs_orthanc import (
    OrthancServer,
    OursServer,
    Server,
    basic_authorization,
    free_port,
    log,
    machine_info,
)

SERVERS = ("orthanc", "ours-sqlite", "ours-postgres")
CALLING = "BENCHSCU"
MB = 1e6


class Dimse:
    """A server with its DIMSE address."""

    def __init__(self, server: Server, ae_title: str, port: int) -> None:
        self.server, self.ae_title, self.port = server, ae_title, port

    @property
    def name(self) -> str:
        return self.server.name


def start(name: str, args: argparse.Namespace) -> Dimse:
    port = free_port()
    if name == "orthanc":
        orthanc = OrthancServer(keep=args.keep)
        orthanc.peer.config.update({
            "DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": port, "DicomCheckCalledAet": True,
            "DicomModalities": {"bench": [CALLING, "127.0.0.1", free_port()]},
        })
        orthanc.start()
        return Dimse(orthanc, "ORTHANC", port)
    ours = OursServer(name.removeprefix("ours-"), args.pg_admin_dsn, args.pg_db, keep=args.keep,
                      env={"MEDAIFLOW_DIMSE_PORT": str(port)})
    ours.start()
    root = ours.base_url.removesuffix("/dicom-web")
    answer = httpx.post(f"{root}/admin/dicom-peers", headers=basic_authorization(ours.auth), trust_env=False,
                        json={"aeTitle": CALLING, "host": "127.0.0.1", "role": "admin"})
    answer.raise_for_status()
    return Dimse(ours, "MEDAIFLOW", port)


def c_store(target: Dimse, files: list[Path]) -> dict[str, Any]:
    started = time.perf_counter()
    subprocess.run(["storescu", "-aet", CALLING, "-aec", target.ae_title, "127.0.0.1", str(target.port),
                    *map(str, files)], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    size = sum(path.stat().st_size for path in files)
    return {"seconds": seconds, "instances_per_s": len(files) / seconds, "mb_per_s": size / MB / seconds}


def associated(ae: AE, target: Dimse, what: str) -> Association:
    association = ae.associate("127.0.0.1", target.port, ae_title=target.ae_title)
    if not association.is_established:
        raise RuntimeError(f"{target.name}: {what} association not established")
    # As dcmtk's tools do: without it, a request's command and data set, two
    # small writes, wait out the server's delayed ACK (40 ms) between them.
    association.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return association


def c_find(target: Dimse, patient_id: str, runs: int) -> dict[str, Any]:
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = associated(ae, target, "C-FIND")
    seconds, found = [], {}
    try:
        for run in range(runs):
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            query.NumberOfStudyRelatedInstances = ""
            if run % 2:
                query.PatientName, kind = "Bench*", "name"
            else:
                query.PatientID, kind = patient_id, "id"
            started = time.perf_counter()
            matches = 0
            for status, identifier in association.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                if status is None or status.Status not in (0x0000, 0xFF00, 0xFF01):
                    raise RuntimeError(f"{target.name}: C-FIND answered {status}")
                matches += identifier is not None
            seconds.append(time.perf_counter() - started)
            found[kind] = matches
    finally:
        association.release()
    return {"median_ms": statistics.median(seconds) * 1000, "matches": found}


def c_get(target: Dimse, series: datagen.CTSeries, folder: Path) -> dict[str, Any]:
    folder.mkdir()
    started = time.perf_counter()
    subprocess.run(["getscu", "-S", "-aet", CALLING, "-aec", target.ae_title, "127.0.0.1", str(target.port),
                    "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={series.study_uid}",
                    "-k", f"SeriesInstanceUID={series.series_uid}", "-od", str(folder)],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - started
    received = list(folder.iterdir())
    size = sum(path.stat().st_size for path in received)
    shutil.rmtree(folder)
    if len(received) != len(series.instances):
        raise RuntimeError(f"{target.name}: C-GET gave {len(received)} of {len(series.instances)} instances")
    return {"seconds": seconds, "mb_per_s": size / MB / seconds}


def c_echo(target: Dimse, runs: int) -> dict[str, Any]:
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(Verification)
    association = associated(ae, target, "C-ECHO")
    seconds = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            status = association.send_c_echo()
            seconds.append(time.perf_counter() - started)
            if status is None or status.Status != 0x0000:
                raise RuntimeError(f"{target.name}: C-ECHO answered {status}")
    finally:
        association.release()
    return {"median_ms": statistics.median(seconds) * 1000}


def written(series: datagen.CTSeries, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for index, instance in enumerate(series.instances):
        path = folder / f"{index:05d}.dcm"
        path.write_bytes(instance)
        files.append(path)
    return files


FIGURES = (
    ("C-STORE instances/s", ("store", "instances_per_s")),
    ("C-STORE MB/s", ("store", "mb_per_s")),
    ("C-FIND ms (median)", ("find", "median_ms")),
    ("C-GET MB/s", ("get", "mb_per_s")),
    ("C-ECHO ms (median)", ("echo", "median_ms")),
)


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    names = list(results)
    print(f"\n{'figure':24s}" + "".join(f"{name:>16s}" for name in names)
          + "".join(f"{name + '/orthanc':>24s}" for name in names if name != "orthanc"))
    for label, (phase, key) in FIGURES:
        medians = {name: statistics.median(r[phase][key] for r in rounds) for name, rounds in results.items()}
        row = f"{label:24s}" + "".join(f"{medians[name]:16.2f}" for name in names)
        if "orthanc" in results:
            for name in names:
                if name != "orthanc":
                    ratios = [ours[phase][key] / theirs[phase][key]
                              for ours, theirs in zip(results[name], results["orthanc"], strict=True)]
                    row += f"{statistics.median(ratios):24.2f}"
        print(row)
    print("\nC-FIND matches per query (by PatientID, by PatientName=Bench*), last round:",
          {name: rounds[-1]["find"]["matches"] for name, rounds in results.items()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dimse_vs_orthanc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--finds", type=int, default=20)
    parser.add_argument("--echoes", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    parser.add_argument("--pg-admin-dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=test")
    parser.add_argument("--pg-db", default="medaiflow_bench_dimse")
    parser.add_argument("--keep", action="store_true", help="keep temp dirs / database (debugging)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("storescu") is None or shutil.which("getscu") is None:
        raise SystemExit("dcmtk's storescu and getscu are needed (Debian package dcmtk)")
    names = [name for name in SERVERS if name in args.only]
    scratch = Path(tempfile.mkdtemp(prefix="bench-dimse-"))
    log(f"generating {args.rounds} CT series of {args.slices} x {args.size}^2")
    series = [datagen.make_ct_series(args.slices, args.size, seed=4321 + r, patient_id=f"BENCHDIMSE{r + 1:03d}")
              for r in range(args.rounds)]
    files = [written(one, scratch / f"series{r}") for r, one in enumerate(series)]
    targets: list[Dimse] = []
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for name in names:
            log(f"starting {name}")
            targets.append(start(name, args))
        for r in range(args.rounds):
            for target in targets[r % len(targets):] + targets[: r % len(targets)]:
                log(f"round {r + 1}: {target.name}")
                results[target.name].append({
                    "store": c_store(target, files[r]),
                    "find": c_find(target, series[r].patient_id, args.finds),
                    "get": c_get(target, series[r], scratch / f"got-{target.name}-{r}"),
                    "echo": c_echo(target, args.echoes),
                })
    finally:
        for target in targets:
            target.server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nmachine: {machine_info()}")
    print(f"{args.rounds} rounds, a {args.slices} x {args.size}^2 CT series each")
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
