"""POST /fhir with batch and transaction Bundles (FHIR R4 http.html#transaction)."""

import threading

import pytest

from tests.fhir_checks import ids

TASK = {"resourceType": "Task", "status": "requested", "intent": "order"}


def _post(fhir, bundle_type, entries):
    return fhir.post("/fhir", json={"resourceType": "Bundle", "type": bundle_type, "entry": entries})


def test_transaction_resolves_urn_uuid_references_and_commits_all(fhir):
    parent = "urn:uuid:6f6b1f52-2f4e-4b6e-8a55-0d8f2c2b9a11"
    response = _post(fhir, "transaction", [
        {"fullUrl": parent, "resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"fullUrl": "urn:uuid:0c4a6c8e-67a3-4b1e-9d0a-1a2b3c4d5e6f",
         "resource": {**TASK, "partOf": [{"reference": parent}]}, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "id": "fixed-1"}, "request": {"method": "PUT", "url": "Task/fixed-1"}},
    ])
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "transaction-response"
    statuses = [entry["response"]["status"] for entry in bundle["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created"]
    parent_id = bundle["entry"][0]["resource"]["id"]
    child = bundle["entry"][1]["resource"]
    assert child["partOf"] == [{"reference": f"Task/{parent_id}"}]
    assert bundle["entry"][0]["response"]["location"].endswith(f"/Task/{parent_id}/_history/1")
    found = fhir.get("/fhir/Task", params={"part-of": f"Task/{parent_id}"}).json()
    assert ids(found) == [child["id"]]


@pytest.mark.parametrize("parent", ["http://testserver/fhir/Task/parent-abc", "Task/parent-abc"])
def test_transaction_replaces_references_to_a_created_resource_whose_fullurl_is_no_placeholder(fhir, parent):
    response = _post(fhir, "transaction", [
        {"fullUrl": parent, "resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"fullUrl": "http://testserver/fhir/Task/child-abc", "resource": {
            **TASK, "partOf": [{"reference": "Task/parent-abc"}],
            "basedOn": [{"reference": "http://testserver/fhir/Task/parent-abc"}],
        }, "request": {"method": "POST", "url": "Task"}},
    ])
    assert response.status_code == 200, response.text
    parent_id = response.json()["entry"][0]["resource"]["id"]
    child = response.json()["entry"][1]["resource"]
    assert (child["partOf"], child["basedOn"]) == ([{"reference": f"Task/{parent_id}"}],) * 2
    assert fhir.get("/fhir/Task/parent-abc").status_code == 404
    assert ids(fhir.get("/fhir/Task", params={"part-of": f"Task/{parent_id}"}).json()) == [child["id"]]


def test_a_relative_reference_is_read_against_the_base_of_its_entrys_fullurl(fhir):
    elsewhere, here = "http://other.example/fhir", "http://testserver/fhir"

    def created(full_url: str | None, **links: list) -> dict:
        entry = {"resource": {**TASK, **links}, "request": {"method": "POST", "url": "Task"}}
        return entry if full_url is None else {"fullUrl": full_url, **entry}

    response = _post(fhir, "transaction", [
        created(f"{elsewhere}/Task/parent-abc"),
        created(None, partOf=[{"reference": "Task/parent-abc"}],  # this server's Task/parent-abc
                basedOn=[{"reference": f"{elsewhere}/Task/parent-abc"}]),
        created(f"{elsewhere}/Task/child-abc", partOf=[{"reference": "Task/parent-abc"}]),
        created(f"{here}/Task/sibling-abc"),
        created(f"{elsewhere}/Task/cousin-abc", partOf=[{"reference": "Task/sibling-abc"}]),
    ])
    assert response.status_code == 200, response.text
    entries = [entry["resource"] for entry in response.json()["entry"]]
    parent_id = entries[0]["id"]
    assert entries[1]["partOf"] == [{"reference": "Task/parent-abc"}]
    assert entries[1]["basedOn"] == entries[2]["partOf"] == [{"reference": f"Task/{parent_id}"}]
    assert entries[4]["partOf"] == [{"reference": "Task/sibling-abc"}]  # not entry 3: it names no entry, as sent


def test_transaction_replaces_fullurls_of_updates_in_uris_and_in_the_narrative(fhir):
    updated = "urn:uuid:5b1f2a3c-0000-4000-8000-000000000001"
    created = "urn:uuid:5b1f2a3c-0000-4000-8000-000000000002"
    response = _post(fhir, "transaction", [
        {"fullUrl": updated, "resource": {**TASK, "id": "tput"}, "request": {"method": "PUT", "url": "Task/tput"}},
        {"fullUrl": created, "resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"resource": {
            **TASK, "basedOn": [{"reference": updated}], "instantiatesUri": created,
            "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{updated}">the order</a></div>'},
        }, "request": {"method": "POST", "url": "Task"}},
    ])
    assert response.status_code == 200, response.text
    created_id = response.json()["entry"][1]["resource"]["id"]
    task = response.json()["entry"][2]["resource"]
    assert task["basedOn"] == [{"reference": "Task/tput"}]
    assert task["instantiatesUri"] == f"Task/{created_id}"
    assert 'href="Task/tput"' in task["text"]["div"]


def test_transaction_replaces_fullurls_in_every_element_of_a_uri_type_but_canonical(fhir):
    parent = "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"
    narrative = {"status": "generated", "div": f"<div xmlns='http://www.w3.org/1999/xhtml'><img src='{parent}'/></div>"}

    def given(kind: str, value: dict) -> dict:
        return {"type": {"text": kind}, **value}

    response = _post(fhir, "transaction", [
        {"fullUrl": parent, "resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "input": [
            given("url", {"valueUrl": parent}),
            given("uuid", {"valueUuid": parent}),
            given("attachment", {"valueAttachment": {"url": parent}}),
            given("canonical", {"valueCanonical": parent}),
        ], "text": narrative}, "request": {"method": "POST", "url": "Task"}},
    ])
    assert response.status_code == 200, response.text
    parent_id = response.json()["entry"][0]["resource"]["id"]
    task = response.json()["entry"][1]["resource"]
    assert task["input"] == [
        given("url", {"valueUrl": f"Task/{parent_id}"}),
        given("uuid", {"valueUuid": f"urn:uuid:{parent_id}"}),  # a uuid element holds only a uuid: the id is one
        given("attachment", {"valueAttachment": {"url": f"Task/{parent_id}"}}),
        given("canonical", {"valueCanonical": parent}),  # R4 leaves canonicals as they are
    ]
    assert f"src='Task/{parent_id}'" in task["text"]["div"]


def test_transaction_refuses_an_oid_element_naming_a_resource_no_oid_can_name(fhir):
    parent = "urn:oid:1.2.826.0.1.3680043.8.498.99"
    response = _post(fhir, "transaction", [
        {"fullUrl": parent, "resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "input": [{"type": {"text": "oid"}, "valueOid": parent}]},
         "request": {"method": "POST", "url": "Task"}},
    ])
    assert response.status_code == 400
    assert "which an element of type oid cannot hold" in response.json()["issue"][0]["diagnostics"]
    assert fhir.get("/fhir/Task").json()["total"] == 0


NOWHERE = "urn:uuid:deadbeef-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    "task",
    [
        {**TASK, "input": [{"type": {"text": "url"}, "valueUrl": NOWHERE}]},
        {**TASK, "input": [{"type": {"text": "file"}, "valueAttachment": {"url": "urn:oid:1.2.3"}}]},
        {**TASK, "text": {"status": "generated",
                          "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{NOWHERE}">the order</a></div>'}},
        {**TASK, "_status": {"extension": [
            {"url": "http://example.org/why", "valueReference": {"reference": NOWHERE}},
        ]}},
    ],
)
def test_transaction_refuses_a_placeholder_left_where_only_a_link_can_be(fhir, task):
    response = _post(fhir, "transaction", [{"resource": task, "request": {"method": "POST", "url": "Task"}}])
    assert response.status_code == 400, response.text
    assert "fullUrl of no entry" in response.json()["issue"][0]["diagnostics"]


def test_transaction_keeps_a_uuid_or_an_oid_that_names_no_entry_as_the_name_it_is(fhir):
    named = {**TASK, "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "order-1"}],
             "input": [{"type": {"text": "correlation"}, "valueUuid": "urn:uuid:a76d9bbf-f293-11e8-a1a4-7b4e5c8a1c3d"}]}
    response = _post(fhir, "transaction", [{"resource": named, "request": {"method": "POST", "url": "Task"}}])
    assert response.status_code == 200, response.text
    task = response.json()["entry"][0]["resource"]
    assert (task["identifier"], task["input"]) == (named["identifier"], named["input"])


def test_transaction_refuses_a_urn_uuid_that_names_no_entry(fhir):
    response = _post(fhir, "transaction", [
        {"resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "basedOn": [{"reference": "urn:uuid:deadbeef-0000-4000-8000-000000000000"}]},
         "request": {"method": "POST", "url": "Task"}},
    ])
    assert response.status_code == 400
    assert "fullUrl of no entry" in response.json()["issue"][0]["diagnostics"]
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_transaction_resolves_conditional_references_to_exactly_one_resource(fhir):
    fhir.put("/fhir/Task/known", json={**TASK, "id": "known", "identifier": [{"system": "http://a", "value": "v1"}]})
    for twin in ("twin-1", "twin-2"):
        fhir.put(f"/fhir/Task/{twin}", json={**TASK, "id": twin, "identifier": [{"system": "http://a", "value": "v2"}]})

    def order(reference: str):  # type: ignore[no-untyped-def]
        return _post(fhir, "transaction", [
            {"resource": {**TASK, "basedOn": [{"reference": reference}]}, "request": {"method": "POST", "url": "Task"}},
        ])

    resolved = order("Task?identifier=http://a|v1")
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["entry"][0]["resource"]["basedOn"] == [{"reference": "Task/known"}]
    assert order("Task?identifier=http://a|v2").status_code == 412
    assert order("Task?identifier=http://a|none").status_code == 400
    assert fhir.get("/fhir/Task").json()["total"] == 4


def test_failed_transaction_writes_nothing(fhir):
    response = _post(fhir, "transaction", [
        {"resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "status": "bogus"}, "request": {"method": "POST", "url": "Task"}},
    ])
    assert response.status_code == 422
    assert "entry 1" in response.json()["issue"][0]["diagnostics"]
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_transaction_with_stale_if_match_is_412_and_rolls_back(fhir):
    fhir.put("/fhir/Task/a", json={**TASK, "id": "a"})
    fhir.put("/fhir/Task/a", json={**TASK, "id": "a", "status": "ready"})
    response = _post(fhir, "transaction", [
        {"resource": {**TASK, "id": "b"}, "request": {"method": "PUT", "url": "Task/b"}},
        {"resource": {**TASK, "id": "a"}, "request": {"method": "PUT", "url": "Task/a", "ifMatch": 'W/"1"'}},
    ])
    assert response.status_code == 412
    assert fhir.get("/fhir/Task/b").status_code == 404


def test_entry_if_match_star_holds_for_a_current_version_only(fhir):
    fhir.put("/fhir/Task/a", json={**TASK, "id": "a"})
    response = _post(fhir, "batch", [
        {"resource": {**TASK, "id": "a"}, "request": {"method": "PUT", "url": "Task/a", "ifMatch": "*"}},
        {"resource": {**TASK, "id": "b"}, "request": {"method": "PUT", "url": "Task/b", "ifMatch": "*"}},
        {"request": {"method": "DELETE", "url": "Task/c", "ifMatch": "*"}},
    ])
    assert [entry["response"]["status"] for entry in response.json()["entry"]] == ["200 OK", "412", "412"]
    assert fhir.get("/fhir/Task/b").status_code == 404


def test_batch_reports_each_entry(fhir):
    fhir.put("/fhir/Task/existing", json={**TASK, "id": "existing"})
    response = _post(fhir, "batch", [
        {"resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "status": "bogus"}, "request": {"method": "POST", "url": "Task"}},
        {"request": {"method": "GET", "url": "Task/existing"}},
        {"request": {"method": "GET", "url": "Task/missing"}},
        {"request": {"method": "GET", "url": "Task?status=requested"}},
        {"request": {"method": "DELETE", "url": "Task/existing"}},
        {"resource": {"resourceType": "Patient", "id": "p"}, "request": {"method": "PUT", "url": "Patient/p"}},
    ])
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "batch-response"
    statuses = [entry["response"]["status"] for entry in bundle["entry"]]
    assert statuses == ["201 Created", "422", "200 OK", "404", "200 OK", "204 No Content", "405"]
    assert bundle["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert bundle["entry"][4]["resource"]["type"] == "searchset"
    assert bundle["entry"][4]["resource"]["total"] == 2
    assert fhir.get("/fhir/Task/existing").status_code == 410


def test_an_entry_url_of_another_server_is_refused_as_such(fhir):
    for url in ("http://other.example/fhir/Task", "https://testserver/fhir/Task"):
        batch = _post(fhir, "batch", [{"resource": TASK, "request": {"method": "POST", "url": url}}]).json()
        [entry] = batch["entry"]
        assert entry["response"]["status"] == "400"
        assert "not on this server" in entry["response"]["outcome"]["issue"][0]["diagnostics"], entry
        transaction = _post(fhir, "transaction", [{"request": {"method": "GET", "url": f"{url}/1"}}])
        assert transaction.status_code == 400 and "not on this server" in transaction.text, transaction.text
    assert _post(fhir, "batch", [{"request": {"method": "GET", "url": "http://testserver/fhir/Task"}}]).json()[
        "entry"][0]["response"]["status"] == "200 OK"


def test_bundle_errors(fhir):
    assert _post(fhir, "collection", []).status_code == 400
    assert fhir.post("/fhir", json={"resourceType": "Task"}).status_code == 400
    assert _post(fhir, "batch", [{"resource": TASK}]).status_code == 400
    patch = _post(fhir, "batch", [{"request": {"method": "PATCH", "url": "Task/x"}}])
    assert patch.json()["entry"][0]["response"]["status"] == "400"
    assert _post(fhir, "transaction", [{"request": {"method": "PATCH", "url": "Task/x"}}]).status_code == 400
    assert fhir.post("/fhir", content=b"[]", headers={"Content-Type": "text/plain"}).status_code == 415


def test_conditional_reads_in_a_batch(fhir):
    etag = fhir.put("/fhir/Task/c1", json={**TASK, "id": "c1"}).headers["etag"]
    response = _post(fhir, "batch", [
        {"request": {"method": "GET", "url": "Task/c1", "ifNoneMatch": etag}},
        {"request": {"method": "GET", "url": "Task/c1", "ifNoneMatch": 'W/"7"'}},
        {"request": {"method": "GET", "url": "Task/c1", "ifModifiedSince": "2999-01-01T00:00:00Z"}},
        {"request": {"method": "GET", "url": "Task/c1", "ifModifiedSince": "2000-01-01T00:00:00Z"}},
        {"request": {"method": "GET", "url": "Task/c1", "ifModifiedSince": "yesterday"}},
        # An instant has a zone: this one names no moment.
        {"request": {"method": "GET", "url": "Task/c1", "ifModifiedSince": "2999-01-01T00:00:00"}},
    ])
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [entry["response"]["status"][:3] for entry in entries] == ["304", "200", "304", "200", "400", "400"]
    assert "resource" not in entries[0] and entries[0]["response"]["etag"] == etag
    assert entries[1]["resource"]["id"] == "c1"


@pytest.mark.parametrize("bundle_type", ["batch", "transaction"])
def test_head_entries_answer_as_get_without_the_resource(fhir, bundle_type):
    """R4 lists HEAD among a Bundle entry's methods; it was 400, 'not an
    interaction this server supports', though `HEAD /fhir/Task/c1` is answered."""
    etag = fhir.put("/fhir/Task/c1", json={**TASK, "id": "c1"}).headers["etag"]
    response = _post(fhir, bundle_type, [
        {"request": {"method": "HEAD", "url": "Task/c1"}},
        {"request": {"method": "HEAD", "url": "Task/c1", "ifNoneMatch": etag}},
        {"request": {"method": "HEAD", "url": "Task?_id=c1"}},
    ])
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [entry["response"]["status"] for entry in entries] == ["200 OK", "304 Not Modified", "200 OK"]
    assert all("resource" not in entry for entry in entries)
    assert entries[0]["response"]["etag"] == etag


def test_conditional_references_with_this_servers_base_are_resolved_and_unresolvable_ones_refused(fhir):
    fhir.put("/fhir/Task/known", json={**TASK, "id": "known", "identifier": [{"system": "http://a", "value": "v1"}]})
    fhir.put("/fhir/Task/child", json={**TASK, "id": "child", "basedOn": [{"reference": "Task/known"}]})

    def order(reference: str):  # type: ignore[no-untyped-def]
        return _post(fhir, "transaction", [
            {"resource": {**TASK, "partOf": [{"reference": reference}]}, "request": {"method": "POST", "url": "Task"}},
        ])

    absolute = order("http://testserver/fhir/Task?identifier=http://a|v1")
    assert absolute.status_code == 200, absolute.text
    assert absolute.json()["entry"][0]["resource"]["partOf"] == [{"reference": "Task/known"}]
    by_reference = order("Task?based-on=http://testserver/fhir/Task/known")
    assert by_reference.status_code == 200, by_reference.text
    assert by_reference.json()["entry"][0]["resource"]["partOf"] == [{"reference": "Task/child"}]
    assert order("task?identifier=x").status_code == 404  # no such resource type
    assert order("Ta-sk?identifier=x").status_code == 400
    # Outside a transaction nothing resolves a conditional reference: it is refused, not stored.
    assert _post(fhir, "batch", [
        {"resource": {**TASK, "partOf": [{"reference": "Task?identifier=http://a|v1"}]}, "request": {"method": "POST", "url": "Task"}},
    ]).json()["entry"][0]["response"]["status"].startswith("422")
    assert fhir.post("/fhir/Task", json={**TASK, "partOf": [{"reference": "Task?identifier=http://a|v1"}]}).status_code == 422


def test_a_placeholder_outside_a_transaction_is_refused_by_create_update_and_batch(fhir):
    """No Bundle entry is there for it to name: it could never be resolved."""
    assert fhir.post("/fhir/Task", json={**TASK, "partOf": [{"reference": NOWHERE}]}).status_code == 422
    oid = {**TASK, "id": "o1", "basedOn": [{"reference": "urn:oid:1.2.3"}]}
    assert fhir.put("/fhir/Task/o1", json=oid).status_code == 422
    response = _post(fhir, "batch", [
        {"fullUrl": NOWHERE, "resource": TASK, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "partOf": [{"reference": NOWHERE}]}, "request": {"method": "POST", "url": "Task"}},
    ])
    assert [entry["response"]["status"][:3] for entry in response.json()["entry"]] == ["201", "422"]
    assert "placeholder" in response.json()["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert fhir.get("/fhir/Task").json()["total"] == 1


def test_reads_in_a_batch_take_summary_and_elements(fhir):
    fhir.put("/fhir/Task/r1", json={**TASK, "id": "r1", "description": "long"})
    response = _post(fhir, "batch", [
        {"request": {"method": "GET", "url": "Task/r1?_elements=status"}},
        {"request": {"method": "GET", "url": "Task/r1?_summary=bogus"}},
    ])
    first, second = response.json()["entry"]
    assert "description" not in first["resource"] and first["resource"]["status"] == "requested"
    assert second["response"]["status"].startswith("400")


def test_transactions_changing_the_same_resources_in_opposite_orders_all_succeed(fhir):
    """On PostgreSQL two such transactions could each wait on the other (a deadlock, answered 500)."""
    for task_id in ("lock-a", "lock-b"):
        fhir.put(f"/fhir/Task/{task_id}", json={**TASK, "id": task_id})
    statuses: list[int] = []

    def update_both(order: tuple[str, str]) -> None:
        for round_number in range(10):
            entries = [{"resource": {**TASK, "id": task_id, "description": f"{order}-{round_number}"},
                        "request": {"method": "PUT", "url": f"Task/{task_id}"}} for task_id in order]
            statuses.append(_post(fhir, "transaction", entries).status_code)
            statuses.append(fhir.put(f"/fhir/Task/{order[1]}", json={**TASK, "id": order[1]}).status_code)

    threads = [threading.Thread(target=update_both, args=(order,)) for order in (("lock-a", "lock-b"), ("lock-b", "lock-a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 40
    history = fhir.get("/fhir/Task/lock-a/_history", params={"_count": 100}).json()
    assert sorted(int(entry["resource"]["meta"]["versionId"]) for entry in history["entry"]) == list(range(1, 32))


def test_transactions_deleting_and_updating_in_opposite_orders_all_succeed(fhir):
    """Locks were taken as each entry ran, deletes first: `DELETE A, PUT B` and
    `DELETE B, PUT A` deadlocked on PostgreSQL, and gave up with 500s."""
    statuses: list[int] = []

    def swap(first: str, second: str) -> None:
        for _ in range(10):
            entries = [{"request": {"method": "DELETE", "url": f"Task/{first}"}},
                       {"resource": {**TASK, "id": second}, "request": {"method": "PUT", "url": f"Task/{second}"}}]
            statuses.append(_post(fhir, "transaction", entries).status_code)

    pairs = [("swap-a", "swap-b"), ("swap-b", "swap-a")] * 2
    threads = [threading.Thread(target=swap, args=pair) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 40


def test_a_transaction_whose_outcome_depends_on_processing_order_fails_and_writes_nothing(fhir):
    """The condition was judged before the create ran: the update created a
    second Task with the identifier it asked for one of."""
    identifier = {"system": "urn:example:orders", "value": "order-1"}
    response = _post(fhir, "transaction", [
        {"resource": {**TASK, "identifier": [identifier]}, "request": {"method": "POST", "url": "Task"}},
        {"resource": {**TASK, "identifier": [identifier], "description": "updated"},
         "request": {"method": "PUT", "url": "Task?identifier=urn:example:orders|order-1"}},
    ])
    assert response.status_code == 400, response.text[:300]
    assert "order of processing" in response.json()["issue"][0]["diagnostics"]
    assert fhir.get("/fhir/Task", params={"identifier": "urn:example:orders|order-1"}).json()["total"] == 0
    # Alone, each condition meets what it made.
    entries = [{"resource": {**TASK, "identifier": [identifier]},
                "request": {"method": "POST", "url": "Task", "ifNoneExist": "identifier=urn:example:orders|order-1"}}]
    assert _post(fhir, "transaction", entries).status_code == 200
    assert _post(fhir, "transaction", entries).json()["entry"][0]["response"]["status"] == "200 OK"


def test_a_conditional_delete_beside_a_create_that_matches_its_condition_succeeds(fhir):
    """Deletes run first (http.html#trules): the create meeting the delete's
    condition afterwards makes the outcome depend on no order."""
    identifier = {"system": "urn:example:orders", "value": "x1"}
    fhir.put("/fhir/Task/old-order", json={**TASK, "id": "old-order", "identifier": [identifier]})
    response = _post(fhir, "transaction", [
        {"request": {"method": "DELETE", "url": "Task?identifier=urn:example:orders|x1"}},
        {"resource": {**TASK, "identifier": [identifier]}, "request": {"method": "POST", "url": "Task"}},
    ])
    assert response.status_code == 200, response.text[:300]
    found = fhir.get("/fhir/Task", params={"identifier": "urn:example:orders|x1"}).json()
    assert ids(found) == [response.json()["entry"][1]["resource"]["id"]]


@pytest.mark.parametrize("bundle_type", ["transaction", "batch"])
def test_prefer_return_decides_what_written_entries_carry(fhir, bundle_type):
    fhir.put("/fhir/Task/prefer-read", json={**TASK, "id": "prefer-read"})
    entries = [{"resource": TASK, "request": {"method": "POST", "url": "Task"}},
               {"request": {"method": "GET", "url": "Task/prefer-read"}}]
    for returned, carries in (("minimal", None), ("OperationOutcome", "OperationOutcome"), ("representation", "Task")):
        response = fhir.post("/fhir", json={"resourceType": "Bundle", "type": bundle_type, "entry": entries},
                             headers={"Prefer": f"return={returned}"})
        written, read = response.json()["entry"]
        assert written["response"]["status"] == "201 Created" and written["response"]["location"]
        assert (written.get("resource") or written["response"].get("outcome") or {}).get("resourceType") == carries
        assert read["resource"]["id"] == "prefer-read"  # a read's answer is its resource, whatever the preference


def test_an_update_with_general_parameters_is_named_by_its_fullurl(fhir):
    response = _post(fhir, "transaction", [
        {"fullUrl": "http://testserver/fhir/Task/named-put", "resource": {**TASK, "id": "named-put"},
         "request": {"method": "PUT", "url": "Task/named-put?_format=json"}},
        {"resource": {**TASK, "partOf": [{"reference": "http://testserver/fhir/Task/named-put"}]},
         "request": {"method": "POST", "url": "Task"}},
    ])
    assert response.status_code == 200, response.text[:300]
    assert response.json()["entry"][1]["resource"]["partOf"] == [{"reference": "Task/named-put"}]


def test_histories_are_read_in_a_batch_and_an_empty_path_segment_is_refused(fhir):
    fhir.put("/fhir/Task/kept", json={**TASK, "id": "kept"})
    fhir.put("/fhir/Task/kept", json={**TASK, "id": "kept", "description": "second"})
    answer = _post(fhir, "batch", [
        {"request": {"method": "GET", "url": "Task/kept/_history"}},
        {"request": {"method": "GET", "url": "Task/_history?_count=1"}},
        {"request": {"method": "DELETE", "url": "Task//kept"}},  # was the delete of Task/kept
    ]).json()
    instance, by_type, refused = answer["entry"]
    assert instance["response"]["status"] == "200 OK" and instance["resource"]["type"] == "history"
    assert [entry["resource"]["meta"]["versionId"] for entry in instance["resource"]["entry"]] == ["2", "1"]
    assert by_type["resource"]["type"] == "history" and len(by_type["resource"]["entry"]) == 1
    assert refused["response"]["status"].startswith("400")
    assert fhir.get("/fhir/Task/kept").status_code == 200


def test_a_transaction_reads_a_type_history_as_its_own_transaction_sees_it(fhir):
    """Without waiting on the other transactions of the server (on PostgreSQL, its own among them: a second each)."""
    import time

    started = time.monotonic()
    answer = _post(fhir, "transaction", [
        {"resource": {**TASK, "id": "in-bundle"}, "request": {"method": "PUT", "url": "Task/in-bundle"}},
        *({"request": {"method": "GET", "url": "Task/_history"}} for _ in range(3)),
    ]).json()
    assert time.monotonic() - started < 2
    for entry in answer["entry"][1:]:
        assert [version["resource"]["id"] for version in entry["resource"]["entry"]] == ["in-bundle"]
