"""Conditional create (R4 http.html#ccreate): `If-None-Exist` in a POST, and
`ifNoneExist` in batch and transaction entries. An EHR that sends its order
twice gets the first one back, not a second job."""

import threading

ORDER = {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "ORD-7"}
TASK = {"resourceType": "Task", "status": "draft", "intent": "proposal", "identifier": [ORDER]}
CONDITION = f"identifier={ORDER['system']}|{ORDER['value']}"


def _total(fhir) -> int:  # type: ignore[no-untyped-def]
    return fhir.get("/fhir/Task", params={"_summary": "count"}).json()["total"]


def test_if_none_exist_creates_once_then_answers_the_match(fhir):
    first = fhir.post("/fhir/Task", json=TASK, headers={"If-None-Exist": CONDITION})
    assert first.status_code == 201, first.text
    again = fhir.post("/fhir/Task", json={**TASK, "description": "sent twice"}, headers={"If-None-Exist": CONDITION})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and "description" not in again.json()
    assert _total(fhir) == 1
    prefixed = fhir.post("/fhir/Task", json=TASK, headers={"If-None-Exist": f"Task?{CONDITION}"})
    assert prefixed.status_code == 200


def test_if_none_exist_with_several_matches_is_412_and_bad_conditions_are_400(fhir):
    for _ in range(2):
        assert fhir.post("/fhir/Task", json=TASK).status_code == 201
    several = fhir.post("/fhir/Task", json=TASK, headers={"If-None-Exist": CONDITION})
    assert several.status_code == 412
    assert fhir.post("/fhir/Task", json=TASK, headers={"If-None-Exist": "colour=blue"}).status_code == 400
    assert fhir.post("/fhir/Task", json=TASK, headers={"If-None-Exist": ""}).status_code == 400
    assert _total(fhir) == 2


def test_concurrent_conditional_creates_make_one_resource(fhir):
    statuses: list[int] = []

    def send() -> None:
        statuses.append(fhir.post("/fhir/Task", json=TASK, headers={"If-None-Exist": CONDITION}).status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 5 + [201]
    assert _total(fhir) == 1


def test_batch_and_transaction_entries_create_if_none_exist(fhir):
    entry = {"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": CONDITION}}
    batch = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [entry, entry]})
    assert [item["response"]["status"][:3] for item in batch.json()["entry"]] == ["201", "200"]

    # In a transaction, a fullUrl whose create matched stands for the resource it matched.
    placeholder = "urn:uuid:0c3f6f1e-4b9a-4d35-9f77-0a1f9a3b2c11"
    follow_up = {**TASK, "identifier": [{"value": "step-2"}], "partOf": [{"reference": placeholder}]}
    transaction = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {**entry, "fullUrl": placeholder},
        {"resource": follow_up, "request": {"method": "POST", "url": "Task"}},
    ]})
    assert transaction.status_code == 200, transaction.text
    matched, created = transaction.json()["entry"]
    assert matched["response"]["status"].startswith("200") and created["response"]["status"].startswith("201")
    assert created["resource"]["partOf"] == [{"reference": f"Task/{matched['resource']['id']}"}]
    assert _total(fhir) == 2


def test_an_entrys_if_none_exist_may_name_its_type_or_url_as_the_header_may(fhir):
    assert fhir.post("/fhir/Task", json=TASK).status_code == 201
    for condition in (f"Task?{CONDITION}", f"http://testserver/fhir/Task?{CONDITION}"):
        assert fhir.post("/fhir/Task", json=TASK, headers={"If-None-Exist": condition}).status_code == 200, condition
        entry = {"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": condition}}
        for kind in ("batch", "transaction"):
            answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": [entry]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["entry"][0]["response"]["status"][:3] == "200", (kind, condition, answer.text)
    # Two entries with one condition, however written, fail the transaction (R4 http.html#trules).
    twice = [{"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": condition}}
             for condition in (CONDITION, f"Task?{CONDITION}")]
    assert fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": twice}).status_code == 400
    assert _total(fhir) == 1


def test_concurrent_transactions_with_one_condition_make_one_resource(fhir):
    entry = {"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": CONDITION}}
    statuses: list[str] = []

    def send() -> None:
        answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
        statuses.append(answer.json()["entry"][0]["response"]["status"][:3])

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == ["200"] * 5 + ["201"]
    assert _total(fhir) == 1


def test_conditions_that_cannot_hold_are_refused(fhir):
    def entry_status(entry: dict) -> str:  # type: ignore[type-arg]
        answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [entry]})
        return answer.json()["entry"][0]["response"]["status"][:3]

    patient = {"resourceType": "Patient", "id": "p1"}
    assert entry_status({"resource": patient, "request": {"method": "POST", "url": "Patient",
                                                          "ifNoneExist": "_id=p1"}}) == "405"  # not writable
    assert entry_status({"resource": {**TASK, "id": "t1"}, "request": {"method": "PUT", "url": "Task/t1",
                                                                       "ifNoneExist": CONDITION}}) == "400"
    for shaping in ("_summary=count", f"{CONDITION}&_summary=count", "_sort=_id", "_elements=id"):
        assert fhir.post("/fhir/Task", json=TASK, headers={"If-None-Exist": shaping}).status_code == 400, shaping
    assert _total(fhir) == 0


def test_a_transaction_run_again_judges_its_conditions_again(fhir, services):
    """After a deadlock PostgreSQL rolls a transaction back and it runs again
    from the same entries: their conditions must still be there."""
    from server.fhir.bundles import _transaction

    entries = [{"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": CONDITION}}]
    run = (services.fhir, entries, "http://testserver/fhir", lambda method, path, resource: None,
           lambda search: None, lambda kind: True, lambda: b"{}")
    first, again = _transaction(*run), _transaction(*run)
    assert (first[0].status, again[0].status) == ("201 Created", "200 OK")
    assert _total(fhir) == 1


def test_a_transaction_may_not_create_twice_on_one_condition(fhir):
    entry = {"resource": TASK, "request": {"method": "POST", "url": "Task", "ifNoneExist": CONDITION}}
    answer = fhir.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry, entry]})
    assert answer.status_code == 400 and "one condition" in answer.text
    assert _total(fhir) == 0
