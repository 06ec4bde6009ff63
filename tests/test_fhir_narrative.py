"""Narrative (R4 narrative.html#xhtml, txt-1 and txt-2) is checked when a
client writes it, so that no stored resource carries active content to a
viewer, or XHTML that its XML answers could not hold."""

import pytest

XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'
TASK = {"resourceType": "Task", "status": "requested", "intent": "order"}


def _task(div: str) -> dict:
    return {**TASK, "text": {"status": "generated", "div": div}}


@pytest.mark.parametrize(
    "div",
    [
        f'<div {XHTML}>Order <b>CT</b> review<br/><a href="#x">more</a></div>',
        f'<div {XHTML} xml:lang="en"><table border="1"><tr><td colspan="2">a</td></tr></table></div>',
        f'<div {XHTML}><img src="#seg" alt="overlay"/></div>',
        f'<div {XHTML}>&#160;kept<!-- a comment --></div>',
    ],
)
def test_valid_narrative_is_stored_and_served_as_xml(fhir, div):
    created = fhir.post("/fhir/Task", json=_task(div))
    assert created.status_code == 201, created.text
    xml = fhir.get(f"/fhir/Task/{created.json()['id']}", params={"_format": "xml"})
    assert xml.status_code == 200 and "<text>" in xml.text


@pytest.mark.parametrize(
    ("div", "reason"),
    [
        ("<div>no namespace</div>", "XHTML namespace"),
        (f"<p {XHTML}>not a div</p>", "XHTML namespace"),
        (f"<div {XHTML}>unclosed <b></div>", "well-formed"),
        (f"<div {XHTML}>&nbsp;</div>", "well-formed"),
        (f"<div {XHTML}>   </div>", "txt-2"),
        (f"<div {XHTML}><script>alert(1)</script>x</div>", "<script>"),
        (f"<div {XHTML}><iframe src='https://example.org'/>x</div>", "<iframe>"),
        (f"<div {XHTML}><form><input/></form></div>", "<form>"),
        (f'<div {XHTML}><span onclick="steal()">x</span></div>', "onclick"),
        (f'<div {XHTML}><a href="javascript:steal()">x</a></div>', "active content"),
        (f'<div {XHTML}><a href="java&#9;script:steal()">x</a></div>', "active content"),  # browsers drop the tab
        (f'<div {XHTML}><a href=" vbscript:steal()">x</a></div>', "active content"),
        (f'<div {XHTML}><img src="data:image/svg+xml;base64,PHN2Zy8+"/></div>', "active content"),
        (f'<!DOCTYPE div [<!ENTITY big "x">]><div {XHTML}>&big;</div>', "document type"),
        (f"<div {XHTML}><?php echo 1 ?>x</div>", "other than elements"),
    ],
)
def test_narrative_breaking_txt_rules_is_422(fhir, div, reason):
    response = fhir.post("/fhir/Task", json=_task(div))
    assert response.status_code == 422, response.text
    [issue] = response.json()["issue"]
    assert issue["code"] == "invalid" and reason in issue["diagnostics"] and "Task.text.div" in issue["diagnostics"]


def test_contained_and_updated_narratives_are_checked_too(fhir):
    contained = {**TASK, "contained": [{"resourceType": "Task", "id": "step", "status": "requested", "intent": "order",
                                        "text": {"status": "generated", "div": "<div>plain</div>"}}]}
    response = fhir.post("/fhir/Task", json=contained)
    assert response.status_code == 422 and "Task.contained[0].text.div" in response.text
    update = fhir.put("/fhir/Task/narrated", json={**_task("<b>bold</b>"), "id": "narrated"})
    assert update.status_code == 422
    assert fhir.get("/fhir/Task/narrated").status_code == 404


def test_errors_come_in_the_format_asked_for(fhir):
    xml = fhir.get("/fhir/Task/unknown-task", headers={"Accept": "application/fhir+xml"})
    assert xml.status_code == 404
    assert xml.headers["content-type"].startswith("application/fhir+xml")
    assert '<OperationOutcome xmlns="http://hl7.org/fhir">' in xml.text and '<code value="not-found"/>' in xml.text
    by_parameter = fhir.post("/fhir/Task", json=_task("<div>x</div>"), params={"_format": "xml"})
    assert by_parameter.headers["content-type"].startswith("application/fhir+xml")
    assert by_parameter.status_code == 422 and "<OperationOutcome" in by_parameter.text
    refused_accept = fhir.get("/fhir/Task/unknown-task", headers={"Accept": "text/html"})
    assert refused_accept.status_code == 404  # the read fails first; its error cannot be in text/html
    assert refused_accept.headers["content-type"].startswith("application/fhir+json")
