"""The conformance suite as a product: against MedAIFlow every case passes
(none skipped), against Orthanc exactly the cases listed in
KNOWN_PEER_DEVIATIONS.md fail, and the command's exit status and reports say
what happened."""

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from conformance.case import Verdict
from conformance.fhir_schema import validate_fhir
from conformance.peers import LocalOrthanc, orthanc_installed
from conformance.runner import FAMILIES, run
from conformance.session import Target
from server.auth.scopes import Role
from server.cli import main
from tests.conftest import admin_headers
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
    # No origin given: Orthanc allows none; and Orthanc offers no UPS-RS worklist, no thumbnails and no pixel data.
    assert skipped == {"DW-CORS-01", "DW-UPS-01", "DW-UPS-02", "DW-UPS-03", "DW-THUMB-01", "DW-PIXELDATA-01"}


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


# --- servers that break one behaviour: each case must fail them ---------------------------------
# Our server in-process, with one request or answer changed: what a case must catch.
Change = Callable[[httpx.Request, Callable[[httpx.Request], httpx.Response]], httpx.Response]


class _Broken(httpx.BaseTransport):
    def __init__(self, client: TestClient, change: Change) -> None:
        self.client, self.change = client, change

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.change(request, self._forward)

    def _forward(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.send(request)
        # The body is decoded here, and a change may alter its length.
        headers = [(name, value) for name, value in answer.headers.multi_items()
                   if name.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)


def _outcomes(services, client, change: Change, *case_ids: str) -> dict[str, tuple[Verdict, str | None]]:  # type: ignore[no-untyped-def]
    token = admin_headers(services)["Authorization"].removeprefix("Bearer ")
    target = Target("http://testserver/dicom-web", "http://testserver/fhir", token=token)
    outcomes = run(target, list(FAMILIES), validate_fhir, case_ids, transport=_Broken(client, change))
    return {outcome.case.id: (outcome.verdict, outcome.reason) for outcome in outcomes}


def _verdicts(*args) -> dict[str, Verdict]:  # type: ignore[no-untyped-def]
    return {case_id: verdict for case_id, (verdict, _) in _outcomes(*args).items()}


def _unchanged(request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]) -> httpx.Response:
    return forward(request)


def _without(*names: str, path_end: str = "") -> Change:
    """Forgets the query parameters `names` (on paths ending `path_end`): a server that ignores them."""
    def change(request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]) -> httpx.Response:
        if request.url.path.endswith(path_end):
            kept = [(name, value) for name, value in request.url.params.multi_items() if name not in names]
            request = httpx.Request(request.method, request.url.copy_with(params=kept), headers=request.headers,
                                    content=request.read())
        return forward(request)
    return change


def _answering(test: Callable[[httpx.Request], bool], rewrite: Callable[[httpx.Response], httpx.Response]) -> Change:
    """Rewrites the answers to the requests `test` picks."""
    def change(request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]) -> httpx.Response:
        answer = forward(request)
        return rewrite(answer) if test(request) else answer
    return change


def _replaced(answer: httpx.Response, status: int | None = None, content: bytes | None = None,
              **headers: str) -> httpx.Response:
    merged = {**dict(answer.headers), **{name.replace("_", "-"): value for name, value in headers.items()}}
    return httpx.Response(status or answer.status_code, headers=merged,
                          content=answer.content if content is None else content)



def _both(first: Change, second: Change) -> Change:
    return lambda request, forward: first(request, lambda inner: second(inner, forward))


def _json_rewrite(rewrite: Callable[[dict], None]) -> Callable[[httpx.Response], httpx.Response]:
    def apply(answer: httpx.Response) -> httpx.Response:
        body = answer.json()
        rewrite(body)
        return _replaced(answer, content=json.dumps(body).encode())
    return apply


def _capability_rewrite(rewrite: Callable[[dict], None]) -> Change:
    """A CapabilityStatement changed by `rewrite` (each declared resource)."""
    def each(body: dict) -> None:
        for rest in body["rest"]:
            for resource in rest["resource"]:
                rewrite(resource)
    return _answering(lambda request: request.url.path.endswith("/metadata"), _json_rewrite(each))


def _is_study_search(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.endswith("/studies")


def _stow_answer(rewrite: Callable[[httpx.Response], httpx.Response]) -> Change:
    return _answering(lambda request: request.method == "POST" and request.url.path.endswith("/studies"), rewrite)


def _with_warning(answer: httpx.Response) -> httpx.Response:
    body = {**answer.json(), "00081196": {"vr": "US", "Value": [0xB000]}}  # Warning Reason: coercion
    return _replaced(answer, 202, json.dumps(body).encode())


def _other_part_type(answer: httpx.Response) -> httpx.Response:
    return _replaced(answer, content=re.sub(rb"Content-Type: application/dicom[^\r\n]*", b"Content-Type: text/html",
                                            answer.content, flags=re.IGNORECASE))


def _first_frame_swapped(request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]) -> httpx.Response:
    if "/frames/1," in request.url.path:
        request = httpx.Request("GET", str(request.url).replace("/frames/1,", "/frames/2,"), headers=request.headers)
    return forward(request)


@pytest.mark.parametrize(("change", "cases", "expected"), [
    # 1, 2: a server that ignores ModalitiesInStudy or PatientName.
    (_without("ModalitiesInStudy", path_end="/studies"), ["DW-QIDO-12"], Verdict.FAIL),
    (_without("PatientName", path_end="/studies"), ["DW-QIDO-02", "DW-QIDO-14"], Verdict.FAIL),
    # 3: no series at all.
    (_answering(lambda request: request.url.path.endswith("/series"),
                lambda answer: _replaced(answer, content=b"[]")), ["DW-QIDO-04"], Verdict.FAIL),
    # 4: frame 2 given for frame 1.
    (_first_frame_swapped, ["DW-FRAMES-01"], Verdict.FAIL),
    # 5: parts that are not what they say, an answer that is not multipart, a STOW answer in text.
    (_answering(lambda request: "/instances/" in request.url.path, _other_part_type), ["DW-WADO-01"], Verdict.FAIL),
    (_answering(lambda request: "/instances/" in request.url.path,
                lambda answer: _replaced(answer, content_type="application/dicom")), ["DW-WADO-01"], Verdict.FAIL),
    (_stow_answer(lambda answer: _replaced(answer, content_type="text/plain")), ["DW-STOW-01"], Verdict.FAIL),
    # 12: garbage in place of the QIDO-RS answer.
    (_answering(lambda request: "q=" in request.headers.get("accept", ""),
                lambda answer: _replaced(answer, content=b"\x00garbage{[")), ["DW-QIDO-08"], Verdict.FAIL),
    # 18: 202 with a warning, every instance referenced: stored, and what follows runs.
    (_stow_answer(_with_warning), ["DW-STOW-01", "DW-QIDO-01"], Verdict.PASS),
    # 11: a DICOMweb case alone stores the study it needs.
    (_unchanged, ["DW-QIDO-01"], Verdict.PASS),
])
def test_dicomweb_cases_catch_a_broken_server(services, client, change, cases, expected):
    verdicts = _outcomes(services, client, change, *cases)
    assert {case_id: verdict for case_id, (verdict, _) in verdicts.items()} == dict.fromkeys(cases, expected), verdicts


def _observations_only(resource: dict) -> None:
    """Only Observation (of which the server holds ten) is declared searchable: it becomes the sample."""
    if resource["type"] != "Observation":
        resource["interaction"] = [item for item in resource.get("interaction", []) if item["code"] != "search-type"]


def _no_next(answer: httpx.Response) -> httpx.Response:
    def drop(body: dict) -> None:
        body["link"] = [link for link in body.get("link", []) if link.get("relation") != "next"]
        body.pop("total", None)
    return _json_rewrite(drop)(answer)


def _status(status: int) -> Callable[[httpx.Response], httpx.Response]:
    return lambda answer: _replaced(answer, status)


def _xml_error(old: bytes, new: bytes) -> Change:
    return _answering(lambda request: "xml" in request.headers.get("accept", ""),
                      lambda answer: _replaced(answer, content=answer.content.replace(old, new)))


def _prefixed(answer: httpx.Response) -> httpx.Response:
    content = answer.content.replace(b'<OperationOutcome xmlns="http://hl7.org/fhir"',
                                     b"<f:OperationOutcome xmlns:f='http://hl7.org/fhir'")
    return _replaced(answer, content=re.sub(rb"<(/?)(?!f:|\?)([A-Za-z])", rb"<\1f:\2", content))


def _without_declared(code: str, **more: str) -> Callable[[dict], None]:
    def rewrite(resource: dict) -> None:
        resource["interaction"] = [item for item in resource.get("interaction", []) if item["code"] != code]
        resource.update(more)
    return rewrite


@pytest.mark.parametrize(("change", "cases", "expected"), [
    # 6: no next link, no total on the pages.
    (_both(_capability_rewrite(_observations_only),
           _answering(lambda request: "_summary" not in str(request.url), _no_next)), ["FH-SEARCH-01"], Verdict.FAIL),
    # 7, 8: _elements and :contains ignored.
    (_without("_elements"), ["FH-SEARCH-03"], Verdict.FAIL),
    (_without("family:contains"), ["FH-SEARCH-07"], Verdict.FAIL),
    # 9: refusals with another code, or the suite's credentials refused.
    (_answering(lambda request: request.method == "POST", _status(403)), ["FH-ERR-01", "FH-WRITE-03"], Verdict.FAIL),
    (_answering(lambda request: request.method == "POST", _status(401)), ["FH-CAP-04"], Verdict.FAIL),
    # 13: DELETE answered 202.
    (_answering(lambda request: request.method == "DELETE",
                lambda answer: _replaced(answer, 202 if answer.status_code < 300 else None)),
     ["FH-WRITE-01"], Verdict.PASS),
    # 14, 15: vread, conditional read and _lastUpdated not declared (and refused) are skipped, not failed.
    (_both(_capability_rewrite(_without_declared("vread", conditionalRead="not-supported")),
           _answering(lambda request: "/_history/" in request.url.path, _status(405))),
     ["FH-READ-02", "FH-READ-03"], Verdict.SKIP),
    (_both(_capability_rewrite(lambda resource: resource.update(
        searchParam=[item for item in resource.get("searchParam", []) if item["name"] != "_lastUpdated"])),
           _answering(lambda request: "_lastUpdated" in str(request.url) and "_sort" not in str(request.url),
                      _status(400))),
     ["FH-SEARCH-04", "FH-SEARCH-09"], Verdict.SKIP),
    # 16: the same XML written otherwise.
    (_xml_error(b'xmlns="http://hl7.org/fhir"', b"xmlns='http://hl7.org/fhir'"), ["FH-ERR-02"], Verdict.PASS),
    (_answering(lambda request: "xml" in request.headers.get("accept", ""), _prefixed), ["FH-ERR-02"], Verdict.PASS),
    # 17: _include and _revinclude ignored.
    (_without("_include"), ["FH-SEARCH-06"], Verdict.FAIL),
    (_without("_revinclude"), ["FH-SEARCH-10"], Verdict.FAIL),
    # $validate that finds nothing wrong, or answers an invalid resource with an error status.
    (_answering(lambda request: "$validate" in request.url.path, _json_rewrite(
        lambda body: body.update(issue=[{"severity": "information", "code": "informational"}]))),
     ["FH-OP-02"], Verdict.FAIL),
    (_answering(lambda request: "$validate" in request.url.path, _status(422)), ["FH-OP-02"], Verdict.FAIL),
    # A patch whose test fails applied anyway (its answer 200), or patch not declared: failed, or skipped.
    (_answering(lambda request: request.method == "PATCH", _status(200)), ["FH-WRITE-08", "FH-WRITE-09"], Verdict.FAIL),
    (_capability_rewrite(_without_declared("patch")), ["FH-WRITE-08", "FH-WRITE-09"], Verdict.SKIP),
    # The whole-system history oldest first, or not declared.
    (_answering(lambda request: request.url.path.endswith("/fhir/_history"),
                _json_rewrite(lambda body: body.update(entry=body.get("entry", [])[::-1]))),
     ["FH-HIST-03"], Verdict.FAIL),
    (_answering(lambda request: request.url.path.endswith("/metadata"), _json_rewrite(
        lambda body: body["rest"][0].update(interaction=[{"code": "batch"}]))), ["FH-HIST-03"], Verdict.SKIP),
])
def test_fhir_cases_catch_a_broken_server(services, client, inferred, change, cases, expected):
    verdicts = _outcomes(services, client, change, *cases)
    assert {case_id: verdict for case_id, (verdict, _) in verdicts.items()} == dict.fromkeys(cases, expected), verdicts


def _without_header(name: str) -> Change:
    def change(request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]) -> httpx.Response:
        headers = {key: value for key, value in request.headers.items() if key.lower() != name.lower()}
        return forward(httpx.Request(request.method, request.url, headers=headers, content=request.read()))
    return change


def test_an_empty_server_still_gets_the_update_and_history_cases_on_a_probe_of_the_suites_own(services, client):
    cases = ("FH-UPDATE-01", "FH-HIST-01", "FH-HIST-02")
    assert _verdicts(services, client, _unchanged, *cases) == dict.fromkeys(cases, Verdict.PASS)
    assert _verdicts(services, client, _without_header("If-Match"), "FH-UPDATE-01") == {"FH-UPDATE-01": Verdict.FAIL}
    assert _probes_left(client) == []


def _probes_left(client: TestClient) -> list[str]:
    found = client.get("/fhir/Task", params={"identifier": "urn:medaiflow:conformance|", "_count": "100"}).json()
    return [entry["resource"]["id"] for entry in found.get("entry", [])]


def _not_atomic(request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]) -> httpx.Response:
    """A transaction whose failing entry leaves the create before it in place."""
    body = json.loads(request.read()) if request.method == "POST" and request.url.path.endswith("/fhir") else {}
    if body.get("type") != "transaction" or len(body.get("entry", [])) < 2:
        return forward(request)
    first = body["entry"][0]
    forward(httpx.Request("POST", f"{request.url}/{first['request']['url']}", json=first["resource"],
                          headers={"Authorization": request.headers["authorization"],
                                   "Content-Type": "application/fhir+json"}))
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "conflict"}]}
    return httpx.Response(409, json=outcome, headers={"Content-Type": "application/fhir+json"})


@pytest.mark.parametrize(("change", "case_id"), [(_not_atomic, "FH-TRANS-01"),
                                                 (_without_header("If-None-Exist"), "FH-WRITE-04")])
def test_a_failing_write_case_leaves_no_probe_behind(services, client, change, case_id):
    assert _verdicts(services, client, change, case_id) == {case_id: Verdict.FAIL}
    assert _probes_left(client) == []


def test_a_run_that_reaches_no_server_or_checks_nothing_does_not_pass(capsys):
    # A DICOMweb case alone stores its study first; where nothing answers, that is its failure.
    assert main(["conformance", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--case", "DW-QIDO-01",
                 "--timeout", "2"]) == 1
    assert "could not be stored" in capsys.readouterr().out
    # Every case skipped (no --origin): nothing was tested.
    assert main(["conformance", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--case", "DW-CORS-01"]) == 2
    assert "nothing was tested" in capsys.readouterr().err


def test_reports_hold_any_answer_as_valid_xml(services, client, tmp_path):
    from conformance.report import write_junit, write_markdown

    control = _answering(lambda request: request.url.path.endswith("/conformance-no-such-id"),
                         lambda answer: _replaced(answer, 500, b'{"x": "\x00\x1b[31m\x0c"}'))
    outcomes = run(Target("http://testserver/dicom-web", "http://testserver/fhir",
                          token=admin_headers(services)["Authorization"].removeprefix("Bearer ")),
                   ["fhir"], validate_fhir, ["FH-READ-04"], transport=_Broken(client, control))
    assert outcomes[0].verdict is Verdict.FAIL
    write_junit(outcomes, tmp_path / "junit.xml")
    write_markdown(outcomes, tmp_path / "report.md", "a server")
    failure = ET.parse(tmp_path / "junit.xml").getroot().find("testcase/failure")
    assert failure is not None and "\\x00" in (failure.text or "")
    assert "\x00" not in (tmp_path / "report.md").read_text()
