"""Fixtures: a server per test on its own database, SQLite by default.

Set MEDAIFLOW_TEST_DATABASE_URL to a PostgreSQL URL to run the whole suite
there instead: each test then gets a schema of its own in that database.
"""

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from server.app import build_services, create_app
from server.migrate import upgrade
from server.services import Services
from server.settings import Settings

POSTGRES_URL = os.environ.get("MEDAIFLOW_TEST_DATABASE_URL")


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if not POSTGRES_URL:
        yield f"sqlite:///{tmp_path / 'index.sqlite3'}"
        return
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    # Named after the schema: a type history waits for the open transactions of its own server only, not for
    # those of the tests that other workers run beside it.
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}", "application_name": schema})
    yield url.render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # No inference machinery unless a test asks for it: no job threads, no demo model.
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, cors_origins="http://viewer.example",
        executor="none", demo_model=False,
    )


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build_services(settings)
    upgrade(built.engine)
    yield built
    built.engine.dispose()


@pytest.fixture
def app(services: Services) -> FastAPI:
    return create_app(services=services)


def admin_headers(services: Services) -> dict[str, str]:
    """An admin's Bearer token, issued directly (no password, so no Argon2 per test)."""
    from server.auth.scopes import Role, role_grant

    token, _ = services.auth.issuer.issue("test-admin", "admin", str(role_grant(Role.ADMIN)), client=False)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(app: FastAPI, services: Services) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://testserver", headers=admin_headers(services)) as test_client:
        yield test_client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """`app` behind a real HTTP server on loopback; its root URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           date_header=False))  # as `serve` runs it: the app stamps Date
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        raise RuntimeError("live server did not start")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def cut_off(url: str, headers: dict[str, str]) -> bytes:
    """What a 200 answer over real HTTP carried before the server closed the
    connection short of its end, as the client sees an answer cut off."""
    received = b""
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            received += chunk
    return received


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[str]:
    """The app behind a real HTTP server on loopback, for real DICOMweb clients."""
    with served(app) as base:
        yield base


@pytest.fixture
def queued(services: Services, client: TestClient) -> tuple[TestClient, Services]:
    """A server whose jobs wait in the queue, with the demo model active."""
    services.jobs.ensure_demo_model()
    return client, services


@pytest.fixture
def fhir(client: TestClient) -> TestClient:
    """The test client, with every FHIR JSON answer checked against the official
    R4 JSON schema (and parsed by the R4 models) as it arrives."""
    from tests.fhir_checks import check_fhir_response

    client.event_hooks["response"].append(check_fhir_response)
    return client
