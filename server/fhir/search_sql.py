"""FHIR search conditions as SQL (the visitor half of STYLE 6).

Every condition becomes `id [NOT] IN (rows of the index table of its
parameter type)`, so AND, OR, :not, :missing and chains compose freely. Sort keys over index values are scalar subqueries (lowest
value ascending, highest descending, FHIR R4 search.html#sort), always
followed by the logical id, which makes the order total and keyset paging
exact.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    String,
    and_,
    case,
    false,
    func,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import KeyedColumnElement
from sqlalchemy.sql.functions import FunctionElement

from fhir_mappings.search_parameters import ParamType, SearchParameter
from fhir_mappings.search_query import (
    Condition,
    DateValue,
    QuantityValue,
    ReferenceValue,
    SortKey,
    StringMode,
    StringValue,
    TokenValue,
)
from server.fhir.visibility import Visibility
from server.tables import (
    INDEX_WIDTH,
    equality_key,
    fhir_dates,
    fhir_quantities,
    fhir_references,
    fhir_resources,
    fhir_strings,
    fhir_tokens,
)

_TABLES = {
    ParamType.TOKEN: fhir_tokens,
    ParamType.STRING: fhir_strings,
    ParamType.DATE: fhir_dates,
    ParamType.REFERENCE: fhir_references,
    ParamType.QUANTITY: fhir_quantities,
    ParamType.URI: fhir_tokens,
}
_SORT_COLUMNS = {
    ParamType.TOKEN: "code",
    ParamType.STRING: "normalised",
    ParamType.DATE: "low",
    ParamType.QUANTITY: "value",
    ParamType.URI: "code",
}


# The resources a search returns, and those a chain looks at. Built once:
# an alias is immutable, and making one costs more than compiling the query.
RESOURCES = fhir_resources.alias("r")
COUNTED = fhir_resources.alias("c")
# Types that reading adds to: each request is recorded as an AuditEvent, in
# the compartment of each patient it read. Paged past its first page, a
# search of them sees only the rows there were then (`records_so_far`): else
# a client paging one at a time reads, on each page, the record of reading
# the one before, and never gets to the end.
RECORDS_OF_READING = frozenset(("AuditEvent",))


def records_so_far(connection: Connection) -> int:
    """The last resource row written, that later pages of a search of
    RECORDS_OF_READING go no further than."""
    return int(connection.execute(select(func.max(fhir_resources.c.id))).scalar() or 0)
_CHAIN_TARGETS = fhir_resources.alias("t")


def where_current(resources: Any, resource_type: str, visibility: Visibility) -> ColumnElement[bool]:
    """The current rows of a type that the request may see."""
    return and_(
        resources.c.resource_type == resource_type, resources.c.deleted == false(),
        *visibility.where(resources.c.resource_type, resources.c.resource_id, resource_type),
    )


def condition_clause(
    condition: Condition, resources: Any, visibility: Visibility, nested: bool = False
) -> ColumnElement[bool]:
    """`nested`: inside a chain, where the index tables need names of their own
    (a subquery would otherwise correlate with the enclosing one). A chain
    looks only at the resources the request may see."""
    parameter = condition.parameter
    if parameter.name == "_id":
        return _on_column(condition, lambda value: resources.c.resource_id == value.code)  # type: ignore[union-attr]
    if parameter.name == "_lastUpdated":
        column = resources.c.last_updated
        return _on_column(condition, lambda value: _instant_match(value, column))  # type: ignore[arg-type]
    if condition.missing or condition.negate:
        # What a resource lacks is tested resource by resource (an anti-join):
        # `id NOT IN (rows)` would gather the rows of every type that has the
        # parameter first, and PostgreSQL cannot turn NOT IN into an anti-join.
        return held_by(condition, resources)
    table = _TABLES[parameter.type].alias() if nested else _TABLES[parameter.type]
    # `id IN (rows of the index)` rather than a correlated EXISTS: both
    # databases then start from the index lookup and fetch the few matching
    # resources, instead of probing the index once per resource of the type.
    rows = select(table.c.resource_pk).where(table.c.param == parameter.name)
    if condition.missing is not None:
        return resources.c.id.in_(rows)
    if condition.chain is not None:
        chain, others = condition.chain, _CHAIN_TARGETS
        matching = (
            where_current(others, chain.other_type, visibility),
            condition_clause(chain.condition, others, visibility, nested=True),
        )
        if chain.reverse_of is not None:
            # The ids the matches' references point at: the index rows of the matches, not of the searched.
            pointing = select(others.c.id).where(*matching)
            return resources.c.resource_id.in_(select(table.c.target_id).where(
                table.c.param == parameter.name, table.c.target_type == chain.reverse_of,
                table.c.resource_pk.in_(pointing),
            ))
        inner = select(others.c.resource_id).where(*matching)
        return resources.c.id.in_(rows.where(table.c.target_type == chain.other_type, table.c.target_id.in_(inner)))
    return resources.c.id.in_(rows.where(or_(*(_value_match(value, table) for value in condition.values))))


def search_clauses(
    conditions: tuple[Condition, ...], resources: Any, visibility: Visibility, leader: Condition | None = None
) -> list[ColumnElement[bool]]:
    """The clauses of a search's conditions, all of which must hold. With a
    `leader` (one of `conditions`, see `leader_sizes`), the rows start from
    it and the others are tested on the rows it leaves, each by its own
    index rows."""
    if leader is None:
        return [condition_clause(condition, resources, visibility) for condition in conditions]
    followers = [condition for condition in conditions if condition is not leader]
    return [condition_clause(leader, resources, visibility)] + [
        held_by(condition, resources) if _own_indexed_value(condition)
        else condition_clause(condition, resources, visibility)
        for condition in followers
    ]


def names_resources(condition: Condition) -> bool:
    return condition.parameter.name == "_id" or condition.parameter.type is ParamType.REFERENCE


def leader_sizes(conditions: tuple[Condition, ...], upto: int) -> list[tuple[Condition, Any]]:
    """The conditions that could lead a search, each with how many index
    rows it matches counted up to `upto`: an int for ids, else a statement.
    Candidates are the plain conditions whose lookup is an index seek (ids,
    references, tokens with a code), so that counting them costs at most
    `upto` index entries each."""
    sizes: list[tuple[Condition, Any]] = []
    for condition in conditions:
        if condition.chain is not None or condition.negate or condition.missing is not None:
            continue
        if condition.parameter.name == "_id":
            sizes.append((condition, len(condition.values)))
        elif condition.parameter.type is ParamType.REFERENCE or (
            condition.parameter.type is ParamType.TOKEN
            and all(isinstance(value, TokenValue) and value.code is not None for value in condition.values)
        ):
            table = _TABLES[condition.parameter.type]
            rows = select(table.c.resource_pk).where(
                table.c.param == condition.parameter.name,
                or_(*(_value_match(value, table) for value in condition.values)),
            ).limit(upto)
            sizes.append((condition, select(func.count()).select_from(rows.subquery())))
    return sizes


def _own_indexed_value(condition: Condition) -> bool:
    return condition.chain is None and condition.parameter.name not in ("_id", "_lastUpdated")


def held_by(condition: Condition, resources: Any) -> ColumnElement[bool]:
    """`condition` as a test of each row of `resources`: EXISTS over that
    row's own index rows (NOT EXISTS for :missing=true and :not). For rows
    already narrowed down (the members of a compartment), and for what a
    resource lacks, where `condition_clause`'s IN would first gather every
    resource of any type that the parameter matches."""
    if condition.chain is not None:
        raise ValueError("held_by tests a resource's own values, not a chain's")
    table = _TABLES[condition.parameter.type].alias()
    own = select(table.c.resource_pk).where(
        table.c.resource_pk == resources.c.id, table.c.param == condition.parameter.name
    )
    if condition.missing is not None:
        return ~own.exists() if condition.missing else own.exists()
    matched = own.where(or_(*(_value_match(value, table) for value in condition.values))).exists()
    return ~matched if condition.negate else matched


def _on_column(condition: Condition, match: Any) -> ColumnElement[bool]:
    if condition.missing is not None:
        return false() if condition.missing else true()
    if condition.chain is not None:
        return false()
    matched = or_(*(match(value) for value in condition.values))
    return not_(matched) if condition.negate else matched


def _value_match(value: Any, table: Any) -> ColumnElement[bool]:
    if isinstance(value, StringValue):
        if value.mode is StringMode.EXACT:
            return table.c.exact == equality_key(value.text)
        pattern = _escape_like(value.text[: INDEX_WIDTH - 1])
        pattern = f"%{pattern}%" if value.mode is StringMode.CONTAINS else f"{pattern}%"
        return table.c.normalised.like(pattern, escape="\\")
    if isinstance(value, TokenValue):
        clauses = []
        if value.code is not None:
            clauses.append(table.c.code == equality_key(value.code))
        if value.system == "":
            clauses.append(table.c.system.is_(None))
        elif value.system is not None:
            clauses.append(table.c.system == equality_key(value.system))
        return and_(*clauses)
    if isinstance(value, DateValue):
        return _date_match(value, table.c.low, table.c.high)
    if isinstance(value, ReferenceValue):
        clause = table.c.target_id == value.target_id
        return clause if value.target_type is None else and_(clause, table.c.target_type == value.target_type)
    if isinstance(value, QuantityValue):
        return and_(_number_match(value, table.c.value), *_units(value, table))
    raise TypeError(value)


def _date_match(value: DateValue, low: Any, high: Any) -> ColumnElement[bool]:
    """Range comparisons of FHIR R4 search.html#prefix (value range vs. target range)."""
    within = and_(low >= value.low, high <= value.high)
    match value.prefix:
        case "eq":
            return within
        case "ne":
            return not_(within)
        case "gt":
            return high > value.high
        case "lt":
            return low < value.low
        case "ge":
            return or_(high > value.high, within)
        case "le":
            return or_(low < value.low, within)
        case "sa":
            return low >= value.high
        case "eb":
            return high <= value.low
        case _:  # ap: overlaps
            return and_(low < value.high, high > value.low)


def _instant_match(value: DateValue, column: Any) -> ColumnElement[bool]:
    """`_date_match` for a stored instant t, i.e. the range [t, t+1µs), written
    as plain comparisons on t so that the index on it serves them."""
    match value.prefix:
        case "eq" | "ap":
            return and_(column >= value.low, column < value.high)
        case "ne":
            return or_(column < value.low, column >= value.high)
        case "gt" | "sa":
            return column >= value.high
        case "lt" | "eb":
            return column < value.low
        case "ge":
            return column >= value.low
        case _:  # le
            return column < value.high


def _number_match(value: QuantityValue, column: Any) -> ColumnElement[bool]:
    within = and_(column >= value.low, column < value.high)
    match value.prefix:
        case "eq" | "ap":
            return within
        case "ne":
            return not_(within)
        case "gt" | "sa":
            return column > value.value
        case "lt" | "eb":
            return column < value.value
        case "ge":
            return column >= value.value
        case _:  # le
            return column <= value.value


def _units(value: QuantityValue, table: Any) -> list[ColumnElement[bool]]:
    clauses = []
    if value.code is not None:
        clauses.append(table.c.code == equality_key(value.code, table.c.code.type.length))
    if value.system is not None:
        clauses.append(table.c.system == equality_key(value.system))
    return clauses


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class SortPart:
    """One column of the total order, with its direction."""

    expression: Any
    descending: bool


def sort_parts(keys: tuple[SortKey, ...], resources: Any) -> list[SortPart]:
    """The total order: the keys asked for, then the logical id; no keys means insertion order.

    The id runs in the direction of the last key, so that an index on
    (key, id) serves the order in either direction.
    """
    if not keys:
        return [SortPart(resources.c.id, False)]
    parts: list[SortPart] = []
    for key in keys:
        expression = _sort_expression(key.parameter, key.descending, resources)
        if isinstance(expression, KeyedColumnElement):
            parts.append(SortPart(expression, key.descending))
        else:
            # Resources without a value sort last in either direction.
            parts.append(SortPart(case((expression.is_(None), 1), else_=0).cast(Integer), False))
            parts.append(SortPart(expression, key.descending))
        if key.parameter.name == "_id":
            return parts
    parts.append(SortPart(resources.c.resource_id, keys[-1].descending))
    return parts


class codepoint_order(FunctionElement[str]):  # noqa: N801 (an SQL construct, named as SQL functions are)
    """A text value ordered by code point, as SQLite's BINARY collation orders
    it: PostgreSQL orders text by the database's collation, which in the
    official image (en_US.utf8) puts `_x` before `1` and `a_b` before `a-b`,
    so the two databases gave one search two orders."""

    type = String()
    inherit_cache = True


@compiles(codepoint_order)
def _codepoint_order(element: codepoint_order, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(codepoint_order, "postgresql")
def _codepoint_order_postgresql(element: codepoint_order, compiler: Any, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


def _sort_expression(parameter: SearchParameter, descending: bool, resources: Any) -> Any:
    if parameter.name == "_id":
        return codepoint_order(resources.c.resource_id)
    if parameter.name == "_lastUpdated":
        return resources.c.last_updated
    table = _TABLES[parameter.type].alias()
    column = table.c.high if parameter.type is ParamType.DATE and descending else table.c[_SORT_COLUMNS[parameter.type]]
    if parameter.type in (ParamType.TOKEN, ParamType.STRING, ParamType.URI):
        column = codepoint_order(column)
    aggregate = func.max(column) if descending else func.min(column)
    return (
        select(aggregate)
        .where(table.c.resource_pk == resources.c.id, table.c.param == parameter.name)
        .scalar_subquery()
    )


def after(parts: list[SortPart], position: list[Any], backwards: bool) -> ColumnElement[bool]:
    """Rows strictly after `position` in the order of `parts` (before it, when `backwards`)."""
    alternatives: list[ColumnElement[bool]] = []
    for index, part in enumerate(parts):
        value = position[index]
        if value is None:
            # Nothing sorts after a missing value within its null group.
            continue
        ahead = (part.expression < value) if part.descending != backwards else (part.expression > value)
        equal_before = [
            parts[i].expression.is_(None) if position[i] is None else parts[i].expression == position[i]
            for i in range(index)
        ]
        alternatives.append(and_(*equal_before, ahead))
    if not alternatives:
        return false()
    first, value = parts[0], position[0]
    if value is None:
        return or_(*alternatives)
    # Redundant with the alternatives, but a plain range on the first key is
    # what lets an index start at the cursor instead of filtering every row before it.
    bound = (first.expression <= value) if first.descending != backwards else (first.expression >= value)
    return and_(bound, or_(*alternatives))


def order_by(parts: list[SortPart], backwards: bool) -> list[Any]:
    return [part.expression.desc() if part.descending != backwards else part.expression.asc() for part in parts]
