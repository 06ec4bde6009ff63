"""The patch interaction with FHIRPath Patch (FHIR R4 fhirpatch.html): a
Parameters resource whose paths are FHIRPath, of the subset fhir_mappings/
fhirpath.py evaluates. Its result is written as an update, as a JSON Patch's is."""

import json
from typing import Any

import pytest

from fhir_mappings.errors import InvalidRequest, InvalidResource, NotSupported
from fhir_mappings.fhirpath_patch import apply_operations, parse_parameters
from tests.test_fhir_patch import TASK, _diagnostics, _task

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _operation(kind: str, path: str, **parts: dict[str, Any]) -> dict[str, Any]:
    named = [{"name": name, **value} for name, value in parts.items()]
    return {"name": "operation", "part": [
        {"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}, *named]}


def _parameters(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def _patch(client, url: str, *operations: dict[str, Any], headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return client.patch(url, content=json.dumps(_parameters(*operations)), headers={**FHIR_JSON, **(headers or {})})


def _applied(*operations: dict[str, Any]) -> Any:
    task = {**TASK, "id": "x", "note": [{"text": "n1"}]}
    return apply_operations(task, parse_parameters(_parameters(*operations)))


# --- the operations on their own ------------------------------------------------

def test_add_appends_to_a_list_and_sets_an_absent_element():
    added = _applied(
        _operation("add", "Task", name={"valueString": "partOf"}, value={"valueReference": {"reference": "Task/y"}}),
        _operation("add", "Task", name={"valueString": "priority"}, value={"valueCode": "urgent"}),
        _operation("add", "Task.note.first()", name={"valueString": "author"},
                   value={"valueReference": {"reference": "Device/d"}}),  # a choice, by its value's type
        _operation("add", "Task", name={"valueString": "input"}, value={"part": [  # a backbone element, by parts
            {"name": "type", "valueCodeableConcept": {"text": "c"}}, {"name": "value", "valueBoolean": True}]}),
    )
    assert added["partOf"] == [{"reference": "Task/y"}] and added["priority"] == "urgent"
    assert added["note"] == [{"text": "n1", "authorReference": {"reference": "Device/d"}}]
    assert added["input"][-1] == {"type": {"text": "c"}, "valueBoolean": True} and len(added["input"]) == 3


def test_insert_delete_replace_and_move():
    identifier = {"valueIdentifier": {"system": "urn:example:tasks", "value": "t-0"}}
    changed = _applied(
        _operation("insert", "Task.identifier", index={"valueInteger": 0}, value=identifier),
        _operation("move", "Task.input", source={"valueInteger": 1}, destination={"valueInteger": 0}),
        _operation("replace", "Task.input.where(type.text = 'a').value", value={"valueQuantity": {"value": 2}}),
        _operation("replace", "Task.identifier.last().value", value={"valueString": "t-9"}),
        _operation("delete", "Task.description"),
        _operation("delete", "Task.note.where(text = 'n1' and $this.text.exists())"),
        _operation("delete", "Task.basedOn"),  # matches nothing: nothing to delete (R4 "if found")
        _operation("replace", "Task.identifier.where(value = 't\\u002d0').system", value={"valueUri": "urn:x"}),
    )
    assert [item["value"] for item in changed["identifier"]] == ["t-0", "t-9"]
    assert changed["identifier"][0]["system"] == "urn:x"  # found by 't\u002d0', an escaped '-'

    assert [item["type"]["text"] for item in changed["input"]] == ["b", "a"]
    assert changed["input"][1] == {"type": {"text": "a"}, "valueQuantity": {"value": 2}}  # valueString replaced
    assert "description" not in changed and "note" not in changed  # no empty array is left


def test_a_repeating_primitives_extensions_move_with_its_values():
    patient = {"resourceType": "Patient", "id": "p", "name": [
        {"given": ["a", "b"], "_given": [None, {"extension": [{"url": "urn:example:x", "valueString": "x"}]}]}]}
    operations = parse_parameters(_parameters(
        _operation("insert", "Patient.name[0].given", index={"valueInteger": 0}, value={"valueString": "z"}),
        _operation("move", "Patient.name[0].given", source={"valueInteger": 2}, destination={"valueInteger": 0}),
        _operation("add", "Patient.name[0]", name={"valueString": "given"}, value={"valueString": "w"}),
        _operation("delete", "Patient.name[0].given.where($this = 'a')"),
    ))
    [name] = apply_operations(patient, operations)["name"]
    assert name["given"] == ["b", "z", "w"]
    assert name["_given"] == [{"extension": [{"url": "urn:example:x", "valueString": "x"}]}, None, None]


@pytest.mark.parametrize(("operation", "error", "words"), [
    (_operation("replace", "Task.identifier.resolve()", value={"valueString": "x"}), NotSupported, "resolve()"),
    (_operation("replace", "Task.status | Task.intent", value={"valueCode": "x"}), NotSupported, "'|'"),
    (_operation("replace", "Task.input.where(value > 1)", value={"valueCode": "x"}), NotSupported, "'>'"),
    (_operation("replace", "Task.where(status = %x)", value={"valueCode": "x"}), NotSupported, "'%x'"),
    (_operation("replace", "Task.where(status)", value={"valueCode": "x"}), NotSupported, "compares a path"),
    (_operation("replace", "Task..status", value={"valueCode": "x"}), InvalidRequest, "expected"),
    (_operation("replace", "Task.status#", value={"valueCode": "x"}), InvalidRequest, "'#'"),
    (_operation("replace", "Task.input.where(", value={"valueCode": "x"}), InvalidRequest, "ends too soon"),
    # An escape FHIRPath does not have: `\u12` was read as `u12`, `\q` as `q`.
    (_operation("replace", "Task.where(status = '\\u12').status", value={"valueCode": "x"}), InvalidRequest,
     "\\u is no FHIRPath escape"),
    (_operation("replace", "Task.where(status = 'a\\q').status", value={"valueCode": "x"}), InvalidRequest,
     "\\q is no FHIRPath escape"),
    (_operation("replace", "status", value={"valueCode": "x"}), NotSupported, "resource type"),
    (_operation("replace", "Task.status"), InvalidRequest, "needs a part 'value'"),
    (_operation("rename", "Task.status"), InvalidRequest, "add, insert, delete, replace, move"),
    (_operation("delete", "Task.status", index={"valueInteger": 1}), InvalidRequest, "takes no part 'index'"),
    (_operation("insert", "Task.note", index={"valueInteger": -1}, value={"valueString": "x"}), InvalidRequest,
     "0 or more"),
    ({"name": "patch", "part": []}, InvalidRequest, "'operation'"),
    # A type that is no string is no key: it was looked up in a dict and raised TypeError (500).
    ({"name": "operation", "part": [{"name": "type", "valueCode": ["delete"]}]}, InvalidRequest, "not \"['delete']\""),
    ({"name": "operation", "part": [{"name": "type", "valueCode": {"a": 1}}]}, InvalidRequest, "its type (valueCode)"),
    (_operation("replace", "Task.where(" * 12 + "status = 'x'" + ")" * 12, value={"valueCode": "x"}),
     InvalidResource, "nests more than"),
])
def test_malformed_patches_are_400_and_unsupported_fhirpath_422_before_anything_is_read(operation, error, words):
    with pytest.raises(error) as raised:
        parse_parameters(_parameters(operation))
    assert words in raised.value.diagnostics


@pytest.mark.parametrize(("operation", "words"), [
    (_operation("replace", "Task.input.type", value={"valueCodeableConcept": {"text": "x"}}),
     "matches 2 elements; replace needs it to match exactly one"),
    (_operation("replace", "Task.basedOn", value={"valueReference": {"reference": "Task/x"}}), "matches nothing"),
    (_operation("delete", "Task.input"), "matches 2 elements"),
    (_operation("replace", "Task.status", value={"valueBoolean": True}), "status takes a code, not a valueBoolean"),
    (_operation("add", "Task", name={"valueString": "status"}, value={"valueCode": "ready"}), "is there already"),
    (_operation("add", "Task", name={"valueString": "colour"}, value={"valueCode": "red"}), "no element 'colour'"),
    (_operation("add", "Task.note[0]", name={"valueString": "author"}, value={"valueCode": "x"}), "choice of"),
    (_operation("replace", "Task.colour", value={"valueCode": "x"}), "no element 'colour'"),
    (_operation("replace", "Task.status.value", value={"valueCode": "x"}), "goes into status, a code"),
    (_operation("replace", "Patient.name", value={"valueString": "x"}), "the resource is a Task"),
    (_operation("replace", "Task.input.exists()", value={"valueString": "x"}), "exists(), a boolean"),
    (_operation("insert", "Task.note", index={"valueInteger": 2}, value={"valueAnnotation": {"text": "x"}}),
     "past the end"),
    (_operation("insert", "Task.status", index={"valueInteger": 0}, value={"valueCode": "x"}), "no repeating element"),
    (_operation("move", "Task.input", source={"valueInteger": 0}, destination={"valueInteger": 2}), "2 items"),
    (_operation("move", "Task.input.first()", source={"valueInteger": 0}, destination={"valueInteger": 1}),
     "ends with the name of the list"),
    (_operation("delete", "Task"), "whole resource"),
    (_operation("replace", "Task.description", value={"part": [{"name": "x", "valueString": "y"}]}), "not parts"),
])
def test_a_patch_that_does_not_fit_the_resource_is_422(operation, words):
    with pytest.raises(InvalidResource) as raised:
        _applied(operation)
    assert words in raised.value.diagnostics and "FHIRPath Patch operation 0" in raised.value.diagnostics


def test_not_equal_holds_for_several_items_as_equal_fails_for_them():
    """FHIRPath N1 §6.1: several items equal no single literal (= is false),
    so != (its converse) is true; an empty side leaves both empty."""
    task = {**TASK, "id": "x", "identifier": [{"value": "a"}, {"value": "b"}]}
    kept = apply_operations(task, parse_parameters(_parameters(
        _operation("replace", "Task.where(identifier.value != 'c').status", value={"valueCode": "ready"}),
        _operation("delete", "Task.where(identifier.value = 'a').intent"),
        _operation("delete", "Task.where(basedOn.reference != 'c').description"),
    )))
    assert kept["status"] == "ready" and kept["intent"] == "proposal" and kept["description"] == "first"


def test_a_choice_elements_items_of_other_types_have_nothing_where_one_type_has_an_element():
    """FHIRPath N1 §3: `input.value.unit` is the unit of a valueQuantity, and
    nothing in a valueString or a valueDecimal, whose types have no unit."""
    task = {**TASK, "id": "x", "input": [*TASK["input"], {"type": {"text": "c"}, "valueQuantity": {"unit": "mm"}}]}
    changed = apply_operations(task, parse_parameters(_parameters(
        _operation("replace", "Task.input.where(value.unit = 'mm').value", value={"valueQuantity": {"unit": "cm"}}),
        _operation("delete", "Task.input.where(value.coding.exists())"),  # none a CodeableConcept: nothing
    )))
    assert [item.get("valueQuantity") for item in changed["input"]] == [None, None, {"unit": "cm"}]
    with pytest.raises(InvalidResource, match="goes into status, a code"):  # no choice: still refused
        apply_operations(task, parse_parameters(_parameters(_operation("delete", "Task.status.unit"))))


def test_finding_elements_is_bounded_however_many_items_criteria_and_operations_multiply():
    """A where() of many terms, over many items, in many operations: each
    is small, together they were minutes of CPU. The patch is refused once
    its paths visit more elements than a bound."""
    task = {**TASK, "id": "x", "input": [{"type": {"text": f"t{n}"}, "valueString": "v"} for n in range(2000)]}
    criteria = " or ".join(["type.text = 'none'"] * 40)
    operations = parse_parameters(_parameters(*[_operation("delete", f"Task.input.where({criteria})")] * 20))
    with pytest.raises(InvalidResource, match="visits more than 1000000"):
        apply_operations(task, operations)
    small = parse_parameters(_parameters(_operation("delete", "Task.input.where(type.text = 't7')")))
    assert len(apply_operations(task, small)["input"]) == 1999  # an ordinary patch of a large resource


def test_patches_nesting_past_the_limit_are_refused():
    deep: dict[str, Any] = {"name": "value", "valueString": "x"}
    for _ in range(120):
        deep = {"name": "value", "part": [deep]}
    with pytest.raises(InvalidRequest, match="nest more than"):
        parse_parameters(_parameters(_operation("add", "Task", name={"valueString": "input"}, value=deep["part"][0])))
    with pytest.raises(InvalidResource, match="at most 1000 operations"):
        parse_parameters(_parameters(*[_operation("delete", "Task.basedOn")] * 1001))


# --- through the server -----------------------------------------------------------

def test_a_fhirpath_patch_writes_a_new_version_answered_as_an_update(fhir):
    _task(fhir)
    response = _patch(
        fhir, "/fhir/Task/p1",
        _operation("replace", "Task.status", value={"valueString": "ready"}),  # a code, sent as its general type
        _operation("add", "Task", name={"valueString": "note"}, value={"valueAnnotation": {"text": "checked"}}),
        _operation("delete", "Task.input.where(type.text = 'a')"),
        headers={"If-Match": 'W/"1"'},
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'
    task = fhir.get("/fhir/Task/p1").json()
    assert task["status"] == "ready" and task["note"] == [{"text": "checked"}]
    assert [item["type"]["text"] for item in task["input"]] == ["b"]
    assert b'"valueDecimal":1.10' in fhir.get("/fhir/Task/p1").content  # what it did not touch stays as written
    stale = _patch(fhir, "/fhir/Task/p1", _operation("delete", "Task.note"), headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412


def test_a_patch_that_changes_nothing_is_written_as_an_identical_put_is(fhir):
    """A `delete` that matches nothing leaves the resource as it was. R4
    http.html#patch has the result processed as an update, and an update with
    the current content writes a new version here (only what the server derives
    itself skips those): so does the patch, and each answers the version it wrote."""
    current = _task(fhir)
    put = fhir.put("/fhir/Task/p1", json={key: value for key, value in current.items() if key != "meta"})
    assert put.headers["etag"] == 'W/"2"'
    patched = _patch(fhir, "/fhir/Task/p1", _operation("delete", "Task.note"))
    assert patched.status_code == 200 and patched.headers["etag"] == 'W/"3"'
    assert len(fhir.get("/fhir/Task/p1/_history").json()["entry"]) == 3


@pytest.mark.parametrize(("operation", "status", "words"), [
    (_operation("replace", "Task.identifier.resolve()", value={"valueString": "x"}), 422, "resolve()"),
    (_operation("replace", "Task.status", value={"valueCode": "bogus"}), 422, "status"),  # validated as an update
    (_operation("replace", "Task.input", value={"valueString": "x"}), 422, "matches 2 elements"),
    (_operation("replace", "Task.status", value={"valueInteger": 1}), 422, "status takes a code, not a valueInteger"),
    (_operation("replace", "Task.status", value={"valueString": "not a code"}), 422, "status"),  # a string, no code
    (_operation("replace", "Task.(status", value={"valueCode": "ready"}), 400, "expected"),
    (_operation("delete", "Task.input.where(type.text = '\\u12')"), 400, "no FHIRPath escape"),
    ({"name": "operation", "part": [{"name": "type", "valueCode": ["replace"]}]}, 400, "its type (valueCode)"),
])
def test_a_fhirpath_patch_that_fails_stores_nothing(fhir, operation, status, words):
    _task(fhir)
    response = _patch(fhir, "/fhir/Task/p1", _operation("replace", "Task.description", value={"valueString": "x"}),
                      operation)
    assert response.status_code == status, response.text
    assert words in _diagnostics(response)
    if "resolve()" in words:  # FHIRPath beyond the subset
        assert response.json()["issue"][0]["code"] == "not-supported"
    task = fhir.get("/fhir/Task/p1").json()
    assert task["meta"]["versionId"] == "1" and task["description"] == "first"


def test_a_json_patch_sent_as_fhir_json_is_told_what_is_wrong(fhir):
    _task(fhir)
    operations = [{"op": "replace", "path": "/status", "value": "ready"}]
    response = fhir.patch("/fhir/Task/p1", content=json.dumps(operations), headers=FHIR_JSON)
    assert response.status_code == 400 and "application/json-patch+json" in _diagnostics(response)


def test_a_fhirpath_patch_in_xml(fhir):
    _task(fhir)
    body = """<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/>
      <part><name value="type"/><valueCode value="insert"/></part>
      <part><name value="path"/><valueString value="Task.identifier"/></part>
      <part><name value="index"/><valueInteger value="0"/></part>
      <part><name value="value"/><valueIdentifier><value value="t-0"/></valueIdentifier></part>
    </parameter></Parameters>"""
    response = fhir.patch("/fhir/Task/p1", content=body, headers={"Content-Type": "application/fhir+xml"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+xml")
    assert [item["value"] for item in fhir.get("/fhir/Task/p1").json()["identifier"]] == ["t-0", "t-1"]


def test_a_conditional_fhirpath_patch(fhir):
    _task(fhir)
    ready = _operation("replace", "Task.status", value={"valueCode": "ready"})
    assert _patch(fhir, "/fhir/Task?identifier=urn:example:tasks|t-1", ready).status_code == 200
    assert _patch(fhir, "/fhir/Task?identifier=urn:example:tasks|none", ready).status_code == 404
    assert fhir.get("/fhir/Task/p1").json()["status"] == "ready"


def test_a_fhirpath_patch_is_audited_as_a_patch(services, fhir):
    _task(fhir)
    assert _patch(fhir, "/fhir/Task/p1", _operation("delete", "Task.description")).status_code == 200
    services.audit.chain.project()
    events = fhir.get("/fhir/AuditEvent", params={"subtype": "patch", "_count": 100}).json()["entry"]
    assert "PATCH /fhir/Task/p1 committed" in [entry["resource"].get("outcomeDesc") for entry in events]


def test_fhirpath_patch_entries_in_a_transaction_link_to_other_entries(fhir):
    _task(fhir, "child")
    parent = "urn:uuid:1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    patch = _parameters(_operation("add", "Task", name={"valueString": "partOf"},
                                   value={"valueReference": {"reference": parent}}))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patch, "request": {"method": "PATCH", "url": "Task?identifier=urn:example:tasks|t-1"}},
        {"fullUrl": parent, "resource": {"resourceType": "Task", "status": "draft", "intent": "order"},
         "request": {"method": "POST", "url": "Task"}},
    ]}
    response = fhir.post("/fhir", json=bundle)
    assert response.status_code == 200, response.text
    parent_id = response.json()["entry"][1]["response"]["location"].split("/")[-3]
    assert fhir.get("/fhir/Task/child").json()["partOf"] == [{"reference": f"Task/{parent_id}"}]
    failing = {**bundle, "entry": [
        {"resource": _parameters(_operation("replace", "Task.status", value={"valueCode": "ready"})),
         "request": {"method": "PATCH", "url": "Task/child"}},
        {"resource": _parameters(_operation("delete", "Task.input")),
         "request": {"method": "PATCH", "url": "Task/child2"}},
    ]}
    _task(fhir, "child2", identifier=[{"system": "urn:example:tasks", "value": "t-2"}])
    refused = fhir.post("/fhir", json=failing)
    assert refused.status_code == 422 and "entry 1 (PATCH Task/child2)" in _diagnostics(refused)
    assert fhir.get("/fhir/Task/child").json()["status"] == "draft"


def test_a_fhirpath_patch_needs_the_rights_to_update_and_read(services, client):
    from server.auth.scopes import Role
    from tests.test_auth_access import _bearer

    _task(client)
    ready = _operation("replace", "Task.status", value={"valueCode": "ready"})
    for scopes in ("system/Task.crs", "system/Task.u"):
        refused = _patch(client, "/fhir/Task/p1", ready, headers=_bearer(services, Role.AI_OPERATOR, scopes))
        assert refused.status_code == 403, scopes
    allowed = _patch(client, "/fhir/Task/p1", ready, headers=_bearer(services, Role.AI_OPERATOR, "system/Task.ru"))
    assert allowed.status_code == 200 and client.get("/fhir/Task/p1").json()["status"] == "ready"
