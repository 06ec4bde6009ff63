"""The versioned FHIR resource store: one table of current versions, one of
history, and search-index rows kept in step with each version written.

Writes take a connection so that callers choose the transaction: a STOW
writes its ImagingStudy and Patient in the transaction of its index rows, a
FHIR transaction Bundle writes all its entries in one.
"""

import functools
import operator
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    bindparam,
    cast,
    column,
    delete,
    false,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
    values,
)

from fhir_mappings import fhir_json
from fhir_mappings.date_ranges import instant_text
from fhir_mappings.errors import ResourceGone, ResourceNotFound
from fhir_mappings.patient_compartment import patients_of
from fhir_mappings.search_values import IndexValues, extract
from server.db import dialect_insert, insert_rows, note_written, reading
from server.fhir.preconditions import Preconditions
from server.fhir.update_counts import count_change
from server.fhir.visibility import Visibility
from server.tables import (
    clipped,
    equality_key,
    fhir_dates,
    fhir_quantities,
    fhir_references,
    fhir_resources,
    fhir_strings,
    fhir_tokens,
    fhir_versions,
)

# The columns of the one query that reads all five index tables
# (`_current_index_rows`), and which of them each table's columns go in: a
# row is known by those columns (all of its own but resource_pk).
_READ_COLUMNS = (("text_1", String), ("text_2", String), ("text_3", String), ("integer_1", BigInteger),
                 ("integer_2", BigInteger), ("real_1", Float))
_READ_INTO = {
    fhir_tokens: {"param": "text_1", "system": "text_2", "code": "text_3"},
    fhir_strings: {"param": "text_1", "normalised": "text_2", "exact": "text_3"},
    fhir_dates: {"param": "text_1", "low": "integer_1", "high": "integer_2"},
    fhir_references: {"param": "text_1", "target_type": "text_2", "target_id": "text_3"},
    fhir_quantities: {"param": "text_1", "value": "real_1", "system": "text_2", "code": "text_3"},
}
_INDEX_TABLES = tuple(_READ_INTO)
# Each table's key (its columns in `_READ_INTO`'s order) from a row of that
# query, which starts with the table's name and the resource's pk.
_PLACES = [place for place, _ in _READ_COLUMNS]
_KEY_OF = {
    table.name: operator.itemgetter(*(2 + _PLACES.index(place) for place in into.values()))
    for table, into in _READ_INTO.items()
}
_COLUMNS = {table.name: tuple(into) for table, into in _READ_INTO.items()}
_UNIT_WIDTH = fhir_quantities.c.code.type.length


@dataclass(frozen=True)
class StoredVersion:
    resource_type: str
    resource_id: str
    version_id: int
    last_updated: int
    deleted: bool
    body: bytes | None
    # This write brought the resource into being: its first version, or the
    # first after a deletion (an update then answers 201, FHIR R4 http.html#update).
    created: bool = False

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


class Clock:
    """Microsecond timestamps that never go backwards within this process, so
    that `_lastUpdated` order is write order for one server."""

    def __init__(self) -> None:
        self._last = 0

    def now(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return self._last


class CurrentVersion:
    """A resource's row as a writer locked it; its JSON parsed once, when asked."""

    __slots__ = ("pk", "version_id", "deleted", "last_updated", "body", "_document")

    def __init__(self, pk: int, version_id: int, deleted: bool, last_updated: int, body: bytes | None) -> None:
        self.pk, self.version_id, self.deleted, self.last_updated, self.body = (
            pk, version_id, deleted, last_updated, body)
        self._document: dict[str, Any] | None = None

    @property
    def document(self) -> dict[str, Any]:
        """The JSON parsed by plain orjson, decimals as floats: for reading
        references and comparing what the server derives, not for serving."""
        if self._document is None:
            assert self.body is not None, "a deleted version has no document"
            self._document = orjson.loads(self.body)
        return self._document

    def patients(self) -> list[str]:
        """The Patient ids of the version being replaced or deleted: a change
        that moves a resource to another patient changes both records."""
        return [] if self.body is None else patients_of(self.document)


class ResourceStore:
    def __init__(self, engine: Engine, history_types: frozenset[str], visibility: Visibility) -> None:
        self.engine = engine
        self.history_types = history_types
        self.visibility = visibility
        self.clock = Clock()
        self._insert_new = (
            dialect_insert(engine.dialect.name, fhir_resources)
            .on_conflict_do_nothing(index_elements=["resource_type", "resource_id"])
            .returning(fhir_resources.c.id, fhir_resources.c.resource_id)
        )
        # For one resource (bind names may not be column names); several take `_update_versions`.
        self._update_version = update(fhir_resources).where(fhir_resources.c.id == bindparam("pk")).values(
            version_id=bindparam("new_version_id"), last_updated=bindparam("new_last_updated"), deleted=False,
            resource_json=bindparam("new_resource_json"),
        )
        self._on_postgresql = engine.dialect.name == "postgresql"
        # Told of the new versions of each write, in its transaction (the Subscriptions' outbox).
        self.on_written: Callable[[Connection, str, list[StoredVersion]], None] | None = None

    # --- reads ---------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str, connection: Connection | None = None) -> StoredVersion:
        """The current version; ResourceGone when deleted, ResourceNotFound
        when never written or not the request's to see."""
        with reading(self.engine, connection) as session:
            version = self._current(session, resource_type, resource_id)
        if version.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} was deleted (version {version.version_id})")
        return version

    def current_body(
        self, resource_type: str, resource_id: str, connection: Connection | None = None
    ) -> dict[str, Any] | None:
        """The current version's JSON, parsed (decimals as written); None when
        there is none, never written or deleted."""
        try:
            version = self.read(resource_type, resource_id, connection)
        except (ResourceNotFound, ResourceGone):
            return None
        return None if version.body is None else fhir_json.loads(version.body)  # type: ignore[no-any-return]

    def _current(self, connection: Connection, resource_type: str, resource_id: str) -> StoredVersion:
        row = connection.execute(
            select(
                fhir_resources.c.version_id, fhir_resources.c.last_updated, fhir_resources.c.deleted,
                fhir_resources.c.resource_json,
            ).where(
                fhir_resources.c.resource_type == resource_type, fhir_resources.c.resource_id == resource_id,
                *self.visibility.where(fhir_resources.c.resource_type, fhir_resources.c.resource_id, resource_type),
            )
        ).first()
        if row is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        return StoredVersion(resource_type, resource_id, row.version_id, row.last_updated, row.deleted, row.resource_json)

    def vread(
        self, resource_type: str, resource_id: str, version_id: int, connection: Connection | None = None
    ) -> StoredVersion:
        """That version; ResourceGone when it records a deletion."""
        with reading(self.engine, connection) as session:
            row = session.execute(
                select(fhir_versions.c.last_updated, fhir_versions.c.method, fhir_versions.c.resource_json).where(
                    fhir_versions.c.resource_type == resource_type,
                    fhir_versions.c.resource_id == resource_id,
                    fhir_versions.c.version_id == version_id,
                    *self.visibility.where(fhir_versions.c.resource_type, fhir_versions.c.resource_id, resource_type),
                )
            ).first()
            if row is not None and not self.visibility.shows_version(resource_type, row.resource_json):
                raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version_id}")
            if row is not None:
                version = StoredVersion(
                    resource_type, resource_id, version_id, row.last_updated, row.method == "DELETE", row.resource_json
                )
            else:
                version = self._current(session, resource_type, resource_id)
        if version.version_id != version_id:
            retained = "" if resource_type in self.history_types else f" ({resource_type} keeps only its current version)"
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version_id}{retained}")
        if version.deleted:
            raise ResourceGone(f"version {version_id} of {resource_type}/{resource_id} records its deletion")
        return version

    # --- writes --------------------------------------------------------------

    def put(
        self,
        connection: Connection,
        resource: dict[str, Any],
        resource_id: str,
        method: str,
        preconditions: Preconditions | None = None,
    ) -> StoredVersion:
        """Write a new version of `resource` (validated by the caller) under `resource_id`."""
        return self.put_many(connection, [(resource, resource_id)], method, preconditions)[0]

    def put_many(
        self,
        connection: Connection,
        writes: Sequence[tuple[dict[str, Any], str]],
        method: str,
        preconditions: Preconditions | None = None,
        skip_unchanged: bool = False,
        locked: dict[str, CurrentVersion] | None = None,
        check: Callable[[dict[str, Any]], object] | None = None,
    ) -> list[StoredVersion]:
        """New versions of resources of one type (validated by the caller),
        each under its id, in as many statements as one of them takes: a STOW
        of 500 new studies writes their ImagingStudies at once, where one
        statement per table and study made PostgreSQL's round trips most of
        its time. `preconditions` (If-Match, If-None-Match) apply to a single write only.

        `skip_unchanged`: a resource whose current version has the same
        content keeps that version (its StoredVersion is returned) instead of
        getting a new one, as HAPI FHIR treats a no-op update. For what the
        server derives itself: a study's Patient is the same after each of
        its series arrives, and a new version each time would tell clients
        that watch it (ETag, `_lastUpdated`) of a change there was not.

        Writers of overlapping sets of several ids must be serialized by the
        caller (a STOW's study rows and Patient locks, a job's study lock):
        one that finds some of them created meanwhile locks those while
        holding its own new rows, which could deadlock with a third writer.

        `locked`: what `lock_current` gave for these ids in this transaction,
        for a caller that had to read them first.

        `check`: run on each resource that gets a new version (it raises for
        one that may not be stored), not on one `skip_unchanged` keeps: that
        one was checked when its version was written."""
        if not writes:
            return []
        resource_type = writes[0][0]["resourceType"]
        ids = [resource_id for _, resource_id in writes]
        if any(resource["resourceType"] != resource_type for resource, _ in writes) or len(set(ids)) != len(ids):
            raise ValueError("put_many writes resources of one type, each once")
        if preconditions is not None and len(writes) != 1:
            raise ValueError("preconditions apply to a single write")
        current = dict(locked) if locked is not None else self.lock_current(connection, resource_type, ids)
        if preconditions is not None:
            found = current.get(ids[0])
            if found is None or found.deleted:
                preconditions.require(f"{resource_type}/{ids[0]}", None)
            else:
                preconditions.require(f"{resource_type}/{ids[0]}", found.version_id, found.last_updated)
        requested = ids
        kept = _unchanged(resource_type, writes, current) if skip_unchanged else {}
        if kept:
            writes = [(resource, resource_id) for resource, resource_id in writes if resource_id not in kept]
            ids = [resource_id for _, resource_id in writes]
        if check is not None:
            for resource, _ in writes:
                check(resource)
        now = {resource_id: self.clock.now() for resource_id in ids}
        first_versions = {
            resource_id: stored_json(resource, resource_id, 1, now[resource_id])
            for resource, resource_id in writes if resource_id not in current
        }
        created = self._insert_absent(connection, resource_type, first_versions, now)
        raced = [resource_id for resource_id in ids if resource_id not in current and resource_id not in created]
        if raced:  # created by a concurrent writer since our look: update theirs, as a later version
            current.update(self.lock_current(connection, resource_type, raced))
            now.update((resource_id, self.clock.now()) for resource_id in raced)
        stored, updates, history, indexed, reindexed = [], [], [], [], []
        for resource, resource_id in writes:
            at = now[resource_id]
            patients = _patients(resource, resource_id)
            if resource_id in created:
                pk, version_id, body = created[resource_id], 1, first_versions[resource_id]
                revived = True
            else:
                replaced = current[resource_id]
                revived = replaced.deleted
                pk, version_id = replaced.pk, replaced.version_id + 1
                body = stored_json(resource, resource_id, version_id, at)
                updates.append(
                    {"pk": pk, "new_version_id": version_id, "new_last_updated": at, "new_resource_json": body}
                )
                if not replaced.deleted:
                    count_change(connection, resource_type, replaced.last_updated, -1)
                patients = [*replaced.patients(), *patients]
            count_change(connection, resource_type, at, +1)
            note_written(connection, f"{resource_type}/{resource_id}", patients)
            (indexed if resource_id in created else reindexed).append((pk, resource))
            if resource_type in self.history_types:
                history.append({"resource_type": resource_type, "resource_id": resource_id, "version_id": version_id,
                                "last_updated": at, "method": method, "resource_json": body})
            stored.append(StoredVersion(resource_type, resource_id, version_id, at, False, body, created=revived))
        if updates:
            self._update_versions(connection, updates)
        _insert_index_rows(connection, indexed)
        _reindex(connection, reindexed)
        if history:
            connection.execute(insert(fhir_versions), history)
        if self.on_written is not None and stored:
            self.on_written(connection, resource_type, stored)
        if kept:
            written = {version.resource_id: version for version in stored}
            return [kept.get(resource_id) or written[resource_id] for resource_id in requested]
        return stored

    def _update_versions(self, connection: Connection, updates: list[dict[str, Any]]) -> None:
        """New current versions of existing rows. On PostgreSQL several go as
        one UPDATE from a VALUES list: executed with many parameter sets,
        psycopg2 would send one statement per row. (SQLite runs those in
        process, and its VALUES cannot name columns.)"""
        if len(updates) == 1 or not self._on_postgresql:
            connection.execute(self._update_version, updates if len(updates) > 1 else updates[0])
            return
        replaced = values(
            column("pk", Integer), column("version_id", Integer), column("last_updated", BigInteger),
            column("resource_json", LargeBinary), name="replaced",
        ).data([
            (row["pk"], row["new_version_id"], row["new_last_updated"], row["new_resource_json"]) for row in updates
        ])
        connection.execute(update(fhir_resources).where(fhir_resources.c.id == replaced.c.pk).values(
            version_id=replaced.c.version_id, last_updated=replaced.c.last_updated, deleted=False,
            resource_json=replaced.c.resource_json,
        ))

    def _insert_absent(
        self, connection: Connection, resource_type: str, bodies: dict[str, bytes], now: dict[str, int],
    ) -> dict[str, int]:
        """Version 1 (`bodies`, by id) of resources that had no row; the pks of
        those inserted, by id. One a concurrent writer created meanwhile is left out."""
        if not bodies:
            return {}
        rows = [
            {"resource_type": resource_type, "resource_id": resource_id, "version_id": 1,
             "last_updated": now[resource_id], "deleted": False, "resource_json": body}
            for resource_id, body in bodies.items()
        ]
        return {resource_id: pk for pk, resource_id in connection.execute(self._insert_new, rows)}

    def add_new(self, connection: Connection, resources: list[tuple[dict[str, Any], str]]) -> None:
        """Write resources whose ids are new by construction (the audit
        chain's sequence numbers): no look for a current version, and one
        statement per table for all of them. An id that exists raises
        IntegrityError, rolling back the caller's transaction."""
        if not resources:
            return
        rows, versions = [], []
        for resource, resource_id in resources:
            now = self.clock.now()
            body = stored_json(resource, resource_id, 1, now)
            row = {"resource_type": resource["resourceType"], "resource_id": resource_id, "version_id": 1,
                   "last_updated": now, "deleted": False, "resource_json": body}
            rows.append(row)
            if row["resource_type"] in self.history_types:
                versions.append({**{key: row[key] for key in ("resource_type", "resource_id", "version_id",
                                                               "last_updated", "resource_json")}, "method": "POST"})
            count_change(connection, row["resource_type"], now, +1)
        pks = connection.execute(
            insert(fhir_resources).returning(fhir_resources.c.id, sort_by_parameter_order=True), rows
        ).scalars().all()
        _insert_index_rows(connection, [(pk, resource) for pk, (resource, _) in zip(pks, resources)])
        if versions:
            connection.execute(insert(fhir_versions), versions)

    def delete(
        self, connection: Connection, resource_type: str, resource_id: str, preconditions: Preconditions | None = None
    ) -> StoredVersion | None:
        """Mark deleted; None when there was nothing current to delete (FHIR delete is idempotent)."""
        current = self.lock_current(connection, resource_type, [resource_id]).get(resource_id)
        if current is not None and current.deleted:
            current = None
        if preconditions is not None:
            if current is None:
                preconditions.require(f"{resource_type}/{resource_id}", None)
            else:
                preconditions.require(f"{resource_type}/{resource_id}", current.version_id, current.last_updated)
        if current is None:
            return None
        pk, current_version = current.pk, current.version_id
        version_id, now = current_version + 1, self.clock.now()
        connection.execute(
            update(fhir_resources).where(fhir_resources.c.id == pk).values(
                version_id=version_id, last_updated=now, deleted=True, resource_json=None
            )
        )
        for table in _INDEX_TABLES:
            connection.execute(delete(table).where(table.c.resource_pk == pk))
        count_change(connection, resource_type, current.last_updated, -1)
        note_written(connection, f"{resource_type}/{resource_id}", current.patients())
        return self._record(connection, resource_type, resource_id, version_id, now, "DELETE", None)

    def lock_current(
        self, connection: Connection, resource_type: str, resource_ids: Sequence[str]
    ) -> dict[str, CurrentVersion]:
        """The current rows of these resources that exist, deleted ones
        included, by id; held until the transaction ends on PostgreSQL. Taken
        in id order, as every writer here takes them, so that writers of
        overlapping sets queue instead of deadlocking."""
        if not resource_ids:
            return {}
        many = len(resource_ids) > 1
        wanted = {"resource_type": resource_type, **(
            {"resource_ids": list(resource_ids)} if many else {"resource_id": resource_ids[0]})}
        return {
            resource_id: CurrentVersion(pk, version_id, deleted, last_updated, body)
            for resource_id, pk, version_id, deleted, last_updated, body in connection.execute(
                _lock_current_statement(self._on_postgresql, many), wanted)
        }

    def _record(
        self, connection: Connection, resource_type: str, resource_id: str, version_id: int, now: int,
        method: str, body: bytes | None,
    ) -> StoredVersion:
        if resource_type in self.history_types:
            connection.execute(
                insert(fhir_versions).values(
                    resource_type=resource_type, resource_id=resource_id, version_id=version_id,
                    last_updated=now, method=method, resource_json=body,
                )
            )
        return StoredVersion(resource_type, resource_id, version_id, now, body is None, body)



@functools.cache
def _lock_current_statement(for_update: bool, many: bool) -> Any:
    """The query of `lock_current`, built once: a writer runs it once or
    twice a request (a one-instance STOW: its ImagingStudy, then its
    Patient), and building it took SQLAlchemy 0.15 ms each time. For one id
    (`resource_id`, the common case: see `_one_of`) or several (`resource_ids`)."""
    wanted = fhir_resources.c.resource_id.in_(bindparam("resource_ids", expanding=True)) if many else \
        fhir_resources.c.resource_id == bindparam("resource_id")
    statement = select(
        fhir_resources.c.resource_id, fhir_resources.c.id, fhir_resources.c.version_id, fhir_resources.c.deleted,
        fhir_resources.c.last_updated, fhir_resources.c.resource_json,
    ).where(fhir_resources.c.resource_type == bindparam("resource_type"), wanted).order_by(fhir_resources.c.resource_id)
    return statement.with_for_update() if for_update else statement


def _one_of(column: Any, values: Sequence[Any]) -> Any:
    """`column IN values`, as `=` for one value: a single write is the common
    case, and an expanding IN costs SQLAlchemy a new rendering every time."""
    return column == values[0] if len(values) == 1 else column.in_(values)


def _patients(resource: dict[str, Any], resource_id: str) -> list[str]:
    """`resource`'s Patient ids; a Patient being created carries no id yet."""
    return patients_of({**resource, "id": resource_id} if resource["resourceType"] == "Patient" else resource)


def _insert_index_rows(connection: Connection, indexed: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """The search-index rows of each (pk, resource), one statement per table for all."""
    index_rows: dict[Any, list[dict[str, Any]]] = {}
    for pk, resource in indexed:
        for table, keys in _index_keys(extract(resource)):
            index_rows.setdefault(table, []).extend(_rows(table, pk, keys))
    for table, rows in index_rows.items():
        insert_rows(connection, table, rows)


def _reindex(connection: Connection, indexed: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """The search-index rows of each (pk, resource) that had a version before,
    changed only where they differ: a table's rows that gained rows and lost
    none get the new ones, a table that lost some is written anew, and an
    unchanged one is left alone. A study sent an instance at a time adds one
    `instance` token to an ImagingStudy of hundreds; writing them all again
    at each arrival was most of such a STOW's time on PostgreSQL."""
    if not indexed:
        return
    existing = _current_index_rows(connection, [pk for pk, _ in indexed])
    cleared: dict[Any, list[int]] = {}
    added: dict[Any, list[dict[str, Any]]] = {}
    for pk, resource in indexed:
        for table, keys in _index_keys(extract(resource)):
            had = existing.get((table.name, pk), set())
            if had <= keys:
                added.setdefault(table, []).extend(_rows(table, pk, keys - had))
            else:
                cleared.setdefault(table, []).append(pk)
                added.setdefault(table, []).extend(_rows(table, pk, keys))
    for table, pks in cleared.items():
        connection.execute(delete(table).where(_one_of(table.c.resource_pk, pks)))
    for table, rows in added.items():
        insert_rows(connection, table, rows)


def _current_index_rows(connection: Connection, pks: Sequence[int]) -> dict[tuple[str, int], set[tuple[Any, ...]]]:
    """The index rows of these resources, by (table name, pk), as `_index_keys` gives them."""
    rows: dict[tuple[str, int], set[tuple[Any, ...]]] = {}
    for table_name, pk, key in _index_rows_of(connection, pks):
        rows.setdefault((table_name, pk), set()).add(key)
    return rows


def _index_rows_of(connection: Connection, pks: Sequence[int]) -> Iterator[tuple[str, int, tuple[Any, ...]]]:
    """Each index row of these resources: its table's name, its pk, and its key as `_index_keys` gives it."""
    # The query binds each pk once per table: a thousand at a time stays far below
    # SQLite's limit on bound values (32,766).
    for start in range(0, len(pks), 1000):
        some = pks[start:start + 1000]
        statement = _read_index_rows(many=len(some) > 1)
        for row in connection.execute(statement, {"pks": list(some)} if len(some) > 1 else {"pk": some[0]}):
            yield row[0], row[1], _KEY_OF[row[0]](row)


def misindexed(connection: Connection, indexed: Sequence[tuple[int, dict[str, Any]]]) -> list[int]:
    """The pks, of these (pk, resource), whose search-index rows are not
    exactly the ones the resource gives: one altered, removed, added or
    doubled makes searches find it by what it does not say, or miss it."""
    expected = Counter((table.name, pk, key) for pk, resource in indexed
                       for table, keys in _index_keys(extract(resource)) for key in keys)
    found = Counter(_index_rows_of(connection, [pk for pk, _ in indexed]))
    return sorted({pk for _, pk, _ in (expected - found) + (found - expected)})


@functools.cache
def _read_index_rows(many: bool) -> Any:
    """The query of `_current_index_rows`, built once: for one resource (`pk`) or several (`pks`)."""
    branches = []
    for table, into in _READ_INTO.items():
        read_from = {place: table.c[name] for name, place in into.items()}
        wanted = table.c.resource_pk.in_(bindparam("pks", expanding=True)) if many else \
            table.c.resource_pk == bindparam("pk")
        branches.append(select(
            literal_column(f"'{table.name}'", String).label("index_table"), table.c.resource_pk,
            *(read_from.get(place, cast(null(), kind)).label(place) for place, kind in _READ_COLUMNS),
        ).where(wanted))
    return union_all(*branches)


def reindex_overlong_values(connection: Connection) -> int:
    """Index again each resource with an index value as long as its column:
    written before `equality_key`, such a value may be the cut start of a
    longer one, which an equality search then missed. Returns how many."""
    columns = (
        fhir_tokens.c.code, fhir_tokens.c.system, fhir_strings.c.exact, fhir_quantities.c.system,
        fhir_quantities.c.code,
    )
    pks = sorted({
        pk for column in columns
        for pk in connection.execute(
            select(column.table.c.resource_pk).where(func.length(column) == column.type.length)
        ).scalars()
    })
    for pk in pks:
        body = connection.execute(select(fhir_resources.c.resource_json).where(fhir_resources.c.id == pk)).scalar_one()
        for table in _INDEX_TABLES:
            connection.execute(delete(table).where(table.c.resource_pk == pk))
        _insert_index_rows(connection, [(pk, fhir_json.loads(body))])
    return len(pks)


def reindex_labelled(connection: Connection, batch: int = 500) -> int:
    """Index again each current resource whose JSON may hold a `meta`
    security label, tag or profile, written before `_security`, `_tag` and
    `_profile` were indexed. Returns how many."""
    body = fhir_resources.c.resource_json
    # A search for bytes in the stored JSON: SQLite's LIKE finds nothing in a BLOB, its instr() does.
    holds = ((lambda needle: func.instr(body, needle) > 0) if connection.dialect.name == "sqlite"
             else (lambda needle: body.like(b"%" + needle + b"%")))
    labelled = or_(*(holds(f'"{element}"'.encode()) for element in ("security", "tag", "profile")))
    after, count = 0, 0
    while True:
        rows = connection.execute(
            select(fhir_resources.c.id, fhir_resources.c.resource_json)
            .where(fhir_resources.c.id > after, fhir_resources.c.deleted == false(), labelled)
            .order_by(fhir_resources.c.id).limit(batch)
        ).all()
        if not rows:
            return count
        _reindex(connection, [(row.id, fhir_json.loads(row.resource_json)) for row in rows])
        after, count = rows[-1].id, count + len(rows)


def _index_keys(values: IndexValues) -> list[tuple[Any, set[tuple[Any, ...]]]]:
    """Each index table's rows of these values, as keys: their columns but
    resource_pk, in `_READ_INTO`'s order. Rows are compared as keys, and
    only the few that are written become dicts (`_rows`)."""
    return [
        (fhir_tokens, {(p, equality_key(s), equality_key(c)) for p, s, c in values.tokens}),
        (fhir_strings, {(p, clipped(n), equality_key(e)) for p, n, e in values.strings}),
        (fhir_dates, set(values.dates)),
        (fhir_references, {(p, t[:64], i[:64]) for p, t, i in values.references}),
        (fhir_quantities, {
            (p, v, equality_key(s), equality_key(c, _UNIT_WIDTH)) for p, v, s, c in values.quantities
        }),
    ]


def _rows(table: Any, pk: int, keys: Iterable[tuple[Any, ...]]) -> list[dict[str, Any]]:
    columns = _COLUMNS[table.name]
    return [{"resource_pk": pk, **dict(zip(columns, key))} for key in keys]


def _unchanged(
    resource_type: str, writes: Sequence[tuple[dict[str, Any], str]], current: dict[str, CurrentVersion],
) -> dict[str, StoredVersion]:
    """The current versions, by id, of the writes that would not change
    them: the resource stored as that version was (same id, version and
    instant) gives the very bytes stored."""
    return {
        resource_id: StoredVersion(resource_type, resource_id, found.version_id, found.last_updated, False, found.body)
        for resource, resource_id in writes
        if (found := current.get(resource_id)) is not None and not found.deleted
        and stored_json(resource, resource_id, found.version_id, found.last_updated) == found.body
    }


def stored_json(resource: dict[str, Any], resource_id: str, version_id: int, now: int) -> bytes:
    """The stored JSON: id and meta first, as FHIR's element order has them."""
    meta = {key: value for key, value in (resource.get("meta") or {}).items() if key not in ("versionId", "lastUpdated")}
    ordered = {
        "resourceType": resource["resourceType"],
        "id": resource_id,
        "meta": {"versionId": str(version_id), "lastUpdated": instant_text(now), **meta},
    }
    ordered.update((key, value) for key, value in resource.items() if key not in ("resourceType", "id", "meta"))
    return fhir_json.dumps(ordered)

