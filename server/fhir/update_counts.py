"""Exact `Bundle.total`s for searches by `_lastUpdated` alone (or by nothing).

The store keeps, per type and per second of `last_updated`, how many current
resources fall in it (`fhir_update_counts`). A search whose only conditions
are `_lastUpdated` ranges asks for an interval [low, high) of instants; its
total is the sum of the whole seconds inside the interval plus a count of the
matching resources in the partial seconds at its two ends, read in one
statement, so from one snapshot. The changes of a transaction are gathered
and written at its end, in one key order for every writer: concurrent
writers then queue on the bucket rows instead of deadlocking.
"""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, false, func, or_, select

from fhir_mappings.search_query import Condition, DateValue
from server.db import before_commit, dialect_insert
from server.tables import fhir_resources, fhir_update_counts

BUCKET_MICROS = 1_000_000
_KEY = "fhir-update-counts"
Interval = tuple[int | None, int | None]  # [low, high); None is unbounded


def bucket_of(last_updated: int) -> int:
    return last_updated // BUCKET_MICROS * BUCKET_MICROS


class _Deltas:
    """One write transaction's changes, written just before it commits."""

    def __init__(self) -> None:
        self.changes: dict[tuple[str, int], int] = defaultdict(int)

    def __call__(self, connection: Connection) -> None:
        for (resource_type, bucket), delta in sorted(self.changes.items()):
            if delta == 0:
                continue
            statement = dialect_insert(connection.dialect.name, fhir_update_counts).values(
                resource_type=resource_type, bucket=bucket, live=delta
            )
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["resource_type", "bucket"],
                    set_={"live": fhir_update_counts.c.live + statement.excluded.live},
                )
            )


def count_change(connection: Connection, resource_type: str, last_updated: int, delta: int) -> None:
    """A current resource appeared (+1) at, or left (-1) from, `last_updated`."""
    before_commit(connection, _KEY, _Deltas).changes[(resource_type, bucket_of(last_updated))] += delta


def last_updated_interval(conditions: Sequence[Condition]) -> Interval | None:
    """The instants the conditions allow, when they are all `_lastUpdated`
    and together allow one interval; None otherwise (the caller counts)."""
    low: int | None = None
    high: int | None = None
    for condition in conditions:
        if (condition.parameter.name != "_lastUpdated" or condition.negate or condition.missing is not None
                or condition.chain is not None or len(condition.values) != 1):
            return None
        value = condition.values[0]
        assert isinstance(value, DateValue)
        bounds = _bounds(value)
        if bounds is None:
            return None
        low = bounds[0] if low is None else (low if bounds[0] is None else max(low, bounds[0]))
        high = bounds[1] if high is None else (high if bounds[1] is None else min(high, bounds[1]))
    return low, high


def _bounds(value: DateValue) -> Interval | None:
    """As `search_sql._instant_match` matches a stored instant."""
    match value.prefix:
        case "eq" | "ap":
            return value.low, value.high
        case "gt" | "sa":
            return value.high, None
        case "lt" | "eb":
            return None, value.low
        case "ge":
            return value.low, None
        case "le":
            return None, value.high
        case _:  # ne: two intervals
            return None


def count_in(resource_type: str, interval: Interval) -> Any:
    """A scalar select: how many current resources of the type have their
    last_updated in the interval."""
    low, high = interval
    if low is not None and high is not None and low >= high:
        return select(0).scalar_subquery()
    # Whole seconds: from the first bucket starting at or after `low` up to
    # the last one ending at or before `high`.
    first_whole = None if low is None else -(-low // BUCKET_MICROS) * BUCKET_MICROS
    end_whole = None if high is None else bucket_of(high)
    if first_whole is not None and end_whole is not None and first_whole >= end_whole:
        return _counted(resource_type, [(low, high)])
    buckets = [fhir_update_counts.c.resource_type == resource_type]
    if first_whole is not None:
        buckets.append(fhir_update_counts.c.bucket >= first_whole)
    if end_whole is not None:
        buckets.append(fhir_update_counts.c.bucket < end_whole)
    whole = select(func.coalesce(func.sum(fhir_update_counts.c.live), 0)).where(*buckets).scalar_subquery()
    edges = [(low, first_whole), (end_whole, high)]
    edges = [(start, stop) for start, stop in edges if start is not None and stop is not None and start < stop]
    return (select(whole + _counted(resource_type, edges)) if edges else select(whole)).scalar_subquery()


def _counted(resource_type: str, ranges: list[tuple[int | None, int | None]]) -> Any:
    column = fhir_resources.c.last_updated
    matches = []
    for start, stop in ranges:
        clauses = []
        if start is not None:
            clauses.append(column >= start)
        if stop is not None:
            clauses.append(column < stop)
        matches.append(and_(*clauses))
    return (
        select(func.count())
        .select_from(fhir_resources)
        .where(fhir_resources.c.resource_type == resource_type, fhir_resources.c.deleted == false(), or_(*matches))
        .scalar_subquery()
    )
