"""Finding stored instances by the UIDs of a WADO or DELETE URL."""

from dataclasses import dataclass

from sqlalchemy import Engine, select

from dicom.errors import NotFound
from dicom.uids import require_uid
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


def find_instances(
    engine: Engine,
    store: FileStore,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    with_metadata: bool = False,
) -> list[tuple[StoredInstance, bytes | None]]:
    """The instances a URL addresses, in series then instance order; NotFound when none."""
    require_uid(study_uid, "StudyInstanceUID")
    columns = [
        series.c.series_instance_uid,
        instances.c.sop_instance_uid,
        instances.c.transfer_syntax_uid,
        instances.c.file_path,
        instances.c.file_size,
        instances.c.number_of_frames,
    ]
    if with_metadata:
        columns.append(instances.c.metadata_json)
    statement = (
        select(*columns)
        .join_from(instances, series, instances.c.series_pk == series.c.id)
        .join(studies, instances.c.study_pk == studies.c.id)
        .where(studies.c.study_instance_uid == study_uid)
        .order_by(series.c.series_number, series.c.id, instances.c.instance_number, instances.c.id)
    )
    if series_uid is not None:
        statement = statement.where(series.c.series_instance_uid == require_uid(series_uid, "SeriesInstanceUID"))
    if sop_uid is not None:
        statement = statement.where(instances.c.sop_instance_uid == require_uid(sop_uid, "SOPInstanceUID"))
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    if not rows:
        what = "instance" if sop_uid else "series" if series_uid else "study"
        raise NotFound(f"no such {what} is stored here")
    return [
        (
            StoredInstance(
                study_uid=study_uid,
                series_uid=row.series_instance_uid,
                sop_uid=row.sop_instance_uid,
                transfer_syntax_uid=row.transfer_syntax_uid,
                absolute_path=str(store.absolute(row.file_path)),
                file_size=row.file_size,
                number_of_frames=row.number_of_frames or 1,
            ),
            row.metadata_json if with_metadata else None,
        )
        for row in rows
    ]
