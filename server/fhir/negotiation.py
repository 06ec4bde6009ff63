"""FHIR content negotiation (FHIR R4 http.html#mime-type) and answer bodies.

`_format` wins over Accept. JSON is the stored form and the default; XML is
produced from the same JSON through the R4 models, and an XML body is read
into JSON before anything else sees it. With neither `_format` nor Accept,
the answer takes the body's format.
"""

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dicom.errors import DicomError
from dicom.media_types import parse_accept, type_matches
from fhir_mappings import fhir_json, fhir_xml
from fhir_mappings.errors import InvalidRequest, NotAcceptable, UnsupportedMediaType
from fhir_mappings.json_patch import MEDIA_TYPE as JSON_PATCH
from fhir_mappings.resources import CONTROL_CHARACTER
from server.content_coding import decoded_body

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
# The types FHIR DSTU2 gave its formats, which older clients still send
# (R4 http.html#mime-type: servers are encouraged to take them): the same formats.
_DSTU2_TYPES = {"application/json+fhir": FHIR_JSON, "application/xml+fhir": FHIR_XML}
# What each _format value means (FHIR R4 http.html#parameters).
_FORMAT_ALIASES = {
    "json": FHIR_JSON, "application/json": "application/json", FHIR_JSON: FHIR_JSON,
    "xml": FHIR_XML, "text/xml": FHIR_XML, "application/xml": "application/xml", FHIR_XML: FHIR_XML,
    **_DSTU2_TYPES,
}
_OFFERED = (FHIR_JSON, "application/json", FHIR_XML, "application/xml")


@dataclass(frozen=True)
class Format:
    media_type: str
    pretty: bool

    @property
    def is_xml(self) -> bool:
        return self.media_type.endswith("xml")


_R4 = "4.0"
_R4_VERSIONS = frozenset({_R4, "4.0.0", "4.0.1"})


def response_format(request: Request) -> Format:
    pretty = request.query_params.get("_pretty", "false") == "true"
    requested = request.query_params.get("_format")
    if requested is not None:
        # An unencoded "+" (application/fhir+json) arrives as a space.
        media_type = _FORMAT_ALIASES.get(requested.split(";")[0].strip().replace(" ", "+"))
        if media_type is None:
            raise NotAcceptable(f"_format={requested!r} is not offered here; use {' or '.join(_OFFERED)}")
        return Format(media_type, pretty)
    default = FHIR_XML if _content_type(request) in _XML_BODIES else FHIR_JSON
    header = request.headers.getlist("accept")
    if not any(value.strip() for value in header):
        return Format(default, pretty)
    try:
        ranges = parse_accept(header)
    except DicomError as error:
        raise InvalidRequest(f"malformed Accept header: {error.message}") from error
    for range_ in ranges:
        if range_.params.get("fhirversion", _R4).strip('"') not in _R4_VERSIONS:
            continue  # another FHIR version, which this server does not speak (R4 http.html#version-parameter)
        asked = _DSTU2_TYPES.get(range_.media_type, range_.media_type)
        for media_type in _OFFERED:
            if type_matches(asked, media_type):
                # A wildcard gets the default, not the first type that fits it.
                return Format(media_type if "*" not in asked else default, pretty)
    raise NotAcceptable(
        f"none of {', '.join(value for value in header)} can be produced here; use {' or '.join(_OFFERED)}"
    )


_JSON_BODIES = frozenset((FHIR_JSON, "application/json", "application/json+fhir"))
_XML_BODIES = frozenset((FHIR_XML, "application/xml", "text/xml", "application/xml+fhir"))


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_resource_body(request: Request) -> None:
    """A 415 for a body in neither FHIR format, before anything reads it."""
    content_type = _content_type(request)
    if content_type not in _JSON_BODIES | _XML_BODIES:
        raise UnsupportedMediaType(
            f"the body must be {FHIR_JSON} or {FHIR_XML} (or application/json, application/xml),"
            f" not {content_type or 'untyped'}"
        )


def require_patch_body(request: Request) -> bool:
    """Whether the patch is a FHIRPath Patch (a Parameters resource, in
    either FHIR format) rather than a JSON Patch; a 415 for a format this
    server does not apply (R4 http.html#patch has three: XML Patch is not)."""
    content_type = _content_type(request)
    if content_type == JSON_PATCH:
        return False
    if content_type in _JSON_BODIES | _XML_BODIES:
        return True
    raise UnsupportedMediaType(
        f"a patch here is a JSON Patch ({JSON_PATCH}, RFC 6902) or a FHIRPath Patch (a Parameters resource in"
        f" {FHIR_JSON} or {FHIR_XML}), not {content_type or 'untyped'}: XML Patch is not supported"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, decoded, refused (413) as soon as it passes `limit`
    bytes: a FHIR body is held and parsed in memory."""
    return b"".join([chunk async for chunk in decoded_body(request, limit)])


async def read_resource_body(request: Request, limit: int) -> Any:
    """The body as FHIR JSON, parsed off the event loop: a large XML body
    takes seconds, in which every other request would wait."""
    return await run_in_threadpool(_parse_resource_body, request, await read_body(request, limit))


def _parse_resource_body(request: Request, raw: bytes) -> Any:
    """The body as FHIR JSON, whichever of the two formats it came in."""
    if _content_type(request) in _XML_BODIES:
        body: Any = fhir_xml.loads(raw)
        _check_nesting_and_text(body)
        return body
    return parse_json(raw, "the body")


def parse_json(raw: bytes, what: str) -> Any:
    """JSON as FHIR JSON is read (decimals as written), checked as every
    body is: `what` names it (a Bundle entry's patch is JSON in a Binary)."""
    try:
        body = fhir_json.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"{what} is not valid JSON: {error}") from error
    _check_nesting_and_text(body)
    return body


def form_pairs(encoded: bytes | str) -> list[tuple[str, str]]:
    """Form-encoded parameters (a query string, a POST _search body), which
    must be UTF-8 (R4 http.html#mime-type): a byte that is not would otherwise
    be searched for as U+FFFD."""
    try:
        text = encoded.decode() if isinstance(encoded, bytes) else encoded
        return parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as error:
        raise InvalidRequest("the search parameters are not UTF-8 text") from error


# Far deeper than any resource nests (a Bundle's entry's resource's
# extension's extension...), far shallower than the validators' recursion
# limits, which would otherwise end a hostile body with a 500.
MAX_NESTING = 100


def _check_nesting_and_text(body: Any) -> None:
    """Iterative, so that nesting itself cannot exhaust the stack."""
    pending: list[tuple[Any, int]] = [(body, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, str):
            control = CONTROL_CHARACTER.search(node)
            if control is not None:
                # R4 datatypes.html#string: nothing below U+0020 but tab, CR and LF (nor can XML, or PostgreSQL a NUL);
                # nor U+FFFE or U+FFFF, which XML cannot carry.
                character = f"U+{ord(control.group()):04X}"
                raise InvalidRequest(f"the body contains the character {character}, which FHIR strings may not hold")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_NESTING:
            raise InvalidRequest(f"the body nests objects and arrays more than {MAX_NESTING} deep")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children)


def fhir_response(
    body: bytes | dict[str, Any], fmt: Format, status: int = 200, headers: dict[str, str] | None = None,
    written: bool = False,
) -> Response:
    """Answer with stored JSON bytes as they are, or re-rendered when XML or
    `_pretty` asks. `written`: the request has changed what is stored, so an
    answer XML cannot carry comes as JSON; a 406 would say nothing happened."""
    if fmt.is_xml:
        document = fhir_json.loads(body) if isinstance(body, bytes) else body
        try:
            content = fhir_xml.dumps(document, fmt.pretty)
        except (ValueError, KeyError, SyntaxError) as error:  # lxml's refusals; XMLSyntaxError is a SyntaxError
            if written:
                log.warning("a write's answer could not be written as XML, so it is JSON: %s", error)
                return fhir_response(body, Format(FHIR_JSON, fmt.pretty), status, headers)
            # Stored before these were refused on write: a narrative that is not XHTML, say.
            raise NotAcceptable(
                f"this answer cannot be written as XML ({' '.join(str(error).split())[:200]}); it is available as"
                f" {FHIR_JSON}"
            ) from error
    elif fmt.pretty:
        content = fhir_json.dumps(fhir_json.loads(body) if isinstance(body, bytes) else body, orjson.OPT_INDENT_2)
    else:
        content = body if isinstance(body, bytes) else fhir_json.dumps(body)
    return Response(content, status_code=status, media_type=f"{fmt.media_type}; charset=utf-8", headers=headers)
