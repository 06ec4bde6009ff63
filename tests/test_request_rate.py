"""The configurable per-client request rate: a token bucket per user or
system client; over it, 429 with Retry-After (an OperationOutcome on FHIR, a
JSON message on DICOMweb), recorded in the audit trail, other clients
unaffected."""

import base64

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from server.app import build_services, create_app
from server.auth.limits import RequestRate
from server.auth.scopes import Role
from server.migrate import upgrade
from server.tables import audit_events
from tests.conftest import admin_headers


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate():
    clock = _Clock()
    rate = RequestRate(per_second=2.0, burst=3, clock=clock)
    assert [rate.take("a") for _ in range(3)] == [None, None, None]
    assert rate.take("a") == 1  # half a second until the next token: the whole second is said
    assert rate.take("b") is None  # each client has its own bucket
    clock.now += 0.5
    assert rate.take("a") is None
    assert rate.take("a") == 1
    clock.now += 60
    assert [rate.take("a") for _ in range(4)] == [None, None, None, 1]  # refilled to the burst, no further


def test_a_slow_rate_says_how_long_to_wait():
    clock = _Clock()
    rate = RequestRate(per_second=0.1, burst=1, clock=clock)
    assert rate.take("a") is None
    assert rate.take("a") == 10
    clock.now += 4
    assert rate.take("a") == 6


def test_idle_clients_are_forgotten_when_memory_fills():
    clock = _Clock()
    rate = RequestRate(per_second=1.0, burst=2, clock=clock)
    rate._MEMORY = 3
    for name in ("a", "b", "c"):
        rate.take(name)
    clock.now += 10  # all refilled
    rate.take("d")
    assert set(rate._buckets) == {"d"}


@pytest.mark.parametrize(("per_second", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_a_rate_that_limits_nothing_or_everything_cannot_be_built(per_second, burst):
    with pytest.raises(ValueError):
        RequestRate(per_second, burst)


def test_over_the_rate_a_client_gets_429_and_others_go_on(settings):
    services = build_services(settings.model_copy(update={"requests_per_second": 0.01, "request_burst": 3}))
    upgrade(services.engine)
    services.auth.identities.add_user("viewer", Role.CLINICIAN, "a long viewer password")
    viewer = {"Authorization": "Basic " + base64.b64encode(b"viewer:a long viewer password").decode()}
    try:
        with TestClient(create_app(services=services), headers=admin_headers(services)) as client:
            assert [client.get("/fhir/Patient").status_code for _ in range(3)] == [200, 200, 200]
            refused = client.get("/fhir/Patient")
            assert refused.status_code == 429
            assert refused.json()["resourceType"] == "OperationOutcome"
            assert 1 <= int(refused.headers["retry-after"]) <= 100
            dicomweb = client.get("/dicom-web/studies")
            assert dicomweb.status_code == 429 and "too many requests" in dicomweb.json()["message"]
            assert client.get("/dicom-web/studies", headers=viewer).status_code == 200
            assert client.get("/healthz").status_code == 200  # probes are never limited
        with services.engine.connect() as connection:
            events = connection.execute(select(audit_events.c.event_json)).scalars().all()
        assert len([event for event in events if b"answered 429" in event]) == 2
    finally:
        services.engine.dispose()


def test_token_requests_are_held_to_the_addresss_rate(settings):
    """Every token request costs an Argon2 check, right password or not; the
    token endpoint, needing no credentials, was under no rate at all."""
    services = build_services(settings.model_copy(update={"requests_per_second": 0.01, "request_burst": 3}))
    upgrade(services.engine)
    services.auth.identities.add_user("viewer", Role.CLINICIAN, "a long viewer password")
    form = {"grant_type": "password", "username": "viewer", "password": "a long viewer password"}
    try:
        with TestClient(create_app(services=services)) as client:
            statuses = [client.post("/auth/token", data=form).status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
    finally:
        services.engine.dispose()
