"""Audit trail throughput: appends from 16 concurrent writers, and verification.

Run from the repository root:

    .venv/bin/python -m bench.audit_chain [--writers 16] [--events 20000]
        [--only sqlite postgres] [--json results.json]

For each database (a fresh SQLite file; a fresh schema in PostgreSQL's
`test` database), the server's audit recorder (group commit: the events of
concurrent requests share a transaction, each caller waiting until its own
is committed) takes --events BALP AuditEvents from --writers threads (the searchable
FHIR copies wait while the recorder is busy, as in the server). Reported:
appended events/s over the wall time, the mean batch size, the events/s
of a full `verify` (hashes, order, signed checkpoints, head), how fast
the searchable FHIR copies are then written (`catch_up`, 1,000 a
transaction) with their server CPU per event, and the events/s of a
`verify` once they are (which then also holds each copy against its event).

It prints figures; it asserts nothing about speed beyond the chain being
intact. The goal of issue 5: 2,000 appended and 50,000 verified events/s.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--only", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = {database: _run(database, args) for database in args.only}
    print()
    print("| database | appended events/s | mean events per transaction | verified events/s"
          " | searchable copies written/s | their server CPU ms/event | verified events/s, copies too |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for database, result in results.items():
        print(f"| {database} | {result['appended_per_s']:.0f} | {result['mean_batch']:.1f} | {result['verified_per_s']:.0f}"
              f" | {result['projected_per_s']:.0f} | {result['projection_cpu_ms_per_event']:.2f}"
              f" | {result['verified_with_copies_per_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _run(database: str, args: argparse.Namespace) -> dict[str, Any]:
    from fhir_mappings.audit_event import AuditKind, AuditRecord, Outcome, audit_event
    from server.app import build_services
    from server.migrate import upgrade
    from server.settings import Settings

    with tempfile.TemporaryDirectory(prefix="medaiflow-audit-bench-") as directory:
        url, cleanup = _database(database, Path(directory))
        try:
            services = build_services(Settings(data_dir=Path(directory), database_url=url, executor="none",
                                               demo_model=False))
            upgrade(services.engine)
            recorder = services.audit.recorder
            batches: list[int] = []
            original = services.audit.chain.append

            def counting_append(connection: Any, events: Any) -> list[int]:
                batches.append(len(events))
                return original(connection, events)

            services.audit.chain.append = counting_append  # type: ignore[method-assign]
            per_writer = args.events // args.writers

            def writer(number: int) -> None:
                for index in range(per_writer):
                    recorder.record(audit_event(AuditRecord(
                        kind=AuditKind.READ, outcome=Outcome.SUCCESS, recorded=datetime.now(UTC),
                        client=f"bench-{number}", server="medaiflow-bench", client_address="127.0.0.1",
                        resources=[f"ImagingStudy/1.2.3.{number}.{index}"], patients=[f"p{number}"],
                        request_id=f"{number}-{index}",
                    )))

            recorder.start()
            threads = [threading.Thread(target=writer, args=(number,)) for number in range(args.writers)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            appended_s = time.perf_counter() - started
            recorder.stop()
            services.audit.chain.checkpoint()
            started = time.perf_counter()
            verification = services.audit.chain.verify()
            verified_s = time.perf_counter() - started
            started, cpu_started = time.perf_counter(), time.process_time()
            services.audit.chain.catch_up()
            projected_s, projected_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
            # Again with every event projected: verify then also checks each searchable copy against its event.
            started = time.perf_counter()
            with_copies = services.audit.chain.verify()
            verified_with_copies_s = time.perf_counter() - started
            assert verification.intact and with_copies.intact, (verification, with_copies)
            total = per_writer * args.writers
            result = {"events": total, "appended_s": appended_s, "appended_per_s": total / appended_s,
                      "mean_batch": sum(batches) / len(batches), "verified_s": verified_s,
                      "verified_per_s": verification.events / verified_s, "checkpoints": verification.checkpoints,
                      "verified_with_copies_per_s": with_copies.events / verified_with_copies_s,
                      "projected_per_s": total / projected_s, "projection_cpu_ms_per_event": projected_cpu_s / total * 1000}
            print(f"{database}: {result}", flush=True)
            services.engine.dispose()
            return result
        finally:
            cleanup()


def _database(database: str, directory: Path) -> tuple[str, Any]:
    if database == "sqlite":
        return f"sqlite:///{directory / 'bench.sqlite3'}", lambda: None
    schema = f"audit_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))

    def cleanup() -> None:
        with admin.connect() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), cleanup


if __name__ == "__main__":
    raise SystemExit(main())
