"""A decimal keeps the digits it was written with (R4 datatypes.html#decimal):
0.50 is not 0.5, and 1.10e2 is not 110.0. The client's bodies are sent as
bytes here, since Python's json would write the floats it holds."""

import orjson
import pytest

from fhir_mappings import fhir_json

JSON = {"Content-Type": "application/fhir+json"}
WIDE = "123456789012345678901234567890"  # wider than 64 bits: orjson reads it as a float


def _task(*decimals: str) -> bytes:
    inputs = ",".join(f'{{"type":{{"text":"setting {i}"}},"valueDecimal":{text}}}' for i, text in enumerate(decimals))
    return f'{{"resourceType":"Task","status":"requested","intent":"order","input":[{inputs}]}}'.encode()


def _written(body: bytes) -> list[str]:
    """The decimals of a Task's inputs, as the answer writes them."""
    return [value.text for value in _decimals(fhir_json.loads(body))]


def _decimals(task: dict) -> list[fhir_json.WrittenDecimal]:
    return [item["valueDecimal"] for item in task["input"]]


@pytest.mark.parametrize("text", ["0.50", "1.10e2", "-0.0", "0.010", "2.5E-3", "100.000"])
def test_loads_and_dumps_keep_each_decimal_as_written(text):
    document = fhir_json.loads(f'{{"value":{text},"count":3}}')
    assert fhir_json.dumps(document) == f'{{"value":{text},"count":3}}'.encode()
    assert document["value"] == float(text)  # still a number to everything that reads it
    assert document["count"] == 3 and type(document["count"]) is int


def test_a_document_without_decimals_is_read_as_is():
    document = fhir_json.loads(b'{"a":[1,2,{"b":"1.10"}]}')
    assert document == {"a": [1, 2, {"b": "1.10"}]}
    assert fhir_json.dumps(document) == b'{"a":[1,2,{"b":"1.10"}]}'


def test_whole_numbers_wider_than_64_bits_are_kept_as_decimals():
    document = fhir_json.loads(f'{{"wide":{WIDE},"fits":18446744073709551615}}')
    assert fhir_json.dumps(document) == f'{{"wide":{WIDE},"fits":18446744073709551615}}'.encode()
    assert type(document["fits"]) is int


def test_strictness_is_orjsons():
    for bad in (b'{"a":NaN}', b'{"a":1.5}x', b'"\\ud800"', b'{"a":1E400}'):
        with pytest.raises(orjson.JSONDecodeError):
            fhir_json.loads(bad)


def test_a_created_resource_keeps_its_decimals_in_every_answer(fhir):
    created = fhir.post("/fhir/Task", content=_task("0.50", "1.10e2", WIDE), headers=JSON)
    assert created.status_code == 201, created.text
    assert _written(created.content) == ["0.50", "1.10e2", WIDE]
    task_id = created.json()["id"]

    read = fhir.get(f"/fhir/Task/{task_id}")
    assert _written(read.content) == ["0.50", "1.10e2", WIDE]
    pretty = fhir.get(f"/fhir/Task/{task_id}", params={"_pretty": "true"})
    assert "\n" in pretty.text and _written(pretty.content) == ["0.50", "1.10e2", WIDE]
    elements = fhir.get(f"/fhir/Task/{task_id}", params={"_elements": "input"})
    assert _written(elements.content) == ["0.50", "1.10e2", WIDE]

    xml = fhir.get(f"/fhir/Task/{task_id}", params={"_format": "xml"})
    assert xml.status_code == 200
    for text in ("0.50", "1.10e2", WIDE):  # as written: FHIR XML takes the exponent form too (datatypes.html#decimal)
        assert f'<valueDecimal value="{text}"/>' in xml.text

    searched = fhir.get("/fhir/Task", params={"_id": task_id, "_elements": "input"})
    [entry] = fhir_json.loads(searched.content)["entry"]
    assert [value.text for value in _decimals(entry["resource"])] == ["0.50", "1.10e2", WIDE]
    searched_xml = fhir.get("/fhir/Task", params={"_id": task_id, "_format": "xml"})
    assert '<valueDecimal value="0.50"/>' in searched_xml.text

    history = fhir.get(f"/fhir/Task/{task_id}/_history")
    assert b'"valueDecimal":0.50' in history.content


def test_xml_writes_a_whole_decimal_without_a_fraction(fhir):
    created = fhir.post("/fhir/Task", content=_task("100", "7.0"), headers=JSON)
    xml = fhir.get(f"/fhir/Task/{created.json()['id']}", params={"_format": "xml"})
    assert '<valueDecimal value="100"/>' in xml.text  # the XML writer alone made it 100.0
    assert '<valueDecimal value="7.0"/>' in xml.text


def test_updates_and_transactions_keep_decimals(fhir):
    updated = fhir.put("/fhir/Task/kept-digits", content=_task("3.1400").replace(b"{", b'{"id":"kept-digits",', 1),
                       headers=JSON)
    assert updated.status_code == 201, updated.text
    assert _written(fhir.get("/fhir/Task/kept-digits").content) == ["3.1400"]

    bundle = (b'{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:'
              b'8b0c5a0e-4f0a-4d47-9a57-1c1b5c1b7a11","resource":' + _task("0.250") +
              b',"request":{"method":"POST","url":"Task"}}]}')
    answer = fhir.post("/fhir", content=bundle, headers=JSON)
    assert answer.status_code == 200, answer.text
    [entry] = answer.json()["entry"]
    assert b'"valueDecimal":0.250' in answer.content
    assert _written(fhir.get(entry["response"]["location"].split("/_history")[0]).content) == ["0.250"]


def test_a_wide_whole_number_is_no_integer(fhir):
    body = (b'{"resourceType":"Task","status":"requested","intent":"order","input":[{"type":{"text":"n"},'
            b'"valueInteger":' + WIDE.encode() + b"}]}")
    response = fhir.post("/fhir/Task", content=body, headers=JSON)
    assert response.status_code in (400, 422), response.text
    assert response.json()["resourceType"] == "OperationOutcome"
