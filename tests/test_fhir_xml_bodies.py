"""FHIR XML bodies (R4 xml.html): creates, updates and Bundles in XML are
read into the JSON the server stores, through the same checks; without
Accept or `_format`, the answer comes in the body's format. XML that FHIR
does not allow is a 400, never data silently dropped."""

import orjson
import pytest

from fhir_mappings import fhir_json, fhir_xml
from fhir_mappings.errors import InvalidRequest
from tests.test_fhir_capability import RICH

XML = {"Content-Type": "application/fhir+xml"}
FHIR = 'xmlns="http://hl7.org/fhir"'
TASK_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<Task {FHIR} xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir task.xsd">
  <!-- comments are not data -->
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">Review <b>CT</b></div></text>
  <identifier><system value="urn:oid:1.2.3"/><value value="ORD-XML"/></identifier>
  <status value="requested"/>
  <intent value="order"/>
  <description value="from XML"><extension url="urn:example:note"><valueString value="kept"/></extension></description>
  <input id="setting"><type><text value="threshold"/></type><valueDecimal value="1.10"/></input>
  <input><type><text value="repeat"/></type><valueBoolean value="true"/></input>
</Task>""".encode()


def test_a_create_in_xml_is_stored_as_its_json_and_answered_in_xml(fhir):
    created = fhir.post("/fhir/Task", content=TASK_XML, headers=XML)
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith("application/fhir+xml")  # the body's format
    assert '<valueDecimal value="1.10"/>' in created.text
    stored = fhir.get(created.headers["location"].rsplit("/_history", 1)[0])
    task = stored.json()
    assert task["text"]["div"] == '<div xmlns="http://www.w3.org/1999/xhtml">Review <b>CT</b></div>'
    assert task["identifier"] == [{"system": "urn:oid:1.2.3", "value": "ORD-XML"}]
    assert task["_description"] == {"extension": [{"url": "urn:example:note", "valueString": "kept"}]}
    assert task["input"][0]["id"] == "setting" and task["input"][1]["valueBoolean"] is True
    assert b'"valueDecimal":1.10' in stored.content  # the digits as written


def test_updates_and_accept_choose_the_answer(fhir):
    body = TASK_XML.replace(b"<text>", b'<id value="xml-task"/><text>')
    first = fhir.put("/fhir/Task/xml-task", content=body, headers={**XML, "Accept": "application/fhir+json"})
    assert first.status_code == 201 and first.json()["id"] == "xml-task"
    again = fhir.put("/fhir/Task/xml-task", content=body.replace(b"from XML", b"changed"), headers=XML)
    assert again.status_code == 200 and '<description value="changed">' in again.text
    named = fhir.put("/fhir/Task?identifier=urn:oid:1.2.3|ORD-XML", content=body, headers=XML)
    assert named.status_code == 200 and '<versionId value="3"/>' in named.text
    wrong_id = fhir.put("/fhir/Task/other-id", content=body, headers=XML)
    assert wrong_id.status_code == 400 and "<OperationOutcome" in wrong_id.text


def test_a_transaction_in_xml_gets_its_response_in_xml(fhir):
    bundle = f"""<Bundle {FHIR}><type value="transaction"/>
      <entry><fullUrl value="urn:uuid:7f1c2b9e-0a4d-4c6e-9d0b-3b2a1c0d9e8f"/>
        <resource>{TASK_XML.decode().split("?>", 1)[1]}</resource>
        <request><method value="POST"/><url value="Task"/></request></entry>
      <entry><resource><Task {FHIR}><status value="draft"/><intent value="proposal"/>
          <basedOn><reference value="urn:uuid:7f1c2b9e-0a4d-4c6e-9d0b-3b2a1c0d9e8f"/></basedOn></Task></resource>
        <request><method value="POST"/><url value="Task"/></request></entry>
    </Bundle>""".encode()
    answer = fhir.post("/fhir", content=bundle, headers=XML)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+xml")
    assert answer.text.count('<status value="201 Created"/>') == 2
    based_on = fhir.get("/fhir/Task", params={"status": "draft"}).json()["entry"][0]["resource"]["basedOn"]
    assert based_on[0]["reference"].startswith("Task/")  # the fullUrl was replaced


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"<Task", "not well-formed"),
        (b'<Task><status value="draft"/></Task>', "namespace"),
        (f'<Task {FHIR}><colour value="blue"/></Task>'.encode(), "Task.colour is not an element"),
        (f'<Task {FHIR}><status value="draft"/><status value="ready"/></Task>'.encode(), "more than once"),
        (f'<Task {FHIR}><status value="draft">ready</status></Task>'.encode(), "holds the text"),
        (f'<Task {FHIR}><status value="draft" colour="blue"/></Task>'.encode(), "attribute"),
        (f'<Task {FHIR}><priority/></Task>'.encode(), "neither a value nor an extension"),
        (f'<Task {FHIR}><input><type><text value="n"/></type><valueInteger value="1.5"/></input></Task>'.encode(),
         "must be an integer"),
        (f'<Task {FHIR}><input><type><text value="n"/></type><valueDecimal value="1,5"/></input></Task>'.encode(),
         "must be a decimal"),
        (f'<Task {FHIR}><text><status value="generated"/><div>x</div></text></Task>'.encode(), "namespace"),
        (f'<!DOCTYPE Task [<!ENTITY x "y">]><Task {FHIR}><status value="draft"/></Task>'.encode(), "DTD"),
        (f'<!DOCTYPE Task [<!ENTITY x SYSTEM "file:///etc/passwd">]><Task {FHIR}><description value="&x;"/></Task>'
         .encode(), "entity"),
        (f'<Quantity {FHIR}/>'.encode(), "not a FHIR R4 resource type"),
        (f'<Task {FHIR}><contained/></Task>'.encode(), "exactly one resource"),
    ],
)
def test_xml_fhir_does_not_allow_is_a_400_that_says_why(fhir, body, complaint):
    answer = fhir.post("/fhir/Task", content=body, headers=XML)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+xml")
    assert "<OperationOutcome" in answer.text and complaint in answer.text
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_xml_that_reads_as_an_invalid_resource_gets_the_json_checks(fhir):
    no_status = fhir.post("/fhir/Task", content=f'<Task {FHIR}><intent value="order"/></Task>'.encode(), headers=XML)
    assert no_status.status_code == 422 and "status" in no_status.text
    script = (f'<Task {FHIR}><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">'
              f'<script>alert(1)</script></div></text><status value="draft"/><intent value="order"/></Task>')
    assert fhir.post("/fhir/Task", content=script.encode(), headers=XML).status_code == 422
    assert fhir.post("/fhir/Task", content=b"status: draft", headers={"Content-Type": "text/plain"}).status_code == 415


@pytest.mark.parametrize("resource", RICH, ids=lambda resource: resource["resourceType"])
def test_what_the_server_writes_as_xml_reads_back_as_the_same_json(resource):
    read_back = fhir_xml.loads(fhir_xml.dumps(fhir_json.loads(orjson.dumps(resource)), pretty=True))
    assert orjson.loads(fhir_json.dumps(read_back)) == resource


def test_repeating_primitives_keep_their_extensions_in_place():
    body = (f'<Patient {FHIR}><name><given value="Ann"/><given><extension url="urn:x"><valueCode value="masked"/>'
            f'</extension></given><given value="Lee" id="g3"/></name></Patient>').encode()
    assert fhir_xml.loads(body)["name"] == [{
        "given": ["Ann", None, "Lee"],
        "_given": [None, {"extension": [{"url": "urn:x", "valueCode": "masked"}]}, {"id": "g3"}],
    }]
    with pytest.raises(InvalidRequest):
        fhir_xml.loads(f'<Patient {FHIR}><name><id value="n"/></name></Patient>'.encode())  # an id is an attribute


def test_what_xml_answers_could_not_carry_is_refused_before_it_is_stored(fhir):
    prefixed = (f'<Task {FHIR}><text><status value="generated"/><h:div xmlns:h="http://www.w3.org/1999/xhtml">'
                f'<h:p>Hi</h:p></h:div></text><status value="requested"/><intent value="order"/></Task>').encode()
    answer = fhir.post("/fhir/Task", content=prefixed, headers=XML)
    assert answer.status_code == 422 and "default namespace" in answer.text
    noncharacter = {"resourceType": "Task", "status": "requested", "intent": "order", "description": "a\ufffeb"}
    assert fhir.post("/fhir/Task", json=noncharacter).status_code == 400
    assert fhir.get("/fhir/Task").json()["total"] == 0


def test_a_write_whose_answer_xml_cannot_carry_answers_json_not_406(fhir, monkeypatch):
    """A 406 would tell the client that nothing was written, and it would write again."""
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("All strings must be XML compatible")

    monkeypatch.setattr(fhir_xml, "dumps", refuse)
    created = fhir.post("/fhir/Task", content=TASK_XML, headers=XML)
    assert created.status_code == 201 and created.headers["content-type"].startswith("application/fhir+json")
    assert fhir.get(created.headers["location"], params={"_format": "xml"}).status_code == 406  # a read wrote nothing


def test_a_body_over_the_limit_is_413_before_it_is_read_whole(fhir, services):
    services.settings.fhir_max_body_bytes = 1000
    answer = fhir.post("/fhir/Task", content=TASK_XML + b" " * 1000, headers=XML)
    assert answer.status_code == 413 and "too-costly" in answer.text
    form = fhir.post("/fhir/Task/_search", content=b"status=" + b"x" * 1000,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 413


def test_the_xml_writer_puts_element_ids_in_attributes_and_keeps_values_as_stored():
    observation = fhir_xml.loads(
        f'<Observation {FHIR}><status value="final"/><code><coding id="c1"><code value="x"/></coding></code>'
        f'<effectiveDateTime value="2026-11-28T01:00:00Z" id="when"/>'
        f'<valueQuantity><value value="2.50"/></valueQuantity></Observation>'.encode()
    )
    written = fhir_xml.dumps(observation).decode()
    assert '<coding id="c1">' in written  # an element's id is an attribute (xml.html), not an <id> element
    assert '<effectiveDateTime value="2026-11-28T01:00:00Z" id="when"/>' in written  # the zone as written
    assert '<value value="2.50"/>' in written
    assert written.index("<status") < written.index("<code>") < written.index("<effectiveDateTime")  # R4's order


@pytest.mark.parametrize("div", [
    '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>Name:</b><i>Smith</i></p><pre><b>1</b><b>2</b></pre></div>',
    '<?xml version="1.0" encoding="UTF-8"?><div xmlns="http://www.w3.org/1999/xhtml">declared</div>',
])
def test_pretty_xml_leaves_the_narrative_as_stored(div):
    patient = {"resourceType": "Patient", "text": {"status": "generated", "div": div}, "active": True}
    pretty = fhir_xml.dumps(patient, pretty=True)
    assert b"\n  <active" in pretty  # indented around it
    stored = div.split("?>")[-1]
    assert fhir_xml.loads(pretty)["text"]["div"] == stored
    assert fhir_xml.loads(fhir_xml.dumps(patient))["text"]["div"] == stored
