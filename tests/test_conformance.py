"""The conformance suite as a product: against MedAIFlow every case passes
(none skipped), against Orthanc exactly the cases listed in
KNOWN_PEER_DEVIATIONS.md fail, and the command's exit status and reports say
what happened."""

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conformance.case import Verdict
from conformance.fhir_schema import validate_fhir
from conformance.peers import LocalOrthanc, orthanc_installed
from conformance.runner import FAMILIES, run
from conformance.session import Target
from server.auth.scopes import Role
from server.cli import main
from tests.inference_checks import order, run_queued, stored_study

DEVIATIONS = Path(__file__).resolve().parent.parent / "conformance" / "KNOWN_PEER_DEVIATIONS.md"
ORIGIN = "http://viewer.example"  # allowed by the test settings


def _known_orthanc_failures() -> set[str]:
    text = DEVIATIONS.read_text()
    section = text.split("## Orthanc", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| (DW-[A-Z]+-\d+) \|", section, flags=re.MULTILINE))


@pytest.fixture
def credentials(services) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    services.auth.identities.add_user("tester", Role.ADMIN, "a long conformance password")
    return "tester", "a long conformance password"


@pytest.fixture
def inferred(services, client) -> None:  # type: ignore[no-untyped-def]
    """A study run through the demo model: its Task, report, Observations
    (with quantities) and Device are what the history, update and quantity
    cases need."""
    services.jobs.ensure_demo_model()
    task = order(client, stored_study(client, seed=71))
    run_queued(services, "conformance-test")
    assert client.get(f"/fhir/Task/{task['id']}").json()["status"] == "completed"


def test_every_case_passes_against_medaiflow(live_server, credentials, inferred):
    target = Target(f"{live_server}/dicom-web", f"{live_server}/fhir", *credentials, origin=ORIGIN,
                    wado_uri=f"{live_server}/wado")
    outcomes = run(target, list(FAMILIES), validate_fhir)
    assert len(outcomes) == sum(len(registry.cases) for registry in FAMILIES.values())
    unfinished = {outcome.case.id: outcome.reason for outcome in outcomes if outcome.verdict is not Verdict.PASS}
    assert unfinished == {}


@pytest.mark.skipif(not orthanc_installed(), reason="Debian's orthanc and orthanc-dicomweb are not installed")
def test_orthanc_fails_exactly_the_known_deviations():
    with LocalOrthanc() as orthanc:
        assert orthanc.system()["Version"] == "1.10.1", "KNOWN_PEER_DEVIATIONS.md describes Orthanc 1.10.1"
        outcomes = run(Target(orthanc.dicomweb, None, wado_uri=f"{orthanc.root}/wado"), ["dicomweb"], validate_fhir)
    failed = {outcome.case.id for outcome in outcomes if outcome.verdict is Verdict.FAIL}
    skipped = {outcome.case.id for outcome in outcomes if outcome.verdict is Verdict.SKIP}
    assert failed == _known_orthanc_failures()
    # No origin given: Orthanc allows none; and Orthanc offers no UPS-RS worklist.
    assert skipped == {"DW-CORS-01", "DW-UPS-01", "DW-UPS-02", "DW-UPS-03"}


def test_the_command_reports_and_its_exit_status_says_whether_anything_failed(live_server, credentials, tmp_path, capsys):
    junit, results, markdown = tmp_path / "junit.xml", tmp_path / "results.json", tmp_path / "report.md"
    status = main(["conformance", "--dicomweb", f"{live_server}/dicom-web", "--fhir", f"{live_server}/fhir",
                   "--user", credentials[0], "--password", credentials[1], "--origin", ORIGIN,
                   "--junit", str(junit), "--json", str(results), "--markdown", str(markdown)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "DW-STOW-01" in printed and "PS3.18 10.5.3" in printed and " 0 failed" in printed
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "0" and len(suite.findall("testcase")) == len(json.loads(results.read_text()))
    assert "| FH-READ-01 |" in markdown.read_text()

    # Wrong credentials: every case that needs the server fails, and says what came back.
    status = main(["conformance", "--fhir", f"{live_server}/fhir", "--user", "tester", "--password", "wrong",
                   "--case", "FH-CAP-01", "--case", "FH-READ-04", "--json", str(results)])
    printed = capsys.readouterr().out
    assert status == 1
    reported = {item["id"]: item for item in json.loads(results.read_text())}
    assert reported["FH-READ-04"]["result"] == "fail"
    assert reported["FH-READ-04"]["exchanges"][-1]["status"] == 401
    assert "came back: 401" in printed


def test_credentials_without_the_rights_fail_the_run_instead_of_skipping(live_server, services, tmp_path, capsys):
    services.auth.identities.add_user("scanner", Role.MODALITY, "a long scanner password")  # STOW only
    results = tmp_path / "results.json"
    status = main(["conformance", "--fhir", f"{live_server}/fhir", "--user", "scanner", "--password",
                   "a long scanner password", "--case", "FH-READ-04", "--json", str(results)])
    capsys.readouterr()
    assert status == 1
    [outcome] = json.loads(results.read_text())
    assert outcome["result"] == "fail" and outcome["exchanges"][-1]["status"] == 403


def test_a_run_without_a_server_is_refused(capsys):
    assert main(["conformance"]) == 2
    assert "--dicomweb" in capsys.readouterr().err
    # A family named without its server, or a case no family has: nothing would be tested.
    assert main(["conformance", "--only", "fhir", "--dicomweb", "http://127.0.0.1:9/dicom-web"]) == 2
    assert "--fhir URL" in capsys.readouterr().err
    assert main(["conformance", "--fhir", "http://127.0.0.1:9/fhir", "--case", "NO-SUCH-01"]) == 2
    assert "NO-SUCH-01" in capsys.readouterr().err


def test_the_suite_runs_against_a_fresh_server_of_its_own(tmp_path, capsys):
    report = tmp_path / "report.md"
    assert main(["conformance", "--fresh", "--case", "DW-STOW-01", "--case", "FH-READ-01", "--markdown", str(report)]) == 0
    assert "2 passed, 0 failed, 0 skipped" in report.read_text()
