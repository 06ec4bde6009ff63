"""FHIRPath Patch (FHIR R4 fhirpatch.html): a Parameters resource whose
`operation` parameters each add, insert, delete, replace or move one
element, named by a FHIRPath (fhirpath.py's subset).

Pure, as json_patch.py is, with its split of errors: a Parameters that is no
FHIRPath Patch (an operation without its type or path, a part it does not
take, a path that is no FHIRPath) is `InvalidRequest` (400), found before the
resource is looked up; one that cannot be applied to this resource (a path
that matches nothing where it must match one, or several, a value of the
wrong type for its place, FHIRPath outside the subset) is `InvalidResource`
(422). One operation that fails fails the whole patch.

R4's rules: every path names a single element, except a delete's, which
deletes nothing when it matches nothing; `add` appends to a repeating
element and adds a single one only where it is not yet there; `insert` and
`move` work in the list their path names (`Task.input`), at 0-based
indices; values come as `value[x]` of the element's type, or as `part`s,
one per element, for a complex value (a backbone element).
"""

from dataclasses import dataclass
from typing import Any

from fhir_mappings import fhirpath
from fhir_mappings.elements import Kind, element_kinds
from fhir_mappings.errors import InvalidRequest, InvalidResource
from fhir_mappings.json_patch import MAX_DEPTH, deep_copy

# What each type takes besides `type` (fhirpatch.html's table), the first ones required.
_PARTS: dict[str, tuple[str, ...]] = {
    "add": ("path", "name", "value"), "insert": ("path", "value", "index"), "delete": ("path",),
    "replace": ("path", "value"), "move": ("path", "source", "destination"),
}
_INTEGERS = ("index", "source", "destination")
# Each operation finds its elements anew, as much work as the resource is
# large: a body of small operations would otherwise buy a great deal of it.
MAX_OPERATIONS = 1000
# Primitive types and the one each specialises (R4 datatypes.html#primitive):
# a value of the general type fits where the special one is (`valueString`
# for a code), since validation of the result then holds it to the rules of
# the special one (a code's pattern, say). Nothing else is converted.
_GENERALISED = {
    "Code": "String", "Id": "String", "Markdown": "String",
    "Url": "Uri", "Canonical": "Uri", "Oid": "Uri", "Uuid": "Uri",
    "UnsignedInt": "Integer", "PositiveInt": "Integer",
}


@dataclass(frozen=True)
class Value:
    """An operation's value: `type` and `content` of a `value[x]` (`String`,
    "text"), or `parts`, each an element's name and value."""

    type: str | None
    content: Any
    parts: tuple[tuple[str, "Value"], ...] = ()


@dataclass(frozen=True)
class Operation:
    type: str
    path: fhirpath.Path
    name: str | None
    value: Value | None
    index: int | None
    source: int | None
    destination: int | None

    def __str__(self) -> str:
        return f"{self.type} {self.path}" + (f" {self.name}" if self.name else "")


def parse_parameters(body: Any) -> list[Operation]:
    """The operations of a FHIRPath Patch, or InvalidRequest (400)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequest(
            "a FHIRPath Patch is a Parameters resource (a JSON Patch is sent as application/json-patch+json)"
        )
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise InvalidRequest("Parameters.parameter must be an array")
    if len(parameters) > MAX_OPERATIONS:
        raise InvalidResource(f"a FHIRPath Patch here has at most {MAX_OPERATIONS} operations")
    return [_operation(position, parameter) for position, parameter in enumerate(parameters)]


def apply_operations(document: Any, operations: list[Operation]) -> Any:
    """`document` (left as it was) with `operations` applied in order."""
    result, budget = deep_copy(document)[0], fhirpath.Budget()
    for position, operation in enumerate(operations):
        try:
            _apply(result, operation, budget)
        except InvalidResource as error:
            where = f"FHIRPath Patch operation {position} ({operation})"
            error.diagnostics = f"{where} cannot be applied: {error.diagnostics}"
            raise
    if _depth(result) > MAX_DEPTH:
        raise InvalidResource(f"the FHIRPath Patch would nest the resource more than {MAX_DEPTH} deep")
    return result


# --- parsing -----------------------------------------------------------------

def _operation(position: int, parameter: Any) -> Operation:
    where = f"FHIRPath Patch parameter {position}"
    if not isinstance(parameter, dict) or parameter.get("name") != "operation":
        raise InvalidRequest(f"{where}: a FHIRPath Patch has only parameters named 'operation'")
    parts = parameter.get("part")
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        raise InvalidRequest(f"{where}: an operation's parts are an array of parameters")
    named: dict[str, dict[str, Any]] = {}
    for part in parts:
        name = part.get("name")
        if not isinstance(name, str) or name in named:
            raise InvalidRequest(f"{where}: each part has a name, and names one thing once ({str(name)[:40]!r})")
        named[name] = part
    kind = named.get("type", {}).get("valueCode")
    if not isinstance(kind, str) or kind not in _PARTS:  # a list or an object is no key to look up
        raise InvalidRequest(f"{where}: its type (valueCode) is one of {', '.join(_PARTS)}, not {str(kind)[:40]!r}")
    for name in named:
        if name != "type" and name not in _PARTS[kind]:
            raise InvalidRequest(f"{where}: a {kind} takes no part {name[:40]!r}")
    for name in _PARTS[kind]:
        if name not in named:
            raise InvalidRequest(f"{where}: a {kind} needs a part {name!r}")
    try:
        path = fhirpath.parse(_string(where, named["path"], "path"))
    except (InvalidRequest, InvalidResource) as error:
        error.diagnostics = f"{where}: {error.diagnostics}"
        raise
    element = _string(where, named["name"], "name") if "name" in named else None
    integers = {name: _integer(where, named[name], name) if name in named else None for name in _INTEGERS}
    value = _value(f"{where}: value", named["value"], 0) if "value" in named else None
    return Operation(kind, path, element, value, integers["index"], integers["source"], integers["destination"])


def _string(where: str, part: dict[str, Any], name: str) -> str:
    value = part.get("valueString")
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{where}: its {name} is a valueString")
    return value


def _integer(where: str, part: dict[str, Any], name: str) -> int:
    value = part.get("valueInteger")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise InvalidRequest(f"{where}: its {name} is a valueInteger of 0 or more")
    return value


def _value(where: str, part: dict[str, Any], depth: int) -> Value:
    """A `value[x]`, or `part`s, each an element of the complex value."""
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"{where}: its parts nest more than {MAX_DEPTH} deep")
    typed = [key for key in part if key.startswith("value") and key[5:6].isupper()]
    extended = [key for key in part if key.startswith("_value")]
    if extended:
        raise InvalidResource(f"{where}: {extended[0][:40]} (a value's id or extensions) is not supported here")
    if "part" in part:
        if typed or not isinstance(part["part"], list) or not part["part"]:
            raise InvalidRequest(f"{where}: a value is one value[x], or parts (not both)")
        elements = []
        for index, item in enumerate(part["part"]):
            inner = f"{where}.part[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
                raise InvalidRequest(f"{inner}: a part of a value is named for its element")
            elements.append((item["name"], _value(inner, item, depth + 1)))
        return Value(None, None, tuple(elements))
    if len(typed) != 1:
        raise InvalidRequest(f"{where}: a value is one value[x] (valueString, valueCoding, ...) or parts")
    return Value(typed[0][5:], part[typed[0]])


# --- applying ------------------------------------------------------------------

def _apply(document: dict[str, Any], operation: Operation, budget: fhirpath.Budget) -> None:
    if operation.type == "delete":
        found = fhirpath.evaluate(operation.path, document, budget)
        if found:  # R4: deleted if found
            _remove(_within(_single(found, operation), operation))
        return
    if operation.type in ("insert", "move"):
        _in_list(document, operation, budget)
        return
    target = _single(fhirpath.evaluate(operation.path, document, budget), operation)
    assert operation.value is not None
    if operation.type == "replace":
        _replace(_within(target, operation), operation.value)
        return
    assert operation.name is not None
    if target.model is None or not isinstance(target.value, dict):
        raise InvalidResource(f"{target.name} is a primitive, to which no element is added")
    key, kind = _element(target.model, operation.name, operation.value)
    content = _content(operation.value, kind, key)
    if kind.repeats:
        items = target.value.setdefault(key, [])
        extensions = _extensions(target.value, key, len(items))
        items.append(content)
        if extensions is not None:
            extensions.append(None)
        return
    taken = fhirpath.choice_keys(target.model, operation.name) or [key]
    if any(present in target.value for present in taken):
        raise InvalidResource(f"{operation.name} is there already, and does not repeat: replace changes it")
    target.value[key] = content


def _single(found: list[fhirpath.Node], operation: Operation) -> fhirpath.Node:
    if len(found) != 1:
        raise InvalidResource(
            f"the path matches {'nothing' if not found else f'{len(found)} elements'}; {operation.type} needs it"
            " to match exactly one"
        )
    return found[0]


def _within(target: fhirpath.Node, operation: Operation) -> fhirpath.Node:
    """An element of the resource, not the resource itself, which a patch may add to but not replace or delete."""
    if target.owner is None:
        raise InvalidResource(f"{operation.type} of the whole resource is no patch; name an element in it")
    return target


def _in_list(document: dict[str, Any], operation: Operation, budget: fhirpath.Budget) -> None:
    """insert and move: the path names a list, `Task.input`; found through
    its owner, so that an empty list can be inserted into."""
    last = operation.path.steps[-1:]
    if not last or not isinstance(last[0], fhirpath.Member):
        raise InvalidResource(f"a {operation.type}'s path ends with the name of the list (Task.input)")
    owner_path = fhirpath.Path(operation.path.resource_type, operation.path.steps[:-1], operation.path.text)
    owners = fhirpath.evaluate(owner_path, document, budget)
    if len(owners) != 1 or owners[0].model is None or not isinstance(owners[0].value, dict):
        raise InvalidResource(f"the path must name one list, in one element; it is in {len(owners)}")
    owner, name = owners[0], last[0].name
    kind = element_kinds(owner.model).get(name)
    if kind is None or not kind.repeats:
        raise InvalidResource(f"{name[:40]!r} is no repeating element of {owner.name}")
    items: list[Any] = owner.value.get(name, [])
    if operation.type == "insert":
        assert operation.value is not None and operation.index is not None
        if operation.index > len(items):
            raise InvalidResource(f"index {operation.index} is past the end of the list ({len(items)} items)")
        extensions = _extensions(owner.value, name, len(items))
        items.insert(operation.index, _content(operation.value, kind, name))
        owner.value[name] = items
        if extensions is not None:
            extensions.insert(operation.index, None)
        return
    assert operation.source is not None and operation.destination is not None
    if max(operation.source, operation.destination) >= len(items):
        raise InvalidResource(f"the list has {len(items)} items, numbered from 0")
    extensions = _extensions(owner.value, name, len(items))
    items.insert(operation.destination, items.pop(operation.source))
    if extensions is not None:
        extensions.insert(operation.destination, extensions.pop(operation.source))


def _replace(target: fhirpath.Node, value: Value) -> None:
    assert target.owner is not None and target.kind is not None
    key, kind = target.name, target.kind
    if value.type is not None and value.type != fhirpath.type_suffix(kind) and target.index is None:
        # Another type of the same choice element (valueString to valueQuantity).
        key, kind = _other_choice(target, value.type)
    content = _content(value, kind, key)
    if target.index is not None:
        target.owner[key][target.index] = content
        return
    if key != target.name:
        _drop(target.owner, target.name)
    target.owner[key] = content


def _other_choice(target: fhirpath.Node, value_type: str) -> tuple[str, Kind]:
    assert target.owner is not None and target.kind is not None
    base = target.name.removesuffix(fhirpath.type_suffix(target.kind))
    model = target.owner_model
    if model is not None and f"{base}{value_type}" in fhirpath.choice_keys(model, base):
        return f"{base}{value_type}", element_kinds(model)[f"{base}{value_type}"]
    return target.name, target.kind  # the type is then refused by _content, naming the one expected


def _element(model: type, name: str, value: Value) -> tuple[str, Kind]:
    """The JSON name and kind of the element an add names in `model`: a
    choice element's by the type of its value."""
    kinds = element_kinds(model)
    if name in kinds:
        return name, kinds[name]
    choices = fhirpath.choice_keys(model, name)
    if choices:
        key = f"{name}{value.type}"
        if value.type is None or key not in choices:
            allowed = ", ".join(choices)
            raise InvalidResource(f"{name} is a choice of {allowed[:300]}; the value is {value.type or 'parts'}")
        return key, kinds[key]
    raise InvalidResource(f"{model.__name__} has no element {name[:40]!r}")


def _content(value: Value, kind: Kind, key: str) -> Any:
    """The JSON the value is at an element of `kind` (named `key`), or why it does not fit there."""
    expected = fhirpath.type_suffix(kind)
    if value.type is not None:
        if value.type not in (expected, _GENERALISED.get(expected)):
            raise InvalidResource(f"{key} takes a {kind.type_name}, not a value{value.type}")
        return deep_copy(value.content)[0]
    model = fhirpath.child_model(kind, None) if kind.type_name != "Resource" else None
    if model is None:
        raise InvalidResource(f"{key} is a {kind.type_name}: its value is a value{expected}, not parts")
    content: dict[str, Any] = {}
    for name, inner in value.parts:
        inner_key, inner_kind = _element(model, name, inner)
        if inner_kind.repeats:
            content.setdefault(inner_key, []).append(_content(inner, inner_kind, inner_key))
        elif inner_key in content:
            raise InvalidResource(f"{key}.{inner_key} does not repeat; the value has it twice")
        else:
            content[inner_key] = _content(inner, inner_kind, inner_key)
    return content


def _remove(target: fhirpath.Node) -> None:
    """An element, and with it its id and extensions where it is a primitive (`_status`)."""
    assert target.owner is not None
    owner, name = target.owner, target.name
    if target.index is None:
        _drop(owner, name)
        return
    extensions = _extensions(owner, name, len(owner[name]))
    del owner[name][target.index]
    if extensions is not None:
        del extensions[target.index]
    if not owner[name]:  # FHIR JSON has no empty arrays
        _drop(owner, name)


def _drop(owner: dict[str, Any], name: str) -> None:
    """An element, with the id and extensions it has as a primitive (`_status`, R4 json.html#primitive)."""
    del owner[name]
    owner.pop(f"_{name}", None)


def _extensions(owner: dict[str, Any], name: str, length: int) -> list[Any] | None:
    """A repeating primitive's ids and extensions (`_given`, R4 json.html#primitive),
    item by item beside its `length` values, which must move as they do."""
    extensions = owner.get(f"_{name}")
    return extensions if isinstance(extensions, list) and len(extensions) == length else None


def _depth(value: Any) -> int:
    deepest, pending = 0, [(value, 0)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
