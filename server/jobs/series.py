"""The series of a study a model can run on, read from the DICOM index."""

import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, select

from inference.model_card import SeriesRule
from server.tables import instances, series, studies


@dataclass(frozen=True)
class StoredSeries:
    series_instance_uid: str
    modality: str | None
    description: str | None
    body_part_examined: str | None
    sop_class_uids: frozenset[str]
    slices: int  # frames, for multi-frame objects
    file_paths: tuple[str, ...]
    study_date: str | None  # DICOM DA, as sent

    def accepted_by(self, rule: SeriesRule) -> bool:
        # A series mixing SOP classes (a localizer among the axials) is no volume.
        return len(self.sop_class_uids) == 1 and rule.matches(
            self.modality, next(iter(self.sop_class_uids)), self.slices, self.description, self.body_part_examined
        )


def study_series(connection: Connection, study_uid: str) -> list[StoredSeries]:
    rows = connection.execute(
        select(
            series.c.series_instance_uid, series.c.modality, series.c.series_description, series.c.body_part_examined,
            instances.c.sop_class_uid, instances.c.number_of_frames, instances.c.file_path, studies.c.study_date,
        )
        .join(studies, series.c.study_pk == studies.c.id)
        .join(instances, instances.c.series_pk == series.c.id)
        .where(studies.c.study_instance_uid == study_uid)
        .order_by(series.c.series_instance_uid, instances.c.id)
    ).all()
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(row.series_instance_uid, []).append(row)
    return [
        StoredSeries(
            series_instance_uid=uid, modality=members[0].modality, description=members[0].series_description,
            body_part_examined=members[0].body_part_examined,
            sop_class_uids=frozenset(member.sop_class_uid for member in members),
            slices=sum(member.number_of_frames or 1 for member in members),
            file_paths=tuple(member.file_path for member in members),
            study_date=members[0].study_date,
        )
        for uid, members in grouped.items()
    ]


def accepted_series(connection: Connection, study_uid: str, rule: SeriesRule) -> list[StoredSeries]:
    """Those the rule accepts, the most slices first."""
    accepted = [stored for stored in study_series(connection, study_uid) if stored.accepted_by(rule)]
    return sorted(accepted, key=lambda stored: (-stored.slices, stored.series_instance_uid))


def series_content(connection: Connection, series_uid: str) -> str:
    """What a series holds now, as a digest: its index row (a series deleted
    and stored again is another one) and each instance with its file's hash.
    An identical re-send leaves it as it was; a new or changed instance does not."""
    rows = connection.execute(
        select(series.c.id, instances.c.sop_instance_uid, instances.c.sha256)
        .join(instances, instances.c.series_pk == series.c.id)
        .where(series.c.series_instance_uid == series_uid)
        .order_by(instances.c.sop_instance_uid)
    ).all()
    digest = hashlib.sha256(str(rows[0].id if rows else None).encode())
    for row in rows:
        digest.update(f"|{row.sop_instance_uid}:{row.sha256}".encode())
    return digest.hexdigest()


def series_exists(connection: Connection, series_uid: str) -> bool:
    return connection.execute(
        select(series.c.id).where(series.c.series_instance_uid == series_uid)
    ).first() is not None


def series_file_paths(connection: Connection, series_uid: str) -> set[str]:
    """The files the index names for the series now (relative to the store)."""
    return set(connection.execute(
        select(instances.c.file_path).join(series, instances.c.series_pk == series.c.id)
        .where(series.c.series_instance_uid == series_uid)
    ).scalars())
