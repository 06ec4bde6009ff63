"""Writes to the study/series/instance index.

Upserts are written so that concurrent writers of the same study (eight
modalities sending one study at once) meet on the unique UID constraints
instead of creating duplicates: insert-or-update, or insert-or-ignore and
read back on a conflict.

Statements are built once per dialect and executed with parameters: building
an upsert is several times dearer than running it, and ingest runs them for
every instance.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from dicom.instance import (
    InstanceDescription,
    ParentDescription,
    SeriesFields,
    SeriesRequest,
    describe_parents,
    series_fields,
    series_requests_of,
    study_fields,
)
from dicom.matching import NAME_GROUPS
from server.db import advisory_locks
from server.tables import instances, series, series_requests, storage_journal, studies


class InstanceChange(Enum):
    CREATED = "created"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class InstanceWrite:
    change: InstanceChange
    superseded_file: str | None
    left_study: str | None = None  # the study a re-sent instance moved out of, which changed too


_STUDY_COLUMNS = [column.name for column in studies.c if column.name not in ("id", "updated_at")]
_SERIES_COLUMNS = [column.name for column in series.c if column.name not in ("id", "updated_at")]
_INSTANCE_COLUMNS = [column.name for column in instances.c if column.name not in ("id", "created_at")]


@dataclass(frozen=True)
class _Statements:
    lock_studies: Any | None
    upsert_study: Any
    upsert_series: Any
    insert_instance: Any
    update_instance: Any
    find_instance: Any
    insert_requests: Any


def _upsert_statement(dialect: Any, table: Table, key: str, columns: list[str], parent: str | None = None) -> Any:
    """Insert or update the row of `key`. With `parent`, a row that exists
    under another parent is left alone and no id is returned."""
    statement = dialect.insert(table).values({name: bindparam(name) for name in columns})
    updates = {name: statement.excluded[name] for name in columns if name not in (key, parent)}
    updates["updated_at"] = func.now()
    same_parent = None if parent is None else table.c[parent] == statement.excluded[parent]
    return statement.on_conflict_do_update(index_elements=[key], set_=updates, where=same_parent).returning(
        table.c[key], table.c.id
    )


@cache
def _statements(dialect_name: str) -> _Statements:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    find_instance = (
        select(
            instances.c.id, instances.c.sha256, instances.c.file_path, instances.c.series_pk,
            studies.c.study_instance_uid,
        )
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(instances.c.sop_instance_uid == bindparam("uid"))
    )
    lock_studies = None  # SQLite's writers take turns already
    if dialect_name == "postgresql":
        find_instance = find_instance.with_for_update(of=instances)
        # The studies a STOW writes, and those its instances are in now (which
        # a re-sent instance may leave, emptied): locked in UID order before
        # any instance row. DELETE locks its study first too, so the two queue
        # on it instead of each holding what the other waits for.
        stored_in = select(instances.c.study_pk).where(
            instances.c.sop_instance_uid.in_(bindparam("sop_uids", expanding=True))
        )
        lock_studies = (
            select(studies.c.id)
            .where(or_(studies.c.study_instance_uid.in_(bindparam("study_uids", expanding=True)),
                       studies.c.id.in_(stored_in)))
            .order_by(studies.c.study_instance_uid)
            .with_for_update(of=studies)
        )
    return _Statements(
        lock_studies=lock_studies,
        upsert_study=_upsert_statement(dialect, studies, "study_instance_uid", _STUDY_COLUMNS),
        upsert_series=_upsert_statement(dialect, series, "series_instance_uid", _SERIES_COLUMNS, parent="study_pk"),
        insert_instance=dialect.insert(instances)
        .values({name: bindparam(name) for name in _INSTANCE_COLUMNS})
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(instances.c.file_path),
        update_instance=update(instances)
        .where(instances.c.id == bindparam("row_id"))
        .values({name: bindparam(name) for name in _INSTANCE_COLUMNS}),
        find_instance=find_instance,
        # RETURNING: one statement for all the rows (`server.db.dialect_insert`).
        insert_requests=dialect.insert(series_requests).on_conflict_do_nothing().returning(series_requests.c.series_pk),
    )


def _fitted(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """Clip values to their column widths, and leave out integers too large for theirs.

    Index columns only serve matching; the full value lives in the stored
    JSON. A legacy file with an over-long PatientID must not fail its whole
    batch on PostgreSQL, which enforces the widths that SQLite ignores.
    A table with `index_cut` records whether any text was cut: QIDO checks
    the stored whole of those rows only, and not of every value that merely
    fills its column (64-character hashed PatientIDs are common).
    """
    cut = False
    for name, value in values.items():
        column_type = table.c[name].type
        if isinstance(value, str) and isinstance(column_type, String) and column_type.length:
            cut = cut or len(value) > column_type.length
            values[name] = value[: column_type.length]
        elif isinstance(value, int) and type(column_type) is Integer and not _INT32_MIN <= value <= _INT32_MAX:
            values[name] = None  # an IS value no SQL integer holds; PostgreSQL would refuse the instance
    if "index_cut" in table.c:
        values["index_cut"] = cut
    return values


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_NAME_COLUMNS = (
    studies.c.patient_name, studies.c.patient_name_search,
    studies.c.referring_physician_name, studies.c.referring_physician_name_search,
)


def reindex_person_names(connection: Connection) -> int:
    """Derive again, from the stored attributes, the name columns of each
    study whose names an older index wrote otherwise: with trailing empty
    components (`normalise_person_name`), or with wildcards, which split
    search-key words (`fuzzy_name_tokens`). Returns how many."""
    written_otherwise = or_(*(
        column.like(pattern)
        for column in (studies.c.patient_name, studies.c.referring_physician_name)
        for pattern in ("%^", "%^=%", "%*%", "%?%")
    ))
    rows = connection.execute(
        select(studies.c.id, studies.c.study_instance_uid, studies.c.attributes_json).where(written_otherwise)
    ).all()
    for row in rows:
        # Only the names are written: 0013 has no `index_cut` yet, and 0014 sets it from every column.
        fields = _fitted(studies, dict(vars(study_fields(orjson.loads(row.attributes_json), row.study_instance_uid))))
        connection.execute(
            update(studies).where(studies.c.id == row.id)
            .values({column.name: fields[column.name] for column in _NAME_COLUMNS})
        )
    return len(rows)


def flag_cut_rows(connection: Connection) -> int:
    """Set `index_cut` on the study and series rows whose text an older index
    cut to its column without recording it. A cut value fills its column, so
    only rows with a column at its full width are read. Returns how many."""
    def study_values(attributes: dict[str, Any], uid: str) -> dict[str, Any]:
        return dict(vars(study_fields(attributes, uid)))

    def series_values(attributes: dict[str, Any], uid: str) -> dict[str, Any]:
        return _series_values(series_fields(attributes, uid))

    flagged = 0
    for table, uid, values in (
        (studies, studies.c.study_instance_uid, study_values),
        (series, series.c.series_instance_uid, series_values),
    ):
        # Only the columns the database has yet: a later revision may add more to the table.
        present = {column["name"] for column in inspect(connection).get_columns(table.name)}
        full = [
            func.length(column) == column.type.length
            for column in table.c if isinstance(column.type, String) and column.type.length and column.name in present
        ]
        result = connection.execute(
            select(table.c.id, uid.label("uid"), table.c.attributes_json).where(or_(*full))
            .execution_options(yield_per=_FLAGGING_BATCH)
        )
        cut = [
            {"row_id": row.id} for row in result
            if _fitted(table, values(orjson.loads(row.attributes_json), row.uid))["index_cut"]
        ]
        if cut:
            connection.execute(update(table).where(table.c.id == bindparam("row_id")).values(index_cut=True), cut)
        flagged += len(cut)
    return flagged


_FLAGGING_BATCH = 1000  # rows read at a time: an index may hold millions
_NAME_GROUP_COLUMNS = tuple(
    studies.c[f"{name}_{group}"] for name in ("patient_name", "referring_physician_name") for group in NAME_GROUPS
)


def index_name_groups(connection: Connection) -> int:
    """Write the component-group columns of each study with a name, which an
    older index did not have, from its stored attributes. Returns how many."""
    named = or_(studies.c.patient_name.is_not(None), studies.c.referring_physician_name.is_not(None))
    written, after = 0, 0
    # Pages by id rather than one open cursor: each page is written before the next is read.
    while rows := connection.execute(
        select(studies.c.id, studies.c.study_instance_uid, studies.c.attributes_json)
        .where(named, studies.c.id > after).order_by(studies.c.id).limit(_FLAGGING_BATCH)
    ).all():
        values = []
        for row in rows:
            described = study_fields(orjson.loads(row.attributes_json), row.study_instance_uid)
            fields = _fitted(studies, dict(vars(described)))
            values.append({"row_id": row.id} | {column.name: fields[column.name] for column in _NAME_GROUP_COLUMNS})
        connection.execute(update(studies).where(studies.c.id == bindparam("row_id")), values)
        written, after = written + len(rows), rows[-1].id
    return written


@dataclass(frozen=True)
class PlacedFile:
    """An instance's file as placed in the store: what its index row records."""

    description: InstanceDescription
    file_path: str
    file_size: int
    sha256: str


@dataclass
class WrittenParents:
    """The studies and series a transaction has written so far: a later call
    for more of their instances leaves their rows as their first instance
    made them, unless a later copy of that instance replaces it."""

    study_pks: dict[str, int] = field(default_factory=dict)
    series: dict[str, tuple[str, int]] = field(default_factory=dict)  # by series UID: its study UID and row id
    # By study or series UID: the file of the instance its row was made from.
    study_sources: dict[str, str] = field(default_factory=dict)
    series_sources: dict[str, str] = field(default_factory=dict)

    def copy(self) -> "WrittenParents":
        return WrittenParents(
            dict(self.study_pks), dict(self.series), dict(self.study_sources), dict(self.series_sources)
        )

    def take(self, attempt: "WrittenParents") -> None:
        """Those of `attempt` (a `copy`), whose write committed."""
        self.study_pks, self.series = attempt.study_pks, attempt.series
        self.study_sources, self.series_sources = attempt.study_sources, attempt.series_sources

    def forget(self, removed: "RemovedParents") -> None:
        """Rows deleted since (an instance moved out, and left them empty):
        a later instance that names them writes them again."""
        self.series = {uid: entry for uid, entry in self.series.items() if entry[1] != removed.series_pk}
        self.study_pks = {uid: pk for uid, pk in self.study_pks.items() if pk != removed.study_pk}
        self.series_sources = {uid: path for uid, path in self.series_sources.items() if uid in self.series}
        self.study_sources = {uid: path for uid, path in self.study_sources.items() if uid in self.study_pks}


class RemovedParents(NamedTuple):
    series_pk: int | None
    study_pk: int | None


class SeriesOfAnotherStudy(Exception):
    """An instance names a series that is stored under another study: UIDs
    are unique, so one of the two studies is wrong, and the index keeps the
    one it has."""


def write_instances(
    connection: Connection, files: Sequence[PlacedFile], parents: WrittenParents | None = None,
) -> list[InstanceWrite]:
    """The index rows of `files` (in the one lock order: by study, series,
    SOP Instance UID), one write each, in the order given; `parents` are
    those written earlier in the transaction, and gain the new ones.

    New instances, the common case, take one statement per table however
    many they are: a STOW of 500 one-instance studies took three round trips
    a study on PostgreSQL. One that was stored before takes a few of its own.
    A study's and a series' attributes come from their first instance in the
    transaction, as finally stored (the conformance statement's rule). Raises
    SeriesOfAnotherStudy, for all of them, when one names a series of
    another study."""
    statements = _statements(connection.dialect.name)
    parents = WrittenParents() if parents is None else parents
    lock_studies(connection, files)
    _upsert_studies(connection, statements, files, parents)
    _upsert_series(connection, statements, files, parents)
    rows = [
        _fitted(instances, vars(file.description.instance) | {
            "study_pk": parents.study_pks[file.description.study.study_instance_uid],
            "series_pk": parents.series[file.description.series.series_instance_uid][1],
            "file_path": file.file_path,
            "file_size": file.file_size,
            "sha256": file.sha256,
            "metadata_json": orjson.dumps(file.description.metadata),
        })
        for file in files
    ]
    # Each file's path is its own: those returned are the rows inserted.
    created = set(connection.execute(statements.insert_instance, rows).scalars())
    return [
        InstanceWrite(InstanceChange.CREATED, None) if row["file_path"] in created
        else _write_over(connection, statements, file, row, parents)
        for file, row in zip(files, rows)
    ]


def lock_studies(connection: Connection, files: Sequence[PlacedFile]) -> None:
    """On PostgreSQL, the studies of `files` and those their instances are in
    now, in UID order (`_statements`). `write_instances` takes them; a caller
    that writes files one at a time takes them for all first, so that each
    write keeps to the one order."""
    statement = _statements(connection.dialect.name).lock_studies
    if statement is not None and files:
        study_uids = sorted({file.description.study.study_instance_uid for file in files})
        hold_studies(connection, study_uids)
        connection.execute(statement, {
            "study_uids": study_uids,
            "sop_uids": [file.description.instance.sop_instance_uid for file in files],
        })


def hold_studies(connection: Connection, study_uids: Sequence[str]) -> None:
    """Every writer of a study holds it by its UID before it locks any study
    row. The rows alone are not enough: a study that does not exist when a
    STOW locks its rows (new, or deleted meanwhile) is created by its upsert
    afterwards, out of the rows' order, and two STOWs, each waiting on a
    study row the other held, deadlocked (PostgreSQL's log, found by review)."""
    advisory_locks(connection, (f"dicom-study:{uid}" for uid in study_uids))


def _upsert_studies(
    connection: Connection, statements: _Statements, files: Sequence[PlacedFile], parents: WrittenParents,
) -> None:
    first: dict[str, PlacedFile] = {}
    for file in files:
        if file.description.study.study_instance_uid not in parents.study_pks:
            first.setdefault(file.description.study.study_instance_uid, file)
    if not first:
        return
    rows = [_study_row(file.description) for file in first.values()]
    parents.study_pks.update(connection.execute(statements.upsert_study, rows).tuples().all())
    parents.study_sources.update((uid, file.file_path) for uid, file in first.items())


def _upsert_series(
    connection: Connection, statements: _Statements, files: Sequence[PlacedFile], parents: WrittenParents,
) -> None:
    """With the requests of each new series."""
    first: dict[str, PlacedFile] = {}
    for file in files:
        series_uid, study_uid = file.description.series.series_instance_uid, file.description.study.study_instance_uid
        known = parents.series.get(series_uid)
        kept_study = known[0] if known else first.setdefault(series_uid, file).description.study.study_instance_uid
        if kept_study != study_uid:
            raise _of_another_study(file.description.series)
    if not first:
        return
    rows = [
        _series_row(file.description, parents.study_pks[file.description.study.study_instance_uid])
        for file in first.values()
    ]
    # A series stored under another study is left alone by the upsert, and not returned.
    series_pks = dict(connection.execute(statements.upsert_series, rows).tuples().all())
    for series_uid, file in first.items():
        if series_uid not in series_pks:
            raise _of_another_study(file.description.series)
        parents.series[series_uid] = (file.description.study.study_instance_uid, series_pks[series_uid])
        parents.series_sources[series_uid] = file.file_path
    _insert_requests(connection, statements, [(series_pks[uid], file.description) for uid, file in first.items()])


def _study_row(described: ParentDescription) -> dict[str, Any]:
    return _fitted(studies, vars(described.study) | {"attributes_json": orjson.dumps(described.study_attributes)})


def _series_row(described: ParentDescription, study_pk: int) -> dict[str, Any]:
    return _fitted(series, _series_values(described.series) | {
        "study_pk": study_pk,
        "attributes_json": orjson.dumps(described.series_attributes),
    })


def _series_values(fields: SeriesFields) -> dict[str, Any]:
    """Its columns in the series table; its requests have their own."""
    return {name: value for name, value in vars(fields).items() if name != "requests"}


def _insert_requests(
    connection: Connection, statements: _Statements, described: Sequence[tuple[int, ParentDescription]],
) -> None:
    """The request items each series (by row id) gains from an instance of its."""
    _insert_request_rows(connection, statements, [
        (series_pk, request) for series_pk, description in described for request in description.series.requests
    ])


def _insert_request_rows(
    connection: Connection, statements: _Statements, requests: Sequence[tuple[int, SeriesRequest]],
) -> None:
    rows = [
        _fitted(series_requests, {
            "series_pk": series_pk,
            "requested_procedure_id": request.requested_procedure_id or "",
            "scheduled_procedure_step_id": request.scheduled_procedure_step_id or "",
        })
        for series_pk, request in requests
    ]
    if rows:
        connection.execute(statements.insert_requests, rows)


def _of_another_study(fields: SeriesFields) -> SeriesOfAnotherStudy:
    return SeriesOfAnotherStudy(
        f"SeriesInstanceUID {fields.series_instance_uid} is a series of another study on this server;"
        " a series belongs to one study"
    )


def _write_over(
    connection: Connection, statements: _Statements, file: PlacedFile, values: dict[str, Any], parents: WrittenParents,
) -> InstanceWrite:
    """An instance whose row exists (stored before, or earlier in this batch)."""
    existing = connection.execute(statements.find_instance, {"uid": file.description.instance.sop_instance_uid}).one()
    if existing.sha256 == file.sha256 and existing.series_pk == values["series_pk"]:
        return InstanceWrite(InstanceChange.UNCHANGED, None)
    moved = existing.series_pk != values["series_pk"]
    # Read before the row is written over; a move gathers the old series' requests again anyway.
    lost_requests = not moved and bool(
        set(_stored_requests(connection, instances.c.id == existing.id)) - set(file.description.series.requests)
    )
    connection.execute(statements.update_instance, values | {"row_id": existing.id})
    _describe_by_replacement(connection, statements, file, values["study_pk"], existing.file_path, parents)
    if moved:
        parents.forget(refresh_parents(connection, existing.series_pk, parents))
    elif lost_requests:
        # The copy replaced was the reason for request items the new one lacks.
        _gather_requests(connection, statements, existing.series_pk)
    study_uid = file.description.study.study_instance_uid
    left = existing.study_instance_uid if existing.study_instance_uid != study_uid else None
    return InstanceWrite(InstanceChange.REPLACED, existing.file_path, left)


def _describe_by_replacement(
    connection: Connection, statements: _Statements, file: PlacedFile, study_pk: int, replaced_file: str,
    parents: WrittenParents,
) -> None:
    """The study and series rows this transaction made from the copy that
    `file` replaces (one instance sent twice in a request) describe the copy
    stored instead."""
    study_uid, series_uid = file.description.study.study_instance_uid, file.description.series.series_instance_uid
    if parents.study_sources.get(study_uid) == replaced_file:
        connection.execute(statements.upsert_study, [_study_row(file.description)])
        parents.study_sources[study_uid] = file.file_path
    if parents.series_sources.get(series_uid) == replaced_file:
        connection.execute(statements.upsert_series, [_series_row(file.description, study_pk)])
        _insert_requests(connection, statements, [(parents.series[series_uid][1], file.description)])
        parents.series_sources[series_uid] = file.file_path


def refresh_parents(connection: Connection, series_pk: int, written: WrittenParents | None = None) -> RemovedParents:
    """After instances left a series: drop it if left without instances, and
    its study likewise; what remains is described again by its newest
    instance (the highest row id), so that nothing deleted or moved away
    still describes it. Rows that this transaction wrote (`written`) keep
    what their request's rule gave them. What was dropped."""
    study_pk = connection.execute(select(series.c.study_pk).where(series.c.id == series_pk)).scalar_one_or_none()
    if study_pk is None:
        return RemovedParents(None, None)
    statements = _statements(connection.dialect.name)
    written = WrittenParents() if written is None else written
    removed = RemovedParents(None, None)
    newest = _newest_instance(connection, instances.c.series_pk == series_pk)
    if newest is None:
        connection.execute(delete(series).where(series.c.id == series_pk))
        removed = RemovedParents(series_pk, None)
    else:
        if series_pk not in {pk for _, pk in written.series.values()}:
            connection.execute(statements.upsert_series, [_series_row(newest, study_pk)])
        _gather_requests(connection, statements, series_pk)
    newest = _newest_instance(connection, instances.c.study_pk == study_pk)
    if newest is None:
        # Its other series that this transaction emptied (a DELETE of the study) go with it, by the foreign key.
        connection.execute(delete(studies).where(studies.c.id == study_pk))
        return removed._replace(study_pk=study_pk)
    if study_pk not in written.study_pks.values():
        connection.execute(statements.upsert_study, [_study_row(newest)])
    return removed


def _gather_requests(connection: Connection, statements: _Statements, series_pk: int) -> None:
    """A series' request items gathered again from the instances it holds:
    those of an instance deleted, moved away or replaced no longer match it
    (PS3.4 C.2.2.2.6). It reads every instance of the series, which only a
    delete, a move or a re-sent instance whose requests changed asks for."""
    connection.execute(delete(series_requests).where(series_requests.c.series_pk == series_pk))
    items = set(_stored_requests(connection, instances.c.series_pk == series_pk))
    _insert_request_rows(connection, statements, [(series_pk, request) for request in items])


def _stored_requests(connection: Connection, which: ColumnElement[bool]) -> Iterator[SeriesRequest]:
    """The request items of the stored instances `which` selects."""
    for metadata in connection.execute(select(instances.c.metadata_json).where(which)).scalars():
        yield from series_requests_of(orjson.loads(metadata))


def _newest_instance(connection: Connection, which: ColumnElement[bool]) -> ParentDescription | None:
    row = connection.execute(
        select(instances.c.metadata_json, studies.c.study_instance_uid, series.c.series_instance_uid)
        .join(series, series.c.id == instances.c.series_pk)
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(which).order_by(instances.c.id.desc()).limit(1)
    ).one_or_none()
    if row is None:
        return None
    return describe_parents(orjson.loads(row.metadata_json), row.study_instance_uid, row.series_instance_uid)


def journal_files(connection: Connection, paths: list[str]) -> None:
    if paths:
        connection.execute(_JOURNAL, [{"file_path": path} for path in paths])


def clear_journal(connection: Connection, paths: list[str]) -> None:
    if paths:
        connection.execute(_CLEAR_JOURNAL, {"paths": paths})


# Built once: every STOW journals its files, then clears them.
_JOURNAL = insert(storage_journal)
_CLEAR_JOURNAL = delete(storage_journal).where(storage_journal.c.file_path.in_(bindparam("paths", expanding=True)))
