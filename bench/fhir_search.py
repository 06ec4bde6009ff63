"""FHIR read and search throughput on N ImagingStudy resources, SQLite and PostgreSQL.

Run from the repository root:

    .venv/bin/python -m bench.fhir_search [--count 100000] [--only sqlite postgres]
        [--duration 20] [--connections 10] [--profile DIR] [--json results.json]

For each database (a fresh SQLite file in a temp dir; a fresh schema in the
PostgreSQL database `test`):

 1. Load: N ImagingStudy resources (2-4 series of 5-30 instances each, made
    by `fhir_mappings.imaging_study` from generated DICOM records) and their
    Patients (N/10 by default, so a patient has about ten studies) are
    written straight through `ResourceStore.put`, --batch per transaction.
    Reported: the load time (and how much of it went into building and
    validating the resources rather than writing them).  On PostgreSQL the
    tables are then VACUUM ANALYZEd, as autovacuum would soon after a bulk
    load; SQLite gets nothing, as the server itself runs no ANALYZE.
 2. `medaiflow serve` is started on that database on a free port (one
    uvicorn process) and is ready when GET /readyz answers 200.
 3. A sample of every scenario's URLs is checked (status, ids, totals, order).
 4. Throughput: `wrk` (one thread, --connections keep-alive connections,
    --duration s after a short warm-up) cycles through --urls different URLs
    per scenario, from a separate process so the client does not take the
    server's GIL:
      - read:        GET /fhir/ImagingStudy/{id}
      - patient:     GET /fhir/ImagingStudy?patient=Patient/{id}&_count=20
      - lastUpdated: GET /fhir/ImagingStudy?_lastUpdated=gt{instant}&_sort=-_lastUpdated
                     (instants of studies written between 45% and 55% of the
                     load, so about half the studies match; 20 per page, the
                     default, with Bundle.total counted on every such page)
      - lastUpdated-no-total: the same with &_total=none (what the count costs)
    Reported: requests/s, median and p99 latency (wrk's), errors, and the CPU
    milliseconds per request taken by the server process (and its workers),
    by the PostgreSQL backends serving it and by wrk.  Without wrk, a pool of
    httpx client processes stands in.  `--workers 1 2` repeats the scenarios
    for each `serve --workers N`.
 5. Paging: one client follows Bundle.link "next" through
    ImagingStudy?_count=1000 to the end; reported: the time, the pages, and
    the distinct ids seen (which must equal N). Then the same by Bulk Data
    export ($export?_type=ImagingStudy: kick-off, status, the NDJSON file);
    reported: the time, to the manifest and in all, and the ids.
 6. With --profile DIR: each scenario runs again under `py-spy record` on the
    server process; the raw stacks go to DIR and the top functions (own time
    and inclusive time) are printed.

It prints figures and checks the answers; it asserts nothing about speed.
The goal of issue 3 is at least 1,000 reads/s and 300 searches/s on
PostgreSQL on the 2-vCPU machine of RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psutil

from conformance.peers import stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "bench_fhir"
DATABASES = ("sqlite", "postgres")
SCENARIOS = ("read", "patient", "lastUpdated", "lastUpdated-no-total")
FHIR_JSON = "application/fhir+json"
UID_ROOT = "1.2.826.0.1.3680043.8.498.77."  # pydicom's root, a bench-only branch

# modality, SOP class, body parts it is taken of
_MODALITIES = (
    ("CT", "1.2.840.10008.5.1.4.1.1.2", ("CHEST", "ABDOMEN", "HEAD", "PELVIS")),
    ("MR", "1.2.840.10008.5.1.4.1.1.4", ("BRAIN", "KNEE", "PROSTATE", "LIVER")),
    ("CR", "1.2.840.10008.5.1.4.1.1.1", ("CHEST", "KNEE")),
    ("US", "1.2.840.10008.5.1.4.1.1.6.1", ("ABDOMEN", "NECK", "KIDNEY")),
    ("PT", "1.2.840.10008.5.1.4.1.1.128", ("CHEST",)),
)
_SR = ("SR", "1.2.840.10008.5.1.4.1.1.88.22", ())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -------------------------------------------------------------------------- data


class Dataset:
    """N studies over P patients, generated on demand from a seed (same for both databases)."""

    def __init__(self, count: int, patients: int, seed: int) -> None:
        self.count = count
        self.patients = patients
        self.seed = seed
        rng = random.Random(seed)
        self.patient_of = [rng.randrange(patients) for _ in range(count)]
        self.studies_per_patient = collections.Counter(self.patient_of)
        self._patient_ids: dict[int, str] = {}

    def study_uid(self, i: int) -> str:
        return f"{UID_ROOT}{self.seed}.{i + 1}"

    def patient_record(self, k: int) -> Any:
        from fhir_mappings.patient import PatientRecord

        rng = random.Random(f"{self.seed}-patient-{k}")
        return PatientRecord(
            patient_id=f"FHIRBENCH{k:07d}",
            issuer_of_patient_id=None,
            name=f"Bench^Patient{k}^Q",
            birth_date=f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            sex=rng.choice("MFO"),
            study_instance_uid=f"{UID_ROOT}{self.seed}.p{k}",
        )

    def patient_id(self, k: int) -> str:
        if k not in self._patient_ids:
            from fhir_mappings.patient import patient_resource_id

            self._patient_ids[k] = patient_resource_id(self.patient_record(k))
        return self._patient_ids[k]

    def patient_body(self, k: int) -> dict[str, Any]:
        from fhir_mappings.patient import patient_from_dicom

        return patient_from_dicom(self.patient_record(k))

    def study_body(self, i: int) -> dict[str, Any]:
        from fhir_mappings.imaging_study import (
            InstanceRecord,
            SeriesRecord,
            StudyRecord,
            imaging_study_from_dicom,
        )

        rng = random.Random(f"{self.seed}-study-{i}")
        uid = self.study_uid(i)
        modality, sop_class, parts = rng.choice(_MODALITIES)
        part = rng.choice(parts) if parts else None
        series = []
        n_series = rng.randint(2, 4)
        for s in range(n_series):
            m, c, p = (modality, sop_class, part) if s < n_series - 1 or rng.random() < 0.7 else (_SR[0], _SR[1], None)
            series_uid = f"{uid}.{s + 1}"
            instances = tuple(
                InstanceRecord(f"{series_uid}.{n + 1}", c, n + 1) for n in range(rng.randint(5, 30))
            )
            series.append(SeriesRecord(series_uid, s + 1, m, p, f"{m} series {s + 1}", instances))
        record = StudyRecord(
            study_instance_uid=uid,
            accession_number=f"ACC{i + 1:09d}",
            study_date=f"{rng.randint(2010, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            description=f"{modality} {part or ''} study".replace("  ", " "),
            patient_resource_id=self.patient_id(self.patient_of[i]),
            series=tuple(series),
        )
        return imaging_study_from_dicom(record)


# ---------------------------------------------------------------------- databases


@dataclass
class Database:
    kind: str
    url: str
    data_dir: Path
    tmp: Path
    admin_url: str | None = None
    schema: str | None = None
    notes: list[str] = field(default_factory=list)

    def drop(self, keep: bool) -> None:
        if keep:
            log(f"kept {self.tmp}" + (f" and schema {self.schema}" if self.schema else ""))
            return
        if self.schema and self.admin_url:
            from sqlalchemy import create_engine, text

            admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as connection:
                    connection.execute(text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
            except Exception as e:  # noqa: BLE001 - cleanup only
                log(f"warning: could not drop schema {self.schema}: {e}")
            finally:
                admin.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)


def make_database(kind: str, args: argparse.Namespace) -> Database:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-fhir-{kind}-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    if kind == "sqlite":
        return Database(kind, f"sqlite:///{tmp / 'index.sqlite3'}", data_dir, tmp)
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {args.pg_schema} CASCADE"))
            connection.execute(text(f"CREATE SCHEMA {args.pg_schema}"))
    finally:
        admin.dispose()
    url = make_url(args.pg_url).update_query_dict({"options": f"-csearch_path={args.pg_schema}"})
    return Database(
        kind, url.render_as_string(hide_password=False), data_dir, tmp, admin_url=args.pg_url, schema=args.pg_schema
    )


@dataclass
class Loaded:
    seconds: float
    build_seconds: float
    write_seconds: float
    patients_seconds: float
    maintenance_seconds: float
    last_updated: list[int]  # per study, microseconds


_BUILD_DATA: Dataset | None = None  # set before the build pool forks


def _build_studies(span: tuple[int, int]) -> tuple[float, list[tuple[str, bytes]]]:
    """Studies start..stop-1 as (uid, JSON), built in a worker process; and the seconds it took."""
    assert _BUILD_DATA is not None
    t0 = time.perf_counter()
    built = [(_BUILD_DATA.study_uid(i), orjson.dumps(_BUILD_DATA.study_body(i))) for i in range(*span)]
    return time.perf_counter() - t0, built


def load(db: Database, data: Dataset, batch: int, build_workers: int) -> Loaded:
    """Write the Patients, then the ImagingStudies, straight through the store.

    The ImagingStudies are built and validated (about 5 ms each, pydantic) by
    `build_workers` processes while this one writes the previous batch.
    """
    global _BUILD_DATA
    from server.db import write_connection
    from server.migrate import upgrade

    _BUILD_DATA = data
    chunk = 100
    spans = [(start, min(start + chunk, data.count)) for start in range(0, data.count, chunk)]
    # fork before any database connection exists, so no worker inherits one
    pool = multiprocessing.get_context("fork").Pool(build_workers) if build_workers > 0 else None
    from server.app import build_services
    from server.settings import Settings

    services = build_services(Settings(data_dir=db.data_dir, database_url=db.url))
    engine, store = services.engine, services.fhir.store
    last_updated = [0] * data.count
    try:
        upgrade(engine)
        t0 = time.perf_counter()
        for start in range(0, data.patients, batch):
            bodies = [(data.patient_id(k), data.patient_body(k)) for k in range(start, min(start + batch, data.patients))]
            with write_connection(engine) as connection:
                for pid, body in bodies:
                    store.put(connection, body, pid, "PUT")
        patients_s = time.perf_counter() - t0
        log(f"  {data.patients} patients in {patients_s:.1f} s")
        built_iter = pool.imap(_build_studies, spans) if pool else map(_build_studies, spans)
        build_s = write_s = 0.0
        done = 0
        report_every = max(batch, (data.count // 20) // batch * batch)
        pending: list[tuple[str, bytes]] = []
        for n, (seconds, built) in enumerate(built_iter):
            build_s += seconds
            pending += built
            if len(pending) < batch and n < len(spans) - 1:
                continue
            t2 = time.perf_counter()
            with write_connection(engine) as connection:
                for uid, body in pending:
                    last_updated[done] = store.put(connection, orjson.loads(body), uid, "PUT").last_updated
                    done += 1
            write_s += time.perf_counter() - t2
            pending = []
            if done % report_every == 0 or done == data.count:
                elapsed = time.perf_counter() - t0
                log(
                    f"  {done}/{data.count} studies, {elapsed:.1f} s"
                    f" ({done / (elapsed - patients_s):.0f} studies/s; build {build_s:.1f} s of worker time,"
                    f" writes {write_s:.1f} s)"
                )
        seconds = time.perf_counter() - t0
        t4 = time.perf_counter()
        if engine.dialect.name == "postgresql":
            from sqlalchemy import text

            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                tables = connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                ).scalars().all()
                for table in tables:
                    connection.execute(text(f'VACUUM (ANALYZE) "{table}"'))
        maintenance_s = time.perf_counter() - t4
    finally:
        engine.dispose()
        if pool is not None:
            pool.terminate()
            pool.join()
    return Loaded(seconds, build_s, write_s, patients_s, maintenance_s, last_updated)


def table_sizes(db: Database) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db.url)
    try:
        with engine.connect() as connection:
            counts = {
                t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("fhir_resources", "fhir_tokens", "fhir_strings", "fhir_dates", "fhir_references")
            }
            if engine.dialect.name == "postgresql":
                size = connection.execute(
                    text(
                        "SELECT sum(pg_total_relation_size(quote_ident(tablename)))"
                        " FROM pg_tables WHERE schemaname = current_schema()"
                    )
                ).scalar()
            else:
                size = sum(p.stat().st_size for p in db.tmp.glob("index.sqlite3*"))
    finally:
        engine.dispose()
    return {"rows": counts, "bytes": int(size or 0)}


# -------------------------------------------------------------------------- server


# The benchmark's credentials: set once the server is up, read by every client
# (the spawned httpx workers and wrk included).
_AUTHORIZATION = "MEDAIFLOW_BENCH_AUTHORIZATION"
_ADMIN_PASSWORD = "benchmark admin password"


def _headers() -> dict[str, str]:
    return {"Accept": FHIR_JSON, "Authorization": os.environ[_AUTHORIZATION]}


class Server:
    def __init__(self, db: Database, workers: int | None = None) -> None:
        self.db = db
        self.workers = workers
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.log_path = db.tmp / "server.log"
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            {
                "MEDAIFLOW_DATA_DIR": str(self.db.data_dir),
                "MEDAIFLOW_DATABASE_URL": self.db.url,
                "MEDAIFLOW_HOST": "127.0.0.1",
                "MEDAIFLOW_PORT": str(self.port),
                # The first start creates `admin` with this password; tokens outlast the run.
                "MEDAIFLOW_ADMIN_PASSWORD": _ADMIN_PASSWORD,
                "MEDAIFLOW_TOKEN_SECONDS": "3600",
            }
        )
        # what the `medaiflow` console script runs, from this checkout (REPO_ROOT comes first on sys.path)
        command = [sys.executable, "-m", "server.cli"]
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as logf:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [*command, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
                + ([] if self.workers is None else ["--workers", str(self.workers)]),
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        deadline = t0 + 180
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.root}/readyz").status_code == 200:
                        self.startup_s = time.perf_counter() - t0
                        os.environ[_AUTHORIZATION] = self._token(client)
                        return
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after 180 s; log:\n{self.log_tail()}")

    def _token(self, client: httpx.Client) -> str:
        answer = client.post(f"{self.root}/auth/token", data={
            "grant_type": "password", "username": "admin", "password": _ADMIN_PASSWORD}, timeout=30)
        answer.raise_for_status()
        return f"Bearer {answer.json()['access_token']}"

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(line[:400] for line in self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, grace_seconds=30)


# ------------------------------------------------------------------------ scenarios


def scenario_paths(data: Dataset, loaded: Loaded, n_urls: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    studies = rng.sample(range(data.count), min(n_urls, data.count))
    patients = rng.sample(sorted(data.studies_per_patient), min(n_urls, len(data.studies_per_patient)))
    ordered = sorted(loaded.last_updated)
    lo, hi = int(0.45 * data.count), max(int(0.55 * data.count), int(0.45 * data.count) + 1)
    middle = [ordered[j] for j in rng.sample(range(lo, min(hi, data.count)), min(n_urls, min(hi, data.count) - lo))]
    from fhir_mappings.date_ranges import instant_text

    return {
        "read": [f"/fhir/ImagingStudy/{data.study_uid(i)}" for i in studies],
        "patient": [f"/fhir/ImagingStudy?patient=Patient/{data.patient_id(k)}&_count=20" for k in patients],
        "lastUpdated": [
            f"/fhir/ImagingStudy?_lastUpdated={quote('gt' + instant_text(t), safe='')}&_sort=-_lastUpdated"
            for t in middle
        ],
        # The same searches without Bundle.total: what the exact count of
        # ~50,000 matches costs.
        "lastUpdated-no-total": [
            f"/fhir/ImagingStudy?_lastUpdated={quote('gt' + instant_text(t), safe='')}&_sort=-_lastUpdated&_total=none"
            for t in middle
        ],
    }


def check_answers(root: str, data: Dataset, loaded: Loaded, paths: dict[str, list[str]], sample: int) -> list[str]:
    """A sample of each scenario's URLs, checked against what was loaded."""
    import bisect
    from urllib.parse import parse_qs, urlsplit

    from fhir_mappings.date_ranges import date_range

    problems: list[str] = []
    ordered = sorted(loaded.last_updated)
    pid_to_k = {data.patient_id(k): k for k in data.studies_per_patient}
    with httpx.Client(timeout=60, trust_env=False, headers=_headers()) as client:
        for scenario, urls in paths.items():
            for path in urls[:sample]:
                r = client.get(root + path)
                if r.status_code != 200:
                    problems.append(f"{scenario} {path}: HTTP {r.status_code} {r.text[:200]}")
                    continue
                body = r.json()
                if scenario == "read":
                    if body.get("resourceType") != "ImagingStudy" or body.get("id") != path.rsplit("/", 1)[1]:
                        problems.append(f"read {path}: got {body.get('resourceType')}/{body.get('id')}")
                    continue
                entries = [e["resource"] for e in body.get("entry", []) if e.get("search", {}).get("mode") == "match"]
                query = parse_qs(urlsplit(path).query)
                if scenario == "patient":
                    pid = query["patient"][0].split("/", 1)[1]
                    expected = data.studies_per_patient[pid_to_k[pid]]
                    wrong = [e["id"] for e in entries if e["subject"]["reference"] != f"Patient/{pid}"]
                    if body.get("total") != expected or len(entries) != min(20, expected) or wrong:
                        problems.append(
                            f"patient {pid}: total {body.get('total')}, {len(entries)} entries,"
                            f" expected {expected}; {len(wrong)} of another patient"
                        )
                else:
                    since = date_range(query["_lastUpdated"][0][2:])
                    assert since is not None
                    expected = len(ordered) - bisect.bisect_right(ordered, since[0])
                    stamps = [e["meta"]["lastUpdated"] for e in entries]
                    counted = "_total" not in query
                    if (counted and body.get("total") != expected) or len(entries) != min(20, expected):
                        problems.append(
                            f"lastUpdated {query['_lastUpdated'][0]}: total {body.get('total')},"
                            f" {len(entries)} entries, expected {expected}"
                        )
                    if stamps != sorted(stamps, reverse=True) or any(
                        date_range(s)[0] <= since[0] for s in stamps  # type: ignore[index]
                    ):
                        problems.append(f"lastUpdated {query['_lastUpdated'][0]}: order or filter wrong")
    return problems


_WRK_LUA = r"""
local paths = {}
local counter = 0
local threads = {}

setup = function(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

init = function(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    if #line > 0 then paths[#paths + 1] = line end
  end
  f:close()
  -- each thread starts somewhere else in the list
  counter = ((id or 1) * 7919) % #paths
end

request = function()
  counter = counter % #paths + 1
  return wrk.format("GET", paths[counter])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def postgres_cpu(server_pid: int) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving the server's connections, by pid.

    A backend is recognised by the server's local port in its process title
    (`postgres: ... 127.0.0.1(PORT) ...`), so other clients of the same
    PostgreSQL (tests running beside the benchmark) are not counted.
    """
    ports: set[int] = set()
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(server_pid)
        for proc in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                connections = proc.net_connections("tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
                ports.update(c.laddr.port for c in connections if c.raddr and c.raddr.port == 5432)
    out: dict[int, float] = {}
    if not ports:
        return out
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] not in ("postgres", "postmaster"):
            continue
        title = " ".join(proc.info["cmdline"] or ())
        if any(f"({port})" in title for port in ports):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (the workers of `serve --workers N`)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        for proc in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
    return total


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(root: str, paths_file: Path, lua: Path, seconds: float, connections: int, threads: int) -> dict[str, Any]:
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
        "-H", f"Accept: {FHIR_JSON}", "-H", f"Authorization: {os.environ[_AUTHORIZATION]}",
        "-s", str(lua), root, "--", str(paths_file),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            out = json.loads(line[len("WRKJSON "):])
            out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
            out["errors"] = sum(out[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
            return out
    raise RuntimeError(f"wrk printed no result (rc {result.returncode}): {result.stdout[-500:]} {result.stderr[-500:]}")


def _httpx_worker(job: tuple[str, list[str], float, int]) -> tuple[int, int, list[float]]:
    root, paths, seconds, offset = job
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    i = offset
    with httpx.Client(timeout=30, trust_env=False, headers=_headers()) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = client.get(root + paths[i % len(paths)])
            r.read()
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200
            i += 1
    return len(latencies), errors, latencies


def run_httpx(root: str, paths: list[str], seconds: float, connections: int) -> dict[str, Any]:
    """Fallback without wrk: one client process per connection (they compete with the server for CPU)."""
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(connections) as pool:
        results = pool.map(_httpx_worker, [(root, paths, seconds, 7919 * (n + 1)) for n in range(connections)])
    wall = time.perf_counter() - t0
    latencies = sorted(x for _, _, lat in results for x in lat)
    requests = sum(n for n, _, _ in results)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6 if latencies else 0.0

    return {
        "requests": requests,
        "duration_us": seconds * 1e6,
        "rps": requests / seconds,
        "errors": sum(e for _, e, _ in results),
        "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99),
        "mean_us": statistics.fmean(latencies) * 1e6 if latencies else 0.0,
        "max_us": latencies[-1] * 1e6 if latencies else 0.0,
        "wall_s": wall,
    }


def measure(
    server: Server, scenario: str, paths: list[str], workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    paths_file = workdir / f"{scenario}.urls"
    paths_file.write_text("\n".join(paths) + "\n")
    lua = workdir / "rotate.lua"
    lua.write_text(_WRK_LUA)
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    assert server.proc is not None

    def once(seconds: float) -> dict[str, Any]:
        if use_wrk:
            return run_wrk(server.root, paths_file, lua, seconds, args.connections, args.threads)
        return run_httpx(server.root, paths, seconds, args.connections)

    once(args.warmup)
    cpu0 = (process_cpu(server.proc.pid), postgres_cpu(server.proc.pid), children_cpu(), psutil.cpu_times())
    load0 = os.getloadavg()[0]
    out = once(args.duration)
    cpu1 = (process_cpu(server.proc.pid), postgres_cpu(server.proc.pid), children_cpu(), psutil.cpu_times())
    n = max(1, out["requests"])

    def busy(t: Any) -> float:
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    seconds = out["duration_us"] / 1e6
    out.update(
        {
            "client": "wrk" if use_wrk else "httpx",
            "urls": len(paths),
            "server_cpu_ms_per_req": (cpu1[0] - cpu0[0]) * 1000 / n,
            "server_cpu_util": (cpu1[0] - cpu0[0]) / seconds,
            "postgres_cpu_ms_per_req": cpu_delta(cpu0[1], cpu1[1]) * 1000 / n,
            "client_cpu_ms_per_req": (cpu1[2] - cpu0[2]) * 1000 / n,
            "machine_busy_cpus": (busy(cpu1[3]) - busy(cpu0[3])) / seconds,
            "loadavg_before": load0,
        }
    )
    return out


def page_through(root: str, count: int, page_size: int) -> dict[str, Any]:
    ids: set[str] = set()
    entries = pages = 0
    total = None
    first_page_s = 0.0
    url: str | None = f"{root}/fhir/ImagingStudy?_count={page_size}"
    problems: list[str] = []
    t0 = time.perf_counter()
    with httpx.Client(timeout=300, trust_env=False, headers=_headers()) as client:
        while url is not None:
            r = client.get(url)
            if r.status_code != 200:
                problems.append(f"page {pages + 1}: HTTP {r.status_code} {r.text[:200]}")
                break
            body = orjson.loads(r.content)
            pages += 1
            if pages == 1:
                first_page_s = time.perf_counter() - t0
                total = body.get("total")
            for entry in body.get("entry", []):
                if entry.get("search", {}).get("mode") == "match":
                    entries += 1
                    ids.add(entry["resource"]["id"])
            url = next((link["url"] for link in body.get("link", []) if link["relation"] == "next"), None)
            if pages > count // max(1, page_size) + 10:
                problems.append("more pages than there can be; stopped")
                break
    seconds = time.perf_counter() - t0
    if total != count:
        problems.append(f"Bundle.total {total}, expected {count}")
    if len(ids) != count or entries != count:
        problems.append(f"{len(ids)} distinct ids in {entries} entries, expected {count}")
    return {
        "seconds": seconds,
        "first_page_s": first_page_s,
        "pages": pages,
        "entries": entries,
        "distinct_ids": len(ids),
        "total": total,
        "problems": problems,
    }


def export_all(root: str, count: int) -> dict[str, Any]:
    """The same resources by Bulk Data export: kick-off, status polled every
    0.1 s, the one NDJSON file downloaded; what a client that wants them all
    can do instead of paging."""
    problems: list[str] = []
    headers = {**_headers(), "Prefer": "respond-async"}
    t0 = time.perf_counter()
    with httpx.Client(timeout=300, trust_env=False, headers=headers) as client:
        kick_off = client.get(f"{root}/fhir/$export", params={"_type": "ImagingStudy"})
        if kick_off.status_code != 202:
            return {"problems": [f"kick-off: HTTP {kick_off.status_code} {kick_off.text[:200]}"]}
        status = kick_off.headers["Content-Location"]
        while (answer := client.get(status)).status_code == 202:
            time.sleep(0.1)
        written_s = time.perf_counter() - t0
        if answer.status_code != 200:
            return {"problems": [f"status: HTTP {answer.status_code} {answer.text[:200]}"]}
        [output] = answer.json()["output"]
        ndjson = client.get(output["url"]).content
    seconds = time.perf_counter() - t0
    ids = {orjson.loads(line)["id"] for line in ndjson.splitlines()}
    if len(ids) != count or output["count"] != count:
        problems.append(f"{len(ids)} distinct ids, manifest count {output['count']}, expected {count}")
    return {"seconds": seconds, "written_s": written_s, "bytes": len(ndjson), "distinct_ids": len(ids),
            "problems": problems}


# ------------------------------------------------------------------------ profiling


def profile(
    server: Server, scenario: str, paths: list[str], workdir: Path, out_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Run the scenario again under py-spy and summarize the stacks of the server process."""
    py_spy = args.py_spy or shutil.which("py-spy")
    if not py_spy:
        return {"error": "py-spy not found (pip install py-spy, or pass --py-spy PATH)"}
    assert server.proc is not None
    raw = out_dir / f"{server.db.kind}-{scenario}.txt"
    seconds = args.profile_seconds
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(server.proc.pid), "--subprocesses", "--format", "raw", "--rate", "200",
         "--duration", str(int(seconds) + 1), "--nonblocking", "--output", str(raw)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(0.5)
    paths_file = workdir / f"{scenario}.urls"
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    if use_wrk:
        run = run_wrk(server.root, paths_file, workdir / "rotate.lua", seconds, args.connections, args.threads)
    else:
        run = run_httpx(server.root, paths, seconds, args.connections)
    spy_out, _ = spy.communicate(timeout=120)
    if not raw.exists():
        return {"error": f"py-spy wrote nothing: {spy_out[-500:]}"}
    return {"file": str(raw), "rps_under_profiler": run["rps"], **summarize_stacks(raw, args.top)}


def summarize_stacks(raw: Path, top: int) -> dict[str, Any]:
    """Own and inclusive shares per function, over the samples where a thread was working.

    py-spy counts the threadpool's threads waiting for work (anyio's
    WorkerThread in `Queue.get`) as active; those samples are left out and
    counted as `idle_worker_samples`.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if frames[-2:] == ["Queue.get (queue.py)", "Condition.wait (threading.py)"] and any(
            f.startswith("WorkerThread.run ") for f in frames[-3:-2]
        ):
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "samples": total,
        "idle_worker_samples": idle,
        "own": [(f, c / total) for f, c in own.most_common(top)] if total else [],
        "inclusive": [(f, c / total) for f, c in inclusive.most_common(top * 3)] if total else [],
    }


def _short_frame(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module path after site-packages or repo root)` without the line."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", str(REPO_ROOT) + "/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


# ----------------------------------------------------------------------------- main


def machine_info(commit_override: str | None = None) -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "commit": commit_override or ((commit or "unknown") + (" + uncommitted changes" if dirty else "")),
        "date": time.strftime("%Y-%m-%d"),
    }


def run_scenarios(
    server: Server, kind: str, paths: dict[str, list[str]], workdir: Path, into: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    suffix = f" w={server.workers}" if len(args.workers) > 1 else ""
    for scenario in args.scenarios:
        log(f"{kind}: {scenario}{suffix}: {args.warmup:.0f} s warm-up, {args.duration:.0f} s measured, {args.connections} connections")
        res = measure(server, scenario, paths[scenario], workdir, args)
        res["workers"] = server.workers
        into[scenario + suffix] = res
        log(
            f"{kind}: {scenario}{suffix}: {res['rps']:.0f} req/s, median {res['p50_us'] / 1000:.1f} ms,"
            f" p99 {res['p99_us'] / 1000:.1f} ms, errors {res['errors']};"
            f" CPU ms/req server {res['server_cpu_ms_per_req']:.2f}, postgres {res['postgres_cpu_ms_per_req']:.2f},"
            f" client {res['client_cpu_ms_per_req']:.2f}; server at {res['server_cpu_util'] * 100:.0f}% of a CPU,"
            f" machine {res['machine_busy_cpus']:.2f} CPUs busy"
        )


def run_database(kind: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"database": kind}
    db = make_database(kind, args)
    server = Server(db)
    try:
        log(f"{kind}: loading {data.count} ImagingStudy and {data.patients} Patient resources into {db.tmp}")
        loaded = load(db, data, args.batch, args.build_workers)
        out["load"] = {
            "seconds": loaded.seconds,
            "build_seconds": loaded.build_seconds,
            "write_seconds": loaded.write_seconds,
            "patients_seconds": loaded.patients_seconds,
            "vacuum_analyze_seconds": loaded.maintenance_seconds,
            "studies_per_s": data.count / (loaded.seconds - loaded.patients_seconds),
        }
        log(
            f"{kind}: loaded in {loaded.seconds:.1f} s (patients {loaded.patients_seconds:.1f} s, study build"
            f" {loaded.build_seconds:.1f} s of worker time, study writes {loaded.write_seconds:.1f} s)"
            + (f"; VACUUM ANALYZE {loaded.maintenance_seconds:.1f} s" if kind == "postgres" else "")
        )
        out["size"] = table_sizes(db)
        log(f"{kind}: {out['size']['rows']}, {out['size']['bytes'] / 1e6:.0f} MB")
        if args.load_only:
            return out
        settings = args.workers or [None]
        server.workers = settings[0]
        server.start()
        out["startup_s"] = server.startup_s
        log(
            f"{kind}: server ready in {server.startup_s:.1f} s at {server.root} (pid {server.proc.pid}"  # type: ignore[union-attr]
            + ("" if server.workers is None else f", --workers {server.workers}") + ")"
        )
        paths = scenario_paths(data, loaded, args.urls, args.seed)
        problems = check_answers(server.root, data, loaded, paths, args.check)
        out["check_problems"] = problems
        log(f"{kind}: checked {args.check} URLs per scenario: " + ("all right" if not problems else f"{len(problems)} problems"))
        for p in problems[:10]:
            log(f"  problem: {p}")
        workdir = db.tmp / "wrk"
        workdir.mkdir(exist_ok=True)
        out["scenarios"] = {}
        run_scenarios(server, kind, paths, workdir, out["scenarios"], args)
        if not args.no_paging:
            log(f"{kind}: paging through ImagingStudy?_count={args.page_size}")
            out["paging"] = page_through(server.root, data.count, args.page_size)
            pg = out["paging"]
            log(
                f"{kind}: paged {pg['entries']} entries ({pg['distinct_ids']} distinct ids) in {pg['pages']} pages,"
                f" {pg['seconds']:.1f} s (first page {pg['first_page_s']:.2f} s); total {pg['total']}"
                + ("" if not pg["problems"] else f"; PROBLEMS: {pg['problems']}")
            )
            log(f"{kind}: exporting ImagingStudy ($export)")
            out["export"] = export_all(server.root, data.count)
            ex = out["export"]
            log(f"{kind}: exported {ex.get('distinct_ids')} in {ex.get('seconds', 0):.1f} s"
                + ("" if not ex["problems"] else f"; PROBLEMS: {ex['problems']}"))
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            out["profiles"] = {}
            for scenario in args.scenarios:
                log(f"{kind}: {scenario}: {args.profile_seconds:.0f} s under py-spy")
                out["profiles"][scenario] = profile(server, scenario, paths[scenario], workdir, args.profile, args)
        for workers in settings[1:]:
            server.stop()
            server = Server(db, workers)
            server.start()
            log(f"{kind}: server ready in {server.startup_s:.1f} s with --workers {workers}")
            run_scenarios(server, kind, paths, workdir, out["scenarios"], args)
    except Exception as e:  # noqa: BLE001 - report and go on with the other database
        out["error"] = f"{type(e).__name__}: {e}"
        log(f"{kind}: ERROR {out['error']}")
        if server.proc is not None:
            log(f"{kind}: server log tail:\n{server.log_tail()}")
    finally:
        server.stop()
        db.drop(args.keep)
    return out


def print_report(results: list[dict[str, Any]], data: Dataset, args: argparse.Namespace) -> None:
    print()
    print(
        f"FHIR read and search: {data.count} ImagingStudy, {data.patients} Patient;"
        f" {args.connections} connections, {args.duration:.0f} s per scenario"
    )
    for res in results:
        kind = res["database"]
        print()
        print(f"== {kind} ==")
        if "error" in res:
            print(f"ERROR: {res['error']}")
        if "load" in res:
            ld = res["load"]
            print(
                f"load: {ld['seconds']:.1f} s ({ld['studies_per_s']:.0f} studies/s; patients {ld['patients_seconds']:.1f} s,"
                f" study build {ld['build_seconds']:.1f} s of worker time, study writes {ld['write_seconds']:.1f} s)"
                + (f", then VACUUM ANALYZE {ld['vacuum_analyze_seconds']:.1f} s" if kind == "postgres" else "")
            )
        if "size" in res:
            print(f"database: {res['size']['bytes'] / 1e6:.0f} MB; rows {res['size']['rows']}")
        scenarios = res.get("scenarios", {})
        if scenarios:
            print()
            print(
                "| scenario    | req/s  | median ms | p99 ms | errors | server CPU ms/req | postgres CPU ms/req"
                " | wrk CPU ms/req | CPUs busy | load avg before |"
            )
            print(
                "|-------------|-------:|----------:|-------:|-------:|------------------:|--------------------:"
                "|---------------:|----------:|----------------:|"
            )
            for name, s in scenarios.items():
                print(
                    f"| {name:<11} | {s['rps']:6.0f} | {s['p50_us'] / 1000:9.2f} | {s['p99_us'] / 1000:6.2f} |"
                    f" {s['errors']:6d} | {s['server_cpu_ms_per_req']:17.2f} | {s['postgres_cpu_ms_per_req']:19.2f} |"
                    f" {s['client_cpu_ms_per_req']:14.2f} | {s['machine_busy_cpus']:9.2f} | {s['loadavg_before']:15.2f} |"
                )
        if "paging" in res:
            pg = res["paging"]
            print(
                f"\npaging ?_count={args.page_size}: {pg['seconds']:.1f} s for {pg['pages']} pages,"
                f" {pg['distinct_ids']} distinct ids of {data.count} (first page {pg['first_page_s']:.2f} s)"
                + ("" if not pg["problems"] else f"; PROBLEMS: {pg['problems']}")
            )
        if "export" in res:
            ex = res["export"]
            if "seconds" in ex:
                print(
                    f"export $export?_type=ImagingStudy: {ex['seconds']:.1f} s"
                    f" ({ex['written_s']:.1f} s to the manifest),"
                    f" {ex['bytes'] / 1e6:.0f} MB of NDJSON, {ex['distinct_ids']} distinct ids of {data.count}"
                    + ("" if not ex["problems"] else f"; PROBLEMS: {ex['problems']}")
                )
            else:
                print(f"export: PROBLEMS: {ex['problems']}")
        if res.get("check_problems"):
            print(f"answer check problems: {res['check_problems'][:5]}")
        for scenario, prof in res.get("profiles", {}).items():
            print(f"\nprofile {kind} {scenario}:")
            if "error" in prof:
                print(f"  {prof['error']}")
                continue
            print(
                f"  {prof['samples']} samples ({prof.get('idle_worker_samples', 0)} of idle pool threads left out),"
                f" {prof['rps_under_profiler']:.0f} req/s under the profiler; {prof['file']}"
            )
            print("  own time:")
            for frame, share in prof["own"]:
                print(f"    {share * 100:5.1f}%  {frame}")
            print("  inclusive time:")
            for frame, share in prof["inclusive"]:
                print(f"    {share * 100:5.1f}%  {frame}")
    pg = next((r for r in results if r["database"] == "postgres" and r.get("scenarios")), None)
    if pg:
        print()
        for name, s in pg["scenarios"].items():
            goal = 1000 if name.startswith("read") else 300
            what = "reads" if name.startswith("read") else f"{name} searches"
            print(f"goal, PostgreSQL {what} >= {goal}/s: {s['rps']:.0f}/s, {'met' if s['rps'] >= goal else 'NOT met'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.fhir_search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--count", type=int, default=100_000, help="ImagingStudy resources (default 100000)")
    p.add_argument("--patients", type=int, help="Patient resources (default: count / 10)")
    p.add_argument("--only", nargs="+", choices=DATABASES, default=list(DATABASES), help="databases (default both)")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--batch", type=int, default=500, help="resources per write transaction while loading")
    p.add_argument(
        "--build-workers", type=int, default=1,
        help="processes that build the ImagingStudy resources while the loader writes (default 1; 0: inline)",
    )
    p.add_argument("--load-only", action="store_true", help="load, report the load time and the sizes, stop")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per scenario (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per scenario (default 3)")
    p.add_argument("--connections", type=int, default=10, help="concurrent keep-alive connections (default 10)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--workers", type=int, nargs="+", default=[],
        help="pass `serve --workers N`; several values measure the scenarios once per value on the same data"
        " (paging and profiles use the first); default: the server's own default",
    )
    p.add_argument("--urls", type=int, default=2000, help="different URLs per scenario, cycled (default 2000)")
    p.add_argument("--check", type=int, default=20, help="URLs per scenario checked before timing (default 20)")
    p.add_argument("--page-size", type=int, default=1000, help="_count when paging through all (default 1000)")
    p.add_argument("--no-paging", action="store_true", help="skip paging through all resources")
    p.add_argument("--no-wrk", action="store_true", help="use httpx client processes even if wrk is installed")
    p.add_argument("--profile", type=Path, metavar="DIR", help="also run each scenario under py-spy; stacks to DIR")
    p.add_argument("--profile-seconds", type=float, default=15.0)
    p.add_argument("--py-spy", help="path to py-spy (default: found on PATH)")
    p.add_argument("--top", type=int, default=15, help="functions listed per profile (default 15)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--pg-url", default=PG_URL, help=f"PostgreSQL database to use (default {PG_URL})")
    p.add_argument("--pg-schema", default=PG_SCHEMA, help=f"schema created and dropped there (default {PG_SCHEMA})")
    p.add_argument("--commit", help="the commit to report (default: git rev-parse --short HEAD of this checkout)")
    p.add_argument("--json", type=Path, help="write the results as JSON to this path")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs and the schema (debugging)")
    args = p.parse_args(argv)
    if args.patients is None:
        args.patients = max(1, args.count // 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info(args.commit)
    log(f"machine: {info}")
    if os.getloadavg()[0] > 0.5:
        log(f"warning: 1-min load average is {os.getloadavg()[0]:.2f}: other work will skew the figures")
    if shutil.which("wrk") is None and not args.no_wrk:
        log("warning: wrk not found (apt-get install -y wrk); using httpx client processes, which share the CPUs")
    data = Dataset(args.count, args.patients, args.seed)
    results = [run_database(kind, data, args) for kind in DATABASES if kind in args.only]
    print_report(results, data, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
        log(f"wrote {args.json}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
