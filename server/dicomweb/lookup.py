"""Finding stored instances by the UIDs of a WADO or DELETE URL."""

from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Any, TypeVar

from sqlalchemy import Engine, Row, select

from dicom.errors import Conflict, NotAcceptable, NotFound
from dicom.uids import require_uid
from server.fhir.patient_context import visible_studies
from server.storage import FileStore
from server.tables import instances, series, studies


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    transfer_syntax_uid: str
    absolute_path: str
    file_size: int
    number_of_frames: int
    has_pixels: bool  # it has Rows, as every image does


def find_instances(
    engine: Engine,
    store: FileStore,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    with_metadata: bool = False,
) -> list[tuple[StoredInstance, bytes | None]]:
    """The instances a URL addresses, in series then instance order; NotFound when none."""
    extra = [instances.c.metadata_json] if with_metadata else []
    rows = _addressed_rows(engine, extra, study_uid, series_uid, sop_uid)
    if not rows:
        what = "instance" if sop_uid else "series" if series_uid else "study"
        raise NotFound(f"no such {what} is stored here")
    return [(_stored(row, study_uid, store), row.metadata_json if with_metadata else None) for row in rows]


def find_instance(engine: Engine, store: FileStore, study_uid: str, series_uid: str, sop_uid: str) -> StoredInstance:
    """The instance a URL addresses; NotFound when there is none."""
    [(instance, _)] = find_instances(engine, store, study_uid, series_uid, sop_uid)
    return instance


def current_instance(engine: Engine, store: FileStore, study_uid: str, sop_uid: str) -> StoredInstance | None:
    """The instance as it is stored now (a re-send replaces its file), or None
    when it is no longer in the study."""
    rows = _addressed_rows(engine, [], study_uid, None, sop_uid)
    return _stored(rows[0], study_uid, store) if rows else None


def representative_image(
    engine: Engine, store: FileStore, study_uid: str, series_uid: str | None = None
) -> StoredInstance:
    """The image a study or series thumbnail shows (PS3.18 §10.4.4 leaves the
    choice to the server): the middle image of the series with the most
    images, a Segmentation's only when nothing else has any, since a mask
    on its own says little of what was imaged; ties go to the lowest
    SeriesNumber. NotFound when nothing there has pixels."""
    found = _addressed_rows(engine, [series.c.id.label("series_pk"), series.c.modality], study_uid, series_uid, None)
    images = [row for row in found if row.rows is not None]
    what = "series" if series_uid else "study"
    if not found:
        raise NotFound(f"no such {what} is stored here")
    if not images:
        # It exists (404 would say otherwise), as for an instance without pixels.
        raise NotAcceptable(f"the {what} holds no image: no thumbnail of it can be made")
    by_series = [list(members) for _, members in groupby(images, key=lambda row: row.series_pk)]
    chosen = max(by_series, key=lambda members: (members[0].modality != "SEG", len(members)))
    return _stored(chosen[(len(chosen) - 1) // 2], study_uid, store)


# A DELETE or a re-send can take an instance's file between the read of its
# row and the read of the file: the row is then read again, a few times, as a
# client that retried would.
_READ_ATTEMPTS = 3
_Found = TypeVar("_Found")
_Read = TypeVar("_Read")


def read_current(first: _Found, read: Callable[[_Found], _Read], find_again: Callable[[_Found], _Found]) -> _Read:
    """What `read` makes of `first`, or of what `find_again` finds once its
    file has gone from under the read; `find_again` raises NotFound once it
    was deleted."""
    found = first
    for _ in range(_READ_ATTEMPTS):
        try:
            return read(found)
        except FileNotFoundError:
            found = find_again(found)
    raise Conflict("the instance was replaced again and again while being read; try again")


def read_addressed(lookup: Callable[[], StoredInstance], read: Callable[[StoredInstance], _Read]) -> _Read:
    """What `read` makes of the file of the instance `lookup` finds (NotFound
    when there is none), found again while its file goes from under the read."""
    return read_current(lookup(), read, lambda _: lookup())


def _addressed_rows(
    engine: Engine, extra: list[Any], study_uid: str, series_uid: str | None, sop_uid: str | None
) -> list[Row[Any]]:
    require_uid(study_uid, "StudyInstanceUID")
    statement = (
        select(
            series.c.series_instance_uid,
            instances.c.sop_instance_uid,
            instances.c.transfer_syntax_uid,
            instances.c.file_path,
            instances.c.file_size,
            instances.c.number_of_frames,
            instances.c.rows,
            *extra,
        )
        .join_from(instances, series, instances.c.series_pk == series.c.id)
        .join(studies, instances.c.study_pk == studies.c.id)
        .where(studies.c.study_instance_uid == study_uid)
        .order_by(series.c.series_number, series.c.id, instances.c.instance_number, instances.c.id)
    )
    if (visible := visible_studies()) is not None:
        statement = statement.where(visible)  # another patient's study is, to a patient context, not there
    if series_uid is not None:
        statement = statement.where(series.c.series_instance_uid == require_uid(series_uid, "SeriesInstanceUID"))
    if sop_uid is not None:
        statement = statement.where(instances.c.sop_instance_uid == require_uid(sop_uid, "SOPInstanceUID"))
    with engine.connect() as connection:
        return list(connection.execute(statement).all())


def _stored(row: Row[Any], study_uid: str, store: FileStore) -> StoredInstance:
    return StoredInstance(
        study_uid=study_uid,
        series_uid=row.series_instance_uid,
        sop_uid=row.sop_instance_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        absolute_path=str(store.absolute(row.file_path)),
        file_size=row.file_size,
        number_of_frames=row.number_of_frames or 1,
        has_pixels=row.rows is not None,
    )
