"""`medaiflow conformance --fresh`: the suite against a MedAIFlow started for
the purpose (`medaiflow serve` in a subprocess, on a free loopback port, with
an empty data folder and a generated admin password), stopped afterwards."""

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from conformance import runner
from conformance.peers import free_port, stop_process

_ORIGIN = "http://conformance.invalid"  # allowed by the fresh server, so that the CORS case runs
_READY_SECONDS = 120


def run_against_fresh_server(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="medaiflow-conformance-") as folder:
        port, password = free_port(), secrets.token_urlsafe(18)
        environment = {
            **os.environ, "MEDAIFLOW_DATA_DIR": str(Path(folder) / "var"), "MEDAIFLOW_DATABASE_URL": "",
            "MEDAIFLOW_HOST": "127.0.0.1", "MEDAIFLOW_PORT": str(port), "MEDAIFLOW_ADMIN_PASSWORD": password,
            "MEDAIFLOW_CORS_ORIGINS": _ORIGIN, "MEDAIFLOW_EXECUTOR": "none", "MEDAIFLOW_DEMO_MODEL": "false",
        }
        log_path = Path(folder) / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=environment, stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            root = f"http://127.0.0.1:{port}"
            if not _ready(root, server):
                print(f"the fresh server did not start; its log:\n{log_path.read_text(errors='replace')[-3000:]}",
                      file=sys.stderr)
                return 2
            args.dicomweb, args.fhir, args.wado_uri = f"{root}/dicom-web", f"{root}/fhir", f"{root}/wado"
            args.user, args.password, args.token, args.origin = "admin", password, None, _ORIGIN
            return runner.main(args)
        finally:
            stop_process(server, grace_seconds=30)


def _ready(root: str, server: "subprocess.Popen[bytes]") -> bool:
    deadline = time.monotonic() + _READY_SECONDS
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{root}/readyz", timeout=2, trust_env=False).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False
