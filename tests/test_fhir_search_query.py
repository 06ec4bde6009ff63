"""Parsing FHIR search parameters into conditions (no database)."""

import pytest

from fhir_mappings.date_ranges import date_range, instant_text
from fhir_mappings.errors import InvalidRequest
from fhir_mappings.search_query import (
    DateValue,
    ReferenceValue,
    StringMode,
    Summary,
    TokenValue,
    Total,
    parse_search,
)


def test_comma_or_and_repeat_and():
    request = parse_search("Observation", [("code", "a,b"), ("code", "c")])
    assert [len(condition.values) for condition in request.conditions] == [2, 1]


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        (r"back\\,other", ["back\\", "other"]),  # an escaped backslash, then a separating comma
        (r"a\,b,c", ["a,b", "c"]),
        (r"a\\\,b", ["a\\,b"]),
        (r"s\|x", ["s|x"]),
    ],
)
def test_escapes(text, codes):
    [condition] = parse_search("Observation", [("code", text)]).conditions
    assert [value.code for value in condition.values] == codes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("c", TokenValue(None, "c")),
        ("s|c", TokenValue("s", "c")),
        ("|c", TokenValue("", "c")),
        ("s|", TokenValue("s", None)),
        ("http://x|a|b", TokenValue("http://x", "a|b")),
    ],
)
def test_token_forms(text, expected):
    [condition] = parse_search("Observation", [("code", text)]).conditions
    assert condition.values == (expected,)


def test_string_modes_and_normalisation():
    [prefix, exact, contains] = parse_search(
        "Patient", [("name", "MÜLLER"), ("name:exact", "MÜLLER"), ("name:contains", "Üll")]
    ).conditions
    assert prefix.values[0].text == "muller" and prefix.values[0].mode is StringMode.PREFIX
    assert exact.values[0].text == "MÜLLER" and exact.values[0].mode is StringMode.EXACT
    assert contains.values[0].text == "ull"


def test_reference_forms():
    [plain, typed, versioned, modified] = parse_search(
        "Observation",
        [("subject", "p1"), ("subject", "Patient/p1"), ("subject", "Patient/p1/_history/2"), ("subject:Patient", "p1")],
    ).conditions
    assert plain.values == (ReferenceValue(None, "p1"),)
    assert typed.values == versioned.values == modified.values == (ReferenceValue("Patient", "p1"),)


def test_a_reference_of_a_type_without_an_id_is_refused_not_read_as_an_id():
    for value in ("Patient/", "/"):
        with pytest.raises(InvalidRequest, match="needs an id"):
            parse_search("Observation", [("subject", value)], strict=True)


def test_a_reference_to_another_server_is_not_a_local_one():
    # The server makes its own base relative before parsing; any other URL is another server's resource.
    with pytest.raises(InvalidRequest, match="another server"):
        parse_search("Observation", [("subject", "http://h/fhir/Patient/p1")])


def test_date_prefix_and_precision():
    [condition] = parse_search("Observation", [("date", "ge2024-02")]).conditions
    value = condition.values[0]
    assert isinstance(value, DateValue) and value.prefix == "ge"
    assert instant_text(value.low) == "2024-02-01T00:00:00.000000Z"
    assert instant_text(value.high) == "2024-03-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2024", "2024-01-01T00:00:00.000000Z", "2025-01-01T00:00:00.000000Z"),
        ("2024-12", "2024-12-01T00:00:00.000000Z", "2025-01-01T00:00:00.000000Z"),
        ("2024-02-29", "2024-02-29T00:00:00.000000Z", "2024-03-01T00:00:00.000000Z"),
        ("2024-03-05T10:15", "2024-03-05T10:15:00.000000Z", "2024-03-05T10:16:00.000000Z"),
        ("2024-03-05T10:15:30+01:00", "2024-03-05T09:15:30.000000Z", "2024-03-05T09:15:31.000000Z"),
        ("2024-03-05T10:15:30.25Z", "2024-03-05T10:15:30.250000Z", "2024-03-05T10:15:30.260000Z"),
        # R4's regex puts no limit on fraction digits: those past microseconds are cut, never rounded up.
        ("2024-03-05T10:15:30.1234569999999Z", "2024-03-05T10:15:30.123456Z", "2024-03-05T10:15:30.123457Z"),
    ],
)
def test_date_ranges(text, start, end):
    low, high = date_range(text)
    assert (instant_text(low), instant_text(high)) == (start, end)


@pytest.mark.parametrize("text", ["2023-02-29", "24-01-01", "2024-1-1", "2024-03-05T25:00", "soon"])
def test_not_dates(text):
    assert date_range(text) is None


def test_quantity_implicit_precision():
    [condition] = parse_search("Observation", [("value-quantity", "5.40|http://unitsofmeasure.org|mL")]).conditions
    value = condition.values[0]
    assert (value.low, value.high) == pytest.approx((5.395, 5.405))
    assert (value.system, value.code) == ("http://unitsofmeasure.org", "mL")


def test_chains_one_level():
    [condition] = parse_search("ImagingStudy", [("subject:Patient.identifier", "s|1")]).conditions
    assert condition.chain.other_type == "Patient"
    assert condition.chain.condition.values == (TokenValue("s", "1"),)
    with pytest.raises(InvalidRequest, match="more than one level"):
        parse_search("Observation", [("patient.organization.name", "x")])


def test_result_parameters():
    request = parse_search(
        "Observation",
        [("_count", "5"), ("_sort", "-date,code"), ("_summary", "data"), ("_total", "none"), ("_elements", "code,value")],
    )
    assert request.count == 5
    assert [(key.parameter.name, key.descending) for key in request.sort] == [("date", True), ("code", False)]
    assert request.summary is Summary.DATA and request.total is Total.NONE
    assert request.elements == ("code", "value")
    assert parse_search("Observation", [("_count", "100000")]).count == 1000


@pytest.mark.parametrize(
    "pairs",
    [
        [("date", "2024-13")],
        [("value-quantity", "lots")],
        [("code:exact", "x")],
        [("_count", "ten")],
        [("_sort", "subject")],
        [("_summary", "maybe")],
        [("_count", "1"), ("_count", "2")],
        [("_include", "Observation:code")],
        [("_elements", "a.b")],
        [("code:missing", "yes")],
    ],
)
def test_bad_parameters_are_invalid_requests(pairs):
    with pytest.raises(InvalidRequest):
        parse_search("Observation", pairs)


def test_unknown_parameters_are_ignored_unless_strict():
    request = parse_search("Observation", [("colour", "red"), ("code", "x")])
    assert request.ignored == ("colour",)
    assert request.parameters == (("code", "x"),)
    with pytest.raises(InvalidRequest, match="colour"):
        parse_search("Observation", [("colour", "red")], strict=True)


def test_reference_identifier_modifier_is_a_token_search_of_its_own():
    query = parse_search("AuditEvent", [("agent:identifier", "urn:medaiflow:identity|nurse")])
    [condition] = query.conditions
    assert condition.parameter.name == "agent:identifier"
    assert condition.parameter.type.value == "token"
    assert (condition.values[0].system, condition.values[0].code) == ("urn:medaiflow:identity", "nurse")
