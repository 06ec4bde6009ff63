"""A small, explicit subset of FHIRPath (FHIR R4 fhirpath.html, over
http://hl7.org/fhirpath/N1) evaluated on a resource's JSON: enough to name
the elements a FHIRPath Patch (R4 fhirpatch.html) changes, and where they
are, so that the patch can change them.

The subset (`SUPPORTED`): a path starts with the resource's type, then
element names (a choice element by its name, `value`, or with its type,
`valueString`), indexers `[n]`, `first()`, `last()` and `where(criteria)`.
Criteria compare a path below the item (or `$this`) with `=` or `!=` to a
string, number or boolean literal, or ask `exists()`; they combine with
`and`, `or` and parentheses. FHIRPath outside it (other functions,
operators, variables) is `NotSupported` (422) naming the part; text that
is no FHIRPath at all is `InvalidRequest` (400).

Elements are looked up in the R4 models, so a name the type does not have
is refused rather than matching nothing.
"""

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from fhir_mappings.elements import Kind, element_kinds
from fhir_mappings.errors import InvalidRequest, InvalidResource, NotSupported

SUPPORTED = (
    "a path from the resource type through element names (choice elements with or without their type),"
    " [n], first(), last(), where(criteria); criteria: path = or != a string, number or boolean literal,"
    " path.exists(), $this, and, or, parentheses"
)
MAX_LENGTH = 1000
MAX_NESTING = 10  # where() within where(), parentheses within parentheses
# The elements the paths of one patch may visit: where() looks below each item
# it filters, once per criterion, so a resource of many items, criteria of many
# terms and a patch of many operations multiply (a 1 MB patch of such paths on
# a 500 kB resource was half an hour of CPU). Past this, evaluation stops.
MAX_VISITS = 1_000_000

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<number>[0-9]+(?:\.[0-9]+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
    | (?P<variable>[$%][A-Za-z_][A-Za-z0-9_]*)
    | (?P<symbol>!=|<=|>=|!~|[.\[\]()=<>~|&+\-*/,])
    )""", re.VERBOSE)
_KEYWORDS = frozenset(("and", "or", "true", "false"))
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


# --- the parsed form ---------------------------------------------------------

@dataclass(frozen=True)
class Member:
    name: str


@dataclass(frozen=True)
class Index:
    index: int


@dataclass(frozen=True)
class Function:
    name: str  # first, last, where, exists
    criteria: "Criteria | None" = None


@dataclass(frozen=True)
class Comparison:
    steps: tuple["Step", ...]  # from the item; () for $this
    equal: bool
    literal: str | Decimal | bool


@dataclass(frozen=True)
class Exists:
    steps: tuple["Step", ...]


@dataclass(frozen=True)
class Junction:
    conjunction: bool  # and, else or
    terms: tuple["Criteria", ...]


Step = Member | Index | Function
Criteria = Comparison | Exists | Junction


@dataclass(frozen=True)
class Path:
    resource_type: str
    steps: tuple[Step, ...]
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Node:
    """An element a path found: its value, and where it is so that it can be
    changed: the object that holds it under `name` (None for the resource
    itself), at `index` where that element repeats."""

    value: Any
    owner: dict[str, Any] | None
    name: str
    index: int | None
    kind: Kind | None  # None: the resource
    model: type | None  # the R4 model of a complex value; None for a primitive
    owner_model: type | None  # the R4 model of `owner`
    of_choice: bool = False  # found by a choice element's name (`value`): of whichever of its types it has


class Budget:
    """How many more elements evaluation may visit, shared by the paths of one patch."""

    def __init__(self, visits: int = MAX_VISITS) -> None:
        self.visits = visits
        self.left = visits

    def spend(self, visits: int) -> None:
        self.left -= visits
        if self.left < 0:
            raise InvalidResource(
                f"finding the elements this patch names visits more than {self.visits} of them: patch a smaller"
                " resource, or in fewer operations"
            )


def parse(text: Any) -> Path:
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("a FHIRPath path must be a non-empty string")
    if len(text) > MAX_LENGTH:
        raise InvalidResource(f"a FHIRPath path here is at most {MAX_LENGTH} characters")
    parser = _Parser(text)
    resource_type = parser.name("the resource type")
    if not re.fullmatch(r"[A-Z][A-Za-z]+", resource_type):
        raise NotSupported(f"the path {text[:100]!r} must start with the resource type (Task.status), here")
    steps = parser.steps(0)
    parser.end()
    return Path(resource_type, steps, text[:200])


# --- parsing -----------------------------------------------------------------

class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text):
            if not text[position:].strip():
                break
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise InvalidRequest(f"{text[:100]!r} is no FHIRPath: nothing can start at {text[position:][:20]!r}")
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise InvalidRequest(f"{self.text[:100]!r} ends too soon")
        self.at += 1
        return token

    def expect(self, symbol: str) -> None:
        kind, value = self.take()
        if (kind, value) != ("symbol", symbol):
            raise InvalidRequest(f"{self.text[:100]!r}: expected {symbol!r}, found {value[:20]!r}")

    def is_symbol(self, symbol: str) -> bool:
        return self.peek() == ("symbol", symbol)

    def end(self) -> None:
        token = self.peek()
        if token is not None:
            self.unsupported(token)

    def unsupported(self, token: tuple[str, str]) -> None:
        kind, value = token
        if kind == "symbol" and value in ".[]()":
            raise InvalidRequest(f"{self.text[:100]!r} is no FHIRPath: {value!r} is out of place")
        raise NotSupported(
            f"the FHIRPath {self.text[:100]!r} uses {value[:40]!r}, outside the subset this server evaluates"
            f" ({SUPPORTED})"
        )

    def name(self, what: str) -> str:
        kind, value = self.take()
        if kind != "name" or value in _KEYWORDS:
            if kind in ("variable", "symbol") and value not in ".[]()":
                self.unsupported((kind, value))
            raise InvalidRequest(f"{self.text[:100]!r}: expected {what}, found {value[:20]!r}")
        return value.strip("`")

    def steps(self, nesting: int) -> tuple[Step, ...]:
        """`.name`, `.function(...)` and `[n]`, as many as follow."""
        steps: list[Step] = []
        while True:
            if self.is_symbol("["):
                self.take()
                kind, value = self.take()
                if kind != "number" or "." in value or len(value) > 9:
                    raise InvalidRequest(f"{self.text[:100]!r}: an indexer takes a whole number, not {value[:20]!r}")
                self.expect("]")
                steps.append(Index(int(value)))
            elif self.is_symbol("."):
                self.take()
                name = self.name("an element or function name")
                steps.append(self.function(name, nesting) if self.is_symbol("(") else Member(name))
            else:
                return tuple(steps)

    def function(self, name: str, nesting: int) -> Function:
        self.expect("(")
        if name in ("first", "last", "exists"):
            self.expect(")")
            return Function(name)
        if name != "where":
            raise NotSupported(
                f"the FHIRPath {self.text[:100]!r} calls {name[:40]}(), outside the subset this server evaluates"
                f" ({SUPPORTED})"
            )
        criteria = self.criteria(nesting + 1)
        self.expect(")")
        return Function("where", criteria)

    def criteria(self, nesting: int) -> "Criteria":
        if nesting > MAX_NESTING:
            raise InvalidResource(f"the FHIRPath {self.text[:100]!r} nests more than {MAX_NESTING} deep")
        terms = [self.conjunction(nesting)]
        while self.peek() == ("name", "or"):
            self.take()
            terms.append(self.conjunction(nesting))
        return terms[0] if len(terms) == 1 else Junction(False, tuple(terms))

    def conjunction(self, nesting: int) -> "Criteria":
        terms = [self.term(nesting)]
        while self.peek() == ("name", "and"):
            self.take()
            terms.append(self.term(nesting))
        return terms[0] if len(terms) == 1 else Junction(True, tuple(terms))

    def term(self, nesting: int) -> "Criteria":
        if self.is_symbol("("):
            self.take()
            inner = self.criteria(nesting + 1)
            self.expect(")")
            return inner
        token = self.peek()
        if token == ("variable", "$this"):
            self.take()
            steps = self.steps(nesting)
        else:
            steps = (Member(self.name("a path")),) + self.steps(nesting)
        if steps and steps[-1] == Function("exists"):
            return Exists(steps[:-1])
        if any(step == Function("exists") for step in steps):
            raise NotSupported(f"the FHIRPath {self.text[:100]!r}: exists() ends a criterion here")
        token = self.peek()
        if token not in (("symbol", "="), ("symbol", "!=")):
            if token is None or token == ("symbol", ")") or token[0] == "name":
                raise NotSupported(
                    f"the FHIRPath {self.text[:100]!r}: a criterion here compares a path (= or !=) or asks exists()"
                )
            self.unsupported(token)
        assert token is not None
        self.take()
        return Comparison(steps, token[1] == "=", self.literal())

    def literal(self) -> str | Decimal | bool:
        kind, value = self.take()
        if kind == "string":
            return _unescaped(value[1:-1], self.text)
        if kind == "number":
            return Decimal(value)
        if kind == "name" and value in ("true", "false"):
            return value == "true"
        if kind == "symbol" and value in ".[]()":
            raise InvalidRequest(f"{self.text[:100]!r}: expected a literal, found {value!r}")
        raise NotSupported(
            f"the FHIRPath {self.text[:100]!r} compares with {value[:40]!r}: only string, number and boolean"
            " literals are supported here"
        )


def _unescaped(literal: str, path: str) -> str:
    """A string literal's text with its escapes (FHIRPath N1 §3.2.2): `\\'`,
    `\\n`, `\\u00e9` and the like. Any other is no FHIRPath: `\\u12` read as
    `u12` would compare with a string the client never wrote."""

    def one(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if len(escaped) == 5:
            return chr(int(escaped[1:], 16))
        if escaped not in _ESCAPES:
            raise InvalidRequest(
                f"{path[:100]!r}: \\{escaped} is no FHIRPath escape (\\' \\\" \\` \\\\ \\/ \\f \\n \\r \\t, or \\u"
                " and four hexadecimal digits)"
            )
        return _ESCAPES[escaped]

    return re.sub(r"\\(u[0-9A-Fa-f]{4}|.)", one, literal)


# --- evaluation ----------------------------------------------------------------

def evaluate(path: Path, resource: dict[str, Any], budget: Budget) -> list[Node]:
    """The elements `path` finds in `resource`, in document order, each one visited spent from `budget`."""
    if path.resource_type != resource.get("resourceType"):
        raise InvalidResource(f"the path {path} starts with {path.resource_type}; the resource is a"
                              f" {resource.get('resourceType')}")
    root = Node(resource, None, path.resource_type, None, None, model_of(resource), None)
    return _walk([root], path.steps, path, budget)


def model_of(resource: Any) -> type | None:
    try:
        return get_fhir_model_class(resource["resourceType"])  # type: ignore[no-any-return]
    except (KeyError, TypeError, ValueError):
        return None


def choice_keys(model: type, name: str) -> list[str]:
    """The JSON names of choice element `name[x]` of `model` (none if it is no choice)."""
    kinds = element_kinds(model)
    if name in kinds:
        return []
    return [key for key, kind in kinds.items()
            if key.startswith(name) and key[len(name):] == type_suffix(kind)]


def type_suffix(kind: Kind) -> str:
    """How a type ends the name of a choice element (`dateTime` in `valueDateTime`)."""
    return kind.type_name[:1].upper() + kind.type_name[1:]


def child_model(kind: Kind, value: Any) -> type | None:
    if kind.primitive:
        return None
    if kind.type_name == "Resource":  # a contained resource: of its own type
        return model_of(value)
    try:
        return get_fhir_model_class(kind.type_name)  # type: ignore[no-any-return]
    except (KeyError, ValueError):
        return None


def _walk(nodes: list[Node], steps: tuple[Step, ...], path: Path, budget: Budget) -> list[Node]:
    for step in steps:
        if isinstance(step, Member):
            nodes = [child for node in nodes for child in _members(node, step.name, path)]
            budget.spend(len(nodes))
        elif isinstance(step, Index):
            nodes = nodes[step.index : step.index + 1]
        elif step.name == "first":
            nodes = nodes[:1]
        elif step.name == "last":
            nodes = nodes[-1:]
        elif step.name == "where":
            assert step.criteria is not None
            nodes = [node for node in nodes if _holds(step.criteria, node, path, budget)]
        else:
            raise InvalidResource(f"the path {path} asks exists(), a boolean, not elements to patch")
    return nodes


def _members(node: Node, name: str, path: Path) -> list[Node]:
    model = node.model if isinstance(node.value, dict) else None  # None: a primitive
    kinds = element_kinds(model) if model is not None else {}
    keys = [name] if name in kinds else choice_keys(model, name) if model is not None else []
    if not keys and node.of_choice:
        # What one type of a choice has, another lacks: `Task.input.value.unit` finds the unit of a
        # valueQuantity and nothing in a valueString (FHIRPath N1 §3, polymorphic items), no error.
        return []
    if model is None:
        raise InvalidResource(
            f"the path {path} goes into {node.name}, a {node.kind.type_name if node.kind else 'value'}, which has"
            " no elements this server patches"
        )
    if not keys:
        raise InvalidResource(f"the path {path}: {node.name} ({model.__name__}) has no element {name[:40]!r}")
    found: list[Node] = []
    for key in keys:
        if key not in node.value:
            continue
        kind, value = kinds[key], node.value[key]
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        found.extend(
            Node(item, node.value, key, index, kind, child_model(kind, item), node.model, key != name)
            for index, item in items
        )
    return found


def _holds(criteria: Criteria, node: Node, path: Path, budget: Budget) -> bool:
    if isinstance(criteria, Junction):
        results = (_holds(term, node, path, budget) for term in criteria.terms)
        return all(results) if criteria.conjunction else any(results)
    budget.spend(1)  # a criterion of `$this` alone visits nothing below it, but is asked of every item
    found = _walk([node], criteria.steps, path, budget)
    if isinstance(criteria, Exists):
        return bool(found)
    # FHIRPath equality (N1 §6.1): an empty side makes = and != empty (false to where); several items
    # equal no single literal, so = is false and != (its converse) true.
    if not found:
        return False
    if len(found) > 1:
        return not criteria.equal
    return _equal(found[0].value, criteria.literal) == criteria.equal


def _equal(value: Any, literal: str | Decimal | bool) -> bool:
    if isinstance(literal, bool) or isinstance(value, bool):
        return value is literal
    if isinstance(literal, Decimal):
        if not isinstance(value, (int, float)):
            return False
        try:
            return Decimal(str(value)) == literal
        except InvalidOperation:
            return False
    return isinstance(value, str) and value == literal
