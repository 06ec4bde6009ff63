"""FHIR R4 resources as validated models, and their one serialization.

The models come from `fhir.resources.R4B`: the package's default models are
R5, and R4B equals R4 field for field for every type served here (pinned by
`tests/test_fhir_models.py`). The package does not enforce required code
bindings, so `validate_resource` checks them from the models' own
`enum_values` (the codes of each required binding in FHIR R4); and it types
uuid elements as version 4 UUIDs, so `model_class` first gives them R4's
uuid type (`r4_uuid`).
"""

import functools
import re
from collections.abc import Iterator
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import BaseModel, ValidationError

from fhir_mappings.errors import InvalidRequest, InvalidResource
from fhir_mappings.fhir_json import with_written_values
from fhir_mappings.json_types import check_json_types
from fhir_mappings.links import placeholder_links
from fhir_mappings.narrative import check_narratives
from fhir_mappings.r4_uuid import use_r4_uuids

# The models abbreviate some long value sets with a trailing "+"; these are
# the full required value sets of FHIR R4 (valueset-*.html of each name).
_FULL_VALUE_SETS: dict[tuple[str, str], tuple[str, ...]] = {
    ("DiagnosticReport", "status"): (  # diagnostic-report-status
        "registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
        "cancelled", "entered-in-error", "unknown",
    ),
    ("Observation", "status"): (  # observation-status
        "registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown",
    ),
    ("Task", "status"): (  # task-status
        "draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress",
        "on-hold", "failed", "completed", "entered-in-error",
    ),
    ("DeviceUdiCarrier", "entryType"): (  # udi-entry-type
        "barcode", "rfid", "manual", "card", "self-reported", "unknown",
    ),
    ("DeviceUseStatement", "status"): (  # device-statement-status
        "active", "completed", "entered-in-error", "intended", "stopped", "on-hold",
    ),
    # Required bindings the models carry no codes for.
    ("AuditEvent", "action"): ("C", "R", "U", "D", "E"),  # audit-event-action
    ("AuditEvent", "outcome"): ("0", "4", "8", "12"),  # audit-event-outcome
    ("Quantity", "comparator"): ("<", "<=", ">=", ">"),  # quantity-comparator
}
# Codes the models list although the element is not bound to them:
# CapabilityStatement.format takes mime types as well (capabilitystatement.html).
_NOT_A_VALUE_SET = frozenset((("CapabilityStatement", "format"),))

# Once per process, here rather than at each validation: a model rebuilt
# while another thread validated with it would fail that validation.
use_r4_uuids()

# FHIR R4 datatypes.html#id
RESOURCE_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def model_class(resource_type: str) -> type[Resource]:
    try:
        return get_fhir_model_class(resource_type)  # type: ignore[no-any-return]
    except (KeyError, ValueError) as error:
        raise InvalidRequest(f"{resource_type} is not a FHIR R4 resource type") from error


def require_id(resource_id: str) -> str:
    if not RESOURCE_ID.fullmatch(resource_id):
        raise InvalidRequest(f"{resource_id!r} is not a valid resource id (1-64 of A-Z a-z 0-9 - .)")
    return resource_id


# R4 datatypes.html#string: no character below U+0020 but tab, CR and LF; nor
# U+FFFE and U+FFFF, which XML cannot carry (XML 1.0 2.2, Char), so that every
# stored resource can be answered in XML too.
CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


# Spaces other than the four the R4 JSON schema's string pattern takes
# (`[ \r\n\t\S]+`, read as ECMA regex, where \S excludes U+00A0, U+3000, ...).
_OTHER_SPACE = re.compile(r"[^\S \r\n\t]")
# ECMA's \s also holds U+FEFF (a byte order mark, or a zero-width no-break
# space), which Python's does not: it shows nothing, so it is left out.
_ZERO_WIDTH_NO_BREAK_SPACE = "\ufeff"


def fhir_text(value: str | None) -> str | None:
    """Text from elsewhere (DICOM) as a FHIR string, or None where nothing
    is left of it: the characters FHIR strings may not hold taken out, other
    spaces (no-break, ideographic) made plain ones, the ends trimmed (R4
    strings may not be empty)."""
    if not value:
        return None
    text = CONTROL_CHARACTER.sub("", value).replace(_ZERO_WIDTH_NO_BREAK_SPACE, "")
    return _OTHER_SPACE.sub(" ", text).strip() or None


def fhir_code(value: str | None) -> str | None:
    r"""Text from elsewhere as a FHIR code: `fhir_text` with each inner run of
    spaces made one, as the R4 code pattern asks (`[^\s]+(\s[^\s]+)*`)."""
    text = fhir_text(value)
    return " ".join(text.split()) if text else None


def client_resource(body: Any, expected_type: str | None = None) -> dict[str, Any]:
    """A client's resource as it is stored: valid, written by its model (in
    R4's element order), and with each primitive value as the client wrote it."""
    return with_written_values(resource_dict(validate_resource(body, expected_type)), body)  # type: ignore[no-any-return]


def validate_resource(body: Any, expected_type: str | None = None) -> Resource:
    """A resource from parsed JSON, valid against the R4 model and its required bindings."""
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise InvalidRequest("the body must be a FHIR resource: a JSON object with a resourceType")
    resource_type = body["resourceType"]
    if expected_type is not None and resource_type != expected_type:
        raise InvalidRequest(f"the body is a {resource_type}, the URL names {expected_type}")
    resource_class = model_class(resource_type)
    _check_contained(body.get("contained"), resource_type)
    _check_local_references(body, resource_type)
    _refuse_links_only_a_transaction_resolves(body, resource_type)
    try:
        model = resource_class.model_validate(body)
    except ValidationError as error:
        raise InvalidResource(f"invalid {resource_type}: {_describe(error)}") from error
    except (KeyError, TypeError, ValueError) as error:
        # fhir.resources looks nested resources (a Bundle's entries, say) up by
        # their resourceType and fails with these, not a ValidationError, when
        # that names no resource.
        raise InvalidResource(
            f"invalid {resource_type}: a nested resource is not a FHIR R4 resource ({error})"
        ) from error
    check_json_types(body, resource_class, model_class)
    check_required_bindings(model, resource_type)
    check_narratives(body, resource_type)
    return model


def _refuse_links_only_a_transaction_resolves(body: dict[str, Any], resource_type: str) -> None:
    """A conditional reference (`Patient?identifier=...`), or a `urn:uuid:` or
    `urn:oid:` placeholder where only a link can be, means something only in
    a transaction, which replaces it by the resource it matches or by the
    entry whose fullUrl it is (http.html#trules); anywhere else it would be
    stored meaning nothing, a link no read or search can follow."""
    for reference in literal_references(body):
        if "?" in reference:
            raise InvalidResource(
                f"invalid {resource_type}: {reference[:100]!r} is a conditional reference, resolved only in a"
                " transaction Bundle"
            )
    placeholders = placeholder_links(body)
    if placeholders:
        raise InvalidResource(
            f"invalid {resource_type}: {placeholders[0][:100]!r} is the placeholder of a Bundle entry, resolved only"
            " in a transaction Bundle that has that entry"
        )


def literal_references(node: Any) -> list[str]:
    """Every Reference.reference in some JSON; a loop, not recursion, so that
    no nesting can exhaust the stack."""
    found: list[str] = []
    pending = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, dict):
            reference = current.get("reference")
            if isinstance(reference, str):
                found.append(reference)
            pending.extend(value for value in current.values() if isinstance(value, (dict, list)))
        elif isinstance(current, list):
            pending.extend(current)
    return found


def _check_contained(contained: Any, resource_type: str) -> None:
    """What R4 asks of contained resources (resource.html#contained) beyond their
    own model: a resource type, an id to be referred to by, none twice, and
    neither further contained resources (dom-2) nor a version or update time
    of their own (dom-4)."""
    if contained is None:
        return
    if not isinstance(contained, list):
        raise InvalidResource(f"invalid {resource_type}: contained must be an array of resources")
    seen: set[str] = set()
    for index, item in enumerate(contained):
        where = f"invalid {resource_type}: contained[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
            raise InvalidResource(f"{where} is not a resource: a JSON object with a resourceType")
        try:
            model_class(item["resourceType"])
        except InvalidRequest as error:
            raise InvalidResource(f"{where}: {error.diagnostics}") from error
        contained_id = item.get("id")
        if not isinstance(contained_id, str) or not contained_id:
            raise InvalidResource(f"{where} has no id, by which the resource refers to it")
        if contained_id in seen:
            raise InvalidResource(f"{where}: the id {contained_id!r} is used by another contained resource")
        seen.add(contained_id)
        if "contained" in item:
            raise InvalidResource(f"{where} contains resources itself, which R4 forbids (dom-2)")
        meta = item.get("meta")
        if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
            raise InvalidResource(f"{where} has a meta.versionId or meta.lastUpdated, which R4 forbids (dom-4)")


def _check_local_references(body: dict[str, Any], resource_type: str) -> None:
    """A reference `#id` names a resource the body contains (R4 ref-1); `#`
    alone, from a contained resource, names the container."""
    contained = body.get("contained")
    ids = {item.get("id") for item in contained if isinstance(item, dict)} if isinstance(contained, list) else set()
    for reference in _references(body):
        if reference.startswith("#") and len(reference) > 1 and reference[1:] not in ids:
            raise InvalidResource(
                f"invalid {resource_type}: the reference {reference[:70]!r} names no contained resource (ref-1)"
            )


def _references(node: Any, inside: bool = False) -> Iterator[str]:
    """The Reference.reference values of a resource and of what it contains,
    not of the resources a Bundle or Parameters carries (each is its own)."""
    if isinstance(node, dict):
        if inside and "resourceType" in node:
            return
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            elif key == "contained" and isinstance(value, list):
                for item in value:
                    yield from _references(item)
            else:
                yield from _references(value, inside=True)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item, inside)


def validated(body: dict[str, Any]) -> dict[str, Any]:
    """`body` itself, once the R4 model and the required bindings accept it.

    For resources this package builds: the body is already the JSON to store,
    and dumping it again through the model would cost more than validating it.
    """
    model = model_class(body["resourceType"]).model_validate(body)
    check_required_bindings(model, body["resourceType"])
    return body


def check_required_bindings(model: BaseModel, path: str) -> None:
    """Raises InvalidResource for a code outside its required value set,
    anywhere in `model`. Only the fields the resource sets are looked at: a
    model class has dozens, most of them left out (None)."""
    model_type = type(model)
    for name in sorted(model.model_fields_set, key=_field_order(model_type).__getitem__):
        value = getattr(model, name)
        if value is None:
            continue
        allowed, alias = _field_binding(model_type, name)
        for item in value if isinstance(value, list) else [value]:
            if allowed is not None and isinstance(item, str) and item not in allowed:
                raise InvalidResource(f"{path}.{alias}: {item!r} is not in the required value set ({', '.join(allowed)})")
            if isinstance(item, BaseModel):
                check_required_bindings(item, f"{path}.{alias}")


@functools.cache
def _field_order(model_type: type[BaseModel]) -> dict[str, int]:
    """Fields in the order the model declares them: the first wrong code is the one reported."""
    return {name: index for index, name in enumerate(model_type.model_fields)}


@functools.cache
def _field_binding(model_type: type[BaseModel], name: str) -> tuple[tuple[str, ...] | None, str]:
    """The codes a field's required binding allows (None: any), and its JSON name."""
    field = model_type.model_fields[name]
    return _allowed_codes(model_type.__name__, name, field.json_schema_extra), field.alias or name


def _allowed_codes(class_name: str, field_name: str, extra: object) -> tuple[str, ...] | None:
    full = _FULL_VALUE_SETS.get((class_name, field_name))
    if full is not None:
        return full
    if (class_name, field_name) in _NOT_A_VALUE_SET:
        return None
    codes = extra.get("enum_values") if isinstance(extra, dict) else None
    if not codes or "+" in codes:
        return None
    return tuple(codes)


def resource_json(model: Resource) -> bytes:
    """The one serialization of a version: computed when written, served as is."""
    return model.model_dump_json().encode()


def resource_dict(model: Resource) -> dict[str, Any]:
    return orjson.loads(resource_json(model))  # type: ignore[no-any-return]


def _describe(error: ValidationError) -> str:
    problems = []
    for issue in error.errors()[:5]:
        location = ".".join(str(part) for part in issue["loc"] if not str(part).startswith("function-"))
        problems.append(f"{location}: {issue['msg']}" if location else issue["msg"])
    more = len(error.errors()) - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
