"""Writes to the study/series/instance index.

Upserts are written so that concurrent writers of the same study (eight
modalities sending one study at once) meet on the unique UID constraints
instead of creating duplicates: insert-or-ignore, then read back.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from sqlalchemy import Connection, delete, exists, insert, select, update
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


def _upsert(connection: Connection, table: Any, key: str, values: dict[str, Any]) -> int:
    """Insert a row or update it in place; return its primary key."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[key], set_={name: statement.excluded[name] for name in values if name != key}
    ).returning(table.c.id)
    return connection.execute(statement).scalar_one()


def upsert_study(connection: Connection, fields: StudyFields, attributes: dict[str, Any]) -> int:
    values = vars(fields) | {"attributes_json": orjson.dumps(attributes)}
    return _upsert(connection, studies, "study_instance_uid", values)


def upsert_series(connection: Connection, study_pk: int, fields: SeriesFields, attributes: dict[str, Any]) -> int:
    values = {name: value for name, value in vars(fields).items() if name != "requests"}
    values |= {"study_pk": study_pk, "attributes_json": orjson.dumps(attributes)}
    series_pk = _upsert(connection, series, "series_instance_uid", values)
    connection.execute(delete(series_requests).where(series_requests.c.series_pk == series_pk))
    if fields.requests:
        connection.execute(
            insert(series_requests), [{"series_pk": series_pk} | vars(request) for request in fields.requests]
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
    fields = description.instance
    values = vars(fields) | {
        "study_pk": study_pk,
        "series_pk": series_pk,
        "file_path": file_path,
        "file_size": file_size,
        "sha256": sha256,
        "metadata_json": orjson.dumps(description.metadata),
    }
    lookup = select(instances.c.id, instances.c.sha256, instances.c.file_path, instances.c.series_pk).where(
        instances.c.sop_instance_uid == fields.sop_instance_uid
    )
    if connection.dialect.name == "postgresql":
        lookup = lookup.with_for_update()
    existing = connection.execute(lookup).first()
    if existing is None:
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        inserted = connection.execute(
            dialect.insert(instances).values(**values).on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        )
        if inserted.rowcount == 1:
            return InstanceWrite(InstanceChange.CREATED, None)
        # A concurrent request stored the same instance first; treat ours as a resend.
        existing = connection.execute(lookup).first()
    if existing.sha256 == sha256 and existing.series_pk == series_pk:
        return InstanceWrite(InstanceChange.UNCHANGED, None)
    connection.execute(update(instances).where(instances.c.id == existing.id).values(**values))
    if existing.series_pk != series_pk:
        remove_empty_parents(connection, existing.series_pk)
    return InstanceWrite(InstanceChange.REPLACED, existing.file_path)


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
