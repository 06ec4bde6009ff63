"""OperationOutcome bodies (FHIR R4 operationoutcome.html)."""

from typing import Any


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """`code` from the R4 ValueSet issue-type; `diagnostics` says what to do about it."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
