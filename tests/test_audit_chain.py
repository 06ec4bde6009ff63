"""The hash-chained audit trail on the real database (SQLite, or PostgreSQL
with MEDAIFLOW_TEST_DATABASE_URL): appends, tampering with the stored rows
directly (each kind detected, at the right sequence number), concurrent
appends from 16 writers, rollback, and verification from the CLI and FHIR."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import delete, select, text, update

from fhir_mappings.audit_event import AuditKind, AuditRecord, Outcome, audit_event
from server.audit.chain import CHAIN_EXTENSION
from server.cli import main
from server.db import write_connection
from server.tables import audit_checkpoints, audit_events, audit_head


def _event(number: int, kind: AuditKind = AuditKind.READ) -> dict:
    return audit_event(AuditRecord(
        kind=kind, outcome=Outcome.SUCCESS, recorded=datetime.now(UTC), client=f"user-{number}", server="medaiflow-test",
        client_address="127.0.0.1", resources=[f"ImagingStudy/1.2.{number}"], patients=["p1"], request_id=f"r{number}",
    ))


def _append(services, count: int, start: int = 0) -> list[int]:
    with write_connection(services.engine) as connection:
        return services.audit.chain.append(connection, [_event(start + number) for number in range(count)])


def _verify(services):
    return services.audit.chain.verify()


def test_events_are_chained_and_served_as_audit_events(services, fhir):
    assert _append(services, 3) == [1, 2, 3]
    assert services.audit.recorder.record(_event(9, AuditKind.SEARCH)) == 4
    services.audit.chain.project()  # the searchable copies follow the chain (the recorder's thread does this too)
    verification = _verify(services)
    assert verification.intact and verification.events == 4
    event = fhir.get("/fhir/AuditEvent/4").json()
    assert event["subtype"][0]["code"] == "search-type" and event["action"] == "E"
    chain = next(extension for extension in event["extension"] if extension["url"] == CHAIN_EXTENSION)
    numbers = {item["url"]: item.get("valueInteger", item.get("valueString")) for item in chain["extension"]}
    assert numbers["sequence"] == 4 and len(numbers["hash"]) == 64
    assert numbers["previousHash"] == next(
        item["valueString"] for item in next(e for e in fhir.get("/fhir/AuditEvent/3").json()["extension"]
                                             if e["url"] == CHAIN_EXTENSION)["extension"] if item["url"] == "hash")
    found = fhir.get("/fhir/AuditEvent", params={"subtype": "search-type", "action": "E"}).json()
    assert [entry["resource"]["id"] for entry in found["entry"]] == ["4"]
    # On a read the client is the Destination (110152), the server the Source (110153).
    roles = [agent["type"]["coding"][0]["code"] for agent in fhir.get("/fhir/AuditEvent/1").json()["agent"]]
    assert roles == ["110152", "110153"]


def test_the_events_of_one_action_are_appended_together_however_many_wait(services, fhir):
    """An action naming many patients is several events (`audit_events`): the recorder appends them in one
    transaction, side by side in the chain, whatever other requests' events wait beside them."""

    def act(action: int) -> tuple[int, int]:
        return action, services.audit.recorder.record(*(_event(action) for _ in range(3)))

    with ThreadPoolExecutor(8) as pool:
        numbers = dict(pool.map(act, range(80)))
    with services.engine.connect() as connection:
        clients = {seq: orjson.loads(body)["agent"][0]["name"] for seq, body in connection.execute(
            select(audit_events.c.seq, audit_events.c.event_json))}
    assert len(clients) == 240
    for action, last in numbers.items():  # the number of the action's last event, the two before it its own
        assert [clients[seq] for seq in range(last - 2, last + 1)] == [f"user-{action}"] * 3
    assert _verify(services).intact


def test_the_searchable_copy_follows_the_chain_exactly_once(services):
    """No server runs here, so no recorder thread projects beside the test."""
    import orjson

    from fhir_mappings.errors import ResourceNotFound
    from server.audit.chain import canonical_json

    _append(services, 5)
    with pytest.raises(ResourceNotFound):
        services.fhir.store.read("AuditEvent", "1")
    assert services.audit.chain.project(limit=3) == 3
    assert services.audit.chain.project() == 2
    assert services.audit.chain.project() == 0
    # The copy is the chain's event: the canonical bytes of the copy, less its id, meta and chain extension.
    served = orjson.loads(services.fhir.store.read("AuditEvent", "5").body)
    event = {key: value for key, value in served.items() if key not in ("id", "meta", "extension")}
    with services.engine.connect() as connection:
        stored = connection.execute(select(audit_events.c.event_json).where(audit_events.c.seq == 5)).scalar_one()
    assert canonical_json(event) == stored


def test_a_rolled_back_action_leaves_no_record(services):
    _append(services, 2)
    with pytest.raises(RuntimeError), write_connection(services.engine) as connection:
        services.audit.chain.append(connection, [_event(5)])
        raise RuntimeError("the action failed after its record was appended")
    assert _append(services, 1, 10) == [3]
    assert _verify(services).intact


def _tampered(services, change) -> tuple[int | None, str | None]:  # type: ignore[no-untyped-def]
    _append(services, 10)
    services.audit.chain.checkpoint()
    assert _verify(services).intact
    with services.engine.begin() as connection:
        change(connection)
    verification = _verify(services)
    return verification.first_broken, verification.problem


def test_an_edited_field_is_detected(services):
    def change(connection):  # type: ignore[no-untyped-def]
        body = connection.execute(select(audit_events.c.event_json).where(audit_events.c.seq == 6)).scalar_one()
        connection.execute(update(audit_events).where(audit_events.c.seq == 6).values(
            event_json=body.replace(b'"outcome":"0"', b'"outcome":"4"')))

    assert _tampered(services, change) == (6, "event 6 was altered after it was recorded")


def test_a_deleted_row_is_detected(services):
    broken, problem = _tampered(services, lambda connection: connection.execute(
        delete(audit_events).where(audit_events.c.seq == 4)))
    assert (broken, problem) == (4, "event 4 is missing")


def test_two_swapped_rows_are_detected(services):
    def change(connection):  # type: ignore[no-untyped-def]
        rows = {row.seq: row for row in connection.execute(select(audit_events).where(audit_events.c.seq.in_((7, 8))))}
        for seq, other in ((7, 8), (8, 7)):
            connection.execute(update(audit_events).where(audit_events.c.seq == seq).values(
                previous_hash=rows[other].previous_hash, hash=rows[other].hash, event_json=rows[other].event_json))

    broken, problem = _tampered(services, change)
    assert broken == 7 and "does not follow" in problem


def test_removing_the_last_rows_is_detected_even_with_the_head_rewritten(services):
    def change(connection):  # type: ignore[no-untyped-def]
        connection.execute(delete(audit_events).where(audit_events.c.seq > 7))
        last = connection.execute(select(audit_events.c.hash).where(audit_events.c.seq == 7)).scalar_one()
        connection.execute(update(audit_head).values(seq=7, hash=last))

    broken, problem = _tampered(services, change)
    assert broken == 8 and "events 8 to 10 were removed" in problem


def test_removing_the_last_rows_after_the_last_checkpoint_is_detected_by_the_head(services):
    _append(services, 4)
    services.audit.chain.checkpoint()
    _append(services, 3, 100)
    with services.engine.begin() as connection:
        connection.execute(delete(audit_events).where(audit_events.c.seq > 5))
    verification = _verify(services)
    assert verification.first_broken == 6 and "head says 7" in verification.problem


def _rewritten_from(connection, first: int, last: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """What someone who can write the database but lacks the key can do:
    change event `first` (or cut the chain after `last`), recompute every
    hash after it, move the head, and delete the checkpoints that named them."""
    import orjson

    from server.audit.chain import canonical_json, event_hash

    if last is not None:
        connection.execute(delete(audit_events).where(audit_events.c.seq > last))
    rows = connection.execute(select(audit_events).where(audit_events.c.seq >= first).order_by(audit_events.c.seq)).all()
    previous = connection.execute(select(audit_events.c.hash).where(audit_events.c.seq == first - 1)).scalar_one()
    for row in rows:
        event = orjson.loads(row.event_json)
        if row.seq == first and last is None:
            event["outcome"] = "4"
        canonical = canonical_json(event)
        digest = event_hash(previous, canonical)
        connection.execute(update(audit_events).where(audit_events.c.seq == row.seq).values(
            previous_hash=previous, hash=digest, event_json=canonical))
        previous = digest
    connection.execute(update(audit_head).values(seq=rows[-1].seq if rows else first - 1, hash=previous))
    connection.execute(delete(audit_checkpoints).where(audit_checkpoints.c.seq >= first))


@pytest.mark.parametrize("cut", [False, True], ids=["rewritten", "cut"])
def test_a_rewritten_or_cut_end_whose_checkpoints_were_deleted_is_caught_by_the_anchor(services, cut):
    _append(services, 6)
    services.audit.chain.checkpoint()
    _append(services, 6, 100)
    assert services.audit.chain.checkpoint() == 12  # signed, and written to the anchor file
    with services.engine.begin() as connection:
        _rewritten_from(connection, 8, last=9 if cut else None)
    # The database alone now looks intact: the checkpoint at 6 still holds.
    anchor = services.audit.chain.anchor
    kept = anchor.read_bytes()
    anchor.unlink()
    assert _verify(services).intact
    anchor.write_bytes(kept)
    verification = _verify(services)
    assert not verification.intact and "anchor" in verification.problem
    assert verification.first_broken == (10 if cut else 12)


def test_an_edited_searchable_copy_is_detected(services, fhir):
    _append(services, 5)
    services.audit.chain.project()
    assert _verify(services).intact
    from server.tables import fhir_resources

    with services.engine.begin() as connection:
        body = connection.execute(select(fhir_resources.c.resource_json).where(
            fhir_resources.c.resource_type == "AuditEvent", fhir_resources.c.resource_id == "3")).scalar_one()
        connection.execute(update(fhir_resources).where(
            fhir_resources.c.resource_type == "AuditEvent", fhir_resources.c.resource_id == "3"
        ).values(resource_json=body.replace(b"user-2", b"nobody")))
    assert "nobody" in fhir.get("/fhir/AuditEvent/3").text  # served as the record
    verification = _verify(services)
    assert verification.first_broken == 3 and "searchable copy of event 3" in verification.problem
    with services.engine.begin() as connection:  # bytes that are not even UTF-8: compared as bytes
        connection.execute(update(fhir_resources).where(
            fhir_resources.c.resource_type == "AuditEvent", fhir_resources.c.resource_id == "2"
        ).values(resource_json=b"\xff\xfe"))
    verification = _verify(services)
    assert verification.first_broken == 2 and "searchable copy of event 2" in verification.problem


def _edit_copy(services, resource_id: str, edit) -> None:
    from server.tables import fhir_resources

    where = (fhir_resources.c.resource_type == "AuditEvent", fhir_resources.c.resource_id == resource_id)
    with services.engine.begin() as connection:
        body = orjson.loads(connection.execute(select(fhir_resources.c.resource_json).where(*where)).scalar_one())
        edited = edit(body)
        connection.execute(update(fhir_resources).where(*where).values(
            resource_json=edited if isinstance(edited, bytes) else orjson.dumps(body)))


def _another_last_digit(instant: str) -> str:
    """A different instant: always changing the last digit to 9 left one that ended in 9 as it was."""
    return instant[:-2] + ("8" if instant[-2] == "9" else "9") + instant[-1]


@pytest.mark.parametrize("edit", [
    lambda body: body["meta"].update(lastUpdated=_another_last_digit(body["meta"]["lastUpdated"])),
    lambda body: body["meta"].update(versionId="2"),
    lambda body: body["meta"].update(security=[{"code": "HTEST"}]),
    lambda body: body["extension"][-1]["extension"][2].update(valueString="0" * 64),
    lambda body: body["extension"].insert(0, {"url": "urn:x", "valueString": "y"}),
    lambda body: body.update(id="4"),
    lambda body: body.update(text={"status": "generated", "div": "<div>x</div>"}),
    lambda body: body.pop("entity"),
], ids=["lastUpdated", "versionId", "meta", "hash", "extension", "id", "added", "removed"])
def test_any_edit_of_what_a_copy_says_is_detected(services, edit):
    """What the copy adds to its event (id, meta, the chain's extension) is held against what it must be too."""
    _append(services, 4)
    services.audit.chain.project()
    _edit_copy(services, "3", edit)
    verification = _verify(services)
    assert verification.first_broken == 3 and "searchable copy of event 3" in verification.problem


def test_events_appended_by_write_transactions_are_checkpointed_on_time(services):
    """Only the recorder's own batches started the timer: a workload of writes
    (STOWs, Task creates) left up to 999 events unsigned."""
    import time

    from server.audit.recorder import AuditRecorder

    recorder = AuditRecorder(services.audit.chain, checkpoint_seconds=0.2)
    recorder.start()
    try:
        _append(services, 3)  # as a write transaction appends its record: not through the recorder
        deadline = time.monotonic() + 10
        while services.audit.chain.verify().checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        recorder.stop()
    with services.engine.connect() as connection:
        assert connection.execute(select(audit_checkpoints.c.seq)).scalars().all() == [3]
    assert services.audit.chain.read_anchor().seq == 3


def test_a_forged_checkpoint_is_detected(services):
    broken, problem = _tampered(services, lambda connection: connection.execute(
        update(audit_checkpoints).values(signature="AAAA" + "A" * 84)))
    assert broken == 10 and "not signed by this server" in problem


def test_sixteen_concurrent_writers_make_one_unbroken_chain(services):
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            for round_number in range(10):
                if round_number % 2:
                    services.audit.recorder.record(_event(number * 100 + round_number))
                else:
                    _append(services, 3, number * 100 + round_number)
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    services.audit.recorder.start()
    try:
        threads = [threading.Thread(target=writer, args=(number,)) for number in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        services.audit.recorder.stop()
    assert errors == []
    verification = _verify(services)
    assert verification.intact
    assert verification.events == 16 * (5 * 3 + 5)
    with services.engine.connect() as connection:
        numbers = connection.execute(select(audit_events.c.seq).order_by(audit_events.c.seq)).scalars().all()
    assert numbers == list(range(1, 16 * 20 + 1))


@pytest.fixture
def audit_cli(tmp_path, database_url, monkeypatch, settings):
    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MEDAIFLOW_DATABASE_URL", database_url)


def test_verification_from_the_cli_and_over_fhir(services, fhir, audit_cli, capsys):
    _append(services, 5)
    services.audit.chain.checkpoint()
    assert main(["audit", "verify"]) == 0
    assert "intact" in capsys.readouterr().out
    parameters = {item["name"]: item for item in fhir.get("/fhir/AuditEvent/$verify").json()["parameter"]}
    assert parameters["intact"]["valueBoolean"] is True and parameters["events"]["valueInteger"] == 5
    with services.engine.begin() as connection:
        connection.execute(delete(audit_events).where(audit_events.c.seq == 2))
    assert main(["audit", "verify"]) == 1
    assert "BROKEN at sequence 2" in capsys.readouterr().out
    parameters = {item["name"]: item for item in fhir.get("/fhir/AuditEvent/$verify").json()["parameter"]}
    assert parameters["intact"]["valueBoolean"] is False
    assert parameters["firstBrokenSequence"]["valueInteger"] == 2


def test_canonical_json_is_rfc_8785():
    """The fast path writes the reference implementation's bytes, for text of
    every kind (controls, quotes, non-ASCII, astral planes) and for floats."""
    import random

    import rfc8785

    from server.audit.chain import canonical_json

    rng = random.Random(8785)
    alphabet = [chr(code) for code in [*range(0x80), 0xE9, 0x2028, 0xFEFF, 0x4E2D, 0x1F600, 0x7F, 0x9F]]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        event = {"b": text, "a": [text, 1, -7, True, None, {"z": text, "é": 2}], text[:3] or "k": "v"}
        assert canonical_json(event) == rfc8785.dumps(event)
    assert canonical_json({"x": 1.5e-7, "y": [0.1]}) == rfc8785.dumps({"x": 1.5e-7, "y": [0.1]})


def test_verification_while_events_are_appended_reports_no_break(services):
    """Verification stops at the head it read first: events appended while it
    reads are not mistaken for a head that lags behind the chain."""
    _append(services, 50)
    stop = threading.Event()

    def keep_appending() -> None:
        number = 100
        while not stop.is_set():
            _append(services, 1, start=number)
            number += 1

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        results = [_verify(services) for _ in range(20)]
    finally:
        stop.set()
        writer.join()
    assert all(result.intact for result in results), [result.problem for result in results if not result.intact]
    assert _verify(services).intact


def test_bytes_that_are_not_utf8_are_reported_not_fatal(services):
    """The canonical JSON is UTF-8; stored bytes that are not (written by hand)
    are an alteration like any other."""
    _append(services, 6)
    with write_connection(services.engine) as connection:
        connection.execute(update(audit_events).where(audit_events.c.seq == 4).values(event_json=b"{\xff\xfe}"))
    verification = _verify(services)
    assert verification.first_broken == 4 and "altered" in (verification.problem or "")


def test_a_value_of_another_type_in_place_of_an_event_is_reported_not_fatal(services):
    """SQLite keeps whatever type is written to a column; a hand-written text value is an alteration too."""
    _append(services, 6)
    with write_connection(services.engine) as connection:
        connection.execute(text("UPDATE audit_events SET event_json = 'café' WHERE seq = 4"))
    verification = _verify(services)
    assert verification.first_broken == 4 and "altered" in (verification.problem or "")


def test_verifying_a_data_directory_with_no_database_is_an_error_not_a_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(tmp_path / "mistyped"))
    monkeypatch.delenv("MEDAIFLOW_DATABASE_URL", raising=False)
    assert main(["audit", "verify"]) == 2
    assert "no database" in capsys.readouterr().err
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.parametrize("tamper", ["marked deleted", "row deleted"])
def test_a_searchable_copy_hidden_from_reads_and_searches_is_detected(services, fhir, tamper):
    """An auditor sees the record through its copies: one taken away hides the event as surely as an edit changes it."""
    from server.tables import fhir_resources

    _append(services, 5)
    services.audit.chain.project()
    assert _verify(services).intact
    where = (fhir_resources.c.resource_type == "AuditEvent", fhir_resources.c.resource_id == "3")
    with services.engine.begin() as connection:
        if tamper == "marked deleted":
            connection.execute(update(fhir_resources).where(*where).values(deleted=True))
        else:
            connection.execute(delete(fhir_resources).where(*where))
    assert fhir.get("/fhir/AuditEvent/3").status_code in (404, 410)
    assert "3" not in [entry["resource"]["id"] for entry in fhir.get("/fhir/AuditEvent").json().get("entry", [])]
    verification = _verify(services)
    assert verification.first_broken == 3 and "searchable copy of event 3" in verification.problem


def test_an_audit_event_that_the_chain_does_not_hold_is_detected(services, fhir):
    """A copy is served as the record: one added beside the chain would be served as an event that never happened."""
    from server.tables import fhir_resources

    _append(services, 3)
    services.audit.chain.project()
    with services.engine.begin() as connection:
        row = connection.execute(select(fhir_resources).where(
            fhir_resources.c.resource_type == "AuditEvent", fhir_resources.c.resource_id == "2")).one()
        forged = {key: value for key, value in row._mapping.items() if key != "id"}
        forged.update(resource_id="forged", resource_json=row.resource_json.replace(b'"id":"2"', b'"id":"forged"'))
        connection.execute(fhir_resources.insert().values(forged))
    assert fhir.get("/fhir/AuditEvent/forged").status_code == 200  # served as a record
    verification = _verify(services)
    assert not verification.intact and "AuditEvent/forged" in verification.problem


def test_the_last_events_cut_with_the_head_rewritten_are_caught_by_their_copies(services):
    """Before any checkpoint names them, the chain alone cannot show them gone; their copies still can."""
    _append(services, 5)
    services.audit.chain.project()
    with services.engine.begin() as connection:
        connection.execute(delete(audit_events).where(audit_events.c.seq > 3))
        last = connection.execute(select(audit_events.c.hash).where(audit_events.c.seq == 3)).scalar_one()
        connection.execute(update(audit_head).values(seq=3, hash=last))
    verification = _verify(services)
    assert verification.first_broken == 4 and "AuditEvent/4 is no event of the chain" in verification.problem


def _index_row(services, table, seq: int, param: str):  # type: ignore[no-untyped-def]
    """The first index row of AuditEvent/`seq` for `param`, as the where-clause that names it."""
    from server.tables import fhir_resources

    with services.engine.connect() as connection:
        pk = connection.execute(select(fhir_resources.c.id).where(
            fhir_resources.c.resource_type == "AuditEvent", fhir_resources.c.resource_id == str(seq))).scalar_one()
        row = connection.execute(select(table).where(table.c.resource_pk == pk, table.c.param == param)).first()
    assert row is not None
    return pk, row


def test_an_altered_removed_or_added_search_index_row_is_detected(services, fhir, audit_cli, capsys):
    """The copies' index rows are what searches of the trail read: a search
    for the patient missed an event whose row was removed, and verification
    did not see it."""
    from server.tables import fhir_references, fhir_strings, fhir_tokens

    _append(services, 6)
    services.audit.chain.project()
    assert _verify(services).intact
    pk, row = _index_row(services, fhir_references, 5, "patient")
    with services.engine.begin() as connection:
        connection.execute(delete(fhir_references).where(fhir_references.c.resource_pk == pk,
                                                         fhir_references.c.param == "patient"))
    found = [entry["resource"]["id"]
             for entry in fhir.get("/fhir/AuditEvent", params={"patient": "p1"}).json()["entry"]]
    assert "5" not in found and "4" in found  # the search lies
    for chunk in (20_000, 2):  # whether the event is in the first chunk read or a later one
        verification = services.audit.chain.verify(chunk=chunk)
        assert verification.first_broken == 5 and "search index of event 5" in verification.problem
    assert main(["audit", "verify"]) == 1
    assert "BROKEN at sequence 5: the search index of event 5" in capsys.readouterr().out

    pk, row = _index_row(services, fhir_strings, 3, "agent-name")
    with services.engine.begin() as connection:  # an event found under a name that it does not hold
        connection.execute(update(fhir_strings).where(fhir_strings.c.resource_pk == pk,
                                                      fhir_strings.c.param == "agent-name").values(normalised="nobody"))
    assert _verify(services).first_broken == 3
    pk, row = _index_row(services, fhir_tokens, 2, "type")
    with services.engine.begin() as connection:  # a row it does not give, and a row doubled
        connection.execute(fhir_tokens.insert().values(resource_pk=pk, param="outcome", system=None, code="8"))
    assert _verify(services).first_broken == 2
    with services.engine.begin() as connection:
        connection.execute(delete(fhir_tokens).where(fhir_tokens.c.resource_pk == pk, fhir_tokens.c.code == "8"))
    assert _verify(services).first_broken == 3
    pk, row = _index_row(services, fhir_tokens, 1, "type")
    with services.engine.begin() as connection:
        connection.execute(fhir_tokens.insert().values(row._mapping))
    assert _verify(services).first_broken == 1
