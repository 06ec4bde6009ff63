"""The rules of FHIR JSON that the R4 models do not enforce.

- JSON types of primitives (R4 json.html#primitive): the models turn "5"
  into 5 and "true" into true. integer is a JSON number without a fraction,
  decimal any JSON number, boolean true or false, and every other primitive
  (string, code, date, dateTime, ...) a JSON string. A repeating element is
  an array, even of one, and never an empty one.
- base64Binary's lexical form: the models decode it leniently, so "!!!"
  would be stored as "".
- ele-1 (an element has a value or children: `{}` is none), ext-1 (an
  extension has a value or extensions, not both) and per-1 (a Period does
  not end before it starts), which the models leave out.
- The target types a Reference allows (`partOf` of a Task is a Task), and
  that a literal reference naming a resource type names a resource of it
  (`Task/` or `Patient//_history` name none).

A resource that breaks these rules is invalid; storing the coerced value
would store something the client did not send.
"""

import base64
import binascii
import re
import types
import typing
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fhir_mappings.date_ranges import date_range
from fhir_mappings.errors import InvalidResource
from fhir_mappings.r4_resource_types import R4_RESOURCE_TYPES

_STRING_TYPES = (str, date, datetime, time, bytes)
# Base64 once whitespace is out (R4 datatypes.html#base64Binary allows it between
# quartets). R4's own regex, `(\s*([0-9a-zA-Z\+\=]){4}\s*)+`, taken as written
# backtracks exponentially: a value of 120 bytes held the server for minutes.
_BASE64 = re.compile(r"[0-9A-Za-z+/]*={0,2}")
# The type in a literal reference: relative, absolute, versioned or conditional (R4 references.html#literal).
_REFERENCE_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)(?:/[A-Za-z0-9.-]{1,64}(?:/_history/[A-Za-z0-9.-]{1,64})?|\?.*)$")
# A relative literal reference (R4 references.html#literal): `Type/id`, or a version of it.
_RELATIVE_REFERENCE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9.-]{1,64}(?:/_history/[A-Za-z0-9.-]{1,64})?")


ModelOf = Callable[[str], type[BaseModel]]


def check_json_types(body: dict[str, Any], model: type[BaseModel], model_of: ModelOf) -> None:
    """Raise InvalidResource naming the first element whose JSON type is wrong.
    Run after the model accepted `body`, so the structure is known sound;
    `model_of` gives the model of a resource type (for contained resources)."""
    pending: list[tuple[dict[str, Any], type[BaseModel], str]] = [(body, model, body.get("resourceType", ""))]
    while pending:
        node, node_model, path = pending.pop()
        fields = _fields(node_model)
        for key, value in node.items():
            field = fields.get(key)
            if field is None or key.startswith("_"):  # resourceType, or a primitive's id and extensions
                continue
            repeats, kind = _shape(field.annotation)
            where = f"{path}.{key}"
            if repeats and not isinstance(value, list):
                raise InvalidResource(f"{where} repeats, so it must be an array, even of one value")
            if repeats and not value:
                raise InvalidResource(f"{where} is an empty array: FHIR JSON leaves an element without values out")
            for index, item in enumerate(value if repeats else [value]):
                item_path = f"{where}[{index}]" if repeats else where
                child = _checked(item, kind, item_path, model_of)
                if child is not None:
                    _check_element(item, child, item_path, field)
                    pending.append((item, child, item_path))


def _checked(item: Any, kind: Any, path: str, model_of: ModelOf) -> type[BaseModel] | None:
    """Check a primitive's JSON type; for an object, the model to check it against."""
    if kind is bool:
        _require(isinstance(item, bool), path, "true or false")
    elif kind is int:
        _require(isinstance(item, int) and not isinstance(item, bool), path, "a whole JSON number")
    elif kind is Decimal:
        _require(isinstance(item, (int, float)) and not isinstance(item, bool), path, "a JSON number")
    elif isinstance(kind, type) and issubclass(kind, _STRING_TYPES):
        _require(isinstance(item, str), path, "a JSON string")
        if kind is bytes:
            _require(_is_base64(item), path, "base64 (R4 base64Binary)")
    elif hasattr(kind, "get_model_klass") and isinstance(item, dict):
        model = kind.get_model_klass()
        if model.__name__ == "Resource":  # contained resources, Bundle entries: the item names its type
            return model_of(item["resourceType"])
        return model  # type: ignore[no-any-return]
    return None


def _is_base64(text: str) -> bool:
    packed = "".join(text.split())
    if not packed or len(packed) % 4 or not _BASE64.fullmatch(packed):
        return False
    try:
        base64.b64decode(packed, validate=True)
    except binascii.Error:
        return False
    return True


def _check_element(item: dict[str, Any], model: type[BaseModel], path: str, field: FieldInfo) -> None:
    if model.__name__ != "Resource" and not any(key != "id" for key in item):
        raise InvalidResource(f"{path} has neither a value nor children (R4 ele-1)")
    if model.__name__ == "Extension" and ("extension" in item) == any(key.startswith("value") for key in item):
        raise InvalidResource(f"{path} must have either a value or extensions, not both nor neither (R4 ext-1)")
    if model.__name__ == "Period" and isinstance(item.get("start"), str) and isinstance(item.get("end"), str):
        start, end = date_range(item["start"]), date_range(item["end"])
        if start is not None and end is not None and start[0] >= end[1]:
            raise InvalidResource(f"{path} ends before it starts (R4 per-1)")
    if model.__name__ == "Reference" and isinstance(item.get("reference"), str):
        _check_literal_reference(item["reference"], f"{path}.reference")
        allowed = (field.json_schema_extra or {}).get("enum_reference_types")  # type: ignore[union-attr]
        match = _REFERENCE_TYPE.search(item["reference"])
        # Only a URL of the RESTful form names a resource type; `.../People/jdoe` may be anything.
        named = match is not None and match[1] in R4_RESOURCE_TYPES
        if allowed and "Resource" not in allowed and named and match[1] not in allowed:
            raise InvalidResource(
                f"{path} refers to a {match[1]}; R4 allows {' or '.join(allowed)} there"  # type: ignore[arg-type]
            )


def _check_literal_reference(reference: str, path: str) -> None:
    """A reference that names a resource type names a resource of it: stored,
    `Task/` or `Patient//_history` would be a link no read, search or
    compartment can follow. Relative, it is `Type/id` or a version of it; a
    URL (it may be another server's, of any form) has an id after each type
    it names. `#id`, `urn:` placeholders and conditional references
    (`Type?query`) are judged elsewhere."""
    if reference.startswith("#") or "?" in reference:
        return
    scheme, colon, rest = reference.partition(":")
    if colon and scheme.isalpha():
        if scheme.lower() not in ("http", "https") or not rest.startswith("//"):
            return
        segments = rest[2:].split("/")[1:]  # the path, after the host
    else:
        segments = reference.split("/")
        if not is_relative_reference(reference):
            if segments[0] in R4_RESOURCE_TYPES:
                raise InvalidResource(
                    f"{path}: {reference[:100]!r} is no reference to a {segments[0]}; R4 has {segments[0]}/[id], or"
                    f" {segments[0]}/[id]/_history/[version]"
                )
            # Relative to the base, it could name only a resource of this server, and names none of them.
            raise InvalidResource(
                f"{path}: {reference[:100]!r} is no literal reference; R4 has [type]/[id] of an R4 resource type"
                " (or [type]/[id]/_history/[version]), an absolute URL, or #[id] of a contained resource"
            )
    position = 0
    while position < len(segments):
        named = segments[position]
        if named in R4_RESOURCE_TYPES or named == "_history":
            if position + 1 == len(segments) or not segments[position + 1]:
                what = "a version" if named == "_history" else f"a {named}'s id"
                raise InvalidResource(f"{path}: {reference[:100]!r} names no {what} after {named}")
            position += 1  # an id, whatever it is called
        position += 1


def is_relative_reference(reference: str) -> bool:
    """Whether `reference` is `[type]/[id]` or `[type]/[id]/_history/[version]`
    of an R4 resource type, the only relative literal reference there is
    (R4 references.html#literal)."""
    return _RELATIVE_REFERENCE.fullmatch(reference) is not None and reference.split("/")[0] in R4_RESOURCE_TYPES


def _require(ok: bool, path: str, expected: str) -> None:
    if not ok:
        raise InvalidResource(f"{path} must be {expected} in FHIR JSON")


@cache
def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {field.alias or name: field for name, field in model.model_fields.items()}


@cache
def _shape(annotation: Any) -> tuple[bool, Any]:
    """(whether the element repeats, its type without Optional and Annotated)."""
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        elif origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is list:
            repeats, annotation = True, typing.get_args(annotation)[0]
        else:
            return repeats, annotation
