"""An operation's input sent by POST as a Parameters resource (R4
operations.html#request), read as the name=value pairs the same operation
takes in a GET URL, so that both forms are one request to the operation."""

from typing import Any

from fhir_mappings.errors import InvalidRequest


def named_parameters(body: Any, operation: str) -> list[dict[str, Any]]:
    """The parameters of a Parameters resource, each a JSON object with a name."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequest(f"a POST to {operation} takes a Parameters resource")
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise InvalidRequest("Parameters.parameter must be a list")
    for parameter in parameters:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise InvalidRequest("each Parameters.parameter needs a name")
    return parameters


def parameter_pairs(body: Any, operation: str) -> list[tuple[str, str]]:
    """(name, value) for each parameter of a Parameters resource whose values
    are primitives; one with a resource or parts is refused, as no parameter
    of the operations that take this form has them."""
    pairs = []
    for parameter in named_parameters(body, operation):
        name = parameter["name"]
        values = [(key, value) for key, value in parameter.items() if key.startswith("value")]
        if "resource" in parameter or "part" in parameter or len(values) != 1:
            raise InvalidRequest(f"parameter {name[:64]!r} of {operation} takes one primitive value[x]")
        key, value = values[0]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise InvalidRequest(f"parameter {name[:64]!r} of {operation} takes a primitive {key}, not an element")
        pairs.append((name, text))
    return pairs
