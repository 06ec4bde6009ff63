"""Conditional update (R4 http.html#cond-update): `PUT [type]?[query]`, and
such entries in batches and transactions. An EHR can keep its order up to
date by its own identifier, without knowing the server's id."""

ORDER = {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "ORD-9"}
TASK = {"resourceType": "Task", "status": "draft", "intent": "proposal", "identifier": [ORDER]}
CONDITION = f"identifier={ORDER['system']}|{ORDER['value']}"


def _ids(fhir) -> list[str]:  # type: ignore[no-untyped-def]
    return [entry["resource"]["id"] for entry in fhir.get("/fhir/Task").json().get("entry", [])]


def test_no_match_creates_then_a_match_is_updated(fhir):
    created = fhir.put(f"/fhir/Task?{CONDITION}", json=TASK)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    updated = fhir.put(f"/fhir/Task?{CONDITION}", json={**TASK, "description": "second"})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["id"], updated.json()["meta"]["versionId"]) == (task_id, "2")
    assert updated.json()["description"] == "second"
    assert _ids(fhir) == [task_id]
    stale = fhir.put(f"/fhir/Task?{CONDITION}", json=TASK, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412


def test_ids_in_the_body_and_several_matches(fhir):
    named = fhir.put(f"/fhir/Task?{CONDITION}", json={**TASK, "id": "chosen-id"})
    assert named.status_code == 201 and named.json()["id"] == "chosen-id"  # no match: update as create
    other = fhir.put(f"/fhir/Task?{CONDITION}", json={**TASK, "id": "another-id"})
    assert other.status_code == 400  # the match is chosen-id
    fhir.put("/fhir/Task/unrelated", json={"resourceType": "Task", "id": "unrelated", "status": "draft",
                                           "intent": "proposal"})
    taken = fhir.put("/fhir/Task?identifier=nothing-matches", json={**TASK, "id": "unrelated"})
    assert taken.status_code == 409  # it exists and the condition does not match it
    fhir.post("/fhir/Task", json=TASK)
    assert fhir.put(f"/fhir/Task?{CONDITION}", json=TASK).status_code == 412  # two match now
    assert fhir.put("/fhir/Task", json=TASK).status_code == 400  # no condition, no id
    assert fhir.put("/fhir/Task?colour=blue", json=TASK).status_code == 400
    assert fhir.put("/fhir/Patient?identifier=x", json={"resourceType": "Patient"}).status_code == 405


def test_conditional_updates_in_bundles(fhir):
    entry = {"resource": TASK, "request": {"method": "PUT", "url": f"Task?{CONDITION}"}}
    for bundle_type, status in (("batch", "201"), ("transaction", "200")):
        answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": bundle_type, "entry": [entry]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["entry"][0]["response"]["status"][:3] == status
    assert len(_ids(fhir)) == 1


def test_in_a_transaction_the_fullurl_of_a_conditional_update_stands_for_what_it_wrote(fhir):
    def transaction() -> dict:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:0d5c6a3e-7b1f-4c2a-9e8d-1f2a3b4c5d6e", "resource": TASK,
             "request": {"method": "PUT", "url": f"Task?{CONDITION}"}},
            {"resource": {"resourceType": "Task", "status": "draft", "intent": "proposal",
                          "partOf": [{"reference": "urn:uuid:0d5c6a3e-7b1f-4c2a-9e8d-1f2a3b4c5d6e"}]},
             "request": {"method": "POST", "url": "Task"}},
        ]}

    created = fhir.post("/fhir", json=transaction())  # no match: created
    assert created.status_code == 200, created.text
    first, child = (entry["response"] for entry in created.json()["entry"])
    assert first["status"][:3] == "201"
    task_id = first["location"].split("/Task/")[1].split("/")[0]
    assert fhir.get(child["location"].rsplit("/_history", 1)[0]).json()["partOf"] == [{"reference": f"Task/{task_id}"}]
    updated = fhir.post("/fhir", json=transaction())  # one match: updated, and referred to
    assert updated.status_code == 200, updated.text
    first, child = (entry["response"] for entry in updated.json()["entry"])
    assert first["status"][:3] == "200" and f"/Task/{task_id}/" in first["location"]
    assert fhir.get(child["location"].rsplit("/_history", 1)[0]).json()["partOf"] == [{"reference": f"Task/{task_id}"}]
    both = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": TASK, "request": {"method": "PUT", "url": f"Task?{CONDITION}"}},
        {"resource": {**TASK, "id": task_id}, "request": {"method": "PUT", "url": f"Task/{task_id}"}},
    ]}
    assert fhir.post("/fhir", json=both).status_code == 400  # one resource changed twice


def test_if_match_on_a_conditional_update_that_matches_nothing_is_412(fhir):
    assert fhir.put(f"/fhir/Task?{CONDITION}", json=TASK, headers={"If-Match": 'W/"3"'}).status_code == 412
    entry = {"resource": TASK, "request": {"method": "PUT", "url": f"Task?{CONDITION}", "ifMatch": 'W/"3"'}}
    answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    assert answer.status_code == 412
    assert _ids(fhir) == []


def test_if_match_star_on_a_conditional_update_needs_its_match(fhir):
    """`*` holds for the one match, whatever its version; with no match there
    is no current version, and it fails (412), creating nothing."""
    star = {"If-Match": "*"}
    assert fhir.put(f"/fhir/Task?{CONDITION}", json=TASK, headers=star).status_code == 412
    entry = {"resource": TASK, "request": {"method": "PUT", "url": f"Task?{CONDITION}", "ifMatch": "*"}}
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    assert fhir.post("/fhir", json=transaction).status_code == 412
    assert _ids(fhir) == []
    task_id = fhir.post("/fhir/Task", json=TASK).json()["id"]
    updated = fhir.put(f"/fhir/Task?{CONDITION}", json={**TASK, "description": "kept"}, headers=star)
    assert updated.status_code == 200, updated.text
    assert (updated.json()["id"], updated.json()["meta"]["versionId"]) == (task_id, "2")
    answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [entry]})
    assert answer.json()["entry"][0]["response"]["status"] == "200 OK", answer.text
    assert fhir.delete(f"/fhir/Task?{CONDITION}", headers=star).status_code == 204
    assert fhir.delete(f"/fhir/Task?{CONDITION}", headers=star).status_code == 412


def test_a_transaction_may_not_reach_one_resource_or_condition_twice(fhir, client):
    task_id = fhir.post("/fhir/Task", json=TASK).json()["id"]
    base = str(client.base_url).rstrip("/") + "/fhir"
    refused = [
        # An absolute URL names the same resource as the condition's match.
        [{"resource": {**TASK, "id": task_id}, "request": {"method": "PUT", "url": f"{base}/Task/{task_id}"}},
         {"resource": TASK, "request": {"method": "PUT", "url": f"Task?{CONDITION}"}}],
        # A conditional create would answer with what another entry deletes, or changes.
        [{"request": {"method": "DELETE", "url": f"Task/{task_id}"}},
         {"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": CONDITION}}],
        [{"resource": {**TASK, "id": task_id}, "request": {"method": "PUT", "url": f"Task/{task_id}"}},
         {"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": CONDITION}}],
        # A conditional reference to what the transaction deletes.
        [{"request": {"method": "DELETE", "url": f"Task/{task_id}"}},
         {"resource": {**TASK, "identifier": [], "partOf": [{"reference": f"Task?{CONDITION}"}]},
          "request": {"method": "POST", "url": "Task"}}],
        # One condition twice, however its parameters are ordered: both would create.
        [{"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": "identifier=x&status=draft"}},
         {"resource": TASK, "request": {"method": "PUT", "url": "Task?status=draft&identifier=x"}}],
    ]
    for entries in refused:
        answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert answer.status_code == 400, (entries, answer.text)
    assert fhir.get(f"/fhir/Task/{task_id}").json()["meta"]["versionId"] == "1"
    assert len(_ids(fhir)) == 1


def test_a_plain_update_with_general_parameters_is_no_condition_in_a_transaction(fhir):
    fhir.put("/fhir/Task/plain-x", json={**TASK, "id": "plain-x"})
    entries = [{"resource": {**TASK, "id": "plain-x", "description": "second"},
                "request": {"method": "PUT", "url": "Task/plain-x?_format=json"}},
               {"request": {"method": "DELETE", "url": "Task/nothing-here?_pretty=true"}}]
    answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert answer.status_code == 200, answer.text
    assert fhir.get("/fhir/Task/plain-x").json()["description"] == "second"
