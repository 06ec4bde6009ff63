"""`ResourceStore.put_many`: many resources of one type written as `put`
writes each (versions, history, search index, update counts, the audit's
note of what was written), in as many statements as one of them takes."""

import threading

import pytest
from sqlalchemy import event, select

from server.db import write_connection, written
from server.fhir.preconditions import Preconditions
from server.tables import fhir_dates, fhir_quantities, fhir_references, fhir_resources, fhir_strings, fhir_tokens
from tests.fhir_checks import ids
from tests.round_trips import round_trips

TASK = {"resourceType": "Task", "intent": "order"}


def _task(resource_id: str, status: str, patient: str | None = None) -> tuple[dict, str]:
    task = {**TASK, "id": resource_id, "status": status}
    if patient is not None:
        task["for"] = {"reference": f"Patient/{patient}"}
    return task, resource_id


def _written_after_a_delete(services, created, deleted, writes, **options):  # type: ignore[no-untyped-def]
    """`created` put, the Task `deleted` deleted, then `writes` in one
    `put_many`: the versions it returned, and what it noted as written."""
    store = services.fhir.store
    with write_connection(services.engine) as connection:
        store.put_many(connection, created, "PUT")
    with write_connection(services.engine) as connection:
        store.delete(connection, "Task", deleted)
    with write_connection(services.engine) as connection:
        return store.put_many(connection, writes, "PUT", **options), written(connection)


def test_new_existing_and_deleted_resources_get_their_next_versions(services, fhir):
    stored, noted = _written_after_a_delete(
        services, [_task("pm-old", "requested", "p-old"), _task("pm-gone", "requested")], "pm-gone",
        [_task("pm-new", "ready", "p-new"), _task("pm-old", "in-progress", "p-moved"), _task("pm-gone", "ready")],
    )
    assert [(version.resource_id, version.version_id) for version in stored] == [
        ("pm-new", 1), ("pm-old", 2), ("pm-gone", 3),
    ]
    assert len({version.last_updated for version in stored}) == 3
    # The update names the patient the replaced version belonged to, and the new one.
    assert noted.resources == {"Task/pm-new", "Task/pm-old", "Task/pm-gone"}
    assert noted.patients == {"p-new", "p-old", "p-moved"}

    assert fhir.get("/fhir/Task/pm-old").json()["meta"]["versionId"] == "2"
    history = fhir.get("/fhir/Task/pm-gone/_history").json()
    assert [entry["request"]["method"] for entry in history["entry"]] == ["PUT", "DELETE", "PUT"]
    # The index holds each current version only: the old status is gone, the new one found.
    assert sorted(ids(fhir.get("/fhir/Task", params={"status": "ready"}).json())) == ["pm-gone", "pm-new"]
    assert ids(fhir.get("/fhir/Task", params={"status": "requested"}).json()) == []
    assert ids(fhir.get("/fhir/Task", params={"patient": "p-moved"}).json()) == ["pm-old"]
    assert ids(fhir.get("/fhir/Task", params={"patient": "p-old"}).json()) == []
    # A total of `_lastUpdated` alone comes from the update counts: three current Tasks.
    counted = fhir.get("/fhir/Task", params={"_lastUpdated": "gt2000-01-01", "_summary": "count"}).json()
    assert counted["total"] == 3


def test_unchanged_resources_keep_their_versions_when_asked(services, fhir):
    store = services.fhir.store
    stored, noted = _written_after_a_delete(
        services, [_task("same", "ready", "p-same"), _task("changes", "ready")], "changes",
        [_task("changes", "ready"), _task("same", "ready", "p-same"), _task("fresh", "ready")], skip_unchanged=True,
    )
    # A deleted resource is not "unchanged": it comes back, as do new ones; the same content keeps version 1.
    assert [(version.resource_id, version.version_id) for version in stored] == [
        ("changes", 3), ("same", 1), ("fresh", 1),
    ]
    assert noted.resources == {"Task/changes", "Task/fresh"}
    assert [entry["request"]["method"] for entry in fhir.get("/fhir/Task/same/_history").json()["entry"]] == ["PUT"]
    assert stored[1].body == store.read("Task", "same").body
    with write_connection(services.engine) as connection:
        [changed] = store.put_many(connection, [_task("same", "failed", "p-same")], "PUT", skip_unchanged=True)
    assert changed.version_id == 2
    assert ids(fhir.get("/fhir/Task", params={"status": "failed"}).json()) == ["same"]


def test_only_the_resources_given_new_versions_are_checked(services):
    """A STOW builds its study's Patient again, the same almost always: the
    one kept as it is was checked when written, and is not checked again."""
    store, checked = services.fhir.store, []
    with write_connection(services.engine) as connection:
        store.put_many(connection, [_task("kept", "ready")], "PUT")
    with write_connection(services.engine) as connection:
        store.put_many(connection, [_task("kept", "ready"), _task("new", "ready"), _task("other", "ready")], "PUT",
                       skip_unchanged=True, check=lambda resource: checked.append(resource["id"]))
    assert checked == ["new", "other"]

    def refuse(resource: dict) -> None:
        raise ValueError(f"{resource['id']} refused")

    with pytest.raises(ValueError, match="other refused"), write_connection(services.engine) as connection:
        store.put_many(connection, [_task("other", "failed")], "PUT", skip_unchanged=True, check=refuse)
    assert store.read("Task", "other").version_id == 1  # nothing written


def _statements(services, write) -> int:
    with write_connection(services.engine) as connection, round_trips(connection) as count:
        write(connection)
    return count[0]


def test_many_writes_take_as_many_statements_as_one(services):
    store = services.fhir.store

    def tasks(prefix: str, number: int, status: str) -> list[tuple[dict, str]]:
        return [_task(f"{prefix}-{index}", status, f"{prefix}-patient-{index}") for index in range(number)]

    one_new = _statements(services, lambda connection: store.put_many(connection, tasks("one", 1, "ready"), "PUT"))
    many_new = _statements(services, lambda connection: store.put_many(connection, tasks("many", 40, "ready"), "PUT"))
    assert many_new == one_new
    one_changed = _statements(services, lambda connection: store.put_many(connection, tasks("one", 1, "failed"), "PUT"))
    many_changed = _statements(
        services, lambda connection: store.put_many(connection, tasks("many", 40, "failed"), "PUT"))
    assert many_changed == one_changed


def test_one_type_each_resource_once_and_preconditions_for_one(services):
    store = services.fhir.store
    with write_connection(services.engine) as connection:
        with pytest.raises(ValueError):
            store.put_many(connection, [_task("mixed", "ready"), ({"resourceType": "Patient"}, "mixed-p")], "PUT")
        with pytest.raises(ValueError):
            store.put_many(connection, [_task("twice", "ready"), _task("twice", "failed")], "PUT")
        with pytest.raises(ValueError):
            store.put_many(connection, [_task("a", "ready"), _task("b", "ready")], "PUT", Preconditions(frozenset({1})))


def test_a_create_that_loses_its_race_is_a_later_version(services):
    """Two writers create one new resource; the one whose insert finds the
    other's row updates it, as version 2, later than version 1."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite writers take turns: their creates cannot race")
    store = services.fhir.store

    def rival() -> None:
        with write_connection(services.engine) as connection:
            store.put(connection, *_task("raced", "ready"), "PUT")

    rival_ran = threading.Event()
    with write_connection(services.engine) as connection:
        def before_insert(*args: object) -> None:
            statement = args[2]
            if isinstance(statement, str) and statement.startswith("INSERT INTO fhir_resources") \
                    and not rival_ran.is_set():
                rival_ran.set()
                thread = threading.Thread(target=rival)
                thread.start()
                thread.join(30)

        event.listen(connection, "before_cursor_execute", before_insert)
        late = store.put(connection, *_task("raced", "failed"), "PUT")
    assert rival_ran.is_set()
    first = store.vread("Task", "raced", 1)
    assert late.version_id == 2 and late.last_updated > first.last_updated
    assert store.read("Task", "raced").version_id == 2


def _index_of(connection, pk: int) -> dict[str, set[tuple]]:  # type: ignore[no-untyped-def]
    """Every search-index row of one resource, by table, without its pk."""
    return {
        table.name: {tuple(row[1:]) for row in connection.execute(select(table).where(table.c.resource_pk == pk))}
        for table in (fhir_tokens, fhir_strings, fhir_dates, fhir_references, fhir_quantities)
    }


_OBSERVATION = {
    "resourceType": "Observation", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "1-1"}]},
    "subject": {"reference": "Patient/p-1"}, "effectiveDateTime": "2024-01-15",
    "valueQuantity": {"value": 5.4, "system": "http://unitsofmeasure.org", "code": "mg"},
}


@pytest.mark.parametrize("change", ["gains values", "loses values", "changes values", "keeps its values"])
def test_an_update_leaves_the_index_a_first_version_would_have(services, change):
    """Updates change only the index rows that differ (`_reindex`); what they
    leave is what writing the new version afresh gives, in every table."""
    later = {
        "gains values": {**_OBSERVATION, "category": [{"coding": [{"code": "laboratory"}]}],
                         "performer": [{"reference": "Practitioner/pr-1"}]},
        "loses values": {key: value for key, value in _OBSERVATION.items() if key not in ("valueQuantity", "subject")},
        "changes values": {**_OBSERVATION, "status": "amended", "effectiveDateTime": "2024-02-01",
                           "valueQuantity": {**_OBSERVATION["valueQuantity"], "value": 6.1}},
        "keeps its values": {**_OBSERVATION, "text": {"status": "generated", "div": "<div>5.4 mg</div>"}},
    }[change]
    store = services.fhir.store
    with write_connection(services.engine) as connection:
        store.put(connection, _OBSERVATION, "updated", "PUT")
        store.put(connection, later, "fresh", "PUT")
    with write_connection(services.engine) as connection:
        store.put(connection, later, "updated", "PUT")
    with write_connection(services.engine) as connection:
        pks = dict(connection.execute(select(fhir_resources.c.resource_id, fhir_resources.c.id).where(
            fhir_resources.c.resource_id.in_(["updated", "fresh"]))).all())
        updated, fresh = _index_of(connection, pks["updated"]), _index_of(connection, pks["fresh"])
    assert updated == fresh
    assert updated["fhir_tokens"] and updated["fhir_dates"]
