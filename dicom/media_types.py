"""Media types and Accept negotiation for DICOMweb (RFC 9110 §8.3, §12.5.1; PS3.18 §8.7).

WADO-RS ranks what the client accepts by q-value, with the `accept` query
parameter taking precedence over the Accept header (PS3.18 §8.3.3.1). The
grammar helpers here are shared with `dicom.multipart` so both read
`type/subtype; name=value` the same way.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dicom.errors import InvalidRequest

MULTIPART_RELATED = "multipart/related"

# RFC 9110 §5.6.2 token characters, plus "*" for ranges, which is a tchar anyway.
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_PARAM_NAME = re.compile(_TOKEN)
# RFC 9110 §12.4.2 qvalue, plus the ".2" form Java's HttpURLConnection sends.
_Q_VALUE = re.compile(r"(0(\.[0-9]{0,3})?|\.[0-9]{1,3}|1(\.0{0,3})?)")
# The names earlier editions of PS3.18 gave the RLE, JPEG-LS and MPEG-2 bulk
# data media types (PS3.2's conformance statement template still lists them).
# Clients still ask for them: the JavaScript dicomweb-client (OHIF's) knows RLE
# frames only as image/x-dicom-rle, both dicomweb-clients know MPEG-2 only as
# video/mpeg2. An accepted range is read as naming the current type (PS3.18
# §8.7.3.5), which the answer uses.
_LEGACY_NAMES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls", "video/mpeg2": "video/mpeg"}


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    params: Mapping[str, str]
    q: float


def split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split on `separator` except inside quoted strings (RFC 9110 §5.6.4),
    so `type="a,b"` or `type="a;b"` stays whole."""
    pieces: list[str] = []
    start = 0
    in_quotes = False
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif in_quotes and char == "\\":
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == separator and not in_quotes:
            pieces.append(text[start:index])
            start = index + 1
    if in_quotes:
        raise InvalidRequest(f"unterminated quoted string in {text[:200]!r}")
    pieces.append(text[start:])
    return pieces


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    if '"' in value:
        raise InvalidRequest(f"malformed quoted string {value[:200]!r}")
    return value


def parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    """`type/subtype; name=value ...` -> lowercased type and parameters.

    Unquoted values are taken up to the next `;` even when they are not tokens:
    clients send `type=application/dicom` unquoted although "/" is no tchar.
    """
    head, *param_texts = split_outside_quotes(text, ";")
    media_type = head.strip().lower()
    if media_type == "*":
        # Old Java clients send a bare "*" (HttpURLConnection's default Accept).
        media_type = "*/*"
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidRequest(f"malformed media type {text[:200]!r}")
    params: dict[str, str] = {}
    for param_text in param_texts:
        if not param_text.strip():
            continue  # tolerate "a/b;" and "a/b;;c=d"
        name, equals, value = param_text.partition("=")
        name = name.strip().lower()
        if not equals or not _PARAM_NAME.fullmatch(name):
            raise InvalidRequest(f"malformed media type parameter {param_text.strip()[:200]!r}")
        params.setdefault(name, _unquote(value.strip()))
    return media_type, params


def _repair_query_plus(element: str) -> str:
    """A `+` left unencoded in a query string decodes to a space, turning
    `application/dicom+json` into `application/dicom json`; put it back in the
    media type (never in parameters, whose quoted values may hold spaces)."""
    head, semicolon, rest = element.partition(";")
    return re.sub(r"(?<=[A-Za-z0-9.-]) (?=[A-Za-z0-9.-])", "+", head.strip()) + semicolon + rest


def _parse_q(value: str) -> float:
    if not _Q_VALUE.fullmatch(value.strip()):
        raise InvalidRequest(f"invalid q-value {value[:50]!r} (RFC 9110 §12.4.2: 0 to 1, at most 3 decimals)")
    return float(value)


def _parse_ranges(header_values: Sequence[str], from_query: bool) -> list[MediaRange]:
    ranges: list[MediaRange] = []
    for header_value in header_values:
        for element in split_outside_quotes(header_value, ","):
            if not element.strip():
                continue  # RFC 9110 §5.6.1: empty list elements are allowed
            if from_query:
                element = _repair_query_plus(element)
            media_type, params = parse_media_type(element)
            q = _parse_q(params.pop("q")) if "q" in params else 1.0
            if "type" in params:
                params["type"] = _LEGACY_NAMES.get(params["type"].strip().lower(), params["type"])
            ranges.append(MediaRange(_LEGACY_NAMES.get(media_type, media_type), params, q))
    # sorted() is stable, so equal q-values keep the client's order.
    return sorted(ranges, key=lambda range_: -range_.q)


def _acceptable(ranges: list[MediaRange]) -> list[MediaRange]:
    return [range_ for range_ in ranges if range_.q > 0]


def parse_accept(header_values: Sequence[str]) -> list[MediaRange]:
    """Media ranges from Accept header values, best first; q=0 ranges dropped."""
    return _acceptable(_parse_ranges(header_values, from_query=False))


def accept_from_request(
    query_accept: Sequence[str], header_accept: Sequence[str], keep_refused: bool = False
) -> list[MediaRange]:
    """The `accept` query parameter wins over the Accept header (PS3.18 §8.3.3.1);
    neither given means anything is acceptable. `keep_refused`: the q=0 ranges
    too, last, for a caller that chooses among what a wider range admits
    (RFC 9110 §12.4.2: q=0 is "not acceptable")."""
    if any(value.strip() for value in query_accept):
        ranges = _parse_ranges(query_accept, from_query=True)
    elif any(value.strip() for value in header_accept):
        ranges = _parse_ranges(header_accept, from_query=False)
    else:
        ranges = [MediaRange("*/*", {}, 1.0)]
    return ranges if keep_refused else _acceptable(ranges)


def type_matches(pattern: str, media_type: str) -> bool:
    """`pattern` may be `*/*` or `type/*`; parameters of either are ignored."""
    pattern = pattern.split(";", 1)[0].strip().lower()
    media_type = media_type.split(";", 1)[0].strip().lower()
    if pattern == "*/*" or pattern == media_type:
        return True
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return False


def matches(range_: MediaRange, media_type: str) -> bool:
    return type_matches(range_.media_type, media_type)


def inner_type(range_: MediaRange) -> str | None:
    """The `type` parameter of a multipart/related range, lowercased (RFC 2387 §3.1)."""
    if range_.media_type != MULTIPART_RELATED:
        return None
    inner = range_.params.get("type")
    return inner.strip().lower() if inner else None


def admits_part(range_: MediaRange, part_type: str, default_inner: str) -> bool:
    """Whether a body part of `part_type` satisfies `range_`, sent alone or
    inside multipart/related. A multipart/related range without a `type`
    parameter stands for the resource's default part type, `default_inner`."""
    if range_.media_type == "*/*":
        return True
    if matches(range_, MULTIPART_RELATED):
        return type_matches(inner_type(range_) or default_inner, part_type)
    return matches(range_, part_type)


def transfer_syntax_param(range_: MediaRange) -> str | None:
    """The `transfer-syntax` parameter (PS3.18 §8.7.3.5.2), "*" meaning as stored."""
    value = range_.params.get("transfer-syntax")
    return value.strip() if value is not None else None


def refuses(ranges: Sequence[MediaRange], part_type: str, syntax: str, default_inner: str) -> bool:
    """Whether the client refuses a multipart/related answer of `part_type`
    parts in `syntax`: whether the most specific of its ranges that match
    the answer has q=0 (RFC 9110 §12.4.2 and §12.5.1), so that
    `image/jpeg; q=0, */*` refuses JPEG frames, and
    `multipart/related; type="application/dicom"; q=0, ...; transfer-syntax=*`
    does not refuse the stored syntax. Of equally specific ranges, the
    client's best q counts."""
    matching = [
        (_specificity(range_, default_inner), range_.q) for range_ in ranges
        if admits_part(range_, part_type, default_inner) and transfer_syntax_param(range_) in (None, "*", syntax)
    ]
    return bool(matching) and max(matching)[1] == 0


def _specificity(range_: MediaRange, default_inner: str) -> tuple[int, int]:
    """How precisely a range names a multipart/related answer: by its type
    (a wildcard, a bare part type or `multipart/related` alone, then one
    naming its part type), then by its transfer-syntax (none, `*`, one)."""
    asked = transfer_syntax_param(range_)
    by_syntax = 0 if asked is None else 1 if asked == "*" else 2
    if range_.media_type == MULTIPART_RELATED:
        inner = inner_type(range_)
        by_type = 3 if inner is not None and not inner.endswith("/*") else 2
    else:
        by_type = 0 if range_.media_type == "*/*" else 1 if range_.media_type.endswith("/*") else 2
    return by_type, by_syntax
