"""FHIR search over HTTP (FHIR R4 search.html): each parameter type with its
modifiers and prefixes, OR and AND, chains, _include/_revinclude, _sort,
_summary, _elements, _total and strict handling."""

import re

import pytest

from tests.fhir_checks import ids, link, seed

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _patient(pid, family, given, birth, gender, **extra):
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": given}],
            "birthDate": birth, "gender": gender, **extra}


def _observation(oid, code, value, effective, subject="Patient/p1", status="final", **extra):
    body = {"resourceType": "Observation", "id": oid, "status": status,
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": subject}, **extra}
    if value is not None:
        body["valueQuantity"] = {"value": value, "unit": "mL", "system": UCUM, "code": "mL"}
    if effective is not None:
        body["effectiveDateTime"] = effective
    return body


@pytest.fixture
def population(services):
    seed(
        services,
        _patient("p1", "Müller", ["Anna"], "1970-05-17", "female",
                 identifier=[{"system": "urn:oid:1.2.3", "value": "MRN-1"}]),
        _patient("p2", "Mullins", ["Bob", "Carl"], "1985-01-02", "male",
                 identifier=[{"value": "MRN-2"}]),
        _patient("p3", "Smith", ["Müll"], "1970", "other"),
        _observation("o1", "1111-1", 5.4, "2024-03-05T10:15:00Z"),
        _observation("o2", "2222-2", 100, "2024-03-06T08:00:00+02:00", subject="Patient/p2"),
        _observation("o3", "1111-1", 12.25, "2023-12-31", status="preliminary", subject="Patient/p2"),
        _observation("o4", "3333-3", None, None, subject="Patient/p3",
                     category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}]),
        {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "18748-4"}]}, "subject": {"reference": "Patient/p1"},
         "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}], "issued": "2024-03-07T00:00:00Z"},
    )


def _search(fhir, path, **params):
    response = fhir.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _ids(fhir, path, **params):
    return sorted(ids(_search(fhir, path, **params)))


# --- string ----------------------------------------------------------------------
def test_string_prefix_is_case_and_accent_insensitive(fhir, population):
    assert _ids(fhir, "/fhir/Patient", family="mull") == ["p1", "p2"]
    assert _ids(fhir, "/fhir/Patient", name="MÜL") == ["p1", "p2", "p3"]
    assert _ids(fhir, "/fhir/Patient", given="car") == ["p2"]


def test_string_exact_and_contains(fhir, population):
    assert _ids(fhir, "/fhir/Patient", **{"family:exact": "Müller"}) == ["p1"]
    assert _ids(fhir, "/fhir/Patient", **{"family:exact": "müller"}) == []
    assert _ids(fhir, "/fhir/Patient", **{"family:contains": "LLIN"}) == ["p2"]
    assert _ids(fhir, "/fhir/Patient", **{"name:contains": "%"}) == []


# --- token -----------------------------------------------------------------------
def test_token_forms(fhir, population):
    assert _ids(fhir, "/fhir/Observation", code="1111-1") == ["o1", "o3"]
    assert _ids(fhir, "/fhir/Observation", code=f"{LOINC}|2222-2") == ["o2"]
    assert _ids(fhir, "/fhir/Observation", code="http://other|2222-2") == []
    assert _ids(fhir, "/fhir/Patient", identifier="|MRN-2") == ["p2"]
    assert _ids(fhir, "/fhir/Patient", identifier="|MRN-1") == []
    assert _ids(fhir, "/fhir/Patient", identifier="urn:oid:1.2.3|") == ["p1"]


def test_token_not_includes_resources_without_the_element(fhir, population):
    assert _ids(fhir, "/fhir/Observation", **{"code:not": "1111-1"}) == ["o2", "o4"]
    assert _ids(fhir, "/fhir/Observation", **{"category:not": "imaging"}) == ["o1", "o2", "o3"]


def test_comma_is_or_and_repetition_is_and(fhir, population):
    assert _ids(fhir, "/fhir/Observation", code="1111-1,2222-2") == ["o1", "o2", "o3"]
    response = fhir.get("/fhir/Observation", params=[("code", "1111-1,2222-2"), ("subject", "Patient/p2")])
    assert sorted(ids(response.json())) == ["o2", "o3"]
    response = fhir.get("/fhir/Observation", params=[("code", "1111-1"), ("code", "2222-2")])
    assert ids(response.json()) == []


def test_escaped_comma_is_literal(fhir, services):
    seed(services, _patient("pc", "A,B", ["X"], "2000", "male"))
    assert _ids(fhir, "/fhir/Patient", **{"family:exact": "A\\,B"}) == ["pc"]


# --- date ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-05", ["o1"]),
        ("eq2024-03", ["o1", "o2"]),
        ("2024", ["o1", "o2"]),
        ("ne2024-03-05", ["o2", "o3"]),
        ("gt2024-03-05", ["o2"]),
        ("ge2024-03-05", ["o1", "o2"]),
        ("lt2024-03-05", ["o3"]),
        ("le2024-03-05", ["o1", "o3"]),
        ("sa2024-01-01", ["o1", "o2"]),
        ("eb2024-01-01", ["o3"]),
        ("2024-03-05T10:15:00Z", ["o1"]),
        ("2024-03-05T12:15:00+02:00", ["o1"]),
        ("2024-03-06T06:00:00Z", ["o2"]),
    ],
)
def test_date_prefixes_and_precision(fhir, population, value, expected):
    assert _ids(fhir, "/fhir/Observation", date=value) == expected


def test_date_of_lower_precision_in_the_resource(fhir, population):
    # p3 was born "1970": inside 1970 as a whole, not inside one of its days.
    assert _ids(fhir, "/fhir/Patient", birthdate="1970") == ["p1", "p3"]
    assert _ids(fhir, "/fhir/Patient", birthdate="1970-05-17") == ["p1"]
    # "ge": the range above the value overlaps the year 1970 (search.html#prefix).
    assert _ids(fhir, "/fhir/Patient", birthdate="ge1970-05-17") == ["p1", "p2", "p3"]
    assert _ids(fhir, "/fhir/Patient", birthdate="sa1970-05-17") == ["p2"]


def test_date_range_by_two_parameters(fhir, population):
    response = fhir.get("/fhir/Observation", params=[("date", "ge2024-01-01"), ("date", "lt2024-03-06")])
    assert sorted(ids(response.json())) == ["o1"]


def test_bad_date_is_400(fhir, population):
    response = fhir.get("/fhir/Observation", params={"date": "gt05/03/2024"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "invalid"


# --- quantity --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5.4", ["o1"]),
        ("5.35", []),
        ("5", ["o1"]),  # implicit precision: [4.5, 5.5)
        ("gt10", ["o2", "o3"]),
        ("lt12.25", ["o1"]),
        ("le12.25", ["o1", "o3"]),
        ("ne100", ["o1", "o3"]),
        (f"100|{UCUM}|mL", ["o2"]),
        ("100||mL", ["o2"]),
        ("100||L", []),
        ("ge0|http://other|mL", []),
    ],
)
def test_quantity(fhir, population, value, expected):
    assert _ids(fhir, "/fhir/Observation", **{"value-quantity": value}) == expected


def test_quantity_units_by_human_unit_and_by_long_code(fhir, services):
    long_code = "{tablets_of_" + "x" * 80 + "}"
    seed(services, {"resourceType": "Observation", "id": "q1", "status": "final", "code": {"text": "dose"},
                    "valueQuantity": {"value": 2, "unit": "milligram", "system": UCUM, "code": "mg"}})
    seed(services, {"resourceType": "Observation", "id": "q2", "status": "final", "code": {"text": "dose"},
                    "valueQuantity": {"value": 7, "system": UCUM, "code": long_code}})
    assert _ids(fhir, "/fhir/Observation", **{"value-quantity": "2||milligram"}) == ["q1"]  # the stated human unit
    assert _ids(fhir, "/fhir/Observation", **{"value-quantity": "2||mg"}) == ["q1"]
    assert _ids(fhir, "/fhir/Observation", **{"value-quantity": f"2|{UCUM}|milligram"}) == []  # a unit is no code
    assert _ids(fhir, "/fhir/Observation", **{"value-quantity": f"7|{UCUM}|{long_code}"}) == ["q2"]
    assert _ids(fhir, "/fhir/Observation", **{"value-quantity": f"7||{long_code}"}) == ["q2"]
    assert _ids(fhir, "/fhir/Observation", **{"value-quantity": f"7||{long_code[:-2]}}}"}) == []


@pytest.mark.parametrize("number", ["1_000", " 5", "\u0665", "5.", ".5"])
def test_quantity_numbers_are_fhir_decimals(fhir, population, number):
    response = fhir.get("/fhir/Observation", params={"value-quantity": number})
    assert response.status_code == 400, response.text


# --- reference -------------------------------------------------------------------
def test_reference_forms(fhir, population):
    assert _ids(fhir, "/fhir/Observation", subject="Patient/p2") == ["o2", "o3"]
    assert _ids(fhir, "/fhir/Observation", subject="p2") == ["o2", "o3"]
    assert _ids(fhir, "/fhir/Observation", patient="p1") == ["o1"]
    assert _ids(fhir, "/fhir/Observation", **{"subject:Patient": "p1"}) == ["o1"]
    assert _ids(fhir, "/fhir/Observation", subject="http://testserver/fhir/Patient/p1") == ["o1"]
    assert _ids(fhir, "/fhir/DiagnosticReport", result="Observation/o2") == ["r1"]


def test_chained_reference(fhir, population):
    assert _ids(fhir, "/fhir/Observation", **{"subject:Patient.identifier": "urn:oid:1.2.3|MRN-1"}) == ["o1"]
    assert _ids(fhir, "/fhir/Observation", **{"patient.gender": "male"}) == ["o2", "o3"]
    assert _ids(fhir, "/fhir/Observation", **{"patient.name": "smi"}) == ["o4"]
    response = fhir.get("/fhir/Observation", params={"subject.identifier": "MRN-1"})
    assert response.status_code == 400  # subject may point at several types: say which


def test_reverse_chained_reference(fhir, population):
    """`_has` (search.html#has): the resources that matches of another type point at."""
    assert _ids(fhir, "/fhir/Patient", **{"_has:Observation:patient:code": "1111-1"}) == ["p1", "p2"]
    assert _ids(fhir, "/fhir/Patient", **{"_has:Observation:subject:code": f"{LOINC}|2222-2"}) == ["p2"]
    assert _ids(fhir, "/fhir/Patient", **{"_has:Observation:patient:code:not": "1111-1"}) == ["p2", "p3"]
    assert _ids(fhir, "/fhir/Patient", **{"_has:Observation:patient:value-quantity": "gt50"}) == ["p2"]
    assert _ids(fhir, "/fhir/Patient", **{"_has:DiagnosticReport:subject:code": "18748-4", "gender": "male"}) == []
    assert _ids(fhir, "/fhir/Observation", **{"_has:DiagnosticReport:result:status": "final"}) == ["o1", "o2"]
    assert _ids(fhir, "/fhir/Patient", **{"_has:Observation:patient:_id": "o4,o1"}) == ["p1", "p3"]
    both = fhir.get("/fhir/Patient?_has:Observation:patient:code=1111-1&_has:Observation:patient:code=2222-2")
    assert sorted(ids(both.json())) == ["p2"]  # AND: each of the two matched by one of the patient's own


def test_reverse_chains_take_references_by_this_servers_url(fhir, population):
    """As `subject=http://testserver/fhir/Patient/p1` is `subject=Patient/p1`, so
    within `_has` (the reference parameter at its end is one of the other type's)."""
    for value in ("Patient/p1", "http://testserver/fhir/Patient/p1", "http://testserver/fhir/Patient/p3,Patient/p1"):
        assert _ids(fhir, "/fhir/Observation", **{"_has:DiagnosticReport:result:subject": value}) == ["o1", "o2"]
    typed = {"_has:Observation:subject:subject:Patient": "http://testserver/fhir/Patient/p2"}
    assert _ids(fhir, "/fhir/Patient", **typed) == ["p2"]


def test_forward_chains_take_references_by_this_servers_url(fhir, population):
    """R4 search.html#reference: this server's own base URL names its own
    resources, at the far end of a forward chain too (`result` points at
    Observations, whose `subject` is a reference)."""
    for value in ("Patient/p1", "http://testserver/fhir/Patient/p1", "http://testserver/fhir/Patient/p3,p1"):
        assert _ids(fhir, "/fhir/DiagnosticReport", **{"result.subject": value}) == ["r1"]
        assert _ids(fhir, "/fhir/DiagnosticReport", **{"result:Observation.subject:Patient": value}) == ["r1"]
    assert _ids(fhir, "/fhir/DiagnosticReport", **{"result.patient": "http://testserver/fhir/Patient/p2"}) == ["r1"]
    assert _ids(fhir, "/fhir/DiagnosticReport", **{"result.patient": "http://testserver/fhir/Patient/p3"}) == []
    other = fhir.get("/fhir/DiagnosticReport", params={"result.subject": "http://other.example/fhir/Patient/p1"})
    assert other.status_code == 400  # another server's Patient, which no local reference names


def test_the_base_url_is_the_one_the_client_sees_behind_a_proxy(fhir, population):
    """Written and searched through a proxy (X-Forwarded-*), the proxy's base
    is this server's; the address behind it is, to that client, another server's."""
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "fhir.example", "X-Forwarded-Prefix": "/pacs"}
    own = "https://fhir.example/pacs/fhir/Patient/p3"
    task = {"resourceType": "Task", "id": "t1", "status": "draft", "intent": "proposal", "for": {"reference": own}}
    assert fhir.put("/fhir/Task/t1", json=task, headers=proxy).status_code == 201
    assert fhir.get("/fhir/Task/t1").json()["for"] == {"reference": "Patient/p3"}
    assert _ids(fhir, "/fhir/Task", patient="Patient/p3") == ["t1"]
    for path, params in (("/fhir/Task", {"patient": own}), ("/fhir/Observation", {"subject": own}),
                         ("/fhir/DiagnosticReport", {"result.subject": own.replace("p3", "p2")})):
        found = fhir.get(path, params=params, headers=proxy)
        assert found.status_code == 200, found.text
        assert sorted(ids(found.json())) == {"/fhir/Task": ["t1"], "/fhir/Observation": ["o4"]}.get(path, ["r1"])
    assert fhir.get("/fhir/Task", params={"patient": own}).status_code == 400  # not this client's base


def test_reverse_chains_page_and_count(fhir, population):
    first = _search(fhir, "/fhir/Patient", **{"_has:Observation:patient:code": "1111-1", "_count": "1",
                                              "_sort": "_id"})
    assert (ids(first), first["total"]) == (["p1"], 2)
    following = fhir.get(link(first, "next"))
    assert ids(following.json()) == ["p2"] and link(following.json(), "next") is None


@pytest.mark.parametrize(("name", "message"), [
    ("_has:Observation:patient", "_has takes the form"),
    ("_has:Nothing:patient:code", "'Nothing' is not a resource type"),
    ("_has:Observation:code:code", "no reference parameter 'code'"),
    ("_has:Observation:has-member:code", "Observation.has-member cannot point at a Patient"),
    ("_has:Observation:patient:colour", "Observation has no search parameter 'colour'"),
    ("_has:Observation:patient:subject.name", "more than one level"),
    ("_has:Observation:patient:_has:DiagnosticReport:result:code", "_has within _has"),
])
def test_reverse_chains_that_cannot_be_followed_are_400(fhir, population, name, message):
    response = fhir.get("/fhir/Patient", params={name: "x"})
    assert response.status_code == 400, response.text
    assert message in response.json()["issue"][0]["diagnostics"]


# --- :missing --------------------------------------------------------------------
def test_missing_on_every_type(fhir, population):
    assert _ids(fhir, "/fhir/Observation", **{"value-quantity:missing": "true"}) == ["o4"]
    assert _ids(fhir, "/fhir/Observation", **{"date:missing": "true"}) == ["o4"]
    assert _ids(fhir, "/fhir/Observation", **{"category:missing": "false"}) == ["o4"]
    assert _ids(fhir, "/fhir/Patient", **{"identifier:missing": "true"}) == ["p3"]
    assert _ids(fhir, "/fhir/Patient", **{"family:missing": "false"}) == ["p1", "p2", "p3"]
    assert _ids(fhir, "/fhir/DiagnosticReport", **{"result:missing": "false"}) == ["r1"]
    assert fhir.get("/fhir/Patient", params={"family:missing": "maybe"}).status_code == 400


@pytest.mark.parametrize(("path", "params"), [
    ("/fhir/Patient", {"active": "yes"}),
    ("/fhir/Patient", {"active:not": "1"}),
    ("/fhir/Patient", {"active": "true,maybe"}),
    ("/fhir/Patient", {"active": "http://example.org|true"}),
    ("/fhir/Group", {"actual": "maybe"}),
    ("/fhir/Group", {"exclude": "TRUE"}),
    ("/fhir/Group", {"actual:missing": "maybe"}),
])
def test_a_boolean_parameter_takes_only_true_or_false(fhir, population, path, params):
    """Any other value matches nothing: an empty Bundle would pass it off as an answer."""
    response = fhir.get(path, params=params)
    assert response.status_code == 400, response.text
    diagnostics = response.json()["issue"][0]["diagnostics"]
    name, value = next(iter(params.items()))
    assert name.partition(":")[0] in diagnostics and repr(value.split(",")[-1]) in diagnostics


def test_a_boolean_parameter_matches_true_and_false(fhir, population, services):
    seed(services, {"resourceType": "Patient", "id": "inactive", "active": False},
         {"resourceType": "Group", "id": "g1", "type": "person", "actual": True})
    assert _ids(fhir, "/fhir/Patient", active="false") == ["inactive"]
    assert _ids(fhir, "/fhir/Patient", **{"active:not": "true"}) == ["inactive", "p1", "p2", "p3"]
    assert _ids(fhir, "/fhir/Group", actual="true") == ["g1"]


def test_id_and_last_updated(fhir, population, services):
    assert _ids(fhir, "/fhir/Patient", _id="p1,p3") == ["p1", "p3"]
    seed(services, _patient("p9", "Late", ["L"], "1999", "male"))
    stamp = fhir.get("/fhir/Patient/p9").json()["meta"]["lastUpdated"]
    assert _ids(fhir, "/fhir/Patient", _lastUpdated=f"ge{stamp}") == ["p9"]
    assert "p9" not in _ids(fhir, "/fhir/Patient", _lastUpdated=f"lt{stamp}")


def test_unknown_modifier_is_400(fhir, population):
    response = fhir.get("/fhir/Patient", params={"gender:text": "male"})
    assert response.status_code == 400


# --- unknown parameters ----------------------------------------------------------
def test_unknown_parameter_is_ignored_and_reported(fhir, population):
    bundle = _search(fhir, "/fhir/Patient", gender="male", colour="blue")
    assert ids(bundle) == ["p2"]
    self_link = next(item["url"] for item in bundle["link"] if item["relation"] == "self")
    assert "gender=male" in self_link and "colour" not in self_link
    outcome = [entry for entry in bundle["entry"] if entry["search"]["mode"] == "outcome"]
    assert "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]


def test_strict_handling_refuses_unknown_parameters(fhir, population):
    response = fhir.get("/fhir/Patient", params={"colour": "blue"}, headers={"Prefer": "handling=strict"})
    assert response.status_code == 400
    assert "colour" in response.json()["issue"][0]["diagnostics"]
    lenient = fhir.get("/fhir/Patient", params={"colour": "blue"}, headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200


def test_post_search_equals_get(fhir, population):
    posted = fhir.post("/fhir/Observation/_search", data={"code": "1111-1"})
    assert posted.status_code == 200
    assert sorted(ids(posted.json())) == ["o1", "o3"]
    in_the_url = fhir.post("/fhir/Observation/_search", params={"code": "1111-1"})  # no body, so no type
    assert in_the_url.status_code == 200, in_the_url.text
    assert sorted(ids(in_the_url.json())) == ["o1", "o3"]
    as_json = fhir.post("/fhir/Observation/_search", json={"code": "1111-1"})
    assert as_json.status_code == 415, as_json.text


# --- _sort -----------------------------------------------------------------------
def test_sort_by_several_keys(fhir, population):
    bundle = _search(fhir, "/fhir/Observation", _sort="code,-date")
    assert ids(bundle) == ["o1", "o3", "o2", "o4"]
    bundle = _search(fhir, "/fhir/Observation", _sort="-value-quantity")
    assert ids(bundle) == ["o2", "o3", "o1", "o4"]  # missing values last
    bundle = _search(fhir, "/fhir/Patient", _sort="birthdate")
    assert ids(bundle) == ["p3", "p1", "p2"]
    assert fhir.get("/fhir/Patient", params={"_sort": "colour"}).status_code == 400


def test_sort_ties_are_broken_by_id(fhir, services):
    seed(services, *(_patient(f"tie{n}", "Same", ["S"], "2000-01-01", "male") for n in (3, 1, 2)))
    assert ids(_search(fhir, "/fhir/Patient", _sort="birthdate")) == ["tie1", "tie2", "tie3"]
    # The id runs in the direction of the last key.
    assert ids(_search(fhir, "/fhir/Patient", _sort="-birthdate")) == ["tie3", "tie2", "tie1"]


# --- _include / _revinclude --------------------------------------------------------
def test_include_and_revinclude(fhir, population):
    bundle = _search(fhir, "/fhir/Observation", code="1111-1", _include="Observation:subject")
    assert sorted(ids(bundle)) == ["o1", "o3"]
    assert sorted(ids(bundle, "include")) == ["p1", "p2"]
    assert bundle["total"] == 2
    bundle = _search(fhir, "/fhir/Patient", _id="p1", _revinclude="Observation:subject")
    assert ids(bundle, "include") == ["o1"]
    bundle = _search(fhir, "/fhir/Observation", _id="o1", _include="Observation:subject:Patient")
    assert ids(bundle, "include") == ["p1"]
    bundle = _search(fhir, "/fhir/Observation", _id="o1", _include="Observation:subject:Group")
    assert ids(bundle, "include") == []


def test_include_iterate(fhir, population):
    response = fhir.get(
        "/fhir/DiagnosticReport",
        params=[("_id", "r1"), ("_include", "DiagnosticReport:result"), ("_include:iterate", "Observation:subject")],
    )
    assert sorted(ids(response.json(), "include")) == ["o1", "o2", "p1", "p2"]
    without = fhir.get(
        "/fhir/DiagnosticReport",
        params=[("_id", "r1"), ("_include", "DiagnosticReport:result"), ("_include", "Observation:subject")],
    )
    assert without.status_code == 400  # a non-iterate _include must start from the searched type


def test_revinclude_iterate(fhir, population):
    response = fhir.get(
        "/fhir/Patient",
        params=[("_id", "p1"), ("_revinclude", "Observation:subject"), ("_revinclude:iterate", "DiagnosticReport:result")],
    )
    assert sorted(ids(response.json(), "include")) == ["o1", "r1"]


def test_include_cap_truncates_with_an_outcome(fhir, services, settings):
    seed(services, *(_patient(f"cap{n}", "Cap", ["C"], "2000", "male") for n in range(5)))
    seed(services, *(_observation(f"co{n}", "9", n, "2024", subject=f"Patient/cap{n}") for n in range(5)))
    object.__setattr__(services.fhir.searcher, "max_included", 3)
    bundle = _search(fhir, "/fhir/Observation", code="9", _include="Observation:subject")
    assert len(ids(bundle, "include")) == 3
    [outcome] = [entry for entry in bundle["entry"] if entry["search"]["mode"] == "outcome"]
    assert "first 3 included" in outcome["resource"]["issue"][0]["diagnostics"]


def test_bad_include_is_400(fhir, population):
    for value in ("Observation", "Observation:code", "Observation:subject:Medication", "Nope:subject"):
        assert fhir.get("/fhir/Observation", params={"_include": value}).status_code == 400, value


# --- _summary, _elements, _total ---------------------------------------------------
def test_summary_count(fhir, population):
    bundle = _search(fhir, "/fhir/Observation", _summary="count")
    assert bundle["total"] == 4
    assert "entry" not in bundle


def test_summary_true_keeps_summary_elements_and_marks_subsetted(fhir, population, services):
    seed(services, _patient("ps", "Sum", ["S"], "2001", "male",
                            text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
                            contact=[{"name": {"family": "Relative"}}]))
    [resource] = [entry["resource"] for entry in _search(fhir, "/fhir/Patient", _id="ps", _summary="true")["entry"]]
    assert "contact" not in resource and "text" not in resource
    assert resource["name"][0]["family"] == "Sum"
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in resource["meta"]["tag"]
    [data] = [entry["resource"] for entry in _search(fhir, "/fhir/Patient", _id="ps", _summary="data")["entry"]]
    assert "text" not in data and "contact" in data


def test_elements(fhir, population):
    [resource] = [entry["resource"] for entry in _search(fhir, "/fhir/Observation", _id="o1", _elements="value")["entry"]]
    assert set(resource) == {"resourceType", "id", "meta", "status", "code", "valueQuantity"}


def test_elements_keeps_no_element_that_merely_starts_with_the_name_asked_for(fhir, services):
    seed(services, {"resourceType": "DiagnosticReport", "id": "rc", "status": "final", "code": {"text": "CT"},
                    "conclusion": "normal", "conclusionCode": [{"text": "normal"}], "effectiveDateTime": "2024"})
    bundle = _search(fhir, "/fhir/DiagnosticReport", _elements="conclusion")
    [resource] = [entry["resource"] for entry in bundle["entry"]]
    assert set(resource) == {"resourceType", "id", "meta", "status", "code", "conclusion"}
    read = fhir.get("/fhir/DiagnosticReport/rc", params={"_elements": "effective"}).json()
    assert set(read) == {"resourceType", "id", "meta", "status", "code", "effectiveDateTime"}


def test_total_modes(fhir, population):
    assert "total" not in _search(fhir, "/fhir/Observation", _total="none")
    assert _search(fhir, "/fhir/Observation", _total="accurate")["total"] == 4
    estimated = _search(fhir, "/fhir/Observation", _total="estimate")
    assert estimated["total"] == len(ids(estimated)) == 4  # all on this page: no guess is needed
    first = _search(fhir, "/fhir/Observation", _total="estimate", _count="1")
    assert first["total"] >= 2 and link(first, "next")
    assert fhir.get("/fhir/Observation", params={"_total": "some"}).status_code == 400


def test_count_bounds(fhir, population):
    bundle = _search(fhir, "/fhir/Observation", _count="2")
    assert len(ids(bundle)) == 2
    assert fhir.get("/fhir/Observation", params={"_count": "-1"}).status_code == 400
    capped = _search(fhir, "/fhir/Observation", _count="1" + "0" * 30, code="x")  # a server may return fewer
    assert link(capped, "self").endswith("_count=1000&code=x")  # the search as run
    assert fhir.get("/fhir/Observation", params={"_summary": "count", "_total": "none"}).status_code == 400


def test_a_reference_to_another_servers_resource_is_not_the_local_one(fhir, services):
    task = {"resourceType": "Task", "status": "draft", "intent": "proposal"}
    seed(services, {**task, "id": "s1"})
    fhir.put("/fhir/Task/ext1", json={**task, "id": "ext1", "basedOn": [{"reference": "http://other.example/fhir/Task/s1"}]})
    fhir.put("/fhir/Task/own1", json={**task, "id": "own1", "basedOn": [{"reference": "http://testserver/fhir/Task/s1"}]})
    # A reference to this server's own base is stored relative, and is the local one.
    assert fhir.get("/fhir/Task/own1").json()["basedOn"] == [{"reference": "Task/s1"}]
    assert fhir.get("/fhir/Task/ext1").json()["basedOn"] == [{"reference": "http://other.example/fhir/Task/s1"}]
    assert _ids(fhir, "/fhir/Task", **{"based-on": "Task/s1"}) == ["own1"]
    assert _ids(fhir, "/fhir/Task", **{"based-on": "http://testserver/fhir/Task/s1"}) == ["own1"]
    assert fhir.get("/fhir/Task", params={"based-on": "http://other.example/fhir/Task/s1"}).status_code == 400
    included = fhir.get("/fhir/Task", params={"_id": "ext1", "_include": "Task:based-on"}).json()
    assert [entry["resource"]["id"] for entry in included["entry"]] == ["ext1"]
    revincluded = fhir.get("/fhir/Task", params={"_id": "s1", "_revinclude": "Task:based-on"}).json()
    assert sorted(entry["resource"]["id"] for entry in revincluded["entry"]) == ["own1", "s1"]


def test_only_reference_values_are_made_relative(fhir):
    """An identifier may be a URL on this server; matched exactly, as sent."""
    url = "http://testserver/fhir/Task/order-77"
    task = {"resourceType": "Task", "status": "draft", "intent": "proposal", "identifier": [{"value": url}]}
    assert fhir.put("/fhir/Task/ordered", json={**task, "id": "ordered"}).status_code == 201
    assert _ids(fhir, "/fhir/Task", identifier=url) == ["ordered"]
    assert _ids(fhir, "/fhir/Task", identifier=f"{url},other") == ["ordered"]
    assert _ids(fhir, "/fhir/Task", _id="http://testserver/fhir/Task/ordered") == []  # an id is no URL


def test_parameters_that_are_not_utf8_are_400(fhir, population):
    assert fhir.get("/fhir/Patient?name=%FF").status_code == 400
    posted = fhir.post("/fhir/Patient/_search", content="name=M\xfcller".encode("latin-1"),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert posted.status_code == 400
    assert _ids(fhir, "/fhir/Patient", name="Müller") == ["p1"]


_TASK = {"resourceType": "Task", "status": "requested", "intent": "order"}


def _task_ids(fhir, params) -> list[str]:  # type: ignore[no-untyped-def]
    response = fhir.get("/fhir/Task", params=params)
    assert response.status_code == 200, response.text[:300]
    return sorted(ids(response.json()))


def test_missing_sees_values_no_search_can_match(fhir):
    """Another server's reference, a reference by identifier alone and a
    CodeableConcept with only text wrote no index row, so they counted as missing."""
    fhir.put("/fhir/Task/external", json={
        **_TASK, "id": "external", "basedOn": [{"reference": "http://other.example/fhir/ServiceRequest/1"}]})
    fhir.put("/fhir/Task/by-identifier", json={**_TASK, "id": "by-identifier", "basedOn": [{"identifier": {"value": "o-1"}}]})
    fhir.put("/fhir/Task/text-only", json={**_TASK, "id": "text-only", "code": {"text": "read the scan"}})
    fhir.put("/fhir/Task/bare", json={**_TASK, "id": "bare"})
    assert _task_ids(fhir, {"based-on:missing": "true"}) == ["bare", "text-only"]
    assert _task_ids(fhir, {"based-on:missing": "false"}) == ["by-identifier", "external"]
    assert _task_ids(fhir, {"code:missing": "false"}) == ["text-only"]
    assert _task_ids(fhir, {"code:not": "x"}) == ["bare", "by-identifier", "external", "text-only"]
    assert _task_ids(fhir, {"_id": "bare", "_revinclude": "Task:based-on"}) == ["bare"]


def test_a_leap_second_is_found_by_its_day(fhir):
    assert fhir.put("/fhir/Task/leap", json={**_TASK, "id": "leap", "authoredOn": "2016-12-31T23:59:60Z"}).status_code == 201
    assert _task_ids(fhir, {"authored-on": "2016-12-31"}) == ["leap"]
    assert _task_ids(fhir, {"authored-on": "2016-12-31T23:59:60Z"}) == ["leap"]
    assert _task_ids(fhir, {"authored-on": "ge2017-01-01"}) == []
    assert _task_ids(fhir, {"authored-on:missing": "true"}) == []


def test_an_identifier_that_is_a_url_of_this_server_is_searched_as_sent(fhir):
    url = "http://testserver/fhir/Task/order-77"
    fhir.put("/fhir/Task/by-url", json={**_TASK, "id": "by-url", "basedOn": [{"identifier": {"value": url}}]})
    response = fhir.get("/fhir/Task", params={"based-on:identifier": url})
    assert ids(response.json()) == ["by-url"]
    assert "order-77" in link(response.json(), "self") and "based-on%3Aidentifier=http" in link(response.json(), "self")


def test_a_result_parameter_with_a_modifier_is_unknown(fhir, services):
    seed(services, *({**_TASK, "id": f"t{number}", "authoredOn": f"202{number}"} for number in range(3)))
    strict = fhir.get("/fhir/Task", params={"_sort:desc": "authored-on"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "_sort:desc" in strict.text
    lenient = fhir.get("/fhir/Task", params={"_sort:desc": "authored-on", "_count:max": "1"}).json()
    assert len(ids(lenient)) == 3 and "_sort" not in link(lenient, "self") and "_count" not in link(lenient, "self")
    warnings = [entry["resource"] for entry in lenient["entry"] if entry["search"]["mode"] == "outcome"]
    assert "'_sort:desc' was ignored" in warnings[0]["issue"][0]["diagnostics"]


def test_includes_cut_off_by_depth_say_so(fhir, services):
    chain = [{"resourceType": "Observation", "id": f"h{depth}", "status": "final", "code": {"text": "x"},
              **({"hasMember": [{"reference": f"Observation/h{depth + 1}"}]} if depth < 8 else {})}
             for depth in range(9)]
    seed(services, *chain)
    bundle = fhir.get("/fhir/Observation", params={"_id": "h0", "_include:iterate": "Observation:has-member"}).json()
    assert ids(bundle, "include") == ["h1", "h2", "h3", "h4", "h5"]
    outcome = next(entry["resource"] for entry in bundle["entry"] if entry["search"]["mode"] == "outcome")
    assert "levels deep" in outcome["issue"][0]["diagnostics"]
    shallow = fhir.get("/fhir/Observation", params={"_id": "h6", "_include:iterate": "Observation:has-member"}).json()
    assert ids(shallow, "include") == ["h7", "h8"]
    assert all(entry["search"]["mode"] != "outcome" for entry in shallow["entry"])


AIAST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST"}


def _labelled(services) -> None:  # type: ignore[no-untyped-def]
    def observation(oid: str, meta: dict) -> dict:
        return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"}, "meta": meta}

    seed(services,
         observation("ai", {"security": [AIAST]}),
         observation("tagged", {"tag": [{"system": "http://example.org/tags", "code": "second-read"}]}),
         observation("profiled", {"profile": ["http://example.org/StructureDefinition/lesion"]}),
         observation("plain", {}))


def test_security_labels_tags_and_profiles_are_searched_on_every_type(fhir, services):
    """`_security=AIAST` finds what an AI asserted (HL7 AI Transparency);
    they were ignored with a warning, and every resource matched."""
    _labelled(services)
    assert ids(fhir.get("/fhir/Observation", params={"_security": "AIAST"}).json()) == ["ai"]
    assert ids(fhir.get("/fhir/Observation", params={"_security": f"{AIAST['system']}|AIAST"}).json()) == ["ai"]
    assert sorted(ids(fhir.get("/fhir/Observation", params={"_security:not": "AIAST"}).json())) == [
        "plain", "profiled", "tagged"]
    assert ids(fhir.get("/fhir/Observation", params={"_tag": "http://example.org/tags|second-read"}).json()) == [
        "tagged"]
    assert ids(fhir.get("/fhir/Observation",
                        params={"_profile": "http://example.org/StructureDefinition/lesion"}).json()) == ["profiled"]
    task = fhir.get("/fhir/metadata").json()["rest"][0]["resource"]
    [observation] = [resource for resource in task if resource["type"] == "Observation"]
    declared = {parameter["name"]: parameter for parameter in observation["searchParam"]}
    assert declared["_security"]["definition"].endswith("/Resource-security")
    assert declared["_profile"]["type"] == "uri"


def test_labels_written_before_they_were_indexed_are_indexed_by_the_upgrade(fhir, services):
    from sqlalchemy import delete

    from server.db import write_connection
    from server.fhir.store import reindex_labelled
    from server.tables import fhir_tokens

    _labelled(services)
    with write_connection(services.engine) as connection:  # as an older server wrote them
        connection.execute(delete(fhir_tokens).where(fhir_tokens.c.param.in_(("_security", "_tag", "_profile"))))
    assert ids(fhir.get("/fhir/Observation", params={"_security": "AIAST"}).json()) == []
    with write_connection(services.engine) as connection:
        assert reindex_labelled(connection, batch=2) == 3
    assert ids(fhir.get("/fhir/Observation", params={"_security": "AIAST"}).json()) == ["ai"]
    assert ids(fhir.get("/fhir/Observation", params={"_tag": "second-read"}).json()) == ["tagged"]


def test_a_reference_with_other_conditions_matches_as_each_alone_would(fhir, population, services, monkeypatch):
    """Every condition holds whichever leads: SQLite starts from the
    condition with the fewest index rows (a reference or `_id` on a tie, or
    when all have many) and tests the others on the rows it leaves, each by
    that resource's own index rows, rather than gathering every resource each
    other condition matches (measured in bench/RESULTS.md)."""
    assert _ids(fhir, "/fhir/Observation", subject="Patient/p2", code=f"{LOINC}|1111-1") == ["o3"]
    assert _ids(fhir, "/fhir/Observation", code="1111-1", subject="Patient/p2", status="final") == []
    assert _ids(fhir, "/fhir/Observation", subject="Patient/p2", **{"code:not": "1111-1"}) == ["o2"]
    assert _ids(fhir, "/fhir/Observation", subject="Patient/p1,Patient/p2", code="1111-1",
                **{"value-quantity": "gt10"}) == ["o3"]
    assert _ids(fhir, "/fhir/Observation", _id="o1,o3", code="1111-1", **{"subject:Patient.family": "Mullins"}) == ["o3"]
    assert _ids(fhir, "/fhir/Observation", subject="Patient/p2", date="ge2024-01-01") == ["o2"]
    counted = _search(fhir, "/fhir/Observation", subject="Patient/p2", code="1111-1", _total="accurate")
    assert counted["total"] == 1
    if services.engine.dialect.name == "sqlite":
        # The index whose rows the page starts from is the plan's first; the other is probed per row.
        assert _leading_index(fhir, services, code=f"{LOINC}|1111-1", subject="Patient/p2") == "references"  # a tie
        assert _leading_index(fhir, services, code=f"{LOINC}|2222-2", subject="Patient/p2") == "tokens"  # 1 row to 2
        monkeypatch.setattr("server.fhir.search._LEADER_PROBE_ROWS", 1)  # every condition has as many rows as counted
        assert _leading_index(fhir, services, code=f"{LOINC}|2222-2", subject="Patient/p2") == "references"
        assert _ids(fhir, "/fhir/Observation", code=f"{LOINC}|2222-2", subject="Patient/p2") == ["o2"]


def _leading_index(fhir, services, **params) -> str:
    """Which search index SQLite's plan of the page's query reads first."""
    from sqlalchemy import event

    statements: list[tuple[str, object]] = []

    def record(_connection, _cursor, statement, parameters, _context, _many):
        statements.append((statement, parameters))

    event.listen(services.engine, "before_cursor_execute", record)
    try:
        _search(fhir, "/fhir/Observation", **params)
    finally:
        event.remove(services.engine, "before_cursor_execute", record)
    [(page, parameters)] = [(sql, values) for sql, values in statements if "FROM fhir_resources AS r" in sql]
    with services.engine.connect() as connection:
        plan = " / ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {page}", parameters))
    # "LIST SUBQUERY n / SEARCH fhir_tokens ...": rows gathered first; "CORRELATED ... fhir_references_2": probed.
    leading = re.findall(r"LIST SUBQUERY \d+ / SEARCH fhir_([a-z]+) ", plan)
    probed = re.findall(r"CORRELATED SCALAR SUBQUERY \d+ / SEARCH fhir_([a-z]+)_\d+ ", plan)
    assert len(set(leading)) == 1 and probed and leading[0] not in probed, plan
    return leading[0]
