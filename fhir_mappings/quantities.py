"""FHIR R4 Quantity values in UCUM (datatypes.html#Quantity, "Coded Quantities")."""

import math

UCUM = "http://unitsofmeasure.org"
# Measurements are computed in float; three decimals keep what a voxel grid
# can resolve and make a republished result byte-identical to the first.
_DECIMALS = 3


def ucum_quantity(value: float, unit: str) -> dict[str, object]:
    """A Quantity whose unit is a UCUM code, shown as itself."""
    if not math.isfinite(value):
        raise ValueError(f"a FHIR decimal must be finite, got {value!r} {unit}")
    return {"value": round(value, _DECIMALS), "unit": unit, "system": UCUM, "code": unit}
