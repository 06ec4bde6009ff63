"""FHIR writes, JSON against XML: creates, conditional creates and deletes,
and transaction Bundles, against `medaiflow serve` on SQLite and PostgreSQL.

Run from the repository root:

    .venv/bin/python -m bench.fhir_writes [--requests 300] [--bundle 100] [--only sqlite postgres]

For each database (a fresh SQLite file; a fresh schema in the PostgreSQL
database `test`), a server is started as `bench.fhir_search` starts it, and
one client sends one request at a time, so the figures are latencies, not
throughput under load:
  - create:              POST /fhir/Task (a Task with an identifier, a note
                         and a decimal input), answered in the body's format
  - conditional create:  the same with If-None-Exist naming a Task that exists (200)
  - conditional delete:  DELETE /fhir/Task?identifier=... of a Task made for it
  - transaction:         a Bundle of --bundle Task creates, one per request
Each in JSON and in XML (the XML written by the server's own XML writer from
the same JSON). Reported: median and 95th percentile per scenario, and what
XML costs over JSON. It checks every status; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from bench.fhir_search import PG_SCHEMA, PG_URL, Server, _headers, log, machine_info, make_database
from fhir_mappings import fhir_xml

FORMATS = {"json": "application/fhir+json", "xml": "application/fhir+xml"}


def _task(marker: str) -> dict[str, Any]:
    return {
        "resourceType": "Task", "status": "draft", "intent": "proposal",
        "identifier": [{"system": "urn:medaiflow:bench", "value": marker}],
        "note": [{"text": "MedAIFlow write benchmark"}],
        "input": [{"type": {"text": "threshold"}, "valueDecimal": 0.5}],
    }


def _body(resource: dict[str, Any], fmt: str) -> bytes:
    return orjson.dumps(resource) if fmt == "json" else fhir_xml.dumps(resource)


def _timed(samples: list[float], send: Callable[[], httpx.Response], status: int) -> None:
    started = time.perf_counter()
    answer = send()
    samples.append(time.perf_counter() - started)
    if answer.status_code != status:
        raise RuntimeError(f"expected {status}, got {answer.status_code}: {answer.text[:300]}")


def run_scenarios(root: str, requests: int, bundle: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=f"{root}/fhir", headers=_headers(), timeout=120, trust_env=False) as client:
        for fmt, media_type in FORMATS.items():
            headers = {"Content-Type": media_type, "Accept": media_type}
            creates: list[float] = []
            for _ in range(requests):
                _timed(creates, lambda: client.post("/Task", content=_body(_task(str(uuid.uuid4())), fmt),
                                                    headers=headers), 201)
            existing = str(uuid.uuid4())
            client.post("/Task", content=_body(_task(existing), fmt), headers=headers).raise_for_status()
            condition = {"If-None-Exist": f"identifier=urn:medaiflow:bench|{existing}"}
            matched: list[float] = []
            for _ in range(requests):
                _timed(matched, lambda: client.post("/Task", content=_body(_task(existing), fmt),
                                                    headers={**headers, **condition}), 200)
            deletes: list[float] = []
            for _ in range(requests):
                marker = str(uuid.uuid4())
                client.post("/Task", content=_body(_task(marker), fmt), headers=headers).raise_for_status()
                _timed(deletes, lambda: client.delete(f"/Task?identifier=urn:medaiflow:bench|{marker}"), 204)
            transactions: list[float] = []
            for _ in range(max(3, requests // 20)):
                entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": _task(str(uuid.uuid4())),
                            "request": {"method": "POST", "url": "Task"}} for _ in range(bundle)]
                body = _body({"resourceType": "Bundle", "type": "transaction", "entry": entries}, fmt)
                _timed(transactions, lambda: client.post("", content=body, headers=headers), 200)
            for name, samples in (("create", creates), ("conditional create (match)", matched),
                                  ("conditional delete", deletes), (f"transaction of {bundle}", transactions)):
                ordered = sorted(samples)
                results.setdefault(name, {})[f"{fmt} median"] = statistics.median(ordered) * 1000
                results[name][f"{fmt} p95"] = ordered[int(0.95 * (len(ordered) - 1))] * 1000
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per scenario and format")
    parser.add_argument("--bundle", type=int, default=100, help="entries per transaction")
    parser.add_argument("--only", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"])
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--pg-schema", default=PG_SCHEMA + "_writes")
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"machine: {info}")
    for kind in args.only:
        db = make_database(kind, args)
        server = Server(db)
        try:
            server.start()
            log(f"{kind}: server ready in {server.startup_s:.1f} s")
            results = run_scenarios(server.root, args.requests, args.bundle)
        finally:
            server.stop()
            db.drop(keep=False)
        print(f"\n{kind} (ms, one request at a time)")
        print(f"{'scenario':30} {'JSON median':>12} {'JSON p95':>10} {'XML median':>12} {'XML p95':>10} {'XML/JSON':>9}")
        for name, figures in results.items():
            ratio = figures["xml median"] / figures["json median"]
            print(f"{name:30} {figures['json median']:12.2f} {figures['json p95']:10.2f} "
                  f"{figures['xml median']:12.2f} {figures['xml p95']:10.2f} {ratio:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
