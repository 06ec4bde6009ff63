"""JSON Patch (RFC 6902), its paths JSON Pointers (RFC 6901), applied to a
resource's JSON for the FHIR R4 patch interaction (http.html#patch).

Pure: a document and a patch in, a new document out; neither is changed.
Errors follow RFC 5789 §2.2, which RFC 6902 §5 points to: a document that
is no JSON Patch (not an array of operation objects, an unknown `op`, a
member missing or not a string, a pointer that is no pointer) is malformed,
`InvalidRequest` (400); a well-formed patch that cannot be applied to this
resource (a location that is not there, an array index out of range, a
`test` that fails) is an unprocessable request, `InvalidResource` (422).
Every operation is checked (`parse_patch`) before any is applied, and before
the resource is looked up: a malformed patch is 400 whatever it would patch.
One operation that fails fails the whole patch (RFC 6902 §5).
"""

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_mappings.errors import InvalidRequest, InvalidResource

MEDIA_TYPE = "application/json-patch+json"
# The members each operation needs besides `op` (RFC 6902 §4.1-§4.6).
_MEMBERS = {
    "add": ("path", "value"), "remove": ("path",), "replace": ("path", "value"),
    "move": ("from", "path"), "copy": ("from", "path"), "test": ("path", "value"),
}
# An array index (RFC 6901 §4): no leading zeros, no sign.
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
_MISSING = object()
# As deep as a FHIR body may nest (server/fhir/negotiation.py MAX_NESTING):
# an add or copy at the deepest place, again and again, nested the result
# past what the code after it (references, validation) recurses through.
MAX_DEPTH = 100
# Each copy may copy what the one before made: 30 ops of a few bytes each
# doubled a resource to 2^30 times its size; and each move of a large part
# back and forth costs that part's size. A JSON Patch edits a resource: a
# megabyte copied or moved is far beyond what one moves in an edit.
MAX_COPIED = 1_000_000


@dataclass(frozen=True)
class Operation:
    op: str
    path: tuple[str, ...]
    source: tuple[str, ...] | None  # `from`, of move and copy
    value: Any
    text: str  # as the client wrote it, for error messages

    def __str__(self) -> str:
        return self.text


def parse_patch(patch: Any) -> list[Operation]:
    """The operations of a JSON Patch document, or InvalidRequest (400)."""
    if not isinstance(patch, list):
        raise InvalidRequest(f"a JSON Patch ({MEDIA_TYPE}) is an array of operations, not a {_kind(patch)}")
    return [_operation(position, operation) for position, operation in enumerate(patch)]


def binary_patch(resource: Any) -> bytes:
    """The JSON Patch a batch or transaction entry carries: in a Binary of
    contentType application/json-patch+json, its data base64 (R4 has an
    entry's resource be a resource, and a JSON Patch is none)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise InvalidRequest(
            f"a PATCH entry's resource is a Parameters resource (a FHIRPath Patch) or a Binary holding a JSON Patch"
            f" ({MEDIA_TYPE})"
        )
    if resource.get("contentType") != MEDIA_TYPE:
        raise InvalidRequest(f"a PATCH entry's Binary must have contentType {MEDIA_TYPE}")
    data = resource.get("data")
    try:
        return base64.b64decode(data if isinstance(data, str) else "", validate=True) if data else b""
    except (binascii.Error, ValueError) as error:
        raise InvalidRequest(f"a PATCH entry's Binary.data is not base64: {error}") from error


def apply_patch(
    document: Any, operations: Sequence[Operation], max_depth: int = MAX_DEPTH, max_copied: int = MAX_COPIED
) -> Any:
    """`document` with `operations` (of `parse_patch`) applied in order: none
    may nest it deeper than `max_depth`, nor may its copies and moves add up
    to more than `max_copied` (a node and the characters of its strings each
    count 1)."""
    result, _ = deep_copy(document)
    copier = _Copier(max_copied)
    for position, operation in enumerate(operations):
        try:
            result = _apply(result, operation, copier, max_depth)
        except _Unprocessable as error:
            raise InvalidResource(f"JSON Patch operation {position} ({operation}) cannot be applied: {error}") from None
    return result


class _Unprocessable(Exception):
    pass


def _operation(position: int, operation: Any) -> Operation:
    where = f"JSON Patch operation {position}"
    if not isinstance(operation, dict):
        raise InvalidRequest(f"{where} must be an object, not a {_kind(operation)}")
    op = operation.get("op")
    if not isinstance(op, str) or op not in _MEMBERS:  # an array or object as `op` cannot be looked up
        raise InvalidRequest(f"{where} has op {str(op)[:40]!r}; RFC 6902 defines {', '.join(_MEMBERS)}")
    for member in _MEMBERS[op]:
        if member not in operation:
            raise InvalidRequest(f"{where} ({op}) needs {member!r}")
    path = _pointer(where, "path", operation["path"])
    source = _pointer(where, "from", operation["from"]) if "from" in _MEMBERS[op] else None
    if op == "move" and source is not None and path[: len(source)] == source and path != source:
        raise InvalidRequest(f"{where} moves {operation['from']!r} into itself ({operation['path']!r})")
    text = f"{op} {operation['path']}" + (f" from {operation['from']}" if source is not None else "")
    return Operation(op, path, source, operation.get("value"), text[:200])


def _pointer(where: str, member: str, text: Any) -> tuple[str, ...]:
    """The reference tokens of a JSON Pointer (RFC 6901 §3, §4): `~1` is `/`, `~0` is `~`."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}: {member} must be a JSON Pointer string, not a {_kind(text)}")
    if text == "":
        return ()
    if not text.startswith("/") or re.search(r"~(?![01])", text):
        raise InvalidRequest(
            f"{where}: {member} {text[:100]!r} is not a JSON Pointer (it starts with /; ~ only as ~0 or ~1)"
        )
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in text[1:].split("/"))


def _apply(document: Any, operation: Operation, copier: "_Copier", max_depth: int) -> Any:
    if operation.op == "test":
        found = _get(document, operation.path)
        if not _equal(found, operation.value):
            raise _Unprocessable("the value there is not the one the test names")
        return document
    if operation.op == "remove":
        return _remove(document, operation.path)
    if operation.op in ("add", "replace"):
        value, depth = deep_copy(operation.value)  # the patch's own, as large as its body
    else:
        assert operation.source is not None
        value, depth = copier.clone(_get(document, operation.source))  # a move's too: each costs what it carries
    if len(operation.path) + depth > max_depth:
        raise _Unprocessable(f"it would nest the resource more than {max_depth} deep")
    if operation.op == "replace":
        _get(document, operation.path)  # the target must exist (§4.3)
        return _add(_remove(document, operation.path), operation.path, value, replacing=True)
    if operation.op == "move":
        if operation.source == operation.path:
            return document
        document = _remove(document, operation.source)
    return _add(document, operation.path, value)


def _get(document: Any, path: tuple[str, ...]) -> Any:
    node = document
    for depth, token in enumerate(path):
        node = _child(node, token, _shown(path[: depth + 1]))
    return node


def _child(node: Any, token: str, shown: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise _Unprocessable(f"{shown} is not there")
        return node[token]
    if isinstance(node, list):
        return node[_index(node, token, shown, len(node) - 1)]
    raise _Unprocessable(f"{shown} goes into a {_kind(node)}, which has no members")


def _index(array: list[Any], token: str, shown: str, last: int) -> int:
    if not _INDEX.fullmatch(token):
        raise _Unprocessable(f"{shown}: {token[:40]!r} is not an array index")
    index = int(token)
    if index > last:
        raise _Unprocessable(f"{shown}: the array has {len(array)} items")
    return index


def _add(document: Any, path: tuple[str, ...], value: Any, replacing: bool = False) -> Any:
    """§4.1: the whole document replaced, a member set, or an item inserted
    (`-`: appended). `replacing`: back where `remove` took the old value from."""
    if not path:
        return value
    parent, token, shown = _get(document, path[:-1]), path[-1], _shown(path)
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        at = len(parent) if token == "-" and not replacing else _index(parent, token, shown, len(parent))
        parent.insert(at, value)
    else:
        raise _Unprocessable(f"{_shown(path[:-1]) or 'the document'} is a {_kind(parent)}, which takes no members")
    return document


def _remove(document: Any, path: tuple[str, ...]) -> Any:
    if not path:
        return None  # the whole document, which `replace` puts back; `remove` of it leaves no resource
    parent, token = _get(document, path[:-1]), path[-1]
    _child(parent, token, _shown(path))  # there, or why not
    if isinstance(parent, dict):
        del parent[token]
    else:
        del parent[int(token)]
    return document


def _equal(left: Any, right: Any) -> bool:
    """RFC 6902 §4.6: of one JSON type and equal; numbers by value (1.0 is 1,
    1.10 is 1.1), as written: a decimal wider than a float's 17 digits is
    compared whole, not as the float it rounds to. In Python true == 1,
    which JSON does not have."""
    if isinstance(left, bool) or isinstance(right, bool) or left is None or right is None:
        return left is right
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return Decimal(str(left)) == Decimal(str(right))  # str: a WrittenDecimal's text, a float's shortest form
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_equal(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_equal(a, b) for a, b in zip(left, right))
    return isinstance(left, str) and isinstance(right, str) and left == right


def deep_copy(value: Any) -> tuple[Any, int]:
    """A deep copy of JSON, and its depth (a scalar 0, a container 1 more than its deepest item)."""
    return _Copier(None).clone(value)


class _Copier:
    """Deep copies, each with its depth (a scalar 0, a container 1 more than
    its deepest item), counted against `limit` (None: not counted)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.copied = 0

    def clone(self, value: Any) -> tuple[Any, int]:
        if self.limit is not None:
            self.copied += 1 + (len(value) if isinstance(value, str) else 0)
            if self.copied > self.limit:
                raise _Unprocessable(f"its copies and moves add up to more than {self.limit} nodes and characters")
        if isinstance(value, dict):
            copies = {self.clone(key)[0]: self.clone(item) for key, item in value.items()}
            return {key: item for key, (item, _) in copies.items()}, 1 + max((d for _, d in copies.values()), default=0)
        if isinstance(value, list):
            items = [self.clone(item) for item in value]
            return [item for item, _ in items], 1 + max((depth for _, depth in items), default=0)
        return value, 0  # scalars (decimals that keep their text among them) are shared: they never change


def _shown(path: tuple[str, ...]) -> str:
    return "".join("/" + token.replace("~", "~0").replace("/", "~1") for token in path)[:200]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", type(None): "null"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), "number")
