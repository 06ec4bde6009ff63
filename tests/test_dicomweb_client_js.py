"""The npm dicomweb-client (JavaScript, as viewers use it) stores, searches and
retrieves against MedAIFlow over HTTP; what it retrieves is what it stored."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import admin_headers
from tests.dicom_files import make_ct

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO / ".cache" / "js-peers" / "node_modules"
CHECK = Path(__file__).resolve().parent / "js" / "dicomweb_client_check.js"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def test_the_javascript_dicomweb_client_stores_searches_and_retrieves(live_server, services, tmp_path):
    if not (NODE_MODULES / "dicomweb-client").is_dir():
        pytest.fail(f"the npm dicomweb-client is not installed under {NODE_MODULES}: run `make test`")
    files = []
    for number in range(3):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(make_ct(study_uid="1.2.826.0.1.3680043.99.1", PatientID="JS-CLIENT", InstanceNumber=number + 1))
        files.append(path)
    token = admin_headers(services)["Authorization"].removeprefix("Bearer ")
    result = subprocess.run(
        ["node", str(CHECK), f"{live_server}/dicom-web", token, "JS-CLIENT", *map(str, files)],
        check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["studies"] == ["1.2.826.0.1.3680043.99.1"]
    stored = {hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    assert set(seen["stored"]) == stored
    assert {item["sha256"] for item in seen["retrieved"]} == stored  # byte for byte what was stored
