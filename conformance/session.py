"""The suite's side of the conversation: one HTTP client for the server under
test, which remembers each case's exchanges for the report and checks every
FHIR JSON body against the official R4 schema as it arrives."""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from conformance.case import CaseFailed, CaseSkipped, Exchange
from conformance.report import printable

_SHOWN_HEADERS = ("accept", "content-type", "content-location", "location", "etag", "if-none-match", "www-authenticate",
                  "access-control-allow-origin", "origin", "access-control-request-method", "prefer", "warning")
_BODY_EXCERPT = 600


@dataclass(frozen=True)
class Target:
    """Where the server under test is, and how to prove who we are."""

    dicomweb: str | None  # DICOMweb root, e.g. http://host/dicom-web
    fhir: str | None  # FHIR base, e.g. http://host/fhir
    user: str | None = None
    password: str | None = None
    token: str | None = None
    origin: str | None = None  # a browser origin the server should allow (CORS cases), or None to skip them
    wado_uri: str | None = None  # WADO-URI endpoint, e.g. http://host/wado, or None to skip its cases

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def auth(self) -> httpx.BasicAuth | None:
        return httpx.BasicAuth(self.user, self.password or "") if self.user and not self.token else None


@dataclass
class Session:
    target: Target
    client: httpx.Client
    validate_fhir: Callable[[dict[str, Any]], None] | None  # None: the schema is not installed here
    state: dict[str, Any] = field(default_factory=dict)  # what earlier cases stored, for later ones
    exchanges: list[Exchange] = field(default_factory=list)

    @staticmethod
    def open(target: Target, validate_fhir: Callable[[dict[str, Any]], None] | None, timeout: float = 60.0,
             transport: httpx.BaseTransport | None = None) -> "Session":
        """`transport`: an in-process server (for speed, in tests) instead of the network."""
        client = httpx.Client(headers=target.headers(), auth=target.auth(), timeout=timeout, trust_env=False,
                              transport=transport)
        return Session(target, client, validate_fhir)

    def close(self) -> None:
        self.client.close()

    # --- addresses --------------------------------------------------------------
    def dicomweb(self, path: str = "") -> str:
        if not self.target.dicomweb:
            raise CaseSkipped("no DICOMweb root was given")
        return self.target.dicomweb.rstrip("/") + path

    def wado_uri(self) -> str:
        if not self.target.wado_uri:
            raise CaseSkipped("no WADO-URI endpoint was given (--wado-uri)")
        return self.target.wado_uri

    def fhir(self, path: str = "") -> str:
        if not self.target.fhir:
            raise CaseSkipped("no FHIR base was given")
        return self.target.fhir.rstrip("/") + path

    # --- talking ----------------------------------------------------------------
    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        try:
            response = self.client.request(method, url, **options)
        except httpx.HTTPError as error:
            self._remember(method, url, options, None)
            raise CaseFailed(f"no answer: {type(error).__name__}: {error}") from error
        self._remember(method, url, options, response)
        return response

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)

    def _remember(self, method: str, url: str, options: dict[str, Any], response: httpx.Response | None) -> None:
        sent = {name: value for name, value in (options.get("headers") or {}).items() if name.lower() in _SHOWN_HEADERS}
        content = options.get("content")
        body = f"{len(content)} bytes" if isinstance(content, bytes | bytearray) else ""
        if response is None:
            self.exchanges.append(Exchange(method, url, sent, body, None, {}, ""))
            return
        shown = {name: value for name, value in response.headers.items() if name.lower() in _SHOWN_HEADERS}
        self.exchanges.append(Exchange(method, str(response.request.url), sent, body, response.status_code, shown,
                                       _excerpt(response)))

    # --- judging ----------------------------------------------------------------
    @staticmethod
    def expect(condition: object, message: str) -> None:
        if not condition:
            raise CaseFailed(message)

    def expect_status(self, response: httpx.Response, *statuses: int) -> None:
        self.expect(response.status_code in statuses,
                    f"expected HTTP {' or '.join(map(str, statuses))}, got {response.status_code}")

    def json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CaseFailed(f"the body is not JSON: {error}") from error

    def fhir_resource(self, response: httpx.Response, resource_type: str | None = None) -> dict[str, Any]:
        """The FHIR JSON body, once it is valid against the official R4 schema."""
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        self.expect(media_type in ("application/fhir+json", "application/json"),
                    f"a FHIR JSON body was expected, the Content-Type is {media_type!r}")
        body = self.json(response)
        self.expect(isinstance(body, dict) and "resourceType" in body, "the body is not a FHIR resource")
        if resource_type is not None:
            self.expect(body["resourceType"] == resource_type,
                        f"expected a {resource_type}, got a {body['resourceType']}")
        if self.validate_fhir is not None:
            try:
                self.validate_fhir(body)
            except AssertionError as error:
                raise CaseFailed(f"the body is not valid FHIR R4 JSON (official schema): {error}") from error
        return body


def _excerpt(response: httpx.Response) -> str:
    media_type = response.headers.get("content-type", "")
    if not any(kind in media_type for kind in ("json", "text", "xml")) and response.content:
        return f"({len(response.content)} bytes of {media_type or 'unknown type'})"
    text = printable(response.text)  # a report in XML or Markdown must be able to hold it
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + f"... ({len(text)} characters)"
