"""Search-index values of a resource, extracted once when a version is written.

Each parameter's expression is walked over the resource JSON and each value
found is turned into rows of its parameter type (FHIR R4 search.html, the
"Search parameter types" section says which datatypes each type indexes).
"""

import functools
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_mappings.date_ranges import date_range
from fhir_mappings.search_parameters import (
    ParamType,
    SearchParameter,
    identifier_parameter,
    parameters_for,
)


@dataclass
class IndexValues:
    tokens: list[tuple[str, str | None, str]] = field(default_factory=list)
    strings: list[tuple[str, str, str]] = field(default_factory=list)
    dates: list[tuple[str, int, int]] = field(default_factory=list)
    references: list[tuple[str, str, str]] = field(default_factory=list)
    quantities: list[tuple[str, float, str | None, str | None]] = field(default_factory=list)


# The index row of a parameter that has a value no search can match, for
# `:missing` (R4 search.html#modifiers), which asks only whether rows exist:
# no type, id or code is empty.
PRESENT = ""


def _has_text(node: Any) -> bool:
    return isinstance(node, dict) and isinstance(node.get("text"), str) and bool(node["text"])


def normalise_text(text: str) -> str:
    """Case and accent-insensitive form for string search (FHIR R4 search.html#string)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def split_reference(reference: str) -> tuple[str, str] | None:
    """(type, id) of a relative literal reference, version suffix dropped; None
    for an absolute one: a URL names a resource of another server (the server
    makes those naming itself relative before they get here)."""
    if ":" in reference:
        return None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2] or not parts[-1] or not parts[-2][0].isupper():
        return None
    return parts[-2], parts[-1]


def extract(resource: dict[str, Any]) -> IndexValues:
    values = IndexValues()
    for parameter in parameters_for(resource["resourceType"]).values():
        for path in parameter.paths:
            _add(values, parameter, walk(resource, _steps(path)))
    return values


@functools.cache
def _steps(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def walk(node: Any, steps: Sequence[str]) -> list[Any]:
    """The values at a path of element names; lists are flattened, `name[x]`
    matches a choice type. A loop rather than recursion: every write walks
    every parameter's path."""
    current = node if isinstance(node, list) else [node]
    for step in steps:
        following: list[Any] = []
        choice = step[:-3] if step.endswith("[x]") else None
        for item in current:
            if not isinstance(item, dict):
                continue
            if choice is None:
                found = [item.get(step)]
            else:
                found = [value for key, value in item.items()
                         if key.startswith(choice) and key[len(choice) : len(choice) + 1].isupper()]
            for value in found:
                if isinstance(value, list):
                    following.extend(value)
                elif value is not None:
                    following.append(value)
        current = following
    return [value for value in current if value is not None]


def _add(values: IndexValues, parameter: SearchParameter, nodes: list[Any]) -> None:
    """The values of `nodes`, the elements one of `parameter`'s paths found.
    Tokens, all of a path at once: an ImagingStudy has two per instance."""
    name = parameter.name
    if parameter.type is ParamType.URI:  # kept as tokens without a system, which `uri` searches compare whole
        values.tokens.extend((name, None, node) for node in nodes if isinstance(node, str))
        return
    if parameter.type is ParamType.TOKEN:
        found = [(name, system, code) for node in nodes for system, code in _tokens(node)]
        if not found and any(_has_text(node) for node in nodes):
            found.append((name, None, PRESENT))  # a CodeableConcept with only text
        values.tokens.extend(found)
        return
    for node in nodes:
        if parameter.type is ParamType.STRING:
            values.strings.extend((name, normalise_text(text), text) for text in _strings(node))
        elif parameter.type is ParamType.DATE:
            span = _date_span(node)
            if span is not None:
                values.dates.append((name, *span))
        elif parameter.type is ParamType.REFERENCE:
            target = _reference(node, parameter.targets)
            if target is not None:
                values.references.append((name, *target))
            elif isinstance(node, dict) and (node.get("reference") or node.get("identifier")):
                # Another server's resource, or one named by identifier alone: no
                # target here, but a value all the same (`:missing=false`).
                values.references.append((name, PRESENT, PRESENT))
            identifier = node.get("identifier") if isinstance(node, dict) else None
            if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                values.tokens.append(
                    (identifier_parameter(parameter).name, identifier.get("system"), identifier["value"])
                )
        elif parameter.type is ParamType.QUANTITY and _is_quantity(node):
            value, code, unit = float(node["value"]), node.get("code"), node.get("unit")
            values.quantities.append((name, value, node.get("system"), code))
            if isinstance(unit, str) and unit != code:
                # `5.4||mg` matches the code or the stated human unit (R4 search.html#quantity);
                # with no system, this row answers only searches that name none.
                values.quantities.append((name, value, None, unit))


def _is_quantity(node: Any) -> bool:
    value = node.get("value") if isinstance(node, dict) else None
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tokens(node: Any) -> list[tuple[str | None, str]]:
    # A list, not a generator: every STOW of an instance into a study extracts
    # its ImagingStudy's tokens, two per instance, again.
    if isinstance(node, str):
        return [(None, node)]
    if isinstance(node, bool):
        return [(None, "true" if node else "false")]
    if not isinstance(node, dict):
        return []
    if "coding" in node or "text" in node and "value" not in node:  # CodeableConcept
        return [(coding.get("system"), coding["code"]) for coding in node.get("coding", [])
                if coding.get("code") is not None]
    if "value" in node and isinstance(node["value"], str):  # Identifier, ContactPoint
        return [(node.get("system"), node["value"])]
    if node.get("code") is not None:  # Coding
        return [(node.get("system"), node["code"])]
    return []


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):  # HumanName, Address: every part
        for key in ("text", "family", "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode", "country"):
            part = node.get(key)
            for text in part if isinstance(part, list) else [part]:
                if isinstance(text, str):
                    yield text


def _date_span(node: Any) -> tuple[int, int] | None:
    if isinstance(node, str):
        return date_range(node)
    if isinstance(node, dict):  # Period: an open end is unbounded
        start = date_range(node["start"]) if isinstance(node.get("start"), str) else None
        end = date_range(node["end"]) if isinstance(node.get("end"), str) else None
        if start is None and end is None:
            return None
        return (start[0] if start else -(2**62), end[1] if end else 2**62)
    return None


def _reference(node: Any, targets: tuple[str, ...]) -> tuple[str, str] | None:
    if not isinstance(node, dict) or not isinstance(node.get("reference"), str):
        return None
    target = split_reference(node["reference"])
    if target is None or ("Resource" not in targets and target[0] not in targets):
        return None
    return target
