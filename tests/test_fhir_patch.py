"""The patch interaction (FHIR R4 http.html#patch) with JSON Patch (RFC 6902):
the result is written as an update, so everything an update does applies."""

import base64
import json
from typing import Any

import pytest
from sqlalchemy import select

from fhir_mappings import fhir_json
from fhir_mappings.errors import InvalidRequest, InvalidResource
from fhir_mappings.json_patch import apply_patch, parse_patch
from server.auth.scopes import Role
from server.settings import Settings
from server.tables import fhir_subscription_notifications
from tests.inference_checks import order, run_queued, stored_study

JSON_PATCH = {"Content-Type": "application/json-patch+json"}
# Somewhere Subscriptions may notify, never reached: a test only reads the outbox.
HOOKS = "https://ehr.example.org/fhir-hooks/"
TASK = {
    "resourceType": "Task", "status": "draft", "intent": "proposal", "description": "first",
    "identifier": [{"system": "urn:example:tasks", "value": "t-1"}],
    "input": [
        {"type": {"text": "a"}, "valueString": "one"},
        {"type": {"text": "b"}, "valueDecimal": 1.10},
    ],
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"subscription_endpoints": HOOKS})


def _patch(client, url: str, operations: Any, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return client.patch(url, content=json.dumps(operations), headers={**JSON_PATCH, **(headers or {})})


def _task(client, task_id: str = "p1", **changes: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = json.dumps({**TASK, "id": task_id, **changes}).replace('"valueDecimal": 1.1', '"valueDecimal": 1.10')
    # Sent as text: Python's json would write the decimal 1.10 as 1.1.
    response = client.put(f"/fhir/Task/{task_id}", content=body, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _diagnostics(response) -> str:  # type: ignore[no-untyped-def]
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]  # type: ignore[no-any-return]


# --- the JSON Patch module on its own (RFC 6902 Appendix A's cases) --------------

@pytest.mark.parametrize(("document", "operations", "expected"), [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc"]}], {"foo": ["bar", ["abc"]]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ({"baz": "qux"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo"}),
    ({"a": [1, 2, 3]}, [{"op": "replace", "path": "/a/2", "value": 9}], {"a": [1, 2, 9]}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"a": {"b": [1]}}, [{"op": "copy", "from": "/a", "path": "/c"}, {"op": "add", "path": "/c/b/-", "value": 2}],
     {"a": {"b": [1]}, "c": {"b": [1, 2]}}),
    ({"/": 1, "m~n": 2}, [{"op": "replace", "path": "/~1", "value": 3}, {"op": "remove", "path": "/m~0n"}], {"/": 3}),
    ({"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2.0}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
])
def test_each_operation_does_what_rfc_6902_says(document, operations, expected):
    before = json.dumps(document)
    assert apply_patch(document, parse_patch(operations)) == expected
    assert json.dumps(document) == before  # the input is left as it was


@pytest.mark.parametrize(("operations", "error", "words"), [
    ({"op": "add"}, InvalidRequest, "array of operations"),
    (["add"], InvalidRequest, "must be an object"),
    ([{"op": "delete", "path": "/a"}], InvalidRequest, "RFC 6902 defines"),
    ([{"op": ["add"], "path": "/a", "value": 1}], InvalidRequest, "RFC 6902 defines"),  # unhashable: no TypeError
    ([{"op": {"add": 1}, "path": "/a", "value": 1}], InvalidRequest, "RFC 6902 defines"),
    ([{"op": "add", "path": "/a"}], InvalidRequest, "needs 'value'"),
    ([{"op": "move", "path": "/a"}], InvalidRequest, "needs 'from'"),
    ([{"op": "remove", "path": "a"}], InvalidRequest, "not a JSON Pointer"),
    ([{"op": "remove", "path": "/a~2"}], InvalidRequest, "not a JSON Pointer"),
    ([{"op": "remove", "path": 3}], InvalidRequest, "JSON Pointer string"),
    ([{"op": "move", "from": "/a", "path": "/a/b"}], InvalidRequest, "into itself"),
    ([{"op": "remove", "path": "/missing"}], InvalidResource, "/missing is not there"),
    ([{"op": "replace", "path": "/missing", "value": 1}], InvalidResource, "/missing is not there"),
    ([{"op": "add", "path": "/a/b/c", "value": 1}], InvalidResource, "/a/b is not there"),
    ([{"op": "add", "path": "/list/5", "value": 1}], InvalidResource, "has 2 items"),
    ([{"op": "remove", "path": "/list/01"}], InvalidResource, "not an array index"),
    ([{"op": "remove", "path": "/list/-"}], InvalidResource, "not an array index"),
    ([{"op": "test", "path": "/flag", "value": 1}], InvalidResource, "test names"),  # true is not 1
    ([{"op": "test", "path": "/list", "value": [1]}], InvalidResource, "test names"),
    ([{"op": "add", "path": "/flag/x", "value": 1}], InvalidResource, "takes no members"),
])
def test_malformed_patches_are_400_and_inapplicable_ones_422(operations, error, words):
    document = {"a": {}, "list": [1, 2], "flag": True}
    with pytest.raises(error, match=words):
        apply_patch(document, parse_patch([{"op": "test", "path": "/a", "value": {}}, *operations]
                                          if isinstance(operations, list) else operations))


def test_a_test_compares_decimals_by_their_value_as_written():
    """RFC 6902 §4.6: numbers are equal when their values are; two decimals
    that differ in their 20th digit differ, though as floats they are one."""
    document = fhir_json.loads(b'{"a": 0.12345678901234567891, "b": 1.10, "c": 123456789012345678901234}')
    for path, written, equal in [("/a", b"0.12345678901234567891", True), ("/a", b"0.12345678901234567890", False),
                                 ("/b", b"1.1", True), ("/b", b"1.100", True), ("/b", b"1.11", False),
                                 ("/c", b"123456789012345678901234", True), ("/c", b"123456789012345678901235", False)]:
        operation = fhir_json.loads(b'[{"op": "test", "path": "%s", "value": %s}]' % (path.encode(), written))
        if equal:
            assert apply_patch(document, parse_patch(operation)) == document
        else:
            with pytest.raises(InvalidResource, match="test names"):
                apply_patch(document, parse_patch(operation))


def test_a_patch_that_fails_partway_applies_nothing():
    document = {"a": 1}
    with pytest.raises(InvalidResource, match="operation 1"):
        apply_patch(document, parse_patch([{"op": "replace", "path": "/a", "value": 2},
                                           {"op": "remove", "path": "/b"}]))
    assert document == {"a": 1}


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("operations", [
    # Each value is shallow enough for a body; added at the deepest place, again and again, they were not.
    [{"op": "add", "path": "/a", "value": _nested(60)}, {"op": "add", "path": "/a" + "/0" * 59, "value": _nested(60)}],
    [{"op": "add", "path": "/a", "value": _nested(60)}, {"op": "copy", "from": "/a", "path": "/a" + "/0" * 59}],
    [{"op": "add", "path": "/a", "value": _nested(60)}, {"op": "add", "path": "/b", "value": _nested(60)},
     {"op": "move", "from": "/a", "path": "/b" + "/0" * 59}],
])
def test_a_patch_may_not_nest_a_resource_deeper_than_a_body_may(operations):
    with pytest.raises(InvalidResource, match="more than 100 deep"):
        apply_patch({}, parse_patch(operations))


def test_copies_may_not_multiply_a_resource():
    # Each copy doubles the array: 2^21 items from a patch of 21 short operations.
    operations = [{"op": "copy", "from": "/a", "path": "/a/-"} for _ in range(21)]
    with pytest.raises(InvalidResource, match="copies and moves add up to more than"):
        apply_patch({"a": [1]}, parse_patch(operations))
    # Each move of a large part back and forth cost its size: a patch's few bytes, a resource's size each.
    large = {"a": list(range(100_000))}
    moves = [{"op": "move", "from": "/a", "path": "/b"}, {"op": "move", "from": "/b", "path": "/a"}] * 6
    with pytest.raises(InvalidResource, match="copies and moves add up to more than"):
        apply_patch(large, parse_patch(moves))
    small = apply_patch({"a": [1]}, parse_patch(operations[:5]))
    assert len(small["a"]) == 6 and small["a"][5][4] == small["a"][4]


# --- over HTTP ---------------------------------------------------------------------

def test_a_patch_writes_a_new_version_answered_as_an_update(fhir):
    _task(fhir)
    response = _patch(fhir, "/fhir/Task/p1", [
        {"op": "test", "path": "/description", "value": "first"},
        {"op": "replace", "path": "/status", "value": "requested"},
        {"op": "add", "path": "/input/-", "value": {"type": {"text": "c"}, "valueString": "three"}},
        {"op": "remove", "path": "/input/0"},
        {"op": "copy", "from": "/input/1/type", "path": "/code"},
        {"op": "move", "from": "/description", "path": "/note"},
        {"op": "replace", "path": "/note", "value": [{"text": "moved"}]},
    ])
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'
    assert "location" not in response.headers  # an update of what exists, not a create
    task = response.json()
    assert task["meta"]["versionId"] == "2"
    assert task["status"] == "requested"
    assert [item["type"]["text"] for item in task["input"]] == ["b", "c"]
    assert task["code"] == {"text": "c"} and task["note"] == [{"text": "moved"}]
    assert "description" not in task
    # The decimal as it was written, untouched by the patch (1.10, not 1.1).
    assert b'"valueDecimal":1.10' in fhir.get("/fhir/Task/p1").content
    history = fhir.get("/fhir/Task/p1/_history").json()
    assert [entry["request"]["method"] for entry in history["entry"]] == ["PUT", "PUT"]
    first = fhir.get("/fhir/Task/p1/_history/1").json()
    assert first["status"] == "draft" and first["description"] == "first"
    assert fhir.get("/fhir/Task", params={"status": "requested"}).json()["total"] == 1  # reindexed


def test_prefer_return_shapes_the_answer_as_for_an_update(fhir):
    _task(fhir)
    operations = [{"op": "replace", "path": "/description", "value": "second"}]
    minimal = _patch(fhir, "/fhir/Task/p1", operations, {"Prefer": "return=minimal"})
    assert minimal.status_code == 200 and minimal.content == b"" and minimal.headers["etag"] == 'W/"2"'
    outcome = _patch(fhir, "/fhir/Task/p1", operations, {"Prefer": "return=OperationOutcome"})
    assert "is at version 3" in _diagnostics(outcome)


def test_if_match_is_judged_before_the_patch(fhir):
    _task(fhir)
    stale = _patch(fhir, "/fhir/Task/p1", [{"op": "remove", "path": "/nothing"}], {"If-Match": 'W/"7"'})
    assert stale.status_code == 412, stale.text
    assert "not 7" in _diagnostics(stale)
    current = _patch(fhir, "/fhir/Task/p1", [{"op": "replace", "path": "/description", "value": "x"}],
                     {"If-Match": 'W/"1"'})
    assert current.status_code == 200
    again = _patch(fhir, "/fhir/Task/p1", [{"op": "replace", "path": "/description", "value": "y"}],
                   {"If-Match": 'W/"1"'})
    assert again.status_code == 412
    assert fhir.get("/fhir/Task/p1").json()["description"] == "x"


@pytest.mark.parametrize(("operations", "status", "words"), [
    ({"op": "replace", "path": "/status", "value": "ready"}, 400, "array of operations"),
    ([{"op": "update", "path": "/status", "value": "ready"}], 400, "RFC 6902 defines"),
    ([{"op": "replace", "path": "status", "value": "ready"}], 400, "not a JSON Pointer"),
    ([{"op": "remove", "path": "/focus"}], 422, "/focus is not there"),
    ([{"op": "test", "path": "/status", "value": "ready"}], 422, "test names"),
    ([{"op": "replace", "path": "/status", "value": "not-a-status"}], 422, "status"),  # an invalid result
    ([{"op": "add", "path": "/colour", "value": "blue"}], 422, "colour"),
    ([{"op": "replace", "path": "/id", "value": "p2"}], 422, "may not change the Task's id"),
    ([{"op": "remove", "path": "/id"}], 422, "may not change the Task's id"),
    ([{"op": "replace", "path": "/resourceType", "value": "Patient"}], 422, "may not change the Task's resourceType"),
    ([{"op": "replace", "path": "", "value": {"resourceType": "Task"}}], 422, "may not change"),
    ([{"op": "remove", "path": ""}], 422, "leaves no Task"),
])
def test_a_patch_that_cannot_be_applied_stores_nothing(fhir, operations, status, words):
    _task(fhir)
    response = _patch(fhir, "/fhir/Task/p1", operations)
    assert response.status_code == status, response.text
    assert words in _diagnostics(response)
    assert fhir.get("/fhir/Task/p1").json()["meta"]["versionId"] == "1"
    assert fhir.get("/fhir/Task/p2").status_code == 404


def test_a_patch_nesting_the_resource_past_the_stack_is_422(fhir):
    _task(fhir)
    operations, path = [], "/note"
    for _ in range(12):  # each value 90 deep, as a body may be; together 1080 deep, past Python's recursion limit
        operations.append({"op": "add", "path": path, "value": _nested(90)})
        path += "/0" * 89
    response = _patch(fhir, "/fhir/Task/p1", operations)
    assert response.status_code == 422 and "more than 100 deep" in _diagnostics(response), response.text
    assert fhir.get("/fhir/Task/p1").json()["meta"]["versionId"] == "1"


def test_the_body_must_be_json_patch_or_fhirpath_patch(fhir):
    _task(fhir)
    fhirpath = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Task.status"},
        {"name": "value", "valueCode": "ready"}]}]}
    for content_type in ("application/merge-patch+json", "text/plain", None):  # XML Patch neither
        headers = {"Content-Type": content_type} if content_type else {}
        response = fhir.patch("/fhir/Task/p1", content=json.dumps(fhirpath), headers=headers)
        assert response.status_code == 415, content_type
        assert "FHIRPath Patch" in _diagnostics(response) and "application/json-patch+json" in _diagnostics(response)
    assert fhir.get("/fhir/Task/p1").json()["status"] == "draft"
    as_fhir = fhir.patch("/fhir/Task/p1", content=json.dumps(fhirpath), headers={"Content-Type": "application/json"})
    assert as_fhir.status_code == 200 and as_fhir.json()["status"] == "ready"  # a FHIRPath Patch
    broken = fhir.patch("/fhir/Task/p1", content=b"[{", headers=JSON_PATCH)
    assert broken.status_code == 400 and "not valid JSON" in _diagnostics(broken)
    assert fhir.get("/fhir/Task/p1").json()["meta"]["versionId"] == "2"


def test_missing_deleted_and_read_only_resources(fhir):
    operations = [{"op": "replace", "path": "/status", "value": "ready"}]
    assert _patch(fhir, "/fhir/Task/nobody", operations).status_code == 404
    malformed = _patch(fhir, "/fhir/Task/nobody", {"op": "replace"})
    assert malformed.status_code == 400  # the patch is judged before what it would patch is looked up
    assert fhir.get("/fhir/Task/nobody").status_code == 404  # a patch never creates
    _task(fhir)
    assert fhir.delete("/fhir/Task/p1").status_code == 204
    gone = _patch(fhir, "/fhir/Task/p1", operations)
    assert gone.status_code == 410, gone.text
    read_only = _patch(fhir, "/fhir/Patient/anyone", operations)
    assert read_only.status_code == 405 and read_only.headers["allow"] == "GET, HEAD"


def test_conditional_patch(fhir):
    _task(fhir, "c1")
    _task(fhir, "c2", identifier=[{"system": "urn:example:tasks", "value": "t-2"}])
    _task(fhir, "c3", identifier=[{"system": "urn:example:tasks", "value": "t-2"}])
    operations = [{"op": "replace", "path": "/status", "value": "ready"}]
    one = _patch(fhir, "/fhir/Task?identifier=urn:example:tasks|t-1", operations)
    assert one.status_code == 200, one.text
    assert one.json()["id"] == "c1" and one.json()["status"] == "ready"
    assert _patch(fhir, "/fhir/Task?identifier=urn:example:tasks|t-9", operations).status_code == 404
    several = _patch(fhir, "/fhir/Task?identifier=urn:example:tasks|t-2", operations)
    assert several.status_code == 412
    assert {fhir.get(f"/fhir/Task/{task_id}").json()["status"] for task_id in ("c2", "c3")} == {"draft"}
    assert _patch(fhir, "/fhir/Task", operations).status_code == 400  # no condition
    unknown = _patch(fhir, "/fhir/Task?colour=blue", operations)
    assert unknown.status_code == 400  # a condition is searched strictly


def test_patch_needs_the_right_to_update(services, client):
    from tests.test_auth_access import _bearer

    _task(client)
    operations = [{"op": "replace", "path": "/status", "value": "ready"}]
    reader = _bearer(services, Role.AI_OPERATOR, "system/Task.crs")
    refused = _patch(client, "/fhir/Task/p1", operations, reader)
    assert refused.status_code == 403
    updater = _bearer(services, Role.AI_OPERATOR, "system/Task.ru")
    assert _patch(client, "/fhir/Task/p1", operations, updater).status_code == 200


def test_a_patch_needs_the_right_to_read_what_it_patches(services, client):
    """A patch answers with the whole resource and its `test` tells what is there:
    with update alone, an empty patch read any Task its client may not read."""
    from tests.test_auth_access import _bearer

    _task(client)
    blind = _bearer(services, Role.AI_OPERATOR, "system/Task.u")
    assert client.get("/fhir/Task/p1", headers=blind).status_code == 403
    refused = _patch(client, "/fhir/Task/p1", [], blind)
    assert refused.status_code == 403 and "Task.r" in _diagnostics(refused), refused.text
    conditional = _patch(client, "/fhir/Task?identifier=urn:example:tasks|t-1", [], blind)
    assert conditional.status_code == 403
    entry = {"resource": _binary([]), "request": {"method": "PATCH", "url": "Task/p1"}}
    for kind in ("batch", "transaction"):
        bundle = client.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": [entry]}, headers=blind)
        answer = bundle.json()
        status = answer["entry"][0]["response"]["status"] if kind == "batch" else str(bundle.status_code)
        assert status.startswith("403"), bundle.text
    assert client.get("/fhir/Task/p1").json()["meta"]["versionId"] == "1"


def test_a_patch_is_audited_as_a_patch(services, fhir):
    _task(fhir)
    assert _patch(fhir, "/fhir/Task/p1", [{"op": "replace", "path": "/status", "value": "ready"}]).status_code == 200
    services.audit.chain.project()
    events = fhir.get("/fhir/AuditEvent", params={"subtype": "patch", "_count": 100}).json()["entry"]
    described = [entry["resource"].get("outcomeDesc") for entry in events]
    assert "PATCH /fhir/Task/p1 committed" in described, described
    [patched] = [entry["resource"] for entry in events if entry["resource"].get("outcomeDesc", "").startswith("PATCH")]
    assert patched["action"] == "U"
    assert "Task/p1" in [entity.get("what", {}).get("reference") for entity in patched["entity"]]
    assert services.audit.chain.verify().intact


def test_cancelling_an_inference_task_by_patch_cancels_its_job(queued):
    client, services = queued
    task = order(client, stored_study(client, 52))
    response = _patch(client, f"/fhir/Task/{task['id']}", [
        {"op": "test", "path": "/status", "value": "requested"},
        {"op": "replace", "path": "/status", "value": "cancelled"},
        {"op": "add", "path": "/statusReason", "value": {"text": "ordered twice"}},
    ])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert services.jobs.queue.public_status(services.jobs.queue.get(task["id"])) == "cancelled"
    assert run_queued(services) == []
    # The job's own rules hold as for a PUT: a cancelled job stays cancelled.
    back = _patch(client, f"/fhir/Task/{task['id']}", [{"op": "replace", "path": "/status", "value": "requested"}])
    assert back.status_code == 422 and "cancelled" in _diagnostics(back)


# The same change as a FHIRPath Patch (R4 fhirpatch.html), which takes the same way to the store.
_FHIRPATH_READY = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
    {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Task.status"},
    {"name": "value", "valueCode": "ready"}]}]}


@pytest.mark.parametrize("fhirpath", [False, True])
def test_a_patch_is_told_to_subscriptions_as_an_update_is(services, client, fhirpath):
    subscription = client.post("/fhir/Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "patched Tasks",
        "criteria": "Task?status=ready", "channel": {"type": "rest-hook", "endpoint": f"{HOOKS}tasks"}})
    assert subscription.status_code == 201 and subscription.json()["status"] == "active", subscription.text
    _task(client)
    response = (
        client.patch("/fhir/Task/p1", json=_FHIRPATH_READY, headers={"Content-Type": "application/fhir+json"})
        if fhirpath else _patch(client, "/fhir/Task/p1", [{"op": "replace", "path": "/status", "value": "ready"}])
    )
    assert response.status_code == 200, response.text
    with services.engine.connect() as connection:
        versions = connection.execute(select(fhir_subscription_notifications.c.version_id).where(
            fhir_subscription_notifications.c.resource_type == "Task",
            fhir_subscription_notifications.c.resource_id == "p1")).scalars().all()
    assert 2 in versions  # the patched version waits in the outbox, in the write's own transaction


def _binary(operations: Any) -> dict[str, Any]:
    data = base64.b64encode(json.dumps(operations).encode()).decode()
    return {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}


def test_patch_entries_in_a_batch(fhir):
    _task(fhir)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": _binary([{"op": "replace", "path": "/status", "value": "ready"}]),
         "request": {"method": "PATCH", "url": "Task/p1", "ifMatch": 'W/"1"'}},
        {"resource": _binary([{"op": "remove", "path": "/nothing"}]), "request": {"method": "PATCH", "url": "Task/p1"}},
        {"resource": _binary([]), "request": {"method": "PATCH", "url": "Task/p1", "ifMatch": 'W/"1"'}},
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "op"}]},
         "request": {"method": "PATCH", "url": "Task/p1"}},
        {"resource": {**_binary([]), "data": "***"}, "request": {"method": "PATCH", "url": "Task/p1"}},
        {"resource": _binary([]), "request": {"method": "PATCH", "url": "Task?identifier=t-1"}},
    ]}
    response = fhir.post("/fhir", json=bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [entry["response"]["status"] for entry in entries] == ["200 OK", "422", "412", "400", "400", "200 OK"]
    assert entries[0]["resource"]["status"] == "ready" and entries[0]["response"]["etag"] == 'W/"2"'
    assert "only parameters named 'operation'" in entries[3]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert entries[5]["response"]["location"].startswith("http://testserver/fhir/Task/p1/_history/3")


def test_patch_entries_in_a_transaction_are_all_or_nothing(fhir):
    _task(fhir, "t1")
    _task(fhir, "t2")
    good = [{"op": "replace", "path": "/status", "value": "ready"}]
    bad = [{"op": "test", "path": "/status", "value": "completed"}]
    failing = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _binary(good), "request": {"method": "PATCH", "url": "Task/t1"}},
        {"resource": _binary(bad), "request": {"method": "PATCH", "url": "Task/t2"}},
    ]}
    response = fhir.post("/fhir", json=failing)
    assert response.status_code == 422, response.text
    assert "entry 1 (PATCH Task/t2)" in _diagnostics(response)
    assert fhir.get("/fhir/Task/t1").json()["status"] == "draft"
    twice = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _binary(good), "request": {"method": "PATCH", "url": "Task/t1"}},
        {"request": {"method": "DELETE", "url": "Task/t1"}},
    ]}
    assert "both reach Task/t1" in _diagnostics(fhir.post("/fhir", json=twice))
    passing = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _binary(good), "request": {"method": "PATCH", "url": "Task/t1"}},
        {"resource": _binary(good), "request": {"method": "PATCH", "url": "Task/t2"}},
    ]}
    response = fhir.post("/fhir", json=passing)
    assert response.status_code == 200, response.text
    assert [entry["response"]["status"] for entry in response.json()["entry"]] == ["200 OK", "200 OK"]
    assert {fhir.get(f"/fhir/Task/{task_id}").json()["status"] for task_id in ("t1", "t2")} == {"ready"}


def test_the_capability_statement_lists_patch(fhir):
    statement = fhir.get("/fhir/metadata").json()
    assert statement["patchFormat"] == ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"]
    interactions = {
        resource["type"]: {item["code"] for item in resource["interaction"]}
        for resource in statement["rest"][0]["resource"]
    }
    assert "patch" in interactions["Task"] and "patch" in interactions["Subscription"]
    assert "patch" not in interactions["Patient"]  # the server writes it itself


@pytest.mark.parametrize("method", ["HEAD", "GET", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("resource_type", ["Task", "Patient"])  # Patient: a type the server alone writes
def test_an_operation_url_answers_405_to_a_method_it_does_not_take(client, method, resource_type):
    response = client.request(method, f"/fhir/{resource_type}/$validate")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"  # which $validate takes of every type (Allow was empty for Patient)


def _transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


PARENT = "urn:uuid:5b7d4c3a-9e2f-4a1b-8c6d-0e1f2a3b4c5d"


def test_a_transaction_patch_may_link_to_another_entry_by_its_placeholder(fhir):
    _task(fhir, "child")
    parent = {"fullUrl": PARENT, "resource": {"resourceType": "Task", "status": "draft", "intent": "order"},
              "request": {"method": "POST", "url": "Task"}}
    link = [{"op": "add", "path": "/partOf", "value": [{"reference": PARENT}]},
            {"op": "add", "path": "/text", "value": {
                "status": "generated",
                "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{PARENT}">p</a></div>'}}]
    response = fhir.post("/fhir", json=_transaction(
        {"resource": _binary(link), "request": {"method": "PATCH", "url": "Task/child"}}, parent,
    ))
    assert response.status_code == 200, response.text
    parent_id = response.json()["entry"][1]["response"]["location"].split("/")[-3]
    stored = fhir.get("/fhir/Task/child").json()
    assert stored["partOf"] == [{"reference": f"Task/{parent_id}"}]
    assert f'href="Task/{parent_id}"' in stored["text"]["div"]  # the narrative's links as well
    assert fhir.get(f"/fhir/Task/{parent_id}").status_code == 200


def test_a_placeholder_no_entry_has_fails_the_transaction_and_names_it(fhir):
    _task(fhir, "child")
    _task(fhir, "other", identifier=[{"system": "urn:example:tasks", "value": "t-2"}])
    unknown = "urn:uuid:0f0e0d0c-0b0a-4908-8706-050403020100"
    response = fhir.post("/fhir", json=_transaction(
        {"resource": _binary([{"op": "replace", "path": "/status", "value": "ready"}]),
         "request": {"method": "PATCH", "url": "Task/other"}},
        {"resource": _binary([{"op": "add", "path": "/partOf", "value": [{"reference": unknown}]}]),
         "request": {"method": "PATCH", "url": "Task/child"}},
    ))
    assert response.status_code == 400, response.text
    assert unknown in _diagnostics(response) and "entry 1 (PATCH Task/child)" in _diagnostics(response)
    assert fhir.get("/fhir/Task/other").json()["meta"]["versionId"] == "1"  # all or nothing
    assert "partOf" not in fhir.get("/fhir/Task/child").json()
    conditional = fhir.post("/fhir", json=_transaction(
        {"resource": _binary([{"op": "add", "path": "/partOf", "value": [{"reference": "Task?identifier=t-2"}]}]),
         "request": {"method": "PATCH", "url": "Task/child"}},
    ))
    assert conditional.status_code == 400 and "conditional reference Task?identifier=t-2" in _diagnostics(conditional)


def test_in_a_batch_a_patched_placeholder_is_refused_for_what_it_is(fhir):
    _task(fhir, "child")
    parent = {"fullUrl": PARENT, "resource": {"resourceType": "Task", "status": "draft", "intent": "order"},
              "request": {"method": "POST", "url": "Task"}}
    response = fhir.post("/fhir", json=_transaction(
        parent, {"resource": _binary([{"op": "add", "path": "/partOf", "value": [{"reference": PARENT}]}]),
                 "request": {"method": "PATCH", "url": "Task/child"}}, kind="batch",
    ))
    assert response.status_code == 200, response.text
    created, patched = response.json()["entry"]
    assert created["response"]["status"] == "201 Created" and patched["response"]["status"] == "422"
    diagnostics = patched["response"]["outcome"]["issue"][0]["diagnostics"]
    assert PARENT in diagnostics and "only in a transaction" in diagnostics and "not in a batch" in diagnostics
    assert fhir.get("/fhir/Task/child").json()["meta"]["versionId"] == "1"


def test_conditional_patch_entries_in_a_batch(fhir):
    _task(fhir, "c1")
    _task(fhir, "c2", identifier=[{"system": "urn:example:tasks", "value": "shared"}])
    _task(fhir, "c3", identifier=[{"system": "urn:example:tasks", "value": "shared"}])
    ready = _binary([{"op": "replace", "path": "/status", "value": "ready"}])
    response = fhir.post("/fhir", json=_transaction(
        {"resource": ready, "request": {"method": "PATCH", "url": "Task?identifier=urn:example:tasks|t-1"}},
        {"resource": ready, "request": {"method": "PATCH", "url": "Task?identifier=urn:example:tasks|none"}},
        {"resource": ready, "request": {"method": "PATCH", "url": "Task?identifier=urn:example:tasks|shared"}},
        {"resource": ready, "request": {"method": "PATCH", "url": "Task?identifier=urn:example:tasks|t-1",
                                        "ifMatch": 'W/"1"'}},
        kind="batch",
    ))
    assert response.status_code == 200, response.text
    assert [entry["response"]["status"] for entry in response.json()["entry"]] == ["200 OK", "404", "412", "412"]
    assert fhir.get("/fhir/Task/c1").json()["status"] == "ready"
    assert {fhir.get(f"/fhir/Task/{task_id}").json()["status"] for task_id in ("c2", "c3")} == {"draft"}


def test_conditional_patch_entries_in_a_transaction(fhir):
    _task(fhir, "c1")
    _task(fhir, "c2", identifier=[{"system": "urn:example:tasks", "value": "shared"}])
    _task(fhir, "c3", identifier=[{"system": "urn:example:tasks", "value": "shared"}])
    ready = _binary([{"op": "replace", "path": "/status", "value": "ready"}])
    by_t1 = {"resource": ready, "request": {"method": "PATCH", "url": "Task?identifier=urn:example:tasks|t-1"}}
    for condition, status in (("none", 404), ("shared", 412)):
        url = f"Task?identifier=urn:example:tasks|{condition}"
        other = {"resource": ready, "request": {"method": "PATCH", "url": url}}
        failed = fhir.post("/fhir", json=_transaction(by_t1, other))
        assert failed.status_code == status, failed.text
        assert "entry 1" in _diagnostics(failed)
        assert fhir.get("/fhir/Task/c1").json()["status"] == "draft"  # rolled back whole
    # The match is the entry's identity: a PATCH of it by id beside it reaches one resource twice.
    by_id = {"resource": ready, "request": {"method": "PATCH", "url": "Task/c1"}}
    twice = fhir.post("/fhir", json=_transaction(by_t1, by_id))
    assert twice.status_code == 400 and "both reach Task/c1" in _diagnostics(twice)
    # A placeholder for the conditional entry stands for its match; ifMatch is judged on that match.
    linked = fhir.post("/fhir", json=_transaction(
        {**by_t1, "fullUrl": PARENT, "request": {**by_t1["request"], "ifMatch": 'W/"1"'}},
        {"resource": _binary([{"op": "add", "path": "/partOf", "value": [{"reference": PARENT}]}]),
         "request": {"method": "PATCH", "url": "Task/c2"}},
    ))
    assert linked.status_code == 200, linked.text
    first = linked.json()["entry"][0]["response"]
    assert first["status"] == "200 OK" and first["location"].endswith("/Task/c1/_history/2")
    assert fhir.get("/fhir/Task/c2").json()["partOf"] == [{"reference": "Task/c1"}]
    stale = fhir.post("/fhir", json=_transaction({**by_t1, "request": {**by_t1["request"], "ifMatch": 'W/"1"'}}))
    assert stale.status_code == 412, stale.text
