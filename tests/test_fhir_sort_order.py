"""`_sort` on text orders by code point on both databases, whatever
PostgreSQL's collation: the official image's en_US.utf8 put `_x` before `1`
and `a_b` before `a-b`, where SQLite put them after."""

import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL
from tests.fhir_checks import seed


@pytest.fixture
def database_url(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """On PostgreSQL, a database of its own whose collation is ICU's en-US."""
    if not POSTGRES_URL:
        yield f"sqlite:///{tmp_path / 'index.sqlite3'}"
        return
    name = f"medaiflow_icu_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            " LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"
        ))
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def _sorted(fhir, resource_type: str, key: str, pick) -> list[str]:  # type: ignore[no-untyped-def]
    bundle = fhir.get(f"/fhir/{resource_type}", params={"_sort": key, "_count": "2"}).json()
    found = [pick(entry["resource"]) for entry in bundle["entry"]]
    while (following := next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)):
        bundle = fhir.get(following.removeprefix("http://testserver")).json()
        found += [pick(entry["resource"]) for entry in bundle["entry"]]
    return found


def test_text_sorts_by_code_point_across_pages(fhir, services):
    codes = ["a", "B", "_x", "1"]
    seed(services, *(
        {"resourceType": "Observation", "id": f"o-{code_id}", "status": "final", "code": {"coding": [{"code": code}]}}
        for code_id, code in zip(("a", "b", "c", "d"), codes)
    ))
    seed(services, *(
        {"resourceType": "Patient", "id": patient_id, "name": [{"family": family}]}
        for patient_id, family in (("p-1", "a_b"), ("p-2", "a-b"), ("p-3", "a.b"))
    ))
    expected = sorted(codes)  # Python compares str by code point, as SQLite's BINARY does
    assert expected == ["1", "B", "_x", "a"]
    assert _sorted(fhir, "Observation", "code", lambda resource: resource["code"]["coding"][0]["code"]) == expected
    assert _sorted(fhir, "Observation", "-code", lambda resource: resource["code"]["coding"][0]["code"]) == expected[::-1]
    assert _sorted(fhir, "Patient", "family", lambda resource: resource["name"][0]["family"]) == ["a-b", "a.b", "a_b"]
    assert _sorted(fhir, "Patient", "-_id", lambda resource: resource["id"]) == ["p-3", "p-2", "p-1"]
