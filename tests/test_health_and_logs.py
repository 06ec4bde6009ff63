"""Probes, request logs and request ids.

The request log is one JSON line per request with the route template and
never the query string: QIDO queries carry patient names and ids.
"""

import dataclasses
import io
import json
import logging
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import create_app
from server.db import make_engine
from server.logs import JsonFormatter, configure_logging, request_id_var
from server.services import Services
from tests.conftest import admin_headers
from tests.dicom_files import make_ct, multipart_body

SECRET_PATIENT_ID = "PID-SECRET-4711"
SECRET_NAME = "Geheim^Berta"
REQUEST_FIELDS = {"time", "level", "logger", "message", "request_id", "method", "route", "status", "duration_ms"}


@pytest.fixture
def request_log() -> Iterator[io.StringIO]:
    """Lines of the `medaiflow.request` logger, formatted as in production."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("medaiflow.request")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def production_logging() -> Iterator[io.StringIO]:
    """`configure_logging` as `medaiflow serve` runs it, undone afterwards;
    its stderr handler is pointed at the returned buffer."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "pynetdicom"]
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
    configure_logging("DEBUG")
    [handler] = logging.getLogger().handlers
    output = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(output)
    yield output
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def test_pynetdicom_logs_each_message_only_at_debug(production_logging: io.StringIO) -> None:
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.DEBUG  # the fixture asked for DEBUG
    configure_logging("INFO")
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("server.dimse.scp").getEffectiveLevel() == logging.INFO


# --- probes ------------------------------------------------------------------
def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_readyz_ready(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}


def test_readyz_storage_removed(client: TestClient, services: Services) -> None:
    shutil.rmtree(services.store.root)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "checks": {"database": "ok", "storage": "storage or its temp folder missing or not writable"}}


def test_readyz_temp_folder_removed(client: TestClient, services: Services) -> None:
    """Every STOW payload lands in tmp/ first: without it nothing can be stored."""
    shutil.rmtree(services.store.temp_root)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] == "storage or its temp folder missing or not writable"


def test_readyz_database_unreachable(services: Services) -> None:
    # Port 1 on loopback refuses at once, so the probe answers quickly.
    unreachable = make_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none?connect_timeout=2")
    app = create_app(services=dataclasses.replace(services, engine=unreachable))
    with TestClient(app) as client:
        response = client.get("/readyz")
    unreachable.dispose()
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "unreachable: OperationalError", "storage": "ok"}


# --- request log ---------------------------------------------------------------
def test_one_json_line_per_request(client: TestClient, request_log: io.StringIO) -> None:
    body, content_type = multipart_body([make_ct()])
    answers = [
        client.get("/healthz"),
        client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}),
        client.get("/dicom-web/studies/1.2.3/series", params={"Modality": "CT"}),
        client.get("/dicom-web/studies/1.2.3/series/4.5/instances/6.7/bulkdata/00540016/0/00181072"),
        client.get("/no/such/route"),
    ]

    logged = lines(request_log)
    assert len(logged) == len(answers)
    for entry, answer in zip(logged, answers, strict=True):
        assert set(entry) == REQUEST_FIELDS
        assert entry["logger"] == "medaiflow.request"
        assert entry["request_id"] == answer.headers["x-request-id"]
        assert entry["status"] == answer.status_code
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    assert [(entry["method"], entry["route"]) for entry in logged] == [
        ("GET", "/healthz"),
        ("POST", "/dicom-web/studies"),
        ("GET", "/dicom-web/studies/{study}/series"),
        ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path}"),
        ("GET", "(unrouted)"),
    ]
    assert [entry["status"] for entry in logged] == [200, 200, 200, 404, 404]


def test_query_values_never_reach_the_logs(
    live_server: str, production_logging: io.StringIO, services: Services
) -> None:
    """Everything the server logs at DEBUG, uvicorn and SQLAlchemy included, while
    a patient is stored and searched for by id and name (urllib: a client that logs nothing)."""
    authorization = admin_headers(services)
    body, content_type = multipart_body([make_ct(PatientID=SECRET_PATIENT_ID, PatientName=SECRET_NAME)])
    stow = urllib.request.Request(
        live_server + "/dicom-web/studies", data=body, headers={"Content-Type": content_type, **authorization},
        method="POST",
    )
    assert urllib.request.urlopen(stow, timeout=30).status == 200
    for query in (
        f"studies?PatientID={SECRET_PATIENT_ID}&PatientName={SECRET_NAME}",
        f"series?PatientName=geheim*&fuzzymatching=true&PatientID={SECRET_PATIENT_ID}",
        f"instances?PatientID={SECRET_PATIENT_ID}&includefield=PatientName",
    ):
        search = urllib.request.Request(f"{live_server}/dicom-web/{query}", headers=authorization)
        with urllib.request.urlopen(search, timeout=30) as answer:
            assert SECRET_PATIENT_ID in answer.read().decode()  # found, so the value went through the server
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(
            f"{live_server}/dicom-web/studies?PatientID={SECRET_PATIENT_ID}&StudyDate=soon", headers=authorization))
    assert refused.value.code == 400

    output = production_logging.getvalue()
    logged = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    requests = [entry for entry in logged if entry["logger"] == "medaiflow.request"]
    assert [entry["status"] for entry in requests] == [200, 200, 200, 200, 400]
    for secret in (SECRET_PATIENT_ID, SECRET_NAME, "Geheim", "geheim"):
        assert secret not in output


# --- request ids ---------------------------------------------------------------
@pytest.mark.parametrize("sane", ["abc-1", "trace.2024_11-27", "A" * 64])
def test_sane_client_request_id_is_kept(client: TestClient, request_log: io.StringIO, sane: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": sane})
    assert response.headers["x-request-id"] == sane
    assert lines(request_log)[0]["request_id"] == sane


@pytest.mark.parametrize(
    "insane",
    ["", "A" * 65, "has space", "semi;colon", "new\tline", "<script>", "../../etc/passwd", "ünïcode"],
)
def test_insane_client_request_id_is_replaced(client: TestClient, request_log: io.StringIO, insane: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": insane.encode("utf-8")})
    generated = response.headers["x-request-id"]
    assert generated != insane
    assert len(generated) == 16 and all(char in "0123456789abcdef" for char in generated)
    assert lines(request_log)[0]["request_id"] == generated


def test_each_request_gets_its_own_id(client: TestClient) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_request_id_does_not_outlive_the_request(client: TestClient) -> None:
    client.get("/healthz")
    assert request_id_var.get() is None


# --- unhandled errors ----------------------------------------------------------
@pytest.fixture
def failing_app(app: FastAPI, services: Services) -> FastAPI:
    def fail() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/fail", fail)
    app.state.test_headers = admin_headers(services)
    return app


def test_unhandled_error_is_logged_with_the_request_id(failing_app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    formatter = JsonFormatter()
    formatted: list[dict] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            formatted.append(json.loads(formatter.format(record)))

    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        with TestClient(failing_app, raise_server_exceptions=False, headers=failing_app.state.test_headers) as client:
            response = client.get("/fail", headers={"X-Request-ID": "bug-report-1"})
    finally:
        logging.getLogger().removeHandler(capture)

    assert response.status_code == 500
    [request_line] = [entry for entry in formatted if entry["logger"] == "medaiflow.request"]
    assert (request_line["route"], request_line["status"], request_line["request_id"]) == ("/fail", 500, "bug-report-1")
    [error_line] = [entry for entry in formatted if entry["level"] == "ERROR"]
    assert error_line["request_id"] == "bug-report-1"
    assert "RuntimeError: a bug" in error_line["exception"]


def test_unhandled_error_answer_carries_the_request_id(failing_app: FastAPI) -> None:
    with TestClient(failing_app, raise_server_exceptions=False, headers=failing_app.state.test_headers) as client:
        response = client.get("/fail", headers={"X-Request-ID": "bug-report-2"})
    assert response.status_code == 500
    assert response.headers.get("x-request-id") == "bug-report-2"


def test_a_request_that_fails_with_a_500_is_still_audited(failing_app: FastAPI, services: Services) -> None:
    with TestClient(failing_app, raise_server_exceptions=False, headers=failing_app.state.test_headers) as client:
        assert client.get("/fail").status_code == 500
        services.audit.chain.project()
        events = client.get("/fhir/AuditEvent", params={"outcome": "8"}).json().get("entry", [])
    assert [entry["resource"]["outcomeDesc"] for entry in events] == ["GET /fail answered 500: the server failed"]
