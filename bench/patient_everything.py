"""Patient/[id]/$everything over a large compartment, SQLite and PostgreSQL.

Run from the repository root:

    .venv/bin/python -m bench.patient_everything [--resources 20000] [--others 100000]
        [--only sqlite postgres] [--pg-url postgresql+psycopg2://postgres@127.0.0.1:5432/test]

One patient gets --resources Observations and as many AuditEvents (each
access to a patient adds an AuditEvent to its compartment, so a patient
often read has thousands); --others Observations and AuditEvents go to 100
other patients, so that the indexes hold far more than the compartment.
They are written straight through `ResourceStore.put_many`, then (on
PostgreSQL) ANALYZEd. Then, in process, through the same function the route
calls:
  - the first page of $everything at _count=20, with and without a care-date
    window (start/end), best of three;
  - a walk through the whole compartment at _count=1000, following `next`;
  - for comparison, the first page of the plain search
    Observation?subject=Patient/{id}, and of Observation?date:missing=true.
There is no FHIR peer to run beside it here (no HAPI or Microsoft FHIR
server can be installed on this machine).
"""

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from server.app import build_services
from server.db import write_connection
from server.fhir.everything import everything
from server.migrate import upgrade
from server.settings import Settings

_BASE = "http://bench/fhir"
_LOINC = "http://loinc.org"


def _observation(number: int, patient: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{number}", "status": "final",
            "code": {"coding": [{"system": _LOINC, "code": "1111-1"}]}, "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": f"20{10 + number % 15:02d}-0{1 + number % 9}-01T10:00:00Z"}


def _audit_event(number: int, patient: str) -> dict[str, Any]:
    return {"resourceType": "AuditEvent", "id": f"a{number}",
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112"},
            "recorded": f"20{10 + number % 15:02d}-0{1 + number % 9}-01T10:00:00Z",
            "agent": [{"requestor": True, "who": {"display": "bench"}}], "source": {"observer": {"display": "bench"}},
            "entity": [{"what": {"reference": f"Patient/{patient}"}}]}


def _settings(kind: str, args: argparse.Namespace, tmp: Path) -> Settings:
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'index.sqlite3'}"
    else:
        admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("DROP SCHEMA IF EXISTS bench_everything CASCADE"))
            connection.execute(text("CREATE SCHEMA bench_everything"))
        admin.dispose()
        url = make_url(args.pg_url).update_query_dict({"options": "-csearch_path=bench_everything"}).render_as_string(
            hide_password=False)
    return Settings(data_dir=tmp, database_url=url, executor="none", demo_model=False)


def _load(services: Any, resources: int, others: int) -> float:
    started = time.perf_counter()
    store = services.fhir.store
    with write_connection(services.engine) as connection:
        store.put_many(connection, [({"resourceType": "Patient", "id": f"p{k}"}, f"p{k}") for k in range(101)], "PUT")
    plan = [(number, "p0") for number in range(resources)]
    plan += [(resources + number, f"p{1 + number % 100}") for number in range(others)]
    random.Random(1).shuffle(plan)  # the patient's resources spread through the tables, as over years
    for start in range(0, len(plan), 2000):
        chunk = plan[start:start + 2000]
        with write_connection(services.engine) as connection:
            for make, prefix in ((_observation, "o"), (_audit_event, "a")):
                writes = [(make(number, patient), f"{prefix}{number}") for number, patient in chunk]
                store.put_many(connection, writes, "PUT")
    if services.engine.dialect.name == "postgresql":
        with services.engine.connect() as connection:
            connection.execute(text("ANALYZE"))
            connection.commit()
    return time.perf_counter() - started


def _best_of_three(run: Callable[[], Any]) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def _walk(services: Any, pairs: list[tuple[str, str]]) -> tuple[int, int, float, float]:
    started, pages, rows, slowest = time.perf_counter(), 0, 0, 0.0
    while True:
        page_started = time.perf_counter()
        page = everything(services.fhir, "p0", pairs, _BASE, False, lambda resource_type: True)
        slowest = max(slowest, time.perf_counter() - page_started)
        pages, rows = pages + 1, rows + len(page.matches)
        following = page.links.get("next")
        if following is None:
            return rows, pages, time.perf_counter() - started, 1000 * slowest
        pairs = [("_cursor", following.split("_cursor=")[1])]


def run(kind: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-everything-{kind}-") as tmp:
        services = build_services(_settings(kind, args, Path(tmp)))
        upgrade(services.engine)
        loaded = _load(services, args.resources, args.others)
        print(f"{kind}: loaded {2 * (args.resources + args.others) + 101} resources in {loaded:.1f} s")

        def first(*pairs: tuple[str, str]) -> float:
            return _best_of_three(lambda: everything(services.fhir, "p0", list(pairs), _BASE, False, lambda _: True))

        def search(resource_type: str, *pairs: tuple[str, str]) -> float:
            return _best_of_three(lambda: services.fhir.searcher.search(resource_type, list(pairs), _BASE, False))

        print(f"  $everything, first page of 20:              {first(('_count', '20')):8.1f} ms")
        print(f"  $everything, first page, start=2015:        {first(('_count', '20'), ('start', '2015')):8.1f} ms")
        rows, pages, seconds, slowest = _walk(services, [("_count", "1000")])
        print(f"  $everything, all {rows} in {pages} pages of 1000: {seconds:6.1f} s (slowest page {slowest:.0f} ms)")
        rows, pages, seconds, slowest = _walk(services, [("_count", "1000"), ("start", "2015"), ("end", "2020")])
        print(f"  $everything 2015-2020, {rows} in {pages} pages:  {seconds:6.1f} s (slowest page {slowest:.0f} ms)")
        plain = search("Observation", ("subject", "Patient/p0"))
        print(f"  Observation?subject=Patient/p0, first page: {plain:8.1f} ms")
        missing = search("Observation", ("date:missing", "true"), ("_total", "none"))
        print(f"  Observation?date:missing=true, first page:  {missing:8.1f} ms")
        services.engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=20000, help="Observations, and AuditEvents, of the patient")
    parser.add_argument("--others", type=int, default=100000, help="Observations, and AuditEvents, of 100 others")
    parser.add_argument("--only", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"])
    parser.add_argument("--pg-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    for kind in args.only:
        run(kind, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
