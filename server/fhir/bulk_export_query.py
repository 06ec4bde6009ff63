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

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select

from fhir_mappings.patient_compartment import COMPARTMENT_PARAMETER, patients_of_json
from fhir_mappings.search_query import Condition
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
    # Patient-level exports: the compartments of these patients (None: of every patient).
    compartment: bool
    patients: tuple[str, ...] | None
    # `_typeFilter`s of the type, each its conditions: a resource matching any is exported (none: all are).
    filters: tuple[tuple[Condition, ...], ...] = ()


def pages(engine: Engine, visibility: Visibility, part: Slice, history: bool) -> Iterator[list[bytes]]:
    """The resources of `part`, a page at a time: the current ones first,
    then (`history`: the type keeps one) those since changed, as they were."""
    yield from _current_pages(engine, visibility, part)
    if history and not part.filters:  # the index holds only current versions: filters cannot judge past ones
        yield from _past_pages(engine, visibility, part)


def _current_pages(engine: Engine, visibility: Visibility, part: Slice) -> Iterator[list[bytes]]:
    after = 0
    while True:
        statement = (
            select(fhir_resources.c.id, fhir_resources.c.resource_json)
            .where(where_current(fhir_resources, part.resource_type, visibility), fhir_resources.c.id > after,
                   *_within(part), *_members(part), *_matching(part, visibility))
            .order_by(fhir_resources.c.id).limit(PAGE)
        )
        with reading(engine) as connection:
            rows = connection.execute(statement).all()
        if not rows:
            return
        after = rows[-1].id
        yield [row.resource_json for row in rows]


def _past_pages(engine: Engine, visibility: Visibility, part: Slice) -> Iterator[list[bytes]]:
    """The versions current at `until` of the resources changed (or deleted)
    after it. Their compartment is judged from the version itself: the
    current one's index rows may name other patients, or be gone."""
    changed = select(fhir_resources.c.resource_id).where(
        fhir_resources.c.resource_type == part.resource_type, fhir_resources.c.last_updated > part.until,
        *visibility.where(fhir_resources.c.resource_type, fhir_resources.c.resource_id, part.resource_type),
    )
    latest = (
        select(fhir_versions.c.resource_id, func.max(fhir_versions.c.version_id).label("version_id"))
        .where(fhir_versions.c.resource_type == part.resource_type, fhir_versions.c.last_updated <= part.until,
               fhir_versions.c.resource_id.in_(changed))
        .group_by(fhir_versions.c.resource_id)
        .subquery()
    )
    after = 0
    while True:
        statement = (
            select(fhir_versions.c.id, fhir_versions.c.resource_json)
            .join(latest, and_(fhir_versions.c.resource_id == latest.c.resource_id,
                               fhir_versions.c.version_id == latest.c.version_id))
            .where(fhir_versions.c.resource_type == part.resource_type, fhir_versions.c.method != "DELETE",
                   fhir_versions.c.id > after, *_changed_since(fhir_versions, part))
            .order_by(fhir_versions.c.id).limit(PAGE)
        )
        with reading(engine) as connection:
            rows = connection.execute(statement).all()
        if not rows:
            return
        after = rows[-1].id
        kept = [row.resource_json for row in rows if _in_compartment(part, row.resource_json)]
        if kept:
            yield kept


def _within(part: Slice) -> list[Any]:
    """Current rows changed in (since, until]. An AuditEvent is judged by
    when it was recorded: its row is a copy of the audit chain's event, made
    a moment later (when the export caught the copies up, for one), and
    events never change."""
    if part.resource_type != "AuditEvent":
        return [fhir_resources.c.last_updated <= part.until, *_changed_since(fhir_resources, part)]
    recorded = select(fhir_dates.c.resource_pk).where(fhir_dates.c.param == "date", fhir_dates.c.low <= part.until)
    if part.since is not None:
        recorded = recorded.where(fhir_dates.c.low > part.since)
    return [fhir_resources.c.id.in_(recorded)]


def _matching(part: Slice, visibility: Visibility) -> list[Any]:
    if not part.filters:
        return []
    return [or_(*(and_(*(condition_clause(condition, fhir_resources, visibility) for condition in conditions))
                  for conditions in part.filters))]


def _changed_since(table: Any, part: Slice) -> list[Any]:
    return [table.c.last_updated > part.since] if part.since is not None else []


def _members(part: Slice) -> list[Any]:
    """A Patient-level export's rows of the type: the Patients asked for, or
    the resources in their compartments (R4's Patient compartment, by the
    parameter `$everything` finds its members with)."""
    if not part.compartment:
        return []
    if part.resource_type == "Patient":
        return [fhir_resources.c.resource_id.in_(part.patients)] if part.patients is not None else []
    naming = select(fhir_references.c.resource_pk).where(
        fhir_references.c.param == COMPARTMENT_PARAMETER, fhir_references.c.target_type == "Patient",
        *([fhir_references.c.target_id.in_(part.patients)] if part.patients is not None else []),
    )
    return [fhir_resources.c.id.in_(naming)]


def _in_compartment(part: Slice, body: bytes) -> bool:
    if not part.compartment:
        return True
    patients = patients_of_json(body)
    return bool(patients) if part.patients is None else any(patient in part.patients for patient in patients)
