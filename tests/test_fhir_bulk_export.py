"""FHIR Bulk Data Access v2.0.0 `$export` (hl7.org/fhir/uv/bulkdata/export.html)
over HTTP: kick-off, status, files, delete, and what an export holds."""

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from fhir_mappings.audit_event import DCM, AuditKind, AuditRecord, Outcome, audit_event
from server.auth.scopes import Role, role_grant
from server.fhir.bulk_export import now_micros
from server.fhir.bulk_export_query import Slice, pages
from server.fhir.bulk_export_worker import LEASE_SECONDS, ExportWorker
from server.tables import fhir_exports
from tests.fhir_checks import seed

KICK = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
LOINC = "http://loinc.org"
BASE = "http://testserver"


def _patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": f"Family {pid}"}]}


def _observation(oid: str, subject: str, code: str = "1111-1") -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": subject}}


def _user(services, role: Role, name: str) -> dict:
    token, _ = services.auth.issuer.issue(name, role.value, str(role_grant(role)), client=False)
    return {"Authorization": f"Bearer {token}"}


def _system_client(services, scopes: str) -> dict:
    client_id, _ = services.auth.identities.add_client("analytics", scopes)
    token, _ = services.auth.issuer.issue(client_id, "", scopes, client=True)
    return {"Authorization": f"Bearer {token}"}


def _kick_off(client, path: str = "/fhir/$export", headers: dict | None = None, **params: str) -> str:
    response = client.get(path, params=params, headers={**KICK, **(headers or {})})
    assert response.status_code == 202, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    return response.headers["Content-Location"].removeprefix(BASE)


def _manifest(client, status: str, headers: dict | None = None, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(status, headers=headers)
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("application/json")
            return response.json()  # type: ignore[no-any-return]
        assert response.status_code == 202, response.text
        assert response.headers["Retry-After"] and response.headers["X-Progress"]
        assert time.monotonic() < deadline, "the export did not complete"
        time.sleep(0.05)


def _files(client, manifest: dict, headers: dict | None = None) -> dict[str, list[bytes]]:
    """Each output's lines, by type, checked against its count."""
    files = {}
    for output in manifest["output"]:
        response = client.get(output["url"].removeprefix(BASE), headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        assert response.content.endswith(b"\n")
        lines = response.content.splitlines()
        assert len(lines) == output["count"]
        files[output["type"]] = lines
    return files


def _ids(lines: list[bytes]) -> list[str]:
    return [orjson.loads(line)["id"] for line in lines]


def _export(client, path: str = "/fhir/$export", headers: dict | None = None, **params: str) -> dict[str, list[bytes]]:
    return _files(client, _manifest(client, _kick_off(client, path, headers, **params), headers), headers)


@pytest.fixture
def charts(services):
    """Three patients, their observations, and records in no patient's compartment."""
    return seed(
        services,
        _patient("pa"), _patient("pb"), _patient("pc"),
        _observation("oa", "Patient/pa"), _observation("ob", "Patient/pb"), _observation("oc", "Patient/pc"),
        {"resourceType": "Device", "id": "da", "status": "active"},
        {"resourceType": "Task", "id": "ta", "status": "draft", "intent": "order", "for": {"reference": "Patient/pa"}},
    )


@pytest.mark.parametrize("headers, params, complaint", [
    ({"Accept": "application/fhir+json"}, {}, "Prefer: respond-async"),
    ({**KICK, "Accept": "application/fhir+xml"}, {}, "Accept"),
    (KICK, {"_outputFormat": "text/csv"}, "_outputFormat"),
    (KICK, {"_type": "Observation,Nonsense"}, "Nonsense"),
    (KICK, {"_since": "2024-05-01"}, "_since"),
    (KICK, {"_since": "2024-05-01T00:00:00"}, "_since"),
    (KICK, {"_elements": "id"}, "_elements"),
    (KICK, {"_typeFilter": "Observation?_sort=date"}, "_typeFilter"),
    (KICK, {"_typeFilter": "Observation?nonsense=1"}, "nonsense"),
    (KICK, {"_typeFilter": "Nonsense?x=1"}, "_typeFilter"),
    (KICK, {"_typeFilter": "Observation"}, "_typeFilter"),
    (KICK, {"_type": "Device", "_typeFilter": "Observation?status=final"}, "_typeFilter"),
    (KICK, {"patient": "Patient/pa"}, "POST"),
])
def test_a_kick_off_the_server_cannot_carry_out_is_refused_with_400(client, headers, params, complaint):
    response = client.get("/fhir/$export", params=params, headers=headers)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert complaint in outcome["issue"][0]["diagnostics"]
    assert "Content-Location" not in response.headers


def test_unsupported_parameters_are_ignored_when_the_client_prefers_lenient_handling(client, charts):
    response = client.get("/fhir/$export", params={"_elements": "id", "_type": "Device"},
                          headers={**KICK, "Prefer": "respond-async, handling=lenient"})
    assert response.status_code == 202, response.text
    assert "_elements" in response.json()["issue"][0]["diagnostics"]
    manifest = _manifest(client, response.headers["Content-Location"].removeprefix(BASE))
    assert [output["type"] for output in manifest["output"]] == ["Device"]


@pytest.mark.parametrize("output_format", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_each_ndjson_name_of_the_ig_is_taken(client, charts, output_format):
    assert _ids(_export(client, _type="Device", _outputFormat=output_format)["Device"]) == ["da"]


def test_an_unencoded_plus_is_read_as_one(client, services, charts):
    """Clients often leave `+` unencoded in the query, where it means a space."""
    since = orjson.loads(charts[-1].body)["meta"]["lastUpdated"]
    seed(services, _observation("late", "Patient/pa"))
    moment = datetime.fromisoformat(since.replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=1)))
    url = f"/fhir/$export?_type=Observation&_outputFormat=application/fhir+ndjson&_since={moment.isoformat()}"
    assert "+01:00" in url
    response = client.get(url, headers=KICK)
    assert response.status_code == 202, response.text
    files = _files(client, _manifest(client, response.headers["Content-Location"].removeprefix(BASE)))
    assert _ids(files["Observation"]) == ["late"]


def test_the_files_hold_what_a_read_returns_and_the_manifest_says_so(client, charts):
    status = _kick_off(client, _type="Patient,Observation,Device,Task")
    manifest = _manifest(client, status)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == f"{BASE}/fhir/$export?_type=Patient%2CObservation%2CDevice%2CTask"
    assert manifest["error"] == [] and not manifest.get("deleted")
    assert manifest["transactionTime"].endswith("Z")
    expires = parsedate_to_datetime(client.get(status).headers["Expires"])
    assert timedelta(hours=23) < expires - datetime.fromisoformat(manifest["transactionTime"]) <= timedelta(hours=24)
    assert [(output["type"], output["count"]) for output in manifest["output"]] == [
        ("Patient", 3), ("Observation", 3), ("Device", 1), ("Task", 1)]
    for resource_type, lines in _files(client, manifest).items():
        for line in lines:
            resource = orjson.loads(line)
            read = client.get(f"/fhir/{resource_type}/{resource['id']}")
            assert read.content == line  # the stored JSON, byte for byte
    # Fetched again, the status is the same manifest.
    assert client.get(status).json() == manifest


def test_a_post_kick_off_takes_its_parameters_in_a_parameters_resource(client, charts):
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Observation"}]}
    response = client.post("/fhir/$export", json=body, headers={**KICK, "Content-Type": "application/fhir+json"})
    assert response.status_code == 202, response.text
    manifest = _manifest(client, response.headers["Content-Location"].removeprefix(BASE))
    assert sorted(_ids(_files(client, manifest)["Observation"])) == ["oa", "ob", "oc"]
    assert manifest["request"] == f"{BASE}/fhir/$export"  # a POST's parameters are not in its URL


def test_since_keeps_what_changed_after_it(client, services, charts):
    first = seed(services, _observation("early", "Patient/pa"))[0]
    seed(services, _observation("late", "Patient/pa"))
    since = orjson.loads(first.body)["meta"]["lastUpdated"]
    assert _ids(_export(client, _type="Observation", _since=since)["Observation"]) == ["late"]
    everything = _ids(_export(client, _type="Observation")["Observation"])
    assert "early" in everything and "late" in everything


def test_type_limits_the_export_to_the_types_named(client, charts):
    files = _export(client, _type="Device,Task")
    assert list(files) == ["Device", "Task"]


def test_a_system_export_holds_every_type_the_caller_may_read(client, charts):
    before = client.get("/fhir/Device/da")  # audited before the kick-off
    files = _export(client)
    assert {"Patient", "Observation", "Device", "Task", "AuditEvent"} <= set(files)  # an admin reads the audit trail
    # The events recorded before the kick-off, not those of the kick-off and its polls, recorded after it.
    events = [orjson.loads(line) for line in files["AuditEvent"]]
    assert len(events) == 1
    assert events[0]["entity"][0]["what"] == {"reference": "Device/da"}, before


def test_a_patient_export_holds_every_patients_compartment_and_nothing_else(client, services, charts):
    seed(services, _observation("od", "Device/da"))  # about no patient
    assert "od" in _ids(_export(client, _type="Observation")["Observation"])
    files = _export(client, "/fhir/Patient/$export", _type="Patient,Observation")
    assert sorted(_ids(files["Patient"])) == ["pa", "pb", "pc"]
    assert sorted(_ids(files["Observation"])) == ["oa", "ob", "oc"]
    whole = _export(client, "/fhir/Patient/$export")
    assert "Device" not in whole and "Task" not in whole  # in no patient's compartment
    assert client.get("/fhir/Patient/$export", params={"_type": "Device"}, headers=KICK).status_code == 400


def test_patient_parameters_choose_the_patients_and_leave_the_others_out(client, charts):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/pa"}},
        {"name": "patient", "valueReference": {"reference": "Patient/pb"}},
        {"name": "_type", "valueString": "Patient,Observation"},
    ]}
    response = client.post("/fhir/Patient/$export", json=body, headers=KICK)
    assert response.status_code == 202, response.text
    files = _files(client, _manifest(client, response.headers["Content-Location"].removeprefix(BASE)))
    assert sorted(_ids(files["Patient"])) == ["pa", "pb"]
    assert sorted(_ids(files["Observation"])) == ["oa", "ob"]
    system = client.post("/fhir/$export", json=body, headers=KICK)
    assert system.status_code == 400 and "Patient-level" in system.text


@pytest.mark.parametrize("filters, expected", [
    (["Observation?subject=Patient/pa"], ["oa"]),
    (["Observation?subject=Patient/pa", "Observation?subject=Patient/pb"], ["oa", "ob"]),  # repeated: either
    (["Observation?subject=Patient/pa,Observation?subject=Patient/pb"], ["oa", "ob"]),  # comma-separated: either
    (["Observation?subject=Patient/pa,Patient/pc"], ["oa", "oc"]),  # a comma within a query: OR, as in a search
    (["Observation?subject=Patient/pa&status=cancelled"], []),
])
def test_type_filters_are_searches_of_their_type(client, charts, filters, expected):
    params = [("_type", "Observation,Device"), *(("_typeFilter", query) for query in filters)]
    response = client.get("/fhir/$export", params=params, headers=KICK)
    assert response.status_code == 202, response.text
    files = _files(client, _manifest(client, response.headers["Content-Location"].removeprefix(BASE)))
    assert sorted(_ids(files.get("Observation", []))) == expected
    assert _ids(files["Device"]) == ["da"]  # a type without a filter is exported whole


def test_a_type_filter_needs_the_rights_its_search_would(client, services, charts):
    analytics = _system_client(services, "system/Observation.rs")
    chained = {"_typeFilter": "Observation?subject:Patient.family=Family pa"}
    assert client.get("/fhir/$export", params=chained, headers={**KICK, **analytics}).status_code == 403
    assert sorted(_ids(_export(client, **chained)["Observation"])) == ["oa"]  # an admin may search Patients


def test_a_long_kick_off_url_is_kept_whole(client, charts):
    """The manifest's `request` is the kick-off URL as sent, however many filters make it long."""
    filters = [("_typeFilter", f"Observation?code=http://loinc.org|{number}-{'9' * 40}") for number in range(60)]
    response = client.get("/fhir/$export", params=[("_type", "Observation"), *filters], headers=KICK)
    assert response.status_code == 202, response.text
    manifest = _manifest(client, response.headers["Content-Location"].removeprefix(BASE))
    assert len(manifest["request"]) > 4096 and manifest["request"] == str(response.request.url)
    assert manifest["output"] == []  # nothing has such a code: no file, as the IG has it


def test_an_export_is_its_starters_alone(client, services, charts):
    manifest = _manifest(client, status := _kick_off(client, _type="Observation"))
    other = _user(services, Role.CLINICIAN, "dr-other")
    assert client.get(status, headers=other).status_code == 404
    assert client.get(manifest["output"][0]["url"].removeprefix(BASE), headers=other).status_code == 404
    assert client.delete(status, headers=other).status_code == 404
    assert client.get(status, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert client.get("/fhir/$export", headers={**KICK, "Authorization": "Bearer not-a-token"}).status_code == 401
    assert client.get(status).status_code == 200  # still there for its starter
    # A clinician's own export is its own, and an admin may see it.
    clinician = _user(services, Role.CLINICIAN, "dr-own")
    own = _kick_off(client, headers=clinician, _type="Observation")
    _manifest(client, own, clinician)
    assert client.get(own, headers=other).status_code == 404
    assert client.get(own).status_code == 200


@pytest.mark.parametrize("method, path", [
    ("GET", "/fhir/$export-status/{}"), ("DELETE", "/fhir/$export-status/{}"),
    ("GET", "/fhir/$export-file/{}/Observation.ndjson"),
])
@pytest.mark.parametrize("export_id", ["a%00b", "not-an-export", "0" * 300])
def test_an_id_no_export_has_is_404(client, method, path, export_id):
    """Whatever it holds: one with a NUL was a 500 on PostgreSQL, whose text holds none."""
    response = client.request(method, path.format(export_id))
    assert response.status_code == 404, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_a_scope_limited_client_gets_only_its_types(client, services, charts):
    analytics = _system_client(services, "system/Observation.rs system/Patient.r")
    files = _export(client, headers=analytics)
    assert list(files) == ["Observation"]  # Patient: read without search is not enough
    refused = client.get("/fhir/$export", params={"_type": "Patient"}, headers={**KICK, **analytics})
    assert refused.status_code == 403
    nothing = _system_client(services, "system/Device.r")
    assert client.get("/fhir/$export", headers={**KICK, **nothing}).status_code == 403


def test_wildcards_reach_neither_audit_events_nor_others_subscriptions(client, services, charts):
    seed(services, {"resourceType": "Subscription", "id": "sx", "status": "off", "reason": "someone else's",
                    "criteria": "Observation?status=final", "channel": {"type": "rest-hook",
                                                                        "endpoint": "https://ehr.example.org/h"}})
    clinician = _user(services, Role.CLINICIAN, "dr-wild")
    assert "AuditEvent" not in _export(client, headers=clinician)
    watcher = _system_client(services, "system/Subscription.rs system/Observation.rs")
    files = _export(client, headers=watcher)
    assert "Subscription" not in files and "Observation" in files  # not its Subscription: not there for it
    assert _ids(_export(client, _type="Subscription")["Subscription"]) == ["sx"]  # the admin sees all


def test_delete_cancels_an_export_and_removes_its_files(client, services, charts):
    manifest = _manifest(client, status := _kick_off(client, _type="Observation"))
    export_id = status.rsplit("/", 1)[1]
    directory = services.exports.jobs.directory(export_id)
    assert directory.is_dir()
    assert client.delete(status).status_code == 202
    assert client.get(status).status_code == 404
    assert client.get(manifest["output"][0]["url"].removeprefix(BASE)).status_code == 404
    assert not directory.exists()
    assert client.delete(status).status_code == 404


def _held(services) -> None:
    """No export is written until the test runs one by hand."""
    services.exports.worker.stop()


def _run_queued(services) -> None:
    """Claim and write the oldest export, as a worker of another process would."""
    job = services.exports.jobs.claim(int(LEASE_SECONDS * 1_000_000))
    assert job is not None
    ExportWorker(services.exports.jobs, services.fhir, services.audit).run_export(job)


def test_an_export_holds_each_resource_as_it_was_at_the_kick_off(client, services, charts):
    _held(services)
    status = _kick_off(client, _type="Observation,Device")
    assert client.get(status).status_code == 202
    seed(services, _observation("after", "Patient/pa"))  # written after the kick-off
    changed = _observation("oa", "Patient/pa", code="9999-9")
    seed(services, changed)  # Observation keeps history: version 1 is what the export stands for
    with services.engine.begin() as connection:
        services.fhir.store.delete(connection, "Observation", "ob")
    seed(services, {"resourceType": "Device", "id": "da", "status": "inactive"})  # still version 1 at the kick-off
    _run_queued(services)
    files = _files(client, _manifest(client, status))
    assert sorted(_ids(files["Observation"])) == ["oa", "ob", "oc"]
    by_id = {orjson.loads(line)["id"]: line for line in files["Observation"]}
    assert by_id["oa"] == client.get("/fhir/Observation/oa/_history/1").content
    assert by_id["ob"] == client.get("/fhir/Observation/ob/_history/1").content
    assert orjson.loads(files["Device"][0])["status"] == "active"


def test_an_event_recorded_before_the_kick_off_but_not_yet_appended_is_exported(client, services):
    """The recorder appends a moment after a request is recorded, sharing
    one transaction among many: an export that read the chain meanwhile
    left out an event recorded before its transactionTime."""
    _held(services)
    recorder = services.audit.recorder
    event = audit_event(AuditRecord(kind=AuditKind.READ, outcome=Outcome.SUCCESS, recorded=datetime.now(timezone.utc),
                                    client="test-admin", server=BASE, description="read just before the kick-off"))
    status = _kick_off(client, _type="AuditEvent")
    recorder.linger_seconds = 2.0  # what the recorder takes waits this long for company before it is appended
    submitted = threading.Thread(target=recorder.record, args=(event,))
    submitted.start()
    _run_queued(services)
    submitted.join()
    recorder.linger_seconds = 0.002
    exported = [orjson.loads(line) for line in _files(client, _manifest(client, status))["AuditEvent"]]
    assert "read just before the kick-off" in [line.get("outcomeDesc") for line in exported]


@pytest.mark.parametrize("change", ["updated", "deleted"])
def test_a_resource_changed_while_its_type_is_written_is_written_once(services, charts, change):
    """Changed after its current row was read: it is not read again as the
    version it was at the kick-off (it was written twice)."""
    part = Slice("Observation", now_micros(), None, False, None)
    written = pages(services.fhir.engine, services.fhir.visibility, part, history=True)
    first = next(written)
    if change == "updated":
        seed(services, _observation("oa", "Patient/pa", code="9999-9"))
    else:
        with services.engine.begin() as connection:
            services.fhir.store.delete(connection, "Observation", "oa")
    lines = [line for page in [first, *written] for line in page]
    assert sorted(_ids(lines)) == ["oa", "ob", "oc"]
    assert b"9999-9" not in b"".join(lines)


def test_each_caller_has_a_limit_of_exports_in_progress(client, services, settings):
    _held(services)
    for _ in range(settings.export_max_per_caller):
        _kick_off(client, _type="Device")
    refused = client.get("/fhir/$export", params={"_type": "Device"}, headers=KICK)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    other = _user(services, Role.CLINICIAN, "dr-limit")
    _kick_off(client, headers=other, _type="Device")  # a limit per caller, not for all


def test_an_export_interrupted_by_a_stop_is_written_again(client, services, charts):
    _held(services)
    status = _kick_off(client, _type="Observation")
    # Its server stops while writing it: back in the queue, for the next start.
    stopping = ExportWorker(services.exports.jobs, services.fhir, services.audit)
    stopping.stop()
    stopping.run_export(services.exports.jobs.claim(int(LEASE_SECONDS * 1_000_000)))
    assert client.get(status).headers["X-Progress"].startswith("queued again")
    _run_queued(services)
    assert sorted(_ids(_files(client, _manifest(client, status))["Observation"])) == ["oa", "ob", "oc"]


def test_an_export_whose_server_died_is_written_again(client, services, charts):
    _held(services)
    status = _kick_off(client, _type="Observation")
    job = services.exports.jobs.claim(int(LEASE_SECONDS * 1_000_000))
    assert job is not None and client.get(status).headers["X-Progress"] == "starting"
    # Its server died: no heartbeat for longer than a lease, and the export is claimed again.
    assert services.exports.jobs.claim(int(LEASE_SECONDS * 1_000_000)) is None
    with services.engine.begin() as connection:
        connection.execute(update(fhir_exports).values(heartbeat=0))
    _run_queued(services)
    assert sorted(_ids(_files(client, _manifest(client, status))["Observation"])) == ["oa", "ob", "oc"]


def test_a_failed_export_answers_500_with_an_outcome(client, services, charts):
    _held(services)
    status = _kick_off(client, _type="Observation")
    # Where its directory would go lies a file: the export cannot be written.
    services.exports.jobs.root.mkdir(parents=True)
    services.exports.jobs.directory(status.rsplit("/", 1)[1]).write_bytes(b"")
    _run_queued(services)
    response = client.get(status)
    assert response.status_code == 500
    assert response.json()["issue"][0]["code"] == "exception"


def test_the_worker_outlives_an_export_it_could_not_even_mark_failed(client, services, charts, monkeypatch):
    """The database refused the failure too (down for a moment, say): the
    worker goes on with the next export, and the first is written again
    once its lease ends, as one whose server died would be."""
    _held(services)
    first = _kick_off(client, _type="Observation")
    first_id = first.rsplit("/", 1)[1]
    jobs, worker = services.exports.jobs, services.exports.worker
    write, fail = worker._write, jobs.fail

    def down_for_the_first(job, *args: Any) -> Any:
        if job.export_id == first_id:
            raise OSError("the database is down for a moment")
        return write(job, *args)

    def refused(export_id: str, *args: Any) -> None:
        if export_id == first_id:
            raise OSError("the database is down for a moment")
        fail(export_id, *args)

    monkeypatch.setattr(worker, "_write", down_for_the_first)
    monkeypatch.setattr(jobs, "fail", refused)
    worker.start()
    second = _kick_off(client, _type="Patient")
    assert _files(client, _manifest(client, second))["Patient"]  # the worker lived on
    assert client.get(first).headers["X-Progress"] == "starting"  # neither written nor failed
    monkeypatch.undo()
    with services.engine.begin() as connection:  # its lease ran out
        connection.execute(update(fhir_exports).where(fhir_exports.c.export_id == first_id).values(heartbeat=0))
    worker.wake()
    assert sorted(_ids(_files(client, _manifest(client, first))["Observation"])) == ["oa", "ob", "oc"]


def test_expired_exports_and_stray_directories_are_removed(client, services, charts):
    status = _kick_off(client, _type="Observation")
    _manifest(client, status)
    export_id = status.rsplit("/", 1)[1]
    stray = services.exports.jobs.root / "stray"
    stray.mkdir()
    os.utime(stray, (0, 0))
    kept = _kick_off(client, _type="Device")
    _manifest(client, kept)
    with services.engine.begin() as connection:
        connection.execute(update(fhir_exports).where(fhir_exports.c.export_id == export_id).values(expires_at=0))
    assert client.get(status).status_code == 404  # expired: gone for clients at once
    assert services.exports.jobs.remove_expired() == 1
    assert not services.exports.jobs.directory(export_id).exists() and not stray.exists()
    with services.engine.connect() as connection:
        assert connection.execute(select(fhir_exports.c.export_id)).scalars().all() == [kept.rsplit("/", 1)[1]]
    assert client.get(kept).status_code == 200


def test_a_completed_export_is_in_the_audit_trail(client, services, charts):
    _manifest(client, _kick_off(client, _type="Observation"))
    bundle = client.get("/fhir/AuditEvent", params={"type": f"{DCM}|110106"}).json()
    events: list[Any] = [entry["resource"] for entry in bundle.get("entry", [])]
    assert len(events) == 1
    assert "3 Observation" in events[0]["outcomeDesc"]
    kick_offs = client.get("/fhir/AuditEvent", params={"subtype": "operation"}).json()
    assert kick_offs.get("entry")  # the kick-off and status requests, as operations


def test_the_capability_statement_lists_the_export_operations(client):
    statement = client.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    assert {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"} in \
        rest["operation"]
    patient = next(resource for resource in rest["resource"] if resource["type"] == "Patient")
    assert {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"} in \
        patient["operation"]
