"""CORS: a browser viewer on another origin can query and retrieve."""

from pydicom.uid import generate_uid

from tests.dicom_files import make_ct, multipart_body

ORIGIN = "http://viewer.example"  # allowed by the `settings` fixture


def test_preflight_allows_the_accept_header_ohif_sends(client):
    response = client.options(
        "/dicom-web/studies",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "accept" in response.headers["access-control-allow-headers"].lower()


def test_preflight_from_an_unknown_origin_is_refused(client):
    response = client.options(
        "/dicom-web/studies",
        headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET"},
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_simple_requests_carry_the_allow_origin_header(client):
    study = generate_uid()
    body, content_type = multipart_body([make_ct(study_uid=study)])
    client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    response = client.get(
        f"/dicom-web/studies/{study}/series",
        headers={"Origin": ORIGIN, "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
