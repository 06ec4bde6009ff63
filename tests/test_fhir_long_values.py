"""Index values longer than their columns (server.tables.INDEX_WIDTH): an
equality search for the whole value finds it, and one for a value that only
starts alike does not."""

from alembic import command
from sqlalchemy import update

from server.migrate import migrating, upgrade
from server.tables import INDEX_WIDTH, equality_key, fhir_tokens

SYSTEM = "urn:example:" + "s" * 300
LONG = "order-" + "7" * 300
ALIKE = LONG[:-1] + "8"  # the same first 305 characters


def _order(fhir, value: str, system: str = SYSTEM) -> str:
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "identifier": [{"system": system, "value": value}]}
    response = fhir.post("/fhir/Task", json=task)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _found(fhir, identifier: str) -> list[str]:
    response = fhir.get("/fhir/Task", params={"identifier": identifier})
    assert response.status_code == 200, response.text
    return [entry["resource"]["id"] for entry in response.json().get("entry", [])]


def test_equality_keys():
    assert equality_key("short") == "short" and equality_key(None) is None
    assert len(equality_key(LONG)) == INDEX_WIDTH
    assert equality_key(LONG) != equality_key(ALIKE)
    assert equality_key(LONG).startswith(LONG[:100])


def test_a_token_longer_than_its_column_is_found_whole_and_only_whole(fhir):
    long_id, alike_id = _order(fhir, LONG), _order(fhir, ALIKE)
    assert _found(fhir, LONG) == [long_id]
    assert _found(fhir, f"{SYSTEM}|{LONG}") == [long_id]
    assert _found(fhir, ALIKE) == [alike_id]
    assert set(_found(fhir, f"{SYSTEM}|")) == {long_id, alike_id}
    assert _found(fhir, LONG[:INDEX_WIDTH]) == []  # the start alone is another value
    assert _found(fhir, f"{SYSTEM[:-1]}|{LONG}") == []


def test_upgrading_indexes_cut_values_again(fhir, services):
    task_id = _order(fhir, LONG)
    with services.engine.begin() as connection:  # as the index held it before revision 0008
        connection.execute(
            update(fhir_tokens).where(fhir_tokens.c.code == equality_key(LONG)).values(code=LONG[:INDEX_WIDTH])
        )
    assert _found(fhir, LONG) == []
    with migrating(services.engine) as config:
        command.downgrade(config, "0007")
    upgrade(services.engine)
    assert _found(fhir, LONG) == [task_id]
