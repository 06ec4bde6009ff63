"""`_summary` and `_elements`: subsets of a resource (FHIR R4 search.html#summary).

A subset keeps the elements asked for, the resource's mandatory top-level
elements (so that it still validates) and `id` and `meta`, and is marked
with the SUBSETTED tag as the spec requires.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

from fhir_mappings import fhir_json
from fhir_mappings.resources import model_class
from fhir_mappings.search_query import Summary

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS = frozenset(("resourceType", "id", "meta"))


@dataclass(frozen=True)
class _Elements:
    """What subsetting needs to know of a type's elements, as JSON names."""

    summary: frozenset[str]
    mandatory: frozenset[str]
    # Each variant of a choice element, with the name it is asked for by: valueQuantity -> value.
    choices: Mapping[str, str]


@cache
def _elements_of(resource_type: str) -> _Elements:
    summary, mandatory, choices = set(), set(), {}
    for name, field in model_class(resource_type).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        json_name = field.alias or name
        if extra.get("summary_element_property"):
            summary.add(json_name)
        if field.is_required() or extra.get("element_required"):
            mandatory.add(json_name)
        if isinstance(extra.get("one_of_many"), str):
            choices[json_name] = extra["one_of_many"]
    return _Elements(frozenset(summary), frozenset(mandatory), MappingProxyType(choices))


def subset(resource: dict[str, Any], summary: Summary, elements: tuple[str, ...]) -> dict[str, Any]:
    """The resource as `_summary`/`_elements` ask; unchanged when neither does."""
    known = _elements_of(resource["resourceType"])
    summary_names, mandatory = known.summary, known.mandatory
    if elements:
        keep = set(elements) | mandatory | _ALWAYS
        # A choice element is asked for by its base name (value for valueQuantity); an element that merely
        # starts with an asked-for name (statusReason, conclusionCode) is another element.
        result = {
            key: value for key, value in resource.items()
            if key.lstrip("_") in keep or known.choices.get(key.lstrip("_")) in keep
        }
    elif summary is Summary.TRUE:
        result = {key: value for key, value in resource.items() if key.lstrip("_") in summary_names | mandatory | _ALWAYS}
    elif summary is Summary.TEXT:
        result = {key: value for key, value in resource.items() if key in mandatory | _ALWAYS | {"text"}}
    elif summary is Summary.DATA:
        result = {key: value for key, value in resource.items() if key != "text"}
    else:
        return resource
    meta = dict(result.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    result["meta"] = meta
    return result


def subset_json(body: bytes, summary: Summary, elements: tuple[str, ...]) -> bytes:
    """`subset` of stored JSON; the bytes themselves when nothing is asked."""
    if summary is Summary.FALSE and not elements:
        return body
    return fhir_json.dumps(subset(fhir_json.loads(body), summary, elements))
