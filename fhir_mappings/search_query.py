"""FHIR search parameters parsed into condition objects (STYLE 6).

Pure data: no SQL here. `server/fhir/search_sql.py` turns a `SearchRequest`
into a query. Rules follow FHIR R4 search.html: comma is OR within one
parameter, a repeated parameter is AND; prefixes and modifiers per type.
"""

import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import TypeVar

from fhir_mappings.date_ranges import date_range
from fhir_mappings.errors import InvalidRequest
from fhir_mappings.search_parameters import (
    COMMON,
    DEFINITIONS,
    ParamType,
    SearchParameter,
    identifier_parameter,
    parameters_for,
)
from fhir_mappings.search_values import normalise_text, split_reference

E = TypeVar("E", bound=Enum)
MAX_COUNT = 1000
DEFAULT_COUNT = 20
# Bounds on one search, so that no request builds a query too large to plan.
MAX_CONDITIONS = 40
MAX_VALUES = 100
MAX_SORT_KEYS = 5
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# Parameters about the result, not the match (FHIR R4 search.html#return).
RESULT_PARAMETERS = frozenset(
    ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total")
)
# Never part of a search's identity: how to format it, and where a page starts.
TRANSPORT_PARAMETERS = frozenset(("_format", "_pretty", "_cursor"))
_MODIFIERS: dict[ParamType, frozenset[str]] = {
    ParamType.STRING: frozenset(("exact", "contains", "missing")),
    ParamType.TOKEN: frozenset(("not", "missing")),
    ParamType.DATE: frozenset(("missing",)),
    ParamType.REFERENCE: frozenset(("missing",)),
    ParamType.QUANTITY: frozenset(("missing",)),
    ParamType.URI: frozenset(("missing",)),
}


class StringMode(Enum):
    PREFIX = "prefix"
    EXACT = "exact"
    CONTAINS = "contains"


@dataclass(frozen=True)
class StringValue:
    text: str
    mode: StringMode


@dataclass(frozen=True)
class TokenValue:
    """`system` None matches any system; "" matches only codes without one; `code` None any code."""

    system: str | None
    code: str | None


@dataclass(frozen=True)
class DateValue:
    prefix: str
    low: int
    high: int


@dataclass(frozen=True)
class ReferenceValue:
    target_type: str | None
    target_id: str


@dataclass(frozen=True)
class QuantityValue:
    prefix: str
    value: float
    low: float
    high: float
    system: str | None
    code: str | None


Value = StringValue | TokenValue | DateValue | ReferenceValue | QuantityValue


@dataclass(frozen=True)
class Condition:
    """One parameter occurrence: any of `values` matches (OR), or `missing` is asked."""

    parameter: SearchParameter
    values: tuple[Value, ...] = ()
    negate: bool = False
    missing: bool | None = None
    chain: "Chain | None" = None


@dataclass(frozen=True)
class Chain:
    """A condition on the resources at the other end of a reference parameter.
    Forward, `subject:Patient.identifier=x`: the searched resource's reference
    must point at a match of `condition`, of `other_type`. Reverse,
    `_has:Observation:patient:code=x` (search.html#has): a match of
    `condition`, of `other_type`, must point at the searched resource through
    the enclosing condition's parameter (one of `other_type`'s)."""

    other_type: str
    condition: Condition
    reverse_of: str | None = None  # a reverse chain's searched type, at which the references point


@dataclass(frozen=True)
class SortKey:
    parameter: SearchParameter
    descending: bool


@dataclass(frozen=True)
class Include:
    source_type: str
    parameter: SearchParameter
    target_type: str | None
    iterate: bool


class Summary(Enum):
    FALSE = "false"
    TRUE = "true"
    TEXT = "text"
    DATA = "data"
    COUNT = "count"


class Total(Enum):
    NONE = "none"
    ESTIMATE = "estimate"
    ACCURATE = "accurate"


@dataclass(frozen=True)
class SearchRequest:
    resource_type: str
    conditions: tuple[Condition, ...]
    sort: tuple[SortKey, ...]
    count: int
    includes: tuple[Include, ...]
    revincludes: tuple[Include, ...]
    summary: Summary
    elements: tuple[str, ...]
    total: Total
    # What was understood, in the order given: the self link and the cursor carry it.
    parameters: tuple[tuple[str, str], ...]
    ignored: tuple[str, ...] = field(default=())


def parse_search(resource_type: str, pairs: list[tuple[str, str]], strict: bool = False) -> SearchRequest:
    known = parameters_for(resource_type)
    conditions: list[Condition] = []
    used: list[tuple[str, str]] = []
    ignored: list[str] = []
    results: dict[str, list[str]] = {}
    for raw_name, value in pairs:
        if "\x00" in raw_name or "\x00" in value:
            raise InvalidRequest("search parameters may not contain NUL characters")
        base_name = raw_name.partition(":")[0]
        if base_name in TRANSPORT_PARAMETERS:
            continue
        if base_name in RESULT_PARAMETERS:
            if raw_name != base_name and raw_name not in ("_include:iterate", "_revinclude:iterate"):
                # `_sort:desc`, `_count:max`: no such parameter, though its base name is one.
                if strict:
                    raise InvalidRequest(f"{raw_name!r}: {base_name} takes no such modifier")
                ignored.append(raw_name)
                continue
            results.setdefault(raw_name, []).append(value)
            used.append((raw_name, value))
            continue
        if base_name == "_has":
            conditions.append(_reverse_chained(resource_type, raw_name, value))
            used.append((raw_name, value))
            continue
        head, dot, chained = raw_name.partition(".")
        name, _, modifier = head.partition(":")
        parameter = COMMON.get(name) or known.get(name)
        if parameter is None:
            if strict:
                raise InvalidRequest(f"unknown search parameter {raw_name!r} for {resource_type}")
            ignored.append(raw_name)
            continue
        if dot:
            conditions.append(_chained(parameter, name, modifier, chained, value))
        else:
            conditions.append(_condition(parameter, name, modifier, value))
        used.append((raw_name, value))
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidRequest(f"a search may have at most {MAX_CONDITIONS} parameters")
    count = parse_count(_single(results, "_count"))
    summary = _enum(Summary, _single(results, "_summary"), Summary.FALSE, "_summary")
    total = _enum(Total, _single(results, "_total"), Total.ACCURATE, "_total")
    if summary is Summary.COUNT and total is Total.NONE:
        raise InvalidRequest("_summary=count asks for the count of matches, and _total=none for no count")
    return SearchRequest(
        resource_type=resource_type,
        conditions=tuple(conditions),
        sort=_sort(resource_type, _single(results, "_sort")),
        count=count,
        includes=tuple(_includes(resource_type, results, "_include")),
        revincludes=tuple(_includes(resource_type, results, "_revinclude")),
        summary=summary,
        elements=tuple(_elements(results)),
        total=total,
        parameters=tuple(used),
        ignored=tuple(ignored),
    )


def _condition(parameter: SearchParameter, name: str, modifier: str, value: str) -> Condition:
    if modifier == "missing":
        if value not in ("true", "false"):
            raise InvalidRequest(f"{name}:missing takes true or false, not {value!r}")
        return Condition(parameter, missing=value == "true")
    items = _split_or(value)
    if not items:
        raise InvalidRequest(f"{name} needs a value")
    if len(items) > MAX_VALUES:
        raise InvalidRequest(f"{name} may list at most {MAX_VALUES} values")
    if parameter.type is ParamType.REFERENCE and modifier and modifier[0].isupper():
        if modifier not in DEFINITIONS and "Resource" not in parameter.targets and modifier not in parameter.targets:
            raise InvalidRequest(f"{name} cannot point at a {modifier}")
        return Condition(parameter, tuple(_reference_value(item, modifier) for item in items))
    if parameter.type is ParamType.REFERENCE and modifier == "identifier":
        return Condition(identifier_parameter(parameter), tuple(_token_value(item) for item in items))
    if modifier and modifier not in _MODIFIERS[parameter.type]:
        raise InvalidRequest(f"the modifier :{modifier} is not supported on {name} ({parameter.type.value})")
    return Condition(parameter, tuple(_value(parameter, modifier, item) for item in items), negate=modifier == "not")


def _chained(parameter: SearchParameter, head: str, modifier: str, rest: str, value: str) -> Condition:
    target_type = chain_target(parameter, head, modifier, rest)
    return Condition(parameter, chain=Chain(target_type, _inner_condition(target_type, rest, value)))


def chain_target(parameter: SearchParameter, head: str, modifier: str, rest: str) -> str:
    """The type a forward chain `head[:modifier].rest` follows `parameter` to."""
    if parameter.type is not ParamType.REFERENCE:
        raise InvalidRequest(f"{head} is not a reference parameter and cannot be chained")
    if modifier:
        target_type = modifier
    else:
        candidates = [target for target in parameter.targets if target in DEFINITIONS]
        if len(candidates) != 1:
            raise InvalidRequest(f"say which type {head} points at, e.g. {head}:Patient.{rest.partition(':')[0]}")
        target_type = candidates[0]
    if target_type not in DEFINITIONS or ("Resource" not in parameter.targets and target_type not in parameter.targets):
        raise InvalidRequest(f"{head} cannot point at a {target_type}")
    return target_type


def _reverse_chained(resource_type: str, raw_name: str, value: str) -> Condition:
    """`_has:[type]:[reference]:[parameter]=value`: the resources that a match
    of `[type]?[parameter]=value` points at through its `[reference]`."""
    _, source_type, reference_name, rest = (raw_name.split(":", 3) + ["", "", ""])[:4]
    if not (source_type and reference_name and rest):
        raise InvalidRequest(f"{raw_name[:80]!r}: _has takes the form _has:[type]:[reference parameter]:[parameter]")
    if rest.partition(":")[0] == "_has":
        raise InvalidRequest("_has within _has is not supported")
    if source_type not in DEFINITIONS:
        raise InvalidRequest(f"_has: {source_type[:64]!r} is not a resource type this server supports")
    reference = parameters_for(source_type).get(reference_name)
    if reference is None or reference.type is not ParamType.REFERENCE:
        raise InvalidRequest(f"_has: {source_type} has no reference parameter {reference_name[:64]!r}")
    if "Resource" not in reference.targets and resource_type not in reference.targets:
        raise InvalidRequest(f"_has: {source_type}.{reference_name} cannot point at a {resource_type}")
    inner = _inner_condition(source_type, rest, value)
    return Condition(reference, chain=Chain(source_type, inner, reverse_of=resource_type))


def _inner_condition(resource_type: str, raw_name: str, value: str) -> Condition:
    """The condition a chain asks of the resources at its other end: one level only."""
    if "." in raw_name:
        raise InvalidRequest("chains of more than one level are not supported")
    name, _, modifier = raw_name.partition(":")
    parameter = COMMON.get(name) or parameters_for(resource_type).get(name)
    if parameter is None:
        raise InvalidRequest(f"{resource_type} has no search parameter {name[:64]!r}")
    return _condition(parameter, name, modifier, value)


def _split_or(value: str) -> list[str]:
    """Comma is OR (FHIR R4 search.html#escaping); the pieces keep their escapes
    until the `|` of tokens and quantities has been split on too."""
    return [part for part in _split_unescaped(value, ",") if part != ""]


def _split_unescaped(text: str, separator: str) -> list[str]:
    r"""`text` split at each `separator` that no backslash escapes; escapes are
    kept for `_unescape` (search.html#escaping: `\\` is an escaped backslash,
    so in `a\\,b` the comma separates)."""
    parts, current, escaped = [], [], False
    for char in text:
        if char == separator and not escaped:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
        escaped = char == "\\" and not escaped
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\([,|$\\])", r"\1", text)


def _value(parameter: SearchParameter, modifier: str, text: str) -> Value:
    kind = parameter.type
    if kind is ParamType.TOKEN:
        token = _token_value(text)
        if parameter.boolean and (token.system is not None or token.code not in ("true", "false")):
            # Anything else matches nothing, which an empty Bundle would pass off as an answer.
            raise InvalidRequest(f"{parameter.name} takes true or false, not {text[:64]!r}")
        return token
    if kind is ParamType.QUANTITY:
        return _quantity_value(parameter.name, text)
    text = _unescape(text)
    if kind is ParamType.URI:
        return TokenValue(None, text)
    if kind is ParamType.STRING:
        mode = StringMode.EXACT if modifier == "exact" else StringMode.CONTAINS if modifier == "contains" else StringMode.PREFIX
        return StringValue(text if mode is StringMode.EXACT else normalise_text(text), mode)
    if kind is ParamType.DATE:
        prefix, rest = _prefix(text)
        span = date_range(rest)
        if span is None:
            raise InvalidRequest(f"{parameter.name}: {text!r} is not a FHIR date (e.g. 2024, 2024-03-05, 2024-03-05T10:15:00Z)")
        return DateValue(prefix, *span)
    return _reference_value(text, None)


def _token_value(text: str) -> TokenValue:
    parts = _split_unescaped(text, "|")
    if len(parts) == 1:
        return TokenValue(None, _unescape(text))
    system, code = _unescape(parts[0]), _unescape("|".join(parts[1:]))
    if not system and not code:
        raise InvalidRequest("a token needs a system or a code")
    return TokenValue(system, code or None)


def _reference_value(text: str, target_type: str | None) -> ReferenceValue:
    text = _unescape(text)
    if "/" not in text.strip("/"):
        # `Patient/` is a type without its id, not the id `Patient`.
        if not text.strip("/") or text.endswith("/"):
            raise InvalidRequest(f"{text[:100]!r}: a reference needs an id")
        return ReferenceValue(target_type, text.strip("/"))
    if ":" in text:
        raise InvalidRequest(
            f"{text[:100]!r} names a resource of another server; references to those are not searchable here"
        )
    target = split_reference(text.rstrip("/"))
    if target is None:
        raise InvalidRequest(f"{text[:100]!r} is not a reference (Type/id or id)")
    if target_type is not None and target[0] != target_type:
        raise InvalidRequest(f"{text[:100]!r} is not a {target_type}")
    return ReferenceValue(*target)


def _prefix(text: str) -> tuple[str, str]:
    if len(text) > 2 and text[:2] in PREFIXES and not text[:2].isdigit():
        return text[:2], text[2:]
    return "eq", text


# R4 datatypes.html#decimal, with leading zeros allowed in a search value.
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _quantity_value(name: str, text: str) -> QuantityValue:
    prefix, rest = _prefix(text)
    number, *units = _split_unescaped(rest, "|")
    if len(units) > 2:
        raise InvalidRequest(f"{name}: {text[:100]!r} is not value|system|code")
    system, code = (_unescape(units[0]), _unescape(units[1])) if len(units) == 2 else ("", _unescape(units[0]) if units else "")
    if not _DECIMAL.fullmatch(number):  # Decimal() would also take "1_000", " 1" and other scripts' digits
        raise InvalidRequest(f"{name}: {number[:50]!r} is not a number")
    exact = Decimal(number)
    if not exact.is_finite() or abs(exact.adjusted()) > 30 or exact.as_tuple().exponent < -30:  # type: ignore[operator]
        raise InvalidRequest(f"{name}: {number[:50]!r} is not a number this server compares (at most 30 digits)")
    # Implicit precision: 5.4 means [5.35, 5.45) (FHIR R4 search.html#number).
    half = Decimal(1).scaleb(exact.as_tuple().exponent) / 2  # type: ignore[arg-type]
    if prefix == "ap":
        half = max(half, abs(exact) / 10)
    return QuantityValue(prefix, float(exact), float(exact - half), float(exact + half), system or None, code or None)


def read_subsetting(pairs: list[tuple[str, str]]) -> tuple[Summary, tuple[str, ...]]:
    """`_summary` and `_elements` on a read or vread, which take them as a
    search does (R4 search.html#summary), except `count`."""
    results: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in ("_summary", "_elements"):
            results.setdefault(name, []).append(value)
    summary = _enum(Summary, _single(results, "_summary"), Summary.FALSE, "_summary")
    if summary is Summary.COUNT:
        raise InvalidRequest("_summary=count counts the matches of a search; a read has none")
    return summary, tuple(_elements(results))


def _single(results: dict[str, list[str]], name: str) -> str | None:
    values = results.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"{name} may be given once")
    return values[0]


def parse_count(text: str | None) -> int:
    """`_count`: the default when absent, at most MAX_COUNT (a server may return fewer)."""
    if text is None:
        return DEFAULT_COUNT
    if not re.fullmatch(r"[0-9]+", text):
        raise InvalidRequest(f"_count must be a whole number, not {text[:20]!r}")
    digits = text.lstrip("0")
    return MAX_COUNT if len(digits) > len(str(MAX_COUNT)) else min(int(digits or "0"), MAX_COUNT)


def sortable(resource_type: str) -> dict[str, SearchParameter]:
    return {
        name: parameter
        for name, parameter in {**COMMON, **parameters_for(resource_type)}.items()
        if parameter.type is not ParamType.REFERENCE
    }


def _sort(resource_type: str, text: str | None) -> tuple[SortKey, ...]:
    if not text:
        return ()
    keys: list[SortKey] = []
    allowed = sortable(resource_type)
    for item in text.split(","):
        descending = item.startswith("-")
        name = item.removeprefix("-")
        if name not in allowed:
            raise InvalidRequest(f"cannot sort {resource_type} by {name[:50]!r}; sortable: {', '.join(sorted(allowed))}")
        if any(key.parameter.name == name for key in keys):
            raise InvalidRequest(f"_sort names {name} twice")
        keys.append(SortKey(allowed[name], descending))
    if len(keys) > MAX_SORT_KEYS:
        raise InvalidRequest(f"_sort takes at most {MAX_SORT_KEYS} keys")
    return tuple(keys)


def _includes(resource_type: str, results: dict[str, list[str]], name: str) -> list[Include]:
    includes = []
    for raw_name, values in results.items():
        base, _, modifier = raw_name.partition(":")
        if base != name:
            continue
        if modifier not in ("", "iterate", "recurse"):
            raise InvalidRequest(f"{raw_name}: the only modifier is :iterate")
        for value in values:
            includes.append(_include(resource_type, name, value, iterate=bool(modifier)))
    return includes


def _include(resource_type: str, name: str, value: str, iterate: bool) -> Include:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise InvalidRequest(f"{name}={value!r}: expected SourceType:parameter[:TargetType]")
    source_type, parameter_name = parts[0], parts[1]
    target_type = parts[2] if len(parts) == 3 else None
    if name == "_include" and not iterate and source_type != resource_type:
        raise InvalidRequest(f"_include={value!r}: the source must be {resource_type} (or use _include:iterate)")
    parameter = parameters_for(source_type).get(parameter_name)
    if parameter is None or parameter.type is not ParamType.REFERENCE:
        raise InvalidRequest(f"{name}={value!r}: {source_type} has no reference parameter {parameter_name!r}")
    if target_type is not None and "Resource" not in parameter.targets and target_type not in parameter.targets:
        raise InvalidRequest(f"{name}={value!r}: {parameter_name} cannot point at a {target_type}")
    return Include(source_type, parameter, target_type, iterate)


def _enum(kind: type[E], text: str | None, default: E, name: str) -> E:
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError as error:
        allowed = ", ".join(member.value for member in kind)  # type: ignore[attr-defined]
        raise InvalidRequest(f"{name} must be one of {allowed}, not {text!r}") from error


def _elements(results: dict[str, list[str]]) -> list[str]:
    text = _single(results, "_elements")
    if text is None:
        return []
    names = [item.strip() for item in text.split(",") if item.strip()]
    for element in names:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", element):
            raise InvalidRequest(f"_elements: {element!r} is not an element name")
    return names
