"""QIDO-RS wildcard searches, as a viewer's worklist sends them, beside Orthanc.

Run from the repository root (or from an export of another commit, to
compare two):

    .venv/bin/python -m bench.qido_wildcards [--studies 20000] [--runs 5] [--only ours-sqlite orthanc]

--studies one-instance studies (PatientName Bench^PatientNNNNNNN, PatientID
BENCHPNNNNNNN) are stored by STOW-RS in each server; then each search below
is timed, best and median of --runs, with the number of results it gave.
OHIF sends `*typed*` on PatientName (with fuzzymatching=true when its data
source says the server supports it) and PatientID, with limit=101.
"""

import argparse
import statistics
import time
from urllib.parse import urlencode

import httpx

from bench import datagen
from bench.dicomweb_vs_orthanc import Server, machine_info, serving, stow

SEARCHES = (
    ("PatientName=*ient00012*", {"PatientName": "*ient00012*"}),
    ("  the same, fuzzymatching=true", {"PatientName": "*ient00012*", "fuzzymatching": "true"}),
    ("PatientName=bench* fuzzy (every study)", {"PatientName": "bench*", "fuzzymatching": "true"}),
    ("PatientName=Bench^Patient00123*", {"PatientName": "Bench^Patient00123*"}),
    # A page deep into many matches: a pattern that pages in Python reads every row before it.
    ("PatientName=Bench* offset=10000", {"PatientName": "Bench*", "offset": "10000"}),
    ("PatientID=*0012*", {"PatientID": "*0012*"}),
    ("PatientName=*zzz* (no match)", {"PatientName": "*zzz*"}),
)


def _load(client: httpx.Client, server: Server, studies: datagen.SmallStudies) -> float:
    started = time.perf_counter()
    for first in range(0, len(studies.instances), 500):
        reply = stow(client, server.base_url, datagen.build_multipart(studies.instances[first:first + 500]))
        if reply["status"] != 200:
            raise RuntimeError(f"{server.name}: STOW answered {reply}")
    return time.perf_counter() - started


def _timed(client: httpx.Client, url: str, params: dict[str, str], runs: int) -> tuple[float, float, int]:
    # `*` and `^` go as they are, as viewers send them: Orthanc 1.10 does not
    # decode them percent-encoded (conformance/KNOWN_PEER_DEVIATIONS.md, DW-QIDO-15).
    target = f"{url}?{urlencode({**params, 'limit': '101'}, safe='*^')}"
    client.get(target)  # warm-up
    seconds, found = [], -1
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(target, headers={"Accept": "application/dicom+json"})
        seconds.append(time.perf_counter() - started)
        response.raise_for_status()
        found = len(response.json()) if response.content else 0
    return min(seconds) * 1000, statistics.median(seconds) * 1000, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=["ours-sqlite", "orthanc"], choices=["ours-sqlite", "orthanc"])
    args = parser.parse_args()
    studies = datagen.make_small_studies(args.studies)
    print(f"machine: {machine_info()}")
    figures: dict[str, list[tuple[float, float, int]]] = {}
    for name in args.only:
        with serving(name) as (server, client):
            print(f"{name}: stored {args.studies} studies in {_load(client, server, studies):.1f} s")
            figures[name] = [_timed(client, f"{server.base_url}/studies", params, args.runs) for _, params in SEARCHES]
    print(f"\nlimit=101; best / median of {args.runs}, ms, (results)")
    print(f"{'':42}" + "".join(f"{name:>26}" for name in figures))
    for row, (label, _) in enumerate(SEARCHES):
        cells = [f"{best:7.1f} / {median:7.1f} ({found:3d})" for best, median, found in
                 (figures[name][row] for name in figures)]
        print(f"{label:42}" + "".join(f"{cell:>26}" for cell in cells))


if __name__ == "__main__":
    main()
