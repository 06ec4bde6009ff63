"""Study metadata and QIDO-RS instance search in DICOM JSON and DICOM XML, beside Orthanc.

Run from the repository root:

    .venv/bin/python -m bench.metadata_models [--slices 500] [--runs 5] [--only ours-sqlite orthanc]

One CT series of --slices instances (small pixels: metadata does not depend
on them) is stored by STOW-RS in each server; then, each read by curl, best
and median of --runs:
  - GET /studies/{study}/metadata as application/dicom+json and as
    multipart/related; type="application/dicom+xml";
  - GET /studies/{study}/instances (every instance of the study) in both models.
Orthanc 1.10 answers a QIDO search asking for multipart XML in JSON (see
conformance/KNOWN_PEER_DEVIATIONS.md, DW-XML-01), so its XML search is asked
with the bare application/dicom+xml it does answer in XML; the content type
each server sent is printed with the figures.
"""

import argparse
import statistics

import httpx

from bench import datagen
from bench.dicomweb_vs_orthanc import Server, machine_info, serving, stow, wado_once

JSON = "application/dicom+json"
MULTIPART_XML = 'multipart/related; type="application/dicom+xml"'
BARE_XML = "application/dicom+xml"


def _timed(client: httpx.Client, url: str, accept: str, runs: int) -> dict[str, object]:
    wado_once(client, url, accept)  # warm-up
    results = [wado_once(client, url, accept) for _ in range(runs)]
    statuses = {status for status, _, _, _ in results}
    seconds = [elapsed for _, _, elapsed, _ in results]
    return {
        "status": statuses.pop() if len(statuses) == 1 else sorted(statuses),
        "bytes": results[0][1],
        "content_type": results[0][3].split(";")[0],
        "best_ms": min(seconds) * 1000,
        "median_ms": statistics.median(seconds) * 1000,
    }


def _measure(server: Server, client: httpx.Client, series: datagen.CTSeries, runs: int) -> dict[str, dict[str, object]]:
    for start in range(0, len(series.instances), 100):
        reply = stow(client, server.base_url, datagen.build_multipart(series.instances[start:start + 100]))
        if reply["status"] != 200:
            raise RuntimeError(f"{server.name}: STOW answered {reply}")
    study = f"{server.base_url}/studies/{series.study_uid}"
    xml_search = BARE_XML if server.name == "orthanc" else MULTIPART_XML
    return {
        "metadata JSON": _timed(client, f"{study}/metadata", JSON, runs),
        "metadata XML": _timed(client, f"{study}/metadata", MULTIPART_XML, runs),
        "instances search JSON": _timed(client, f"{study}/instances?limit=100000", JSON, runs),
        "instances search XML": _timed(client, f"{study}/instances?limit=100000", xml_search, runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=["ours-sqlite", "orthanc"], choices=["ours-sqlite", "orthanc"])
    args = parser.parse_args()
    series = datagen.make_ct_series(n_slices=args.slices, size=16)
    print(f"machine: {machine_info()}")
    print(f"one study of {args.slices} CT instances; best / median of {args.runs} reads by curl, in ms")
    figures: dict[str, dict[str, dict[str, object]]] = {}
    for name in args.only:
        with serving(name) as (server, client):
            figures[name] = _measure(server, client, series, args.runs)
    names = list(figures)
    print(f"{'':24}" + "".join(f"{name:>36}" for name in names))
    for what in next(iter(figures.values())):
        cells = []
        for name in names:
            figure = figures[name][what]
            cells.append(f"{figure['best_ms']:7.1f} / {figure['median_ms']:7.1f}  {figure['content_type'][:18]:>18}")
        print(f"{what:24}" + "".join(f"{cell:>36}" for cell in cells))
    print("bytes:", {name: {what: figure["bytes"] for what, figure in per.items()} for name, per in figures.items()})


if __name__ == "__main__":
    main()
