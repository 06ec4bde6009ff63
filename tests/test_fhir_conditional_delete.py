"""Conditional delete (R4 http.html#3.1.0.7.1): `DELETE [type]?[query]`, and
such entries in batches and transactions. This server deletes one resource
at a time (conditionalDelete `single`): several matches are 412."""

from tests.test_audit_requests import _events

ORDER = {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "ORD-DEL"}
TASK = {"resourceType": "Task", "status": "draft", "intent": "proposal", "identifier": [ORDER]}
CONDITION = f"identifier={ORDER['system']}|{ORDER['value']}"


def test_the_one_match_is_deleted_and_none_is_an_ordinary_delete_of_nothing(fhir, services):
    task_id = fhir.post("/fhir/Task", json=TASK).json()["id"]
    stale = fhir.delete(f"/fhir/Task?{CONDITION}", headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    deleted = fhir.delete(f"/fhir/Task?{CONDITION}")
    assert deleted.status_code == 204 and deleted.headers["etag"] == 'W/"2"'
    assert fhir.get(f"/fhir/Task/{task_id}").status_code == 410
    again = fhir.delete(f"/fhir/Task?{CONDITION}")
    assert again.status_code == 204 and "etag" not in again.headers
    # The committed delete's record names the resource the query found, which the path does not.
    named = [
        [entity["what"]["reference"] for entity in event["entity"] if "what" in entity]
        for event in _events(services, fhir, subtype="delete")
    ]
    assert sorted(f"Task/{task_id}" in references for references in named) == [False, False, True]


def test_several_matches_unknown_parameters_and_no_condition_are_refused(fhir):
    first, second = (fhir.post("/fhir/Task", json=TASK).json()["id"] for _ in range(2))
    assert fhir.delete(f"/fhir/Task?{CONDITION}").status_code == 412
    assert fhir.delete("/fhir/Task?colour=blue").status_code == 400
    assert fhir.delete(f"/fhir/Task?{CONDITION}&_sort=_id").status_code == 400
    assert fhir.delete("/fhir/Task").status_code == 400
    assert fhir.delete("/fhir/Patient?identifier=x").status_code == 405
    assert [fhir.get(f"/fhir/Task/{task_id}").status_code for task_id in (first, second)] == [200, 200]


def test_conditional_deletes_in_bundles(fhir):
    other = {**TASK, "identifier": [{**ORDER, "value": "ORD-OTHER"}]}
    ids = [fhir.post("/fhir/Task", json=body).json()["id"] for body in (TASK, other)]
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Task?{CONDITION}"}},
        {"request": {"method": "DELETE", "url": f"Task?identifier={ORDER['system']}|ORD-OTHER"}},
    ]}
    answer = fhir.post("/fhir", json=transaction)
    assert answer.status_code == 200, answer.text
    assert [entry["response"]["status"][:3] for entry in answer.json()["entry"]] == ["204", "204"]
    assert [fhir.get(f"/fhir/Task/{task_id}").status_code for task_id in ids] == [410, 410]
    twice = {**transaction, "entry": [transaction["entry"][0]] * 2}
    assert fhir.post("/fhir", json=twice).status_code == 400  # one condition changed twice
    fhir.post("/fhir/Task", json=TASK)
    fhir.post("/fhir/Task", json=TASK)
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [transaction["entry"][0]]}
    assert fhir.post("/fhir", json=batch).json()["entry"][0]["response"]["status"][:3] == "412"


def test_the_capability_statement_declares_single_deletes(fhir):
    resources = {resource["type"]: resource for resource in fhir.get("/fhir/metadata").json()["rest"][0]["resource"]}
    assert resources["Task"]["conditionalDelete"] == "single"
    assert resources["Patient"]["conditionalDelete"] == "not-supported"


def test_in_a_transaction_entries_whose_conditions_reach_one_resource_fail_it(fhir):
    task_id = fhir.post("/fhir/Task", json=TASK).json()["id"]
    overlapping = [
        [{"request": {"method": "DELETE", "url": f"Task?{CONDITION}"}},
         {"resource": {**TASK, "id": task_id}, "request": {"method": "PUT", "url": f"Task/{task_id}"}}],
        [{"request": {"method": "DELETE", "url": f"Task?{CONDITION}"}},
         {"request": {"method": "DELETE", "url": f"Task?_id={task_id}"}}],
        [{"request": {"method": "DELETE", "url": f"Task?{CONDITION}"}},
         {"resource": TASK, "request": {"method": "PUT", "url": f"Task?_id={task_id}"}}],
        [{"request": {"method": "DELETE", "url": f"Task?{CONDITION}"}},
         {"request": {"method": "DELETE", "url": f"/Task?{CONDITION}"}}],
    ]
    for entries in overlapping:
        answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert answer.status_code == 400 and ("both reach" in answer.text or "one condition" in answer.text), entries
    assert fhir.get(f"/fhir/Task/{task_id}").json()["meta"]["versionId"] == "1"


def test_format_and_pretty_say_how_to_answer_and_are_no_condition(fhir):
    fhir.post("/fhir/Task", json=TASK)
    updated = fhir.put(f"/fhir/Task?{CONDITION}&_format=xml&_pretty=true", json={**TASK, "description": "x"})
    assert updated.status_code == 200 and updated.text.startswith("<?xml")
    assert fhir.delete(f"/fhir/Task?{CONDITION}&_format=json").status_code == 204
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_deleting_what_is_not_there_names_nothing_in_the_audit_record(fhir, services):
    answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Task/never-there"}},
        {"resource": TASK, "request": {"method": "POST", "url": "Task"}},
    ]})
    assert answer.status_code == 200
    [event] = _events(services, fhir, subtype="transaction")
    named = [entity["what"]["reference"] for entity in event["entity"] if "what" in entity]
    assert "Task/never-there" not in named and any(name.startswith("Task/") for name in named)
