"""Totals of `_lastUpdated` searches come from per-second update counts;
they must equal counting the matches, through creates, updates, deletes and
re-creates, for every kind of interval, including ends on bucket edges."""

import random

import pytest
from sqlalchemy import insert, select

from fhir_mappings.date_ranges import instant_text
from server.db import make_engine, write_connection
from server.fhir import update_counts
from server.migrate import upgrade
from server.tables import fhir_resources, fhir_update_counts

TASK = {"resourceType": "Task", "status": "requested", "intent": "order"}


@pytest.fixture
def small_buckets(monkeypatch):
    """Buckets of 2 ms, so that a test's writes span many of them."""
    monkeypatch.setattr(update_counts, "BUCKET_MICROS", 2000)


def _current(services) -> list[int]:
    with services.engine.connect() as connection:
        return connection.execute(
            select(fhir_resources.c.last_updated).where(
                fhir_resources.c.resource_type == "Task", fhir_resources.c.deleted.is_(False))
        ).scalars().all()


def test_totals_equal_counting_after_random_writes(small_buckets, services, fhir):
    store = services.fhir.store
    rng = random.Random(7)
    ids = [f"t{number}" for number in range(60)]
    for _ in range(400):
        resource_id = rng.choice(ids)
        with write_connection(services.engine) as connection:
            if rng.random() < 0.2:
                store.delete(connection, "Task", resource_id)
            else:
                store.put(connection, {**TASK, "id": resource_id}, resource_id, "PUT")
    instants = sorted(_current(services))
    assert instants, "some Tasks are current"
    edges = [instants[0] - 1, instants[0], instants[-1], instants[-1] + 1, *rng.sample(instants, 8)]
    edges += [update_counts.bucket_of(value) for value in edges] + [update_counts.bucket_of(instants[len(instants) // 2]) + 2000]
    for _ in range(60):
        low, high = sorted(rng.sample(edges, 2))
        prefix_low, prefix_high = rng.choice(["gt", "ge"]), rng.choice(["lt", "le"])
        params = [("_lastUpdated", f"{prefix_low}{instant_text(low)}"), ("_lastUpdated", f"{prefix_high}{instant_text(high)}")]
        start = low + 1 if prefix_low == "gt" else low
        stop = high + 1 if prefix_high == "le" else high
        expected = sum(1 for value in instants if start <= value < stop)
        answer = fhir.get("/fhir/Task", params=[*params, ("_summary", "count")]).json()
        assert answer["total"] == expected, (params, expected)
        one_sided = fhir.get("/fhir/Task", params=[params[0], ("_summary", "count")]).json()
        assert one_sided["total"] == sum(1 for value in instants if value >= start), params[0]
    assert fhir.get("/fhir/Task", params={"_summary": "count"}).json()["total"] == len(instants)
    exact = instant_text(instants[3])
    assert fhir.get("/fhir/Task", params={"_lastUpdated": exact, "_summary": "count"}).json()["total"] == (
        sum(1 for value in instants if value == instants[3])
    )


def test_the_first_page_and_count_agree_with_paging(small_buckets, services, fhir):
    store = services.fhir.store
    for number in range(45):
        with write_connection(services.engine) as connection:
            store.put(connection, {**TASK, "id": f"p{number}"}, f"p{number}", "PUT")
    middle = sorted(_current(services))[20]
    page = fhir.get("/fhir/Task", params={"_lastUpdated": f"gt{instant_text(middle)}", "_sort": "-_lastUpdated"}).json()
    assert page["total"] == 24
    seen = [entry["resource"]["id"] for entry in page["entry"]]
    while next_link := next((link["url"] for link in page["link"] if link["relation"] == "next"), None):
        page = fhir.get(next_link.removeprefix("http://testserver")).json()
        seen += [entry["resource"]["id"] for entry in page["entry"]]
    assert len(seen) == len(set(seen)) == 24


def test_the_migration_counts_resources_stored_before_it(database_url, tmp_path):
    engine = make_engine(database_url)
    upgrade(engine, "0003")
    with engine.begin() as connection:
        connection.execute(insert(fhir_resources), [
            {"resource_type": "Task", "resource_id": f"old{n}", "version_id": 1, "last_updated": 5_000_000 + n * 400_000,
             "deleted": n == 4, "resource_json": b"{}"}
            for n in range(5)
        ])
    upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(select(fhir_update_counts).order_by(fhir_update_counts.c.bucket)).all()
    assert [(row.bucket, row.live) for row in rows] == [(5_000_000, 3), (6_000_000, 1)]
    engine.dispose()
