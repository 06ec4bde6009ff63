"""FHIR R4's uuid type (datatypes.html#uuid) in the R4B models.

fhir_core types every uuid element as pydantic's UUID4: the models refuse a
valid R4 uuid of any version but 4 (a time-based version 1 one, say), and
take forms R4 does not allow (no `urn:uuid:`, capitals, braces), rewriting
them. R4 takes any RFC 4122 UUID written as a lower-case URN, by the regex
below, and the value is kept as sent. `use_r4_uuids` gives the models' uuid
elements that type; `fhir_mappings.resources` calls it once, as it is
imported, before any resource can be validated.
"""

import copy
import importlib
import re
from typing import Annotated

from fhir_core.types import FHIR_PRIMITIVES_MAPS
from pydantic import StringConstraints

R4_UUID_PATTERN = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
R4_UUID = Annotated[str, StringConstraints(pattern=f"^{R4_UUID_PATTERN.pattern}$")]

# The uuid elements of the R4B models, by module and model: every one that
# fhir.resources 8.3 types UUID4 (tests/test_fhir_models.py checks that none is left).
_UUID_ELEMENTS = {
    ("elementdefinition", "ElementDefinition"): ("defaultValueUuid", "fixedUuid", "patternUuid"),
    ("elementdefinition", "ElementDefinitionExample"): ("valueUuid",),
    ("extension", "Extension"): ("valueUuid",),
    ("parameters", "ParametersParameter"): ("valueUuid",),
    ("structuremap", "StructureMapGroupRuleSource"): ("defaultValueUuid",),
    ("task", "TaskInput"): ("valueUuid",),
    ("task", "TaskOutput"): ("valueUuid",),
}


def use_r4_uuids() -> None:
    # Still a uuid to fhir_core's type lookup, which the XML reader and the link walk go by.
    FHIR_PRIMITIVES_MAPS[R4_UUID] = "uuid"
    for (module, name), fields in _UUID_ELEMENTS.items():
        model = getattr(importlib.import_module(f"fhir.resources.R4B.{module}"), name)
        for field in fields:
            retyped = copy.copy(model.model_fields[field])
            retyped.annotation = R4_UUID | None
            model.model_fields[field] = retyped
        model.model_rebuild(force=True)
