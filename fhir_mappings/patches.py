"""The patch formats this server applies (R4 http.html#patch): JSON Patch
(RFC 6902, json_patch.py) and FHIRPath Patch (R4 fhirpatch.html,
fhirpath_patch.py). A body is parsed, and refused if it is malformed, before
the resource is looked up; what it becomes is a `Patch`: the current
resource's JSON in, the patched JSON out, which the patch interaction then
writes as an update whatever the format."""

from collections.abc import Callable
from typing import Any

from fhir_mappings import fhirpath_patch, json_patch

Patch = Callable[[Any], Any]


def json_patch_of(body: Any) -> Patch:
    operations = json_patch.parse_patch(body)
    return lambda document: json_patch.apply_patch(document, operations)


def fhirpath_patch_of(body: Any) -> Patch:
    operations = fhirpath_patch.parse_parameters(body)
    return lambda document: fhirpath_patch.apply_operations(document, operations)


def is_fhirpath_patch(resource: Any) -> bool:
    """Whether a PATCH entry of a Bundle carries a FHIRPath Patch: a
    Parameters resource, as R4 fhirpatch.html has it sent (a JSON Patch comes
    in a Binary)."""
    return isinstance(resource, dict) and resource.get("resourceType") == "Parameters"
