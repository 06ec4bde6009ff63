"""DICOMweb benchmark: MedAIFlow (SQLite and PostgreSQL) against Orthanc + DICOMweb plugin.

Run from the repository root:

    .venv/bin/python -m bench.dicomweb_vs_orthanc [--studies 10000] [--rounds 3]
        [--only orthanc ours-sqlite ours-postgres] [--json results.json]

All selected servers are started first and idle while another one is being
measured (one request stream at a time, so they do not compete for the CPUs).
The throughput figures are interleaved so that drift in the machine's speed
hits every server alike:

 1. R rounds (--rounds, default 3).  In round r, a fresh CT series r (200 x
    512x512 16-bit slices, Explicit VR LE, new UIDs) goes by STOW-RS in
    requests of 50 instances to each server in turn -> instances/s, MB/s;
    then study r is retrieved by WADO-RS from each server in turn (one
    warm-up, median of --wado-runs runs) -> MB/s.  The server order rotates
    by one each round.  Reported: the median over rounds per server, and the
    median of the per-round ratios ours/orthanc (the robust figure).
 2. Then, one server after the other: load of N one-instance studies by STOW
    (500 per request) -> seconds; QIDO `GET /studies?PatientID=...`
    latency over 50 different patients; and one study of --trickle
    instances (64x64 CT slices) sent an instance per request, as a PACS
    forwards a study it receives -> seconds, and the mean time of the first
    and of the last 100 requests (does a STOW slow down as its study grows?).
 3. Peak RSS of each server process and its children, sampled every 100 ms
    for the whole run.

MedAIFlow runs without its demo model (MEDAIFLOW_DEMO_MODEL=false): Orthanc
runs no models, and an automatic inference job per CT series sent would
compete with the measurements for the CPUs.

MB means 10^6 bytes.  All traffic stays on 127.0.0.1.  This prints figures;
it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import datagen
from conformance.peers import LocalOrthanc, PeerError, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("orthanc", "ours-sqlite", "ours-postgres")
MB = 1e6

ACCEPT_WADO_ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_WADO_PLAIN = 'multipart/related; type="application/dicom"'
ACCEPT_JSON = "application/dicom+json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 30, width: int = 600) -> str:
    """Last `n` lines of a log, each cut to `width` characters (tracebacks come as one JSON line)."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(
            ln if len(ln) <= width else ln[: width // 2] + " ... " + ln[-width // 2 :]
            for ln in lines
        )
    except OSError:
        return ""


# --------------------------------------------------------------------------- RSS


class RssSampler:
    """Samples RSS of a process plus its children every `interval` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.phase = "startup"
        self.phase_peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        try:
            proc = psutil.Process(self.pid)
            procs = [proc] + proc.children(recursive=True)
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.sample()
            self.peak = max(self.peak, rss)
            self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), rss)
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ----------------------------------------------------------------------- servers


class ServerError(RuntimeError):
    pass


class Server:
    name: str
    base_url: str  # DICOMweb root, no trailing slash
    proc: subprocess.Popen | None = None
    log_path: Path
    startup_s: float = 0.0
    auth: tuple[str, str] | None = None  # HTTP Basic, as a PACS sends it

    def _wait_ready(self, url: str, timeout: float) -> None:
        t0 = time.perf_counter()
        deadline = t0 + timeout
        last = ""
        with httpx.Client(timeout=2.0, trust_env=False) as c:
            while time.perf_counter() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"{self.name} exited with code {self.proc.returncode} before it was ready;"
                        f" log tail:\n{tail(self.log_path)}"
                    )
                try:
                    r = c.get(url)
                    if r.status_code == 200:
                        self.startup_s = time.perf_counter() - t0
                        return
                    last = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    last = type(e).__name__
                time.sleep(0.1)
        raise ServerError(
            f"{self.name} not ready at {url} after {timeout:.0f} s ({last});"
            f" log tail:\n{tail(self.log_path)}"
        )

    def _stop_proc(self) -> None:
        stop_process(self.proc)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class OrthancServer(Server):
    name = "orthanc"

    def __init__(self, keep: bool = False) -> None:
        self.peer = LocalOrthanc(keep=keep)
        self.base_url = self.peer.dicomweb
        self.log_path = self.peer.log_path

    def start(self) -> None:
        try:
            self.peer.start()
        except PeerError as error:
            raise ServerError(str(error)) from error
        self.proc = self.peer.process
        self.startup_s = self.peer.startup_s

    def stop(self) -> None:
        self.peer.stop()

    def describe(self) -> dict[str, Any]:
        try:
            system = self.peer.system()
            return {
                "version": system.get("Version"),
                "database_version": system.get("DatabaseVersion"),
                "config": self.peer.config,
            }
        except Exception:  # noqa: BLE001 - purely informative
            return {"config": self.peer.config}


class OursServer(Server):
    def __init__(
        self, variant: str, pg_admin_dsn: str, pg_db: str, keep: bool = False, env: dict[str, str] | None = None
    ) -> None:
        """`env`: settings of this benchmark's own (a DIMSE port, say)."""
        assert variant in ("sqlite", "postgres")
        self.env = env or {}
        self.variant = variant
        self.name = f"ours-{variant}"
        self.keep = keep
        self.pg_admin_dsn = pg_admin_dsn
        self.pg_db = pg_db
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.log_path = self.tmp / "server.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/dicom-web"
        self.db_created = False

    def _pg(self, sql: str) -> None:
        import psycopg2  # only needed for the PostgreSQL variant

        conn = psycopg2.connect(self.pg_admin_dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def start(self) -> None:
        if importlib.util.find_spec("server.cli") is None:
            raise ServerError(
                "server.cli is not importable yet (MedAIFlow server not written);"
                " skipped"
            )
        env = dict(os.environ)
        env.update(
            {
                "MEDAIFLOW_DATA_DIR": str(self.tmp / "data"),
                # The first start creates `admin` with this password.
                "MEDAIFLOW_ADMIN_PASSWORD": "benchmark admin password",
                # The DICOMweb stores are compared: with the demo model active,
                # every CT series sent would start an inference job on these CPUs.
                "MEDAIFLOW_DEMO_MODEL": "false",
            }
        )
        env.update(self.env)
        self.auth = ("admin", "benchmark admin password")
        env.pop("MEDAIFLOW_DATABASE_URL", None)
        if self.variant == "postgres":
            self._pg(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            self._pg(f'CREATE DATABASE "{self.pg_db}"')
            self.db_created = True
            env["MEDAIFLOW_DATABASE_URL"] = (
                f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.pg_db}"
            )
        (self.tmp / "data").mkdir(exist_ok=True)
        with open(
            self.log_path, "wb"
        ) as logf:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        self._wait_ready(f"http://127.0.0.1:{self.port}/readyz", timeout=120)

    def stop(self) -> None:
        self._stop_proc()
        if self.db_created and not self.keep:
            try:
                self._pg(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            except Exception as e:  # noqa: BLE001
                log(f"warning: could not drop database {self.pg_db}: {e}")
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {"variant": self.variant, "python": sys.version.split()[0]}


def basic_authorization(credentials: tuple[str, str] | None) -> dict[str, str]:
    """The header a PACS sends; a header rather than httpx auth, so that curl sends it too."""
    if credentials is None:
        return {}
    token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.contextmanager
def serving(name: str) -> Iterator[tuple[Server, httpx.Client]]:
    """`ours-sqlite` or `orthanc` started, with a client that authenticates as
    a PACS does; stopped on leaving. For the smaller benchmarks beside this one."""
    server: Server = OrthancServer() if name == "orthanc" else OursServer("sqlite", "", "")
    server.start()
    try:
        with httpx.Client(headers=basic_authorization(server.auth), timeout=600, trust_env=False) as client:
            yield server, client
    finally:
        server.stop()


# --------------------------------------------------------------------- workloads


def stow(
    client: httpx.Client, base: str, body: datagen.MultipartBody
) -> dict[str, Any]:
    """POST one multipart body to {base}/studies; returns status and counts from the reply."""
    r = client.post(
        f"{base}/studies",
        content=iter(body),
        headers={
            "Content-Type": body.content_type,
            "Content-Length": str(body.length),
            "Accept": ACCEPT_JSON,
        },
    )
    out: dict[str, Any] = {"status": r.status_code}
    try:
        js = r.json()
        # 00081199 ReferencedSOPSequence, 00081198 FailedSOPSequence
        out["referenced"] = len((js.get("00081199") or {}).get("Value", []))
        out["failed"] = len((js.get("00081198") or {}).get("Value", []))
    except Exception:  # noqa: BLE001 - reply body is informative only
        out["body"] = r.text[:300]
    return out


def check_stow(
    results: list[dict[str, Any]], expected: list[int], what: str
) -> list[str]:
    problems = []
    for i, (res, n) in enumerate(zip(results, expected)):
        if res["status"] != 200:
            problems.append(
                f"{what} request {i}: HTTP {res['status']} {res.get('body', '')}"
            )
        elif res.get("failed"):
            problems.append(f"{what} request {i}: {res['failed']} failed instances")
        elif "referenced" in res and res["referenced"] != n:
            problems.append(
                f"{what} request {i}: {res['referenced']} referenced, {n} sent"
            )
    return problems


def bench_stow_ct(client, base, bodies, ct) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = [stow(client, base, b) for b in bodies]
    dt = time.perf_counter() - t0
    n = len(ct.instances)
    per_req = [
        len(x)
        for x in datagen.batches(ct.instances, (n + len(bodies) - 1) // len(bodies))
    ]
    return {
        "seconds": dt,
        "instances": n,
        "requests": len(bodies),
        "instances_per_s": n / dt,
        "mb_per_s": ct.nbytes / MB / dt,
        "problems": check_stow(results, per_req, "CT STOW"),
        "replies": results,
    }


def wado_once(
    client: httpx.Client, url: str, accept: str
) -> tuple[int, int, float, str]:
    """One whole-study retrieve, read by curl when it is installed.

    A Python client tops out near 350 MB/s on this machine, below what either
    server sends, so it would measure itself; curl reads at over 1 GB/s.
    """
    if shutil.which("curl"):
        credentials = client.headers.get("Authorization")
        result = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--noproxy",
                "*",
                *(["-H", f"Authorization: {credentials}"] if credentials else []),
                "-H",
                f"Accept: {accept}",
                "-H",
                "Accept-Encoding: identity",
                "-w",
                "%{http_code} %{size_download} %{time_total} %{content_type}",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        status, size, seconds, ctype = (result.stdout.split(" ", 3) + [""])[:4]
        return int(status), int(size), float(seconds), ctype
    t0 = time.perf_counter()
    nbytes = 0
    with client.stream("GET", url, headers={"Accept": accept}) as r:
        status = r.status_code
        ctype = r.headers.get("content-type", "")
        for chunk in r.iter_raw(1 << 20):
            nbytes += len(chunk)
    return status, nbytes, time.perf_counter() - t0, ctype


def bench_wado(client, base, ct, runs: int) -> dict[str, Any]:
    url = f"{base}/studies/{ct.study_uid}"
    accept = ACCEPT_WADO_ANY_TS
    note = ""
    status, nbytes, dt, ctype = wado_once(client, url, accept)
    if status != 200:
        note = (
            f"Accept with transfer-syntax=* answered HTTP {status};"
            f" fell back to {ACCEPT_WADO_PLAIN!r}"
        )
        accept = ACCEPT_WADO_PLAIN
    # the probe above doubles as a warm-up; the timed runs follow
    times, sizes, problems = [], [], []
    for _ in range(runs):
        status, nbytes, dt, ctype = wado_once(client, url, accept)
        if status != 200:
            problems.append(f"WADO HTTP {status}")
            continue
        times.append(dt)
        sizes.append(nbytes)
    if sizes and min(sizes) < ct.nbytes * 0.99:
        problems.append(
            f"WADO answered {min(sizes)} bytes, less than the {ct.nbytes} stored"
        )
    out: dict[str, Any] = {
        "accept": accept,
        "note": note,
        "response_content_type": ctype,
        "runs_s": times,
        "bytes": sizes[0] if sizes else None,
        "problems": problems,
    }
    if times:
        med = statistics.median(times)
        out["median_s"] = med
        out["mb_per_s"] = (sizes[0] / MB) / med
        out["dicom_mb_per_s"] = (ct.nbytes / MB) / med
    return out


def bench_load(client, base, bodies, small) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = []
    for i, b in enumerate(bodies):
        results.append(stow(client, base, b))
        if (i + 1) % 5 == 0 or i + 1 == len(bodies):
            log(
                f"  loaded {min((i + 1) * len(small.instances) // len(bodies), len(small.instances))}"
                f"/{len(small.instances)} studies ({time.perf_counter() - t0:.1f} s)"
            )
    dt = time.perf_counter() - t0
    per_req = [
        len(x)
        for x in datagen.batches(
            small.instances, -(-len(small.instances) // len(bodies))
        )
    ]
    return {
        "seconds": dt,
        "studies": len(small.instances),
        "requests": len(bodies),
        "instances_per_s": len(small.instances) / dt,
        "problems": check_stow(results, per_req, "load STOW"),
    }


def bench_trickle(client, base, bodies) -> dict[str, Any]:
    """One study, an instance per STOW request."""
    times, results = [], []
    t0 = time.perf_counter()
    for body in bodies:
        started = time.perf_counter()
        results.append(stow(client, base, body))
        times.append(time.perf_counter() - started)
    return {
        "seconds": time.perf_counter() - t0,
        "instances": len(bodies),
        "first_100_ms": 1000 * statistics.mean(times[:100]),
        "last_100_ms": 1000 * statistics.mean(times[-100:]),
        "problems": check_stow(results, [1] * len(bodies), "instance-by-instance STOW"),
    }


def bench_qido(client, base, small, n_queries: int, seed: int = 7) -> dict[str, Any]:
    rnd = random.Random(seed)
    n = len(small.patient_ids)
    idx = rnd.sample(range(n), min(n, n_queries + 3))
    warm, timed = idx[:3], idx[3:] or idx
    problems: list[str] = []

    def query(i: int) -> float:
        t0 = time.perf_counter()
        r = client.get(
            f"{base}/studies",
            params={"PatientID": small.patient_ids[i]},
            headers={"Accept": ACCEPT_JSON},
        )
        body = r.content
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            problems.append(f"QIDO {small.patient_ids[i]}: HTTP {r.status_code}")
            return dt
        try:
            js = json.loads(body)
            uids = [m.get("0020000D", {}).get("Value", [None])[0] for m in js]
            if uids != [small.study_uids[i]]:
                problems.append(
                    f"QIDO {small.patient_ids[i]}: {len(js)} results, expected 1"
                )
        except Exception as e:  # noqa: BLE001
            problems.append(f"QIDO {small.patient_ids[i]}: unparseable reply ({e})")
        return dt

    for i in warm:
        query(i)
    lat = sorted(query(i) * 1000 for i in timed)
    return {
        "queries": len(lat),
        "median_ms": statistics.median(lat),
        "mean_ms": statistics.fmean(lat),
        "p95_ms": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
        "min_ms": lat[0],
        "max_ms": lat[-1],
        "problems": problems[:20],
        "problem_count": len(problems),
    }


# -------------------------------------------------------------------------- main


class Runner:
    """One server under test, with its RSS sampler and HTTP client, for the whole run."""

    def __init__(self, server: Server, args) -> None:
        self.server = server
        self.name = server.name
        self.out: dict[str, Any] = {
            "server": server.name,
            "loadavg_before": os.getloadavg(),
        }
        self.sampler: RssSampler | None = None
        self.client: httpx.Client | None = None
        self.args = args

    @property
    def ok(self) -> bool:
        return "error" not in self.out and self.client is not None

    def start(self) -> None:
        try:
            log(f"{self.name}: starting")
            self.server.start()
            assert self.server.proc is not None
            self.sampler = RssSampler(self.server.proc.pid).start()
            self.out["startup_s"] = self.server.startup_s
            self.out["describe"] = self.server.describe()
            timeout = httpx.Timeout(
                connect=10,
                read=self.args.http_timeout,
                write=self.args.http_timeout,
                pool=10,
            )
            # identity: Orthanc gzips answers by default when the client allows it
            self.client = httpx.Client(
                timeout=timeout,
                trust_env=False,
                headers={"Accept-Encoding": "identity", **basic_authorization(self.server.auth)},
            )
            self.phase("idle")
            log(
                f"{self.name}: ready in {self.server.startup_s:.2f} s at {self.server.base_url}"
            )
        except Exception as e:  # noqa: BLE001 - one server's failure must not hide the others
            self.fail(e)

    def phase(self, name: str) -> None:
        if self.sampler is not None:
            self.sampler.phase = name

    def fail(self, e: BaseException) -> None:
        self.out["error"] = f"{type(e).__name__}: {e}"
        log(f"{self.name}: ERROR {self.out['error']}")
        if self.server.proc is not None:
            self.out["log_tail"] = tail(self.server.log_path, 15)
            print(
                f"---- {self.name} log tail ({self.server.log_path}) ----\n"
                f"{self.out['log_tail']}\n----",
                flush=True,
            )

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.sampler is not None:
            self.sampler.stop()
            self.out["peak_rss_mb"] = self.sampler.peak / MB
            self.out["peak_rss_mb_by_phase"] = {
                k: v / MB for k, v in self.sampler.phase_peaks.items()
            }
        self.out["loadavg_after"] = os.getloadavg()
        log(f"{self.name}: stopping")
        with contextlib.suppress(Exception):
            self.server.stop()


def run_rounds(runners: list[Runner], data: dict[str, Any], args) -> None:
    """Interleaved CT STOW and WADO: in each round every server gets a fresh CT series.

    Round r: STOW of series r to each server in turn, then WADO of study r from
    each server in turn; the order of servers rotates by one each round.
    """
    for r in range(args.rounds):
        live = [x for x in runners if x.ok]
        if not live:
            return
        k = r % len(live)
        order = live[k:] + live[:k]
        ct, bodies = data["cts"][r], data["ct_bodies"][r]
        log(f"round {r + 1}/{args.rounds}: order {', '.join(x.name for x in order)}")
        for pos, x in enumerate(order):
            if x.ok:
                x.out.setdefault("rounds", []).append({"round": r, "position": pos})
        for x in order:
            _measure_in_round(
                x,
                "stow_ct",
                lambda x, bodies=bodies, ct=ct: bench_stow_ct(
                    x.client, x.server.base_url, bodies, ct
                ),
                lambda s: (
                    f"CT STOW {s['instances_per_s']:.1f} inst/s, {s['mb_per_s']:.1f} MB/s {s['problems'] or ''}"
                ),
            )
        for x in order:
            _measure_in_round(
                x,
                "wado",
                lambda x, ct=ct: bench_wado(
                    x.client, x.server.base_url, ct, args.wado_runs
                ),
                lambda w: (
                    f"WADO {w.get('mb_per_s', float('nan')):.1f} MB/s {w['note']} {w['problems'] or ''}"
                ),
            )


def _measure_in_round(x: Runner, phase: str, measure, describe) -> None:
    """One measurement of one server in the current round, recorded under `phase`."""
    if not x.ok:
        return
    try:
        x.phase(phase)
        result = measure(x)
        x.out["rounds"][-1][phase] = result
        log(f"  {x.name}: {describe(result)}")
    except Exception as e:  # noqa: BLE001 - one server's failure must not hide the others
        x.fail(e)
    finally:
        x.phase("idle")


# (key in the summary, path in one round's record) of the interleaved figures
ROUND_FIGURES = {
    ("stow_ct", "instances_per_s"): ("stow_ct", "instances_per_s"),
    ("stow_ct", "mb_per_s"): ("stow_ct", "mb_per_s"),
    ("wado", "mb_per_s"): ("wado", "mb_per_s"),
}


def summarize_rounds(out: dict[str, Any]) -> None:
    """Medians over rounds into out['stow_ct'] / out['wado'], in the shape the table reads."""
    rounds = out.get("rounds") or []
    stow = {"rounds": len([r for r in rounds if "stow_ct" in r]), "problems": []}
    wado: dict[str, Any] = {
        "rounds": len([r for r in rounds if "wado" in r]),
        "problems": [],
    }
    for rec in rounds:
        for part, agg in (("stow_ct", stow), ("wado", wado)):
            agg["problems"] += [
                f"round {rec['round'] + 1}: {p}"
                for p in (rec.get(part) or {}).get("problems", [])
            ]
    for (part, key), path in ROUND_FIGURES.items():
        vals = [v for v in (dig(rec, path) for rec in rounds) if v is not None]
        agg = stow if part == "stow_ct" else wado
        agg[f"{key}_rounds"] = vals
        if vals:
            agg[key] = statistics.median(vals)
    last_w = next((rec["wado"] for rec in reversed(rounds) if "wado" in rec), None)
    if last_w:
        wado["accept"] = last_w["accept"]
        wado["note"] = last_w["note"]
        wado["response_content_type"] = last_w["response_content_type"]
    if stow["rounds"]:
        out["stow_ct"] = stow
    if wado["rounds"]:
        out["wado"] = wado


def per_round_ratios(
    results: dict[str, dict[str, Any]],
) -> dict[str, dict[str, list[float]]]:
    """{'ours-x/orthanc': {'stow_ct.mb_per_s': [ratio in round 0, ...]}}; rounds missing a side are skipped."""
    out: dict[str, dict[str, list[float]]] = {}
    if "orthanc" not in results:
        return out
    ref = {rec["round"]: rec for rec in results["orthanc"].get("rounds") or []}
    for n, res in results.items():
        if not n.startswith("ours-"):
            continue
        col = out.setdefault(f"{n}/orthanc", {})
        for (part, key), path in ROUND_FIGURES.items():
            ratios = []
            for rec in res.get("rounds") or []:
                a, b = dig(rec, path), dig(ref.get(rec["round"], {}), path)
                if a is not None and b:
                    ratios.append(a / b)
            col[f"{part}.{key}"] = ratios
    return out


def run_load_qido(x: Runner, data: dict[str, Any], args) -> None:
    try:
        x.phase("load_small")
        log(f"{x.name}: loading {len(data['small'].instances)} small studies")
        x.out["load"] = bench_load(
            x.client, x.server.base_url, data["small_bodies"], data["small"]
        )
        ld = x.out["load"]
        log(
            f"{x.name}: load {ld['seconds']:.1f} s ({ld['instances_per_s']:.0f} inst/s)"
            f" {ld['problems'][:3] or ''}"
        )
        x.phase("qido")
        x.out["qido"] = bench_qido(
            x.client, x.server.base_url, data["small"], args.queries
        )
        q = x.out["qido"]
        log(
            f"{x.name}: QIDO median {q['median_ms']:.2f} ms, p95 {q['p95_ms']:.2f} ms"
            f" {q['problems'][:3] or ''}"
        )
        if data["trickle_bodies"]:
            x.phase("trickle")
            x.out["trickle"] = bench_trickle(x.client, x.server.base_url, data["trickle_bodies"])
            t = x.out["trickle"]
            log(
                f"{x.name}: {t['instances']} instances one per STOW in {t['seconds']:.1f} s (first 100"
                f" {t['first_100_ms']:.1f} ms each, last 100 {t['last_100_ms']:.1f} ms) {t['problems'][:3] or ''}"
            )
    except Exception as e:  # noqa: BLE001
        x.fail(e)
    finally:
        x.phase("idle")


# (label, path into the result, better direction, format)
METRICS = [
    ("startup s", ("startup_s",), "lower", "{:.2f}"),
    ("CT STOW instances/s", ("stow_ct", "instances_per_s"), "higher", "{:.1f}"),
    ("CT STOW MB/s", ("stow_ct", "mb_per_s"), "higher", "{:.1f}"),
    ("WADO study MB/s (median)", ("wado", "mb_per_s"), "higher", "{:.1f}"),
    ("load N studies s", ("load", "seconds"), "lower", "{:.1f}"),
    ("load instances/s", ("load", "instances_per_s"), "higher", "{:.1f}"),
    ("QIDO PatientID median ms", ("qido", "median_ms"), "lower", "{:.2f}"),
    ("QIDO PatientID p95 ms", ("qido", "p95_ms"), "lower", "{:.2f}"),
    ("one study, an instance per STOW, s", ("trickle", "seconds"), "lower", "{:.1f}"),
    ("  its first 100 STOWs, ms each", ("trickle", "first_100_ms"), "lower", "{:.1f}"),
    ("  its last 100 STOWs, ms each", ("trickle", "last_100_ms"), "lower", "{:.1f}"),
    ("peak RSS MB", ("peak_rss_mb",), "lower", "{:.0f}"),
]


def dig(d: dict, path: tuple[str, ...]) -> float | None:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) else None


def print_table(
    results: dict[str, dict[str, Any]],
    n_studies: int,
    round_ratios: dict[str, dict[str, list[float]]],
) -> dict[str, dict[str, float]]:
    """Prints the table; for the interleaved metrics the ratio column is the median of per-round ratios."""
    names = list(results)
    ours = [n for n in names if n.startswith("ours-")]
    ratio_cols = [f"{n}/orthanc" for n in ours] if "orthanc" in names else []
    header = ["metric", "better"] + names + ratio_cols
    rows, ratios = [], {c: {} for c in ratio_cols}
    extra: dict[int, str] = {}  # row index -> per-round ratio line printed under it
    for label, path, better, fmt in METRICS:
        label = label.replace("N studies", f"{n_studies} studies")
        in_rounds = path in ROUND_FIGURES
        if in_rounds:
            label += " *"
        row = [label, better]
        # a failed run's figures (e.g. its RSS) are not comparable: only startup and
        # the rounds it completed are shown
        vals = {
            n: dig(results[n], path)
            if ("error" not in results[n] or path == ("startup_s",) or in_rounds)
            else None
            for n in names
        }
        row += [fmt.format(vals[n]) if vals[n] is not None else "-" for n in names]
        parts = []
        for n, c in zip(ours, ratio_cols):
            a, b = vals[n], vals["orthanc"]
            rr = round_ratios.get(c, {}).get(".".join(path), []) if in_rounds else []
            if in_rounds and rr:
                med = statistics.median(rr)
                ratios[c][label.rstrip(" *")] = med
                row.append(f"{med:.2f}x")
                parts.append(f"{c} " + " ".join(f"{v:.2f}" for v in rr))
            elif not in_rounds and a is not None and b:
                ratios[c][label] = a / b
                row.append(f"{a / b:.2f}x")
            else:
                row.append("-")
        if parts:
            extra[len(rows)] = "    per-round ratios: " + "; ".join(parts)
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print()
    print(line)
    print("-" * len(line))
    for i, r in enumerate(rows):
        print(
            "  ".join(
                str(v).ljust(w) if j < 2 else str(v).rjust(w)
                for j, (v, w) in enumerate(zip(r, widths))
            )
        )
        if i in extra:
            print(extra[i])
    print(
        "  * interleaved rounds: server columns are medians over rounds, ratio columns"
        " the median of per-round ratios"
    )
    for n in names:
        res = results[n]
        notes = []
        if "error" in res:
            notes.append(f"error: {res['error'].splitlines()[0]}")
        for part in ("stow_ct", "wado", "load", "qido", "trickle"):
            probs = (res.get(part) or {}).get("problems")
            if probs:
                notes.append(f"{part}: {len(probs)} problem(s), first: {probs[0]}")
        w = res.get("wado") or {}
        if w.get("accept"):
            notes.append(
                f"WADO Accept used: {w['accept']}"
                + (f" ({w['note']})" if w.get("note") else "")
            )
        if "loadavg_before" in res and "loadavg_after" in res:
            notes.append(
                f"1-min load average before/after: {res['loadavg_before'][0]:.2f}"
                f"/{res['loadavg_after'][0]:.2f}"
            )
        for note in notes:
            print(f"  [{n}] {note}")
    print()
    return ratios


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.dicomweb_vs_orthanc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--studies",
        type=int,
        default=10000,
        help="number of one-instance studies indexed for QIDO (default 10000)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=SERVERS,
        default=list(SERVERS),
        help="servers to run (default: all three)",
    )
    p.add_argument("--json", type=Path, help="write the results as JSON to this path")
    p.add_argument("--ct-slices", type=int, default=200)
    p.add_argument("--ct-size", type=int, default=512)
    p.add_argument(
        "--ct-batch", type=int, default=50, help="CT instances per STOW request"
    )
    p.add_argument(
        "--load-batch", type=int, default=500, help="small studies per STOW request"
    )
    p.add_argument("--queries", type=int, default=50, help="QIDO queries timed")
    p.add_argument(
        "--trickle", type=int, default=1000,
        help="instances of the study sent one per STOW request (default 1000; 0 leaves it out)",
    )
    p.add_argument("--wado-runs", type=int, default=3)
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds of CT STOW + WADO, a fresh CT series each (default 3)",
    )
    p.add_argument("--http-timeout", type=float, default=900.0)
    p.add_argument(
        "--pg-admin-dsn",
        default="host=127.0.0.1 port=5432 user=postgres dbname=test",
        help="psycopg2 DSN used to create/drop the benchmark database",
    )
    p.add_argument("--pg-db", default="medaiflow_bench")
    p.add_argument(
        "--keep", action="store_true", help="keep temp dirs / database (debugging)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.trickle < 0:
        raise SystemExit("--trickle must be 0 (left out) or more")
    order = [s for s in SERVERS if s in args.only]

    log(
        f"generating data: {args.rounds} CT series of {args.ct_slices} x {args.ct_size}^2,"
        f" {args.studies} small studies"
    )
    t0 = time.perf_counter()
    # one fresh series (new UIDs) per round, so every round's STOW stores new instances
    cts = [
        datagen.make_ct_series(
            args.ct_slices,
            args.ct_size,
            seed=1234 + r,
            patient_id=f"BENCHCT{r + 1:04d}",
        )
        for r in range(args.rounds)
    ]
    small = datagen.make_small_studies(args.studies)
    trickle = datagen.make_ct_series(args.trickle, 64, seed=4321, patient_id="BENCHTRICKLE") if args.trickle else None
    data = {
        "cts": cts,
        "small": small,
        "ct_bodies": [
            [
                datagen.build_multipart(b)
                for b in datagen.batches(ct.instances, args.ct_batch)
            ]
            for ct in cts
        ],
        "small_bodies": [
            datagen.build_multipart(b)
            for b in datagen.batches(small.instances, args.load_batch)
        ],
        "trickle_bodies": [datagen.build_multipart([b]) for b in trickle.instances] if trickle else [],
    }
    ct = cts[0]
    log(
        f"data ready in {time.perf_counter() - t0:.1f} s: {len(cts)} x CT {len(ct.instances)}"
        f" instances {ct.nbytes / MB:.1f} MB in {len(data['ct_bodies'][0])} requests;"
        f" {len(small.instances)} small studies {small.nbytes / MB:.1f} MB"
        f" in {len(data['small_bodies'])} requests"
    )
    if os.getloadavg()[0] > 0.5:
        log(
            f"warning: 1-min load average is {os.getloadavg()[0]:.2f} before the servers start:"
            " other work on this machine will skew the figures"
        )

    runners: list[Runner] = []
    try:
        # 1. start every server; they idle while the others are measured
        for name in order:
            if name == "orthanc":
                server: Server = OrthancServer(keep=args.keep)
            else:
                server = OursServer(
                    name.split("-", 1)[1], args.pg_admin_dsn, args.pg_db, keep=args.keep
                )
            runner = Runner(server, args)
            runners.append(runner)
            runner.start()
        # 2. interleaved rounds of CT STOW + WADO
        run_rounds(runners, data, args)
        # 3. load + QIDO, one server after the other
        for x in runners:
            if x.ok:
                run_load_qido(x, data, args)
    finally:
        for x in runners:
            x.stop()

    results = {x.name: x.out for x in runners}
    for res in results.values():
        summarize_rounds(res)
    round_ratios = per_round_ratios(results)
    ratios = print_table(results, args.studies, round_ratios)
    if args.json:
        doc = {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "params": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            },
            "data": {
                "ct_series": len(cts),
                "ct_instances": len(ct.instances),
                "ct_bytes": ct.nbytes,
                "ct_requests": len(data["ct_bodies"][0]),
                "ct_study_uids": [c.study_uid for c in cts],
                "small_studies": len(small.instances),
                "small_bytes": small.nbytes,
                "small_requests": len(data["small_bodies"]),
            },
            "units": {"MB": "10^6 bytes"},
            "servers": results,
            "ratios": ratios,
            "per_round_ratios": round_ratios,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
