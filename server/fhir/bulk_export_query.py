"""What an export writes of one type: each resource as it was at the
export's transactionTime, in pages by keyset.

A resource current at that instant and unchanged since is read from the
current rows. One changed or deleted after it is read from the history, at
its last version up to that instant, for the types that keep one; the others
(derived from DICOM, or AuditEvents, which never change) only have their
current version, and one changed after the instant is left out (the IG
allows that: nothing modified after transactionTime need be included), as
is one of a type with `_typeFilter`s, which the search index can judge only
as it is now.
AuditEvents are taken by when they were recorded (see `_within`).
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import JSON, Engine, String, and_, bindparam, cast, false, func, or_, outerjoin, select

from fhir_mappings.patient_compartment import COMPARTMENT_PARAMETERS, patients_of_json
from fhir_mappings.search_query import Condition
from server.auth.access import acting_as, current_principal
from server.db import reading
from server.fhir.search_sql import condition_clause, where_current
from server.fhir.visibility import Visibility
from server.tables import fhir_dates, fhir_references, fhir_resources, fhir_versions

PAGE = 1000


@dataclass(frozen=True)
class Slice:
    """What one type's file holds."""

    resource_type: str
    until: int  # transactionTime, microseconds: nothing changed after it
    since: int | None  # changed after this instant only
    # Patient- and Group-level exports: the compartments of these patients (None: of every patient).
    compartment: bool
    patients: frozenset[str] | None
    # `_typeFilter`s of the type, each its conditions: a resource matching any is exported (none: all are).
    filters: tuple[tuple[Condition, ...], ...] = ()
    group: str | None = None  # a Group-level export's Group: exported with the Groups of its members' compartments
    # Of a Group-level export with `since`, the members who joined after it: their compartments whatever `since`.
    newcomers: frozenset[str] = frozenset()
    # The starter's SMART patient context: the filters' chains see what its searches would, that compartment alone.
    patient_context: str | None = None


def pages(engine: Engine, visibility: Visibility, part: Slice, history: bool) -> Iterator[list[bytes]]:
    """The resources of `part`, a page at a time; as they were at `until`
    when the type keeps a history (`history`), else as they are now."""
    if history and not part.filters:  # the index holds only current versions: filters cannot judge past ones
        yield from _as_of_pages(engine, visibility, part)
    else:
        yield from _current_pages(engine, visibility, part)


def _current_pages(engine: Engine, visibility: Visibility, part: Slice) -> Iterator[list[bytes]]:
    def page_after(after: int) -> Any:
        return (
            select(fhir_resources.c.id, fhir_resources.c.resource_json)
            .where(where_current(fhir_resources, part.resource_type, visibility), fhir_resources.c.id > after,
                   *_within(part, engine.dialect.name), *_members(part, engine.dialect.name),
                   *_matching(part, visibility))
            .order_by(fhir_resources.c.id).limit(PAGE)
        )

    return _pages_by_id(engine, page_after, lambda rows: [row.resource_json for row in rows])


def _pages_by_id(
    engine: Engine, page_after: Callable[[int], Any], kept: Callable[[Sequence[Any]], list[bytes]]
) -> Iterator[list[bytes]]:
    """What `kept` keeps of each page of rows that `page_after(id)` reads past
    the last row read, in the order of the rows' ids, each page in a read of
    its own (an export of millions holds no transaction open for long)."""
    after = 0
    while True:
        with reading(engine) as connection:
            rows = connection.execute(page_after(after)).all()
        if not rows:
            return
        after = rows[-1].id
        page = kept(rows)
        if page:
            yield page


def version_at(engine: Engine, resource_type: str, resource_id: str, instant: int) -> bytes | None:
    """The resource as it was at `instant`: its current version when not
    changed since, else its last version up to it (as `_as_of_pages` reads
    it); None when it was not there then, or deleted."""
    with reading(engine) as connection:
        current = connection.execute(
            select(fhir_resources.c.last_updated, fhir_resources.c.deleted, fhir_resources.c.resource_json).where(
                fhir_resources.c.resource_type == resource_type, fhir_resources.c.resource_id == resource_id)
        ).first()
        if current is None or current.last_updated <= instant:
            return None if current is None or current.deleted else current.resource_json
        then = connection.execute(
            select(fhir_versions.c.method, fhir_versions.c.resource_json)
            .where(fhir_versions.c.resource_type == resource_type, fhir_versions.c.resource_id == resource_id,
                   fhir_versions.c.last_updated <= instant)
            .order_by(fhir_versions.c.version_id.desc()).limit(1)
        ).first()
    return None if then is None or then.method == "DELETE" else then.resource_json


def _as_of_pages(engine: Engine, visibility: Visibility, part: Slice) -> Iterator[list[bytes]]:
    """Each resource once: its current version when unchanged since `until`,
    else (changed or deleted after it) its last version up to `until`. One
    statement per page reads both and decides: read in two passes, a
    resource changed between them was in both. The compartment of an older
    version is judged from the version itself: the current one's index rows
    may name other patients, or be gone."""
    changed = fhir_resources.c.last_updated > part.until
    earlier = fhir_versions.alias("earlier")
    version_then = (
        select(func.max(earlier.c.version_id))
        .where(earlier.c.resource_type == fhir_resources.c.resource_type,
               earlier.c.resource_id == fhir_resources.c.resource_id, earlier.c.last_updated <= part.until)
        .scalar_subquery()
    )
    then = outerjoin(fhir_resources, fhir_versions, and_(
        changed, fhir_versions.c.resource_type == fhir_resources.c.resource_type,
        fhir_versions.c.resource_id == fhir_resources.c.resource_id, fhir_versions.c.version_id == version_then,
    ))
    unchanged_kept = and_(fhir_resources.c.deleted == false(), *_changed_since(part, engine.dialect.name),
                          *_members(part, engine.dialect.name))

    def page_after(after: int) -> Any:
        return (
            select(fhir_resources.c.id, fhir_resources.c.resource_id, fhir_resources.c.resource_json,
                   changed.label("changed"),
                   fhir_versions.c.resource_json.label("then_json"), fhir_versions.c.method.label("then_method"),
                   fhir_versions.c.last_updated.label("then_updated"))
            .select_from(then)
            .where(fhir_resources.c.resource_type == part.resource_type, fhir_resources.c.id > after,
                   *visibility.where(fhir_resources.c.resource_type, fhir_resources.c.resource_id, part.resource_type),
                   or_(changed, unchanged_kept))
            .order_by(fhir_resources.c.id).limit(PAGE)
        )

    def kept(rows: Sequence[Any]) -> list[bytes]:
        return [row.resource_json if not row.changed else row.then_json for row in rows if _kept(part, row)]

    return _pages_by_id(engine, page_after, kept)


def _kept(part: Slice, row: Any) -> bool:
    """Whether the version that stands for a row at `until` is exported."""
    if not row.changed:
        return True  # judged by the statement
    if row.then_json is None or row.then_method == "DELETE":
        return False  # made after `until`, or deleted then
    patients = patients_of_json(row.then_json)
    changed_since = part.since is None or row.then_updated > part.since or not part.newcomers.isdisjoint(patients)
    return changed_since and _in_compartment(part, row, patients)


def _within(part: Slice, dialect: str) -> list[Any]:
    """Current rows changed in (since, until]. An AuditEvent is judged by
    when it was recorded: its row is a copy of the audit chain's event, made
    a moment later (when the export caught the copies up, for one), and
    events never change."""
    if part.resource_type != "AuditEvent":
        return [fhir_resources.c.last_updated <= part.until, *_changed_since(part, dialect)]
    recorded = select(fhir_dates.c.resource_pk).where(fhir_dates.c.param == "date", fhir_dates.c.low <= part.until)
    if part.since is None:
        return [fhir_resources.c.id.in_(recorded)]
    recorded_since = fhir_resources.c.id.in_(recorded.where(fhir_dates.c.low > part.since))
    return [fhir_resources.c.id.in_(recorded),
            or_(recorded_since, _of_patients(part, part.newcomers, dialect)) if part.newcomers else recorded_since]


def _matching(part: Slice, visibility: Visibility) -> list[Any]:
    """The `_typeFilter`s, whose chains look where the starter's own search
    would: under its patient context, into that patient's compartment alone
    (a rule of `visibility`, which reads the principal when a clause is made).
    Only there: the rows exported are kept to the export's patients by
    `_members`, and judged at `until`, not by the compartment they are in now."""
    if not part.filters:
        return []
    starter = current_principal.get()
    with acting_as(replace(starter, patient=part.patient_context)) if starter is not None else nullcontext():
        return [or_(*(and_(*(condition_clause(condition, fhir_resources, visibility) for condition in conditions))
                      for conditions in part.filters))]


def _changed_since(part: Slice, dialect: str) -> list[Any]:
    """Rows changed after `since`, or in the compartment of a member who joined the Group after it."""
    if part.since is None:
        return []
    changed = fhir_resources.c.last_updated > part.since
    return [or_(changed, _of_patients(part, part.newcomers, dialect)) if part.newcomers else changed]


def _members(part: Slice, dialect: str) -> list[Any]:
    """A Patient- or Group-level export's rows of the type: the Patients
    asked for, or the resources in their compartments (R4's Patient
    compartment, by the parameter `$everything` finds its members with); of
    the type Group, a Group-level export's own Group as well."""
    if not part.compartment:
        return []
    if part.patients is None:
        return [] if part.resource_type == "Patient" else [fhir_resources.c.id.in_(_naming(part.resource_type))]
    in_compartment = _of_patients(part, part.patients, dialect)
    if part.group is not None and part.resource_type == "Group":
        return [or_(fhir_resources.c.resource_id == part.group, in_compartment)]
    return [in_compartment]


def _of_patients(part: Slice, patients: frozenset[str], dialect: str) -> Any:
    """The rows of the type in these patients' compartments; of Patients, theirs."""
    if part.resource_type == "Patient":
        return fhir_resources.c.resource_id.in_(_listed(patients, dialect))
    return fhir_resources.c.id.in_(
        _naming(part.resource_type).where(fhir_references.c.target_id.in_(_listed(patients, dialect))))


def _naming(resource_type: str) -> Any:
    """The resources of the type in some patient's compartment, by the reference index."""
    return select(fhir_references.c.resource_pk).where(
        fhir_references.c.param == COMPARTMENT_PARAMETERS[resource_type], fhir_references.c.target_type == "Patient",
    )


def _listed(ids: frozenset[str], dialect: str) -> Any:
    """The ids as rows of a select, bound as one JSON array: a Group's tens of
    thousands of members, one parameter each, would pass SQLite's limit on
    bound parameters (32,766; 999 before 3.32)."""
    array = bindparam("patient_ids", orjson.dumps(sorted(ids)).decode(), type_=String, unique=True)
    if dialect == "postgresql":
        return select(func.json_array_elements_text(cast(array, JSON)))
    return select(func.json_each(array).table_valued("value").c.value)


def _in_compartment(part: Slice, row: Any, patients: list[str]) -> bool:
    """Whether `_members` would keep the row's version at `until` (`then_json`, whose patients are `patients`)."""
    if not part.compartment:
        return True
    if part.group is not None and part.resource_type == "Group" and row.resource_id == part.group:
        return True
    return bool(patients) if part.patients is None else not part.patients.isdisjoint(patients)
