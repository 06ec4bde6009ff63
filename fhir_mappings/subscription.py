"""FHIR R4 Subscription (subscription.html) with the rest-hook channel: what
a client may write, and where and how a notification is sent. Nothing here
knows about a database or HTTP.

R4 gives the status to the server: a client asks with `requested` (or turns
a subscription `off`), the server makes an accepted one `active`, and sets
`error`, with `Subscription.error` saying why, when it gives up sending.
"""

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from fhir_mappings.date_ranges import date_range
from fhir_mappings.errors import FhirError, InvalidResource
from fhir_mappings.search_parameters import DEFINITIONS
from fhir_mappings.search_query import RESULT_PARAMETERS, TRANSPORT_PARAMETERS, SearchRequest, parse_search

REST_HOOK = "rest-hook"
# The payloads a rest-hook may carry (channel.payload, a mime type): none (a
# bare POST that says "look"), or the resource in JSON.
PAYLOADS = frozenset(("application/fhir+json", "application/json"))
# Types no criteria may name: AuditEvents are written for every notification
# sent (each would be notified in turn), and a Subscription's channel headers
# carry other systems' credentials.
UNWATCHED_TYPES = frozenset(("AuditEvent", "Subscription"))
# Headers the server sets on each notification itself (RFC 9110, RFC 9112).
_OWN_HEADERS = frozenset(("host", "content-type", "content-length", "transfer-encoding", "connection"))
_FIELD_VALUE_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F)) | {" ", "\t"}
_TOKEN_CHARACTERS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# What an endpoint's URL may hold (RFC 3986 unreserved and sub-delims, ":", "@",
# "/", "%" escapes, and the brackets of an IPv6 host): nothing an HTTP client
# re-encodes or a receiver reads otherwise (whitespace, controls, "\", text
# outside ASCII), and no "?" or "#", empty or not.
_URL_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%[]")
# A "/" or "\" escaped inside a segment, and a "%" that escapes nothing:
# receivers differ in whether they split or decode them.
_AMBIGUOUS_ESCAPES = re.compile(r"%(?:2f|5c)|%(?![0-9a-f]{2})", re.IGNORECASE)
_DOT_SEGMENTS = frozenset((".", ".."))
# How the HTTP client will write a URL it is given (raises ValueError for one it
# cannot send): the allow-list judges what is sent, not what was written.
UrlNormaliser = Callable[[str], str]


@dataclass(frozen=True)
class Channel:
    endpoint: str
    payload: str | None  # None: a POST with an empty body
    headers: tuple[tuple[str, str], ...]

    def request(self, resource_type: str, resource_id: str) -> tuple[str, str]:
        """The method and URL of a notification about one resource: R4 sends
        the resource by PUT to endpoint/Type/id, and says only that something
        changed by a POST to the endpoint itself."""
        if self.payload is None:
            return "POST", self.endpoint
        return "PUT", f"{self.endpoint.rstrip('/')}/{resource_type}/{resource_id}"


@dataclass(frozen=True)
class Terms:
    """What the server keeps of an accepted Subscription to act on it."""

    status: str
    criteria: SearchRequest
    channel: Channel
    end: int | None  # microseconds since the epoch: when the server turns it off


def accepted(
    subscription: dict[str, Any], endpoint_prefixes: list[str], normalise: UrlNormaliser, now: int
) -> tuple[dict[str, Any], Terms]:
    """The Subscription to store for a client's, and its terms: `requested`
    (or `active`) becomes `active`, or `off` once its `end` has passed; `off`
    stays off; `error` is the server's to set. The client's `error` text is
    dropped: it is the server's too. The endpoint is stored as it will be
    sent. Anything else it cannot serve is a 422."""
    status = subscription.get("status")
    if status == "error":
        raise InvalidResource("Subscription.status: error is set by the server; send requested to (re)start one")
    criteria = parse_criteria(subscription.get("criteria"))
    channel = _channel(subscription.get("channel") or {}, endpoint_prefixes, normalise)
    end = _end(subscription.get("end"))
    if status != "off":
        status = "off" if end is not None and end <= now else "active"
    stored = {key: value for key, value in subscription.items() if key != "error"}
    stored["status"] = status
    stored["channel"] = {**subscription["channel"], "endpoint": channel.endpoint}
    return stored, Terms(status, criteria, channel, end)


def terms_of(subscription: dict[str, Any]) -> Terms:
    """The terms of a Subscription the server stored (and so accepted once)."""
    channel = subscription["channel"]
    headers = tuple(_header(text) for text in channel.get("header", []))
    return Terms(subscription["status"], parse_criteria(subscription["criteria"]),
                 Channel(channel["endpoint"], channel.get("payload"), headers), _end(subscription.get("end")))


def parse_criteria(criteria: Any) -> SearchRequest:
    """`Type?params`, parsed as a strict search of that type is: an unknown
    parameter or a bad value is refused as the search would refuse it, but
    with 422, as a resource's content."""
    if not isinstance(criteria, str) or not criteria:
        raise InvalidResource("Subscription.criteria is required: a search such as DiagnosticReport?status=final")
    resource_type, _, query = criteria.partition("?")
    if resource_type not in DEFINITIONS:
        raise InvalidResource(f"Subscription.criteria: {resource_type[:64]!r} is not a resource type this server"
                              " supports; see /fhir/metadata")
    if resource_type in UNWATCHED_TYPES:
        raise InvalidResource(f"Subscription.criteria: {resource_type} cannot be subscribed to here")
    pairs = parse_qsl(query, keep_blank_values=True)
    shaping = RESULT_PARAMETERS | TRANSPORT_PARAMETERS
    results = sorted({name for name, _ in pairs if name.partition(":")[0] in shaping})
    if results:
        raise InvalidResource(f"Subscription.criteria: {', '.join(results)} shape a search's answer or how it is"
                              " sent, not what it matches; criteria take search conditions only")
    try:
        return parse_search(resource_type, pairs, strict=True)
    except FhirError as error:
        raise InvalidResource(f"Subscription.criteria: {error.diagnostics}") from error


def _channel(channel: dict[str, Any], endpoint_prefixes: list[str], normalise: UrlNormaliser) -> Channel:
    kind = channel.get("type")
    if kind != REST_HOOK:
        raise InvalidResource(f"Subscription.channel.type: only {REST_HOOK} is offered here, not {str(kind)[:40]!r}")
    payload = channel.get("payload")
    if payload is not None and payload not in PAYLOADS:
        raise InvalidResource(f"Subscription.channel.payload: {str(payload)[:60]!r} is not offered; leave it out"
                              f" (a POST without a body) or use {' or '.join(sorted(PAYLOADS))}")
    endpoint = _endpoint(channel.get("endpoint"), endpoint_prefixes, normalise)
    headers = tuple(_header(text) for text in channel.get("header", []))
    return Channel(endpoint, payload, headers)


def _endpoint(endpoint: Any, prefixes: list[str], normalise: UrlNormaliser) -> str:
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidResource("Subscription.channel.endpoint is required for a rest-hook: an http or https URL")
    try:
        return sendable_url(endpoint, prefixes, normalise)
    except ValueError as error:
        raise InvalidResource(f"Subscription.channel.endpoint: {error}") from error


def sendable_url(url: str, prefixes: list[str], normalise: UrlNormaliser) -> str:
    """`url` as the HTTP client will send it, if that is an absolute http(s)
    URL under one of the prefixes the server's operator allows: scheme, host
    and port equal, and the path within the prefix's (a host name is compared
    whole, so that a prefix `https://ehr.example.org` does not let
    `https://ehr.example.org.evil.net` in). Written plainly: no dot segments,
    escaped or not (clients and receivers resolve them, out of the prefix),
    no escaped "/" or "\\", no credentials, query or fragment. ValueError
    says why not."""
    if not set(url) <= _URL_CHARACTERS:
        raise ValueError(f"{url[:100]!r} holds characters a URL sent as written may not (whitespace, controls,"
                         " \\, text outside ASCII, a query or a fragment)")
    try:
        parts = urlsplit(url)
        port = parts.port
        sent = normalise(url)
    except ValueError as error:
        raise ValueError(f"{url[:100]!r} is not a URL ({error})") from error
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url[:100]!r} is not an absolute http or https URL")
    if "@" in parts.netloc:
        raise ValueError("it may not carry credentials; credentials go in channel.header")
    if _AMBIGUOUS_ESCAPES.search(parts.path):
        raise ValueError(f"{url[:100]!r} escapes a / or \\ (or escapes nothing with a %)")
    if any(unquote(segment) in _DOT_SEGMENTS for segment in parts.path.split("/")):
        raise ValueError(f"{url[:100]!r} has . or .. path segments")
    if sent != url:
        return sendable_url(sent, prefixes, lambda same: same)  # judged as sent
    if not any(_within(parts.scheme, parts.hostname, port, parts.path, prefix) for prefix in prefixes):
        allowed = ", ".join(prefixes) if prefixes else "none"
        raise ValueError(f"{url[:100]!r} is not under a URL prefix that MEDAIFLOW_SUBSCRIPTION_ENDPOINTS allows"
                         f" (allowed: {allowed})")
    return url


def _within(scheme: str, host: str, port: int | None, path: str, prefix: str) -> bool:
    try:
        allowed = urlsplit(prefix)
        allowed_port = allowed.port
    except ValueError:
        return False  # a misspelt setting allows nothing
    if (allowed.scheme, allowed.hostname) != (scheme, host.lower()) or allowed.hostname is None:
        return False
    if (allowed_port or _DEFAULT_PORTS[scheme]) != (port or _DEFAULT_PORTS[scheme]):
        return False
    base = allowed.path
    if not base or path == base:
        return True
    return path.startswith(base if base.endswith("/") else f"{base}/")


def _header(text: Any) -> tuple[str, str]:
    """A channel.header entry, `Name: value` (R4: "HTTP header field"), as
    sent: a token, and a field-value of visible ASCII with spaces or tabs
    between (RFC 9110 5.5; obs-text is not sent, so never accepted)."""
    name, colon, value = text.partition(":") if isinstance(text, str) else ("", "", "")
    name, value = name.strip(" \t"), value.strip(" \t")
    if not colon or not name or not set(name) <= _TOKEN_CHARACTERS or not set(value) <= _FIELD_VALUE_CHARACTERS:
        raise InvalidResource(f"Subscription.channel.header: {str(text)[:60]!r} is not an HTTP header (Name: value)")
    if name.lower() in _OWN_HEADERS:
        raise InvalidResource(f"Subscription.channel.header: the server sets {name} itself")
    return name, value


def _end(end: Any) -> int | None:
    if end is None:
        return None
    span = date_range(end) if isinstance(end, str) else None
    if span is None:
        raise InvalidResource(f"Subscription.end: {str(end)[:40]!r} is not an instant")
    return span[0]
