"""The domain core imports no web framework and no server code (STYLE 1, 6, 12).

`dicom/`, `fhir_mappings/` and `inference/` must import in a process where
FastAPI, Starlette, uvicorn and `server` cannot be imported at all; `dicom/`
and `fhir_mappings/` also without SQLAlchemy (queries become SQL in
`server/`) and without torch or MONAI (those stay behind `inference/`).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB_AND_SERVER = ["fastapi", "starlette", "uvicorn", "server"]
HEAVY_OR_DATABASE = ["sqlalchemy", "alembic", "torch", "monai"]
BLOCKED_BY_PACKAGE = {
    "dicom": WEB_AND_SERVER + HEAVY_OR_DATABASE,
    "fhir_mappings": WEB_AND_SERVER + HEAVY_OR_DATABASE,
    "inference": WEB_AND_SERVER,
}

# Runs in a fresh interpreter: a meta path finder refuses the blocked top-level
# names, then every module of the package is imported.
_IMPORT_WITH_BLOCKS = """
import importlib, json, pkgutil, sys

package, blocked = sys.argv[1], set(json.loads(sys.argv[2]))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked in this layering test")
        return None

sys.meta_path.insert(0, Blocker())
root = importlib.import_module(package)
names = [package] + [info.name for info in pkgutil.walk_packages(root.__path__, package + ".")]
for name in names:
    importlib.import_module(name)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in blocked)
print(json.dumps({"imported": names, "loaded_blocked": loaded}))
"""

_SERVER_IMPORT = re.compile(r"^\s*(?:import\s+server\b|from\s+server(?:\.|\s))", re.MULTILINE)


def run_with_blocks(package: str, blocked: list[str]) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_BLOCKS, package, json.dumps(blocked)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("package", sorted(BLOCKED_BY_PACKAGE))
def test_package_imports_without_web_framework_or_server(package: str) -> None:
    outcome = run_with_blocks(package, BLOCKED_BY_PACKAGE[package])
    assert outcome["loaded_blocked"] == []
    modules_on_disk = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / package).rglob("*.py")
    }
    assert set(outcome["imported"]) == modules_on_disk


def test_every_dicom_module_is_covered() -> None:
    """The walk above really reaches the modules STYLE 2 names."""
    outcome = run_with_blocks("dicom", BLOCKED_BY_PACKAGE["dicom"])
    for module in ("json_model", "multipart", "matching", "transfer_syntax", "media_types", "rendering"):
        assert f"dicom.{module}" in outcome["imported"]


def test_blocker_really_blocks() -> None:
    """A package that does import a blocked name fails the check: the test can fail."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_BLOCKS, "server.errors", json.dumps(["fastapi"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    assert "fastapi is blocked" in result.stderr


@pytest.mark.parametrize("package", sorted(BLOCKED_BY_PACKAGE))
def test_no_source_file_mentions_server_imports(package: str) -> None:
    """Also catches imports inside functions, which importing never runs."""
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for match in _SERVER_IMPORT.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_server_import_pattern() -> None:
    assert _SERVER_IMPORT.search("from server.db import make_engine")
    assert _SERVER_IMPORT.search("    import server")
    assert _SERVER_IMPORT.search("from server import health")
    assert not _SERVER_IMPORT.search("from serverless import x")
    assert not _SERVER_IMPORT.search("# the server imports dicom, not the other way")
