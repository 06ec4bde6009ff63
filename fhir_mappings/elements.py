"""What the R4 models say of the elements of each type: the FHIR type of
each, whether it repeats, whether it is a primitive. Worked out once per
model: fhir_core's type lookup is far slower than reading the answer."""

from dataclasses import dataclass
from functools import cache

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.utils import determine_version_prefix, get_fhir_type_name, is_list_type, is_primitive_type


@dataclass(frozen=True)
class Kind:
    """What the R4 models say of an element."""

    type_name: str  # a FHIR type: "string", "Quantity", "Resource", "xhtml"
    repeats: bool
    primitive: bool


ELEMENT = get_fhir_model_class("Element")  # what a primitive carries beside its value: id and extensions
# fhir_core's key for the R4B models' types (its pattern reads R4B as R4).
_TYPE_PREFIX = determine_version_prefix(ELEMENT.__module__)


@cache
def element_kinds(model: type) -> dict[str, Kind]:
    """A model's elements by their FHIR name (`valueQuantity`, `class`)."""
    fields = {alias: model.model_fields[name] for alias, name in model.get_alias_mapping().items()  # type: ignore[attr-defined]
              if alias != "resourceType"}
    return {
        alias: Kind(get_fhir_type_name(field, prefix=_TYPE_PREFIX), is_list_type(field), is_primitive_type(field))
        for alias, field in fields.items()
    }
