"""The deployment files stay valid: docker-compose.yml parses, the layout is as documented."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_file_is_accepted():
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (.ci/run installs the latter)")
    result = subprocess.run([*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_top_level_layout_matches_the_readme():
    for folder in ("server", "dicom", "fhir_mappings", "inference", "conformance", "tests", "bench"):
        assert (ROOT / folder).is_dir(), folder
    for file in ("pyproject.toml", "docker-compose.yml", "README.md", "Makefile", ".ci/run"):
        assert (ROOT / file).is_file(), file
