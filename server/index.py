"""Writes to the study/series/instance index.

Upserts are written so that concurrent writers of the same study (eight
modalities sending one study at once) meet on the unique UID constraints
instead of creating duplicates: insert-or-update, or insert-or-ignore and
read back on a conflict.

Statements are built once per dialect and executed with parameters: building
an upsert is several times dearer than running it, and ingest runs them for
every instance.
"""

from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Integer,
    String,
    Table,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from dicom.instance import InstanceDescription, SeriesFields, StudyFields
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
    return statement.on_conflict_do_update(index_elements=[key], set_=updates, where=same_parent).returning(table.c.id)


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
    if dialect_name == "postgresql":
        find_instance = find_instance.with_for_update(of=instances)
    return _Statements(
        upsert_study=_upsert_statement(dialect, studies, "study_instance_uid", _STUDY_COLUMNS),
        upsert_series=_upsert_statement(dialect, series, "series_instance_uid", _SERIES_COLUMNS, parent="study_pk"),
        insert_instance=dialect.insert(instances)
        .values({name: bindparam(name) for name in _INSTANCE_COLUMNS})
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"]),
        update_instance=update(instances)
        .where(instances.c.id == bindparam("row_id"))
        .values({name: bindparam(name) for name in _INSTANCE_COLUMNS}),
        find_instance=find_instance,
        insert_requests=dialect.insert(series_requests).on_conflict_do_nothing(),
    )


def _fitted(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """Clip values to their column widths, and leave out integers too large for theirs.

    Index columns only serve matching; the full value lives in the stored
    JSON. A legacy file with an over-long PatientID must not fail its whole
    batch on PostgreSQL, which enforces the widths that SQLite ignores.
    """
    for name, value in values.items():
        column_type = table.c[name].type
        if isinstance(value, str) and isinstance(column_type, String) and column_type.length:
            values[name] = value[: column_type.length]
        elif isinstance(value, int) and type(column_type) is Integer and not _INT32_MIN <= value <= _INT32_MAX:
            values[name] = None  # an IS value no SQL integer holds; PostgreSQL would refuse the instance
    return values


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def upsert_study(connection: Connection, fields: StudyFields, attributes: dict[str, Any]) -> int:
    values = _fitted(studies, vars(fields) | {"attributes_json": orjson.dumps(attributes)})
    return connection.execute(_statements(connection.dialect.name).upsert_study, values).scalar_one()


class SeriesOfAnotherStudy(Exception):
    """An instance names a series that is stored under another study: UIDs
    are unique, so one of the two studies is wrong, and the index keeps the
    one it has."""


def upsert_series(connection: Connection, study_pk: int, fields: SeriesFields, attributes: dict[str, Any]) -> int:
    statements = _statements(connection.dialect.name)
    values = {name: value for name, value in vars(fields).items() if name != "requests"}
    values |= {"study_pk": study_pk, "attributes_json": orjson.dumps(attributes)}
    series_pk: int | None = connection.execute(statements.upsert_series, _fitted(series, values)).scalar_one_or_none()
    if series_pk is None:
        raise SeriesOfAnotherStudy(
            f"SeriesInstanceUID {fields.series_instance_uid} is a series of another study on this server;"
            " a series belongs to one study"
        )
    if fields.requests:
        connection.execute(
            statements.insert_requests,
            [
                _fitted(
                    series_requests,
                    {
                        "series_pk": series_pk,
                        "requested_procedure_id": request.requested_procedure_id or "",
                        "scheduled_procedure_step_id": request.scheduled_procedure_step_id or "",
                    },
                )
                for request in fields.requests
            ],
        )
    return series_pk


def write_instance(
    connection: Connection,
    description: InstanceDescription,
    study_pk: int,
    series_pk: int,
    file_path: str,
    file_size: int,
    sha256: str,
) -> InstanceWrite:
    statements = _statements(connection.dialect.name)
    fields = description.instance
    values = _fitted(
        instances,
        vars(fields)
        | {
            "study_pk": study_pk,
            "series_pk": series_pk,
            "file_path": file_path,
            "file_size": file_size,
            "sha256": sha256,
            "metadata_json": orjson.dumps(description.metadata),
        },
    )
    # New instances, the common case, take one round trip: the insert.
    if connection.execute(statements.insert_instance, values).rowcount == 1:
        return InstanceWrite(InstanceChange.CREATED, None)
    existing = connection.execute(statements.find_instance, {"uid": fields.sop_instance_uid}).one()
    if existing.sha256 == sha256 and existing.series_pk == series_pk:
        return InstanceWrite(InstanceChange.UNCHANGED, None)
    connection.execute(statements.update_instance, values | {"row_id": existing.id})
    if existing.series_pk != series_pk:
        remove_empty_parents(connection, existing.series_pk)
    left = existing.study_instance_uid if existing.study_instance_uid != description.study.study_instance_uid else None
    return InstanceWrite(InstanceChange.REPLACED, existing.file_path, left)


def remove_empty_parents(connection: Connection, series_pk: int) -> None:
    """Drop a series left without instances, and its study if left without series."""
    study_pk = connection.execute(select(series.c.study_pk).where(series.c.id == series_pk)).scalar_one_or_none()
    if study_pk is None:
        return
    if not connection.execute(select(exists().where(instances.c.series_pk == series_pk))).scalar():
        connection.execute(delete(series).where(series.c.id == series_pk))
    if not connection.execute(select(exists().where(series.c.study_pk == study_pk))).scalar():
        connection.execute(delete(studies).where(studies.c.id == study_pk))


def journal_files(connection: Connection, paths: list[str]) -> None:
    if paths:
        connection.execute(insert(storage_journal), [{"file_path": path} for path in paths])


def clear_journal(connection: Connection, paths: list[str]) -> None:
    if paths:
        connection.execute(delete(storage_journal).where(storage_journal.c.file_path.in_(paths)))
