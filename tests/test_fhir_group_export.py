"""FHIR R4 Group as a stored type, and the Bulk Data Group-level export
(`[base]/Group/[id]/$export`, hl7.org/fhir/uv/bulkdata/group.html) over HTTP."""

import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from sqlalchemy import event

from conformance.fhir_schema import validate_fhir
from fhir_mappings.audit_event import DCM, MAX_PATIENTS_NAMED
from fhir_mappings.resources import validated
from server.auth.scopes import Role
from tests.fhir_checks import ids, seed
from tests.test_fhir_bulk_export import (
    BASE,
    KICK,
    _files,
    _held,
    _ids,
    _kick_off,
    _manifest,
    _observation,
    _patient,
    _run_queued,
    _system_client,
    _user,
)

COHORTS = "http://example.org/cohorts"


def _group(gid: str, *members: dict) -> dict:
    return {"resourceType": "Group", "id": gid, "type": "person", "actual": True,
            "identifier": [{"system": COHORTS, "value": gid}], "member": list(members)}


def _member(pid: str, **extra: object) -> dict:
    return {"entity": {"reference": f"Patient/{pid}"}, **extra}


@pytest.fixture
def cohort(services):
    """Three patients with an observation each, and a Group of the first two."""
    return seed(
        services,
        _patient("pa"), _patient("pb"), _patient("pc"),
        _observation("oa", "Patient/pa"), _observation("ob", "Patient/pb"), _observation("oc", "Patient/pc"),
        {"resourceType": "Device", "id": "da", "status": "active"},
        _group("g1", _member("pa"), _member("pb")),
    )


def _group_export(client, gid: str = "g1", headers: dict | None = None, **params: str) -> dict[str, list[bytes]]:
    status = _kick_off(client, f"/fhir/Group/{gid}/$export", headers, **params)
    return _files(client, _manifest(client, status, headers), headers)


def test_a_group_is_created_read_updated_patched_searched_and_deleted(client, cohort):
    created = client.post("/fhir/Group", json={
        "resourceType": "Group", "type": "person", "actual": True, "name": "Lung screening",
        "code": {"coding": [{"system": COHORTS, "code": "lung"}]},
        "characteristic": [{"code": {"text": "smoker"}, "valueBoolean": True, "exclude": False}],
        "member": [_member("pc")],
    })
    assert created.status_code == 201, created.text
    gid = created.json()["id"]
    assert client.get(f"/fhir/Group/{gid}").json()["name"] == "Lung screening"
    for params, expected in [
        ({"member": "Patient/pc"}, [gid]),
        ({"member": "Patient/pa"}, ["g1"]),
        ({"identifier": f"{COHORTS}|g1"}, ["g1"]),
        ({"code": f"{COHORTS}|lung"}, [gid]),
        ({"type": "person", "actual": "true"}, sorted(["g1", gid])),
        ({"value": "true", "exclude": "false"}, [gid]),
        ({"type": "device"}, []),
    ]:
        bundle = client.get("/fhir/Group", params=params).json()
        assert sorted(ids(bundle)) == expected, params
    updated = client.put(f"/fhir/Group/{gid}", json={**created.json(), "member": [_member("pa"), _member("pc")]})
    assert updated.status_code == 200, updated.text
    assert sorted(ids(client.get("/fhir/Group", params={"member": "Patient/pa"}).json())) == sorted(["g1", gid])
    patched = client.patch(f"/fhir/Group/{gid}", content=b'[{"op": "replace", "path": "/name", "value": "Renamed"}]',
                           headers={"Content-Type": "application/json-patch+json"})
    assert patched.status_code == 200, patched.text
    history = client.get(f"/fhir/Group/{gid}/_history").json()
    assert [entry["resource"]["meta"]["versionId"] for entry in history["entry"]] == ["3", "2", "1"]
    assert client.delete(f"/fhir/Group/{gid}").status_code in (200, 204)
    assert client.get(f"/fhir/Group/{gid}").status_code == 410


def test_a_group_is_validated_against_r4(client):
    response = client.post("/fhir/Group", json={"resourceType": "Group", "type": "crowd", "actual": True})
    assert response.status_code == 422, response.text
    assert "Group.type" in response.json()["issue"][0]["diagnostics"]
    assert client.post("/fhir/Group", json={"resourceType": "Group", "type": "person"}).status_code == 422  # actual


def test_a_group_export_holds_its_members_compartments_and_itself(client, cohort):
    files = _group_export(client)
    assert sorted(_ids(files["Patient"])) == ["pa", "pb"]
    assert sorted(_ids(files["Observation"])) == ["oa", "ob"]  # pc's is left out
    assert _ids(files["Group"]) == ["g1"]
    assert files["Group"][0] == client.get("/fhir/Group/g1").content
    assert "Device" not in files  # in no patient's compartment


def test_type_limits_a_group_export(client, cohort):
    files = _group_export(client, _type="Observation")
    assert set(files) == {"Observation"} and sorted(_ids(files["Observation"])) == ["oa", "ob"]
    assert set(_group_export(client, _type="Group,Patient")) == {"Group", "Patient"}
    refused = client.get("/fhir/Group/g1/$export", params={"_type": "Device"}, headers=KICK)
    assert refused.status_code == 400 and "Device" in refused.json()["issue"][0]["diagnostics"]


def test_since_and_type_filters_apply_to_a_group_export(client, cohort):
    filtered = _group_export(client, _type="Observation", _typeFilter="Observation?subject=Patient/pb")
    assert _ids(filtered["Observation"]) == ["ob"]
    assert _group_export(client, _type="Observation", _since="2999-01-01T00:00:00Z") == {}


def _patients_body(*pids: str) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        *({"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}} for pid in pids),
        {"name": "_type", "valueString": "Patient,Observation"},
    ]}


def test_a_post_kick_off_takes_patient_parameters_within_the_group(client, cohort):
    response = client.post("/fhir/Group/g1/$export", json=_patients_body("pb"), headers=KICK)
    assert response.status_code == 202, response.text
    files = _files(client, _manifest(client, response.headers["Content-Location"].removeprefix(BASE)))
    assert _ids(files["Patient"]) == ["pb"] and _ids(files["Observation"]) == ["ob"]


def test_a_patient_parameter_naming_no_member_is_refused(client, services, cohort):
    # export.html, `patient`: a patient who is no member of the Group SHOULD be an error, not silently dropped.
    seed(services, _group("g2", _member("pa"), _member("pb", inactive=True)))
    for gid, outsider in [("g1", "pc"), ("g1", "nobody"), ("g2", "pb")]:  # pb's membership of g2 no longer holds
        response = client.post(f"/fhir/Group/{gid}/$export", json=_patients_body("pa", outsider), headers=KICK)
        assert response.status_code == 400, response.text
        assert f"Patient/{outsider}" in response.json()["issue"][0]["diagnostics"]


def test_members_whose_membership_has_ended_are_left_out(client, services, cohort):
    seed(services, _group(
        "g2", _member("pa", period={"start": "2020-01-01"}), _member("pb", inactive=True),
        _member("pc", period={"start": "2020-01-01", "end": "2021-06-30T00:00:00Z"}),
    ), _group("g3", _member("pb", period={"start": "2999-01-01"})))
    assert _ids(_group_export(client, "g2", _type="Patient")["Patient"]) == ["pa"]
    accepted = client.get("/fhir/Group/g2/$export", params={"_type": "Patient"}, headers=KICK)
    assert "Group/g2 whose membership holds now: 1" in accepted.json()["issue"][0]["diagnostics"]
    assert _group_export(client, "g3", _type="Patient") == {}  # a membership yet to start


def test_the_members_are_those_of_the_kick_off(client, services, cohort):
    _held(services)
    status = _kick_off(client, "/fhir/Group/g1/$export", _type="Patient,Group")
    seed(services, _group("g1", _member("pc")))  # changed after the kick-off
    _run_queued(services)
    files = _files(client, _manifest(client, status))
    assert sorted(_ids(files["Patient"])) == ["pa", "pb"]
    assert files["Group"][0] == client.get("/fhir/Group/g1/_history/1").content


def test_a_missing_group_is_404_and_a_group_of_other_things_400(client, services, cohort):
    missing = client.get("/fhir/Group/nope/$export", headers=KICK)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    seed(services, {"resourceType": "Group", "id": "gd", "type": "device", "actual": True,
                    "member": [{"entity": {"reference": "Device/da"}}]})
    devices = client.get("/fhir/Group/gd/$export", headers=KICK)
    assert devices.status_code == 400 and "Device/da" in devices.json()["issue"][0]["diagnostics"]


def test_a_group_export_needs_the_right_to_read_the_group(client, services, cohort):
    no_groups = _system_client(services, "system/Patient.rs system/Observation.rs")
    refused = client.get("/fhir/Group/g1/$export", headers={**KICK, **no_groups})
    assert refused.status_code == 403 and "Group" in refused.json()["issue"][0]["diagnostics"]
    unknown = client.get("/fhir/Group/nope/$export", headers={**KICK, **no_groups})
    assert unknown.status_code == 403  # whether a Group exists is not told to whoever may not read it
    readers = _system_client(services, "system/Patient.rs system/Group.r")
    files = _group_export(client, headers=readers)
    assert set(files) == {"Patient"}  # Group is read, not searched: its file is left out, as a type the
    # caller may not search would be


def test_a_clinician_exports_a_group_and_an_ai_operator_may_not(client, services, cohort):
    clinician = _user(services, Role.CLINICIAN, "dr-who")
    assert _ids(_group_export(client, headers=clinician, _type="Group")["Group"]) == ["g1"]
    assert client.post("/fhir/Group", json=_group("g9"), headers=clinician).status_code == 403  # reads only
    operator = _user(services, Role.AI_OPERATOR, "robot")
    assert client.get("/fhir/Group/g1/$export", headers={**KICK, **operator}).status_code == 403


def test_a_token_held_to_a_patient_may_not_export_a_group(client, services, cohort):
    token, _ = services.auth.issuer.issue("pa-user", Role.CLINICIAN.value, "patient/*.rs", client=False,
                                          patient="pa")
    response = client.get("/fhir/Group/g1/$export", headers={**KICK, "Authorization": f"Bearer {token}"})
    assert response.status_code == 403, response.text
    # It may read g1, which names its patient (the Patient compartment holds it), but export none.
    assert client.get("/fhir/Group/g1", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_the_capability_statement_lists_group_and_its_export(client):
    rest = client.get("/fhir/metadata").json()["rest"][0]
    group = next(resource for resource in rest["resource"] if resource["type"] == "Group")
    assert {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"} in \
        group["operation"]
    assert {"create", "update", "patch", "delete", "history-instance"} <= {i["code"] for i in group["interaction"]}
    assert {"identifier", "type", "actual", "code", "member", "characteristic", "value", "exclude",
            "managing-entity"} <= {parameter["name"] for parameter in group["searchParam"]}
    assert orjson.dumps(rest).count(b"characteristic-value") == 0


def test_a_group_of_more_members_than_sqlite_binds_is_exported(client, services, cohort):
    # SQLite binds at most 32,766 parameters (999 before 3.32, as here): a statement binding each member failed.
    seed(services, _group("crowd", *(_member(f"m{number}") for number in range(1_500)), _member("pb")))
    engine = services.fhir.engine
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect",
                     lambda connection, _: connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
        engine.dispose()  # the pooled connections are opened again, with the limit
    files = _group_export(client, "crowd", _type="Patient,Observation")
    assert _ids(files["Patient"]) == ["pb"] and _ids(files["Observation"]) == ["ob"]


def test_a_group_export_is_audited_with_its_group_and_member_patients(client, cohort):
    _group_export(client, _type="Observation")
    bundle = client.get("/fhir/AuditEvent", params={"type": f"{DCM}|110106"}).json()
    [event] = [entry["resource"] for entry in bundle.get("entry", [])]
    named = {entity["what"]["reference"] for entity in event["entity"]}
    assert named == {"Group/g1", "Patient/pa", "Patient/pb"}  # pc is no member: not named


def test_a_group_is_in_the_compartment_of_each_patient_it_names(client, services, cohort):
    """R4 compartmentdefinition-patient.html: Group, by `member`, whether the membership holds now or not."""
    seed(services, _group("g2", _member("pb", inactive=True)))
    assert ids(client.get("/fhir/Patient/pa/Group").json()) == ["g1"]
    assert sorted(ids(client.get("/fhir/Patient/pb/Group").json())) == ["g1", "g2"]
    assert ids(client.get("/fhir/Patient/pc/Group").json()) == []
    assert ids(client.get("/fhir/Patient/pb/Group", params={"_id": "g2"}).json()) == ["g2"]
    assert client.get("/fhir/Patient/pa/Device").status_code == 400  # Device is in no patient's compartment
    everything = client.get("/fhir/Patient/pa/$everything").json()
    assert "g1" in ids(everything) and "g2" not in ids(everything)
    assert ids(client.get("/fhir/Patient/pb/$everything", params={"_type": "Group"}).json()) == ["g1", "g2"]
    # A Group has no date of care: a window keeps it, as it keeps a resource without one.
    windowed = client.get("/fhir/Patient/pa/$everything", params={"_type": "Group", "start": "2999-01-01"}).json()
    assert ids(windowed) == ["g1"]


def test_a_patient_level_export_holds_the_groups_that_name_its_patients(client, services, cohort):
    seed(services, _group("g2", _member("pc")))
    assert sorted(_ids(_kick_off_files(client, "/fhir/Patient/$export", _type="Group")["Group"])) == ["g1", "g2"]
    only_pc = client.post("/fhir/Patient/$export", headers=KICK, json={"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/pc"}}, {"name": "_type", "valueString": "Group"}]})
    assert only_pc.status_code == 202, only_pc.text
    files = _files(client, _manifest(client, only_pc.headers["Content-Location"].removeprefix(BASE)))
    assert _ids(files["Group"]) == ["g2"]


def test_a_group_export_holds_its_own_group_and_those_of_its_members(client, services, cohort):
    seed(services, _group("g2", _member("pa")), _group("g3", _member("pc")), _group("empty"))
    assert sorted(_ids(_group_export(client, _type="Group")["Group"])) == ["g1", "g2"]  # g3 names no member of g1
    assert _ids(_group_export(client, "empty", _type="Group")["Group"]) == ["empty"]


def _kick_off_files(client, path: str, **params: str) -> dict[str, list[bytes]]:
    return _files(client, _manifest(client, _kick_off(client, path, **params)))


def test_a_group_read_and_export_name_every_member_patient_in_the_audit_trail(client, services, cohort):
    """IHE BALP / ATNA: every patient whose data was disclosed is found by `AuditEvent?patient=`. A read of a
    Group of 250 (or an export of it) is three events of at most MAX_PATIENTS_NAMED patients, one transaction's,
    each valid R4 and naming the Group, on a chain that still verifies."""
    crowd = [f"m{number:03}" for number in range(2 * MAX_PATIENTS_NAMED + 50)]
    seed(services, _group("crowd", *(_member(pid) for pid in crowd)))
    assert client.get("/fhir/Group/g1").status_code == 200
    assert client.get("/fhir/Group/crowd").status_code == 200
    assert client.get("/fhir/Group", params={"member": "Patient/pc"}).status_code == 200
    _group_export(client, "crowd", _type="Patient")
    services.audit.chain.project()
    events = [entry["resource"] for entry in
              client.get("/fhir/AuditEvent", params={"_count": 100, "_sort": "-date"}).json()["entry"]]

    def named(prefix: str) -> tuple[list[str], list[dict]]:
        found = sorted((event for event in events if event.get("outcomeDesc", "").startswith(prefix)),
                       key=lambda event: event["outcomeDesc"])
        return [entity["what"]["reference"] for event in found for entity in event["entity"]
                if entity.get("role", {}).get("code") == "1"], found

    assert named("GET /fhir/Group/g1 ")[0] == ["Patient/pa", "Patient/pb"]
    assert named("GET /fhir/Group ")[0] == ["Patient/pc"]  # a search names the patients it asks about
    everyone = [f"Patient/{pid}" for pid in crowd]
    for prefix in ("GET /fhir/Group/crowd ", "$export "):
        patients, found = named(prefix)
        assert len(found) == 3 and sorted(patients) == everyone, prefix
        for one in found:
            validate_fhir(one)
            assert validated(dict(one)) == one
            assert {"reference": "Group/crowd"} in [entity.get("what") for entity in one["entity"]]
    read_ids = {event["id"] for event in named("GET /fhir/Group/crowd ")[1]}
    export_ids = {event["id"] for event in named("$export ")[1]}
    for pid in crowd:
        found = set(ids(client.get("/fhir/AuditEvent", params={"patient": f"Patient/{pid}", "_count": 50}).json()))
        assert len(found & read_ids) == 1 and len(found & export_ids) == 1, pid
    verified = {item["name"]: item for item in client.get("/fhir/AuditEvent/$verify").json()["parameter"]}
    assert verified["intact"]["valueBoolean"] is True


def test_since_exports_the_whole_compartment_of_a_member_who_joined_after_it(client, services, cohort):
    """export.html, `_since`: a Group-level export MAY return the older data of patients added to the Group after
    it. Decided by the Group's version at `_since` (its history keeps every one), by the kick-off's rule."""
    seed(services, _group("g2", _member("pb", inactive=True)))
    time.sleep(0.01)
    since = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    seed(services, _group("g1", _member("pa"), _member("pb"), _member("pc")),  # pc joins
         _group("g2", _member("pb")),  # pb's membership holds again
         _group("late", _member("pa")))  # made after _since: every member joined after it
    files = _group_export(client, _since=since, _type="Patient,Observation")
    assert _ids(files["Patient"]) == ["pc"] and _ids(files["Observation"]) == ["oc"]  # pa's and pb's are older
    assert _ids(_group_export(client, "g2", _since=since, _type="Observation")["Observation"]) == ["ob"]
    assert _ids(_group_export(client, "late", _since=since, _type="Observation")["Observation"]) == ["oa"]
    # Without a newcomer, _since holds for every member; a Patient-level export has no Group to tell newcomers by.
    seed(services, _observation("oa2", "Patient/pa"))
    assert _ids(_group_export(client, "g2", _since=datetime.now(UTC).isoformat(), _type="Observation").get(
        "Observation", [])) == []
    assert _ids(_kick_off_files(client, "/fhir/Patient/$export", _since=since, _type="Observation")["Observation"]) \
        == ["oa2"]


def test_since_newcomers_follow_the_groups_history_through_removals_deletions_and_time_zones(
        client, services, cohort):
    """Who joined after `_since` is read from the Group's version at it: a member removed before it and added
    again after it joined; one there at it, removed and added again, did not; a Group deleted before it and made
    again is new; one deleted after it and made again is not; `_since` in any offset is the same instant."""

    def instant() -> datetime:
        time.sleep(0.01)
        now = datetime.now(UTC)
        time.sleep(0.01)
        return now

    def observations(gid: str, since: str) -> list[str]:
        return _ids(_group_export(client, gid, _since=since, _type="Observation").get("Observation", []))

    seed(services, _group("back", _member("pa")), _group("stayed", _member("pa")), _group("remade", _member("pa")),
         _group("kept", _member("pa")), _group("zone", _member("pa")))
    seed(services, _group("back"))
    assert client.delete("/fhir/Group/remade").status_code in (200, 204)
    since = instant()
    seed(services, _group("back", _member("pa")), _group("stayed"), _group("zone", _member("pa"), _member("pb")))
    seed(services, _group("stayed", _member("pa")))
    assert client.put("/fhir/Group/remade", json=_group("remade", _member("pa"))).status_code == 201
    assert client.delete("/fhir/Group/kept").status_code in (200, 204)
    assert client.put("/fhir/Group/kept", json=_group("kept", _member("pa"))).status_code == 201
    assert observations("back", since.isoformat()) == ["oa"]
    assert observations("stayed", since.isoformat()) == []
    assert observations("remade", since.isoformat()) == ["oa"]
    assert observations("kept", since.isoformat()) == []
    assert observations("zone", since.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()) == ["ob"]
