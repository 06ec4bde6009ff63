"""The server's root as clients see it behind a proxy: RFC 7239 Forwarded and the X-Forwarded-* headers."""

import socket

import pytest

from server.settings import Settings
from tests.fhir_checks import link


def _self_link(fhir, headers: dict[str, str]) -> str:
    response = fhir.get("/fhir/Task", headers=headers)
    assert response.status_code == 200
    return link(response.json(), "self")


@pytest.mark.parametrize(("forwarded", "root"), [
    ("proto=https;host=pacs.example.org", "https://pacs.example.org"),
    ('for=192.0.2.60;Proto=https;Host="pacs.example.org:8443";by=203.0.113.43', "https://pacs.example.org:8443"),
    ('host="[2001:db8::1]:8080"', "http://[2001:db8::1]:8080"),
    # The first element is the one the proxy nearest the client wrote.
    ("proto=https;host=outer.example.org, proto=http;host=inner.local", "https://outer.example.org"),
])
def test_forwarded_names_the_root_links_point_at(fhir, forwarded, root):
    assert _self_link(fhir, {"Forwarded": forwarded}) == f"{root}/fhir/Task"


def test_x_forwarded_wins_over_forwarded_field_by_field(fhir):
    # The proxies that set X-Forwarded-* replace a client's, but pass on a client's Forwarded.
    headers = {"Forwarded": "proto=https;host=client.example.org", "X-Forwarded-Host": "pacs.example.org",
               "X-Forwarded-Prefix": "/medaiflow"}
    assert _self_link(fhir, headers) == "https://pacs.example.org/medaiflow/fhir/Task"


@pytest.mark.parametrize("forwarded", ['host="evil\\" x"', "host=evil x", 'proto="javascript"', "host", ";;"])
def test_a_forwarded_value_that_is_no_url_part_is_passed_over(fhir, forwarded):
    assert _self_link(fhir, {"Forwarded": forwarded}) == "http://testserver/fhir/Task"


@pytest.mark.parametrize(("host", "root"), [
    ("127.0.0.1", "http://127.0.0.1:8282"),
    ("::1", "http://[::1]:8282"),
    ("0.0.0.0", f"http://{socket.gethostname()}:8282"),
    ("::", f"http://{socket.gethostname()}:8282"),
])
def test_links_made_outside_a_request_name_a_reachable_host(host, root):
    assert Settings(host=host, port=8282).public_root == root
    assert Settings(host=host, port=8282, public_base_url="https://pacs.example/").public_root == "https://pacs.example"
