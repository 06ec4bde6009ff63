"""Automatic jobs: a study that has been quiet for a while is complete enough
to run the active models whose rules accept one of its series.

Every STOW marks its studies in `study_activity` in its own transaction, so a
pending trigger survives a restart. One automatic job per model and content
of a series, none where an order's current results stand for that content:
a series that gained or changed instances since its last run
(a sender that paused longer than the quiet period, a corrected re-send, a
study deleted and sent again) is run again, while the server's own SEG
series, which changes the study but not the series, starts nothing (a
unique index holds this across server processes).
"""

import functools
import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, or_, select
from sqlalchemy.exc import IntegrityError

from server.db import dialect_insert, reading, write_connection
from server.jobs.queue import COMPLETED, JobQueue, now_micros
from server.jobs.registry import ActivationRefused, ModelRegistry, RegisteredModel
from server.jobs.series import accepted_series, series_content
from server.tables import inference_jobs, studies, study_activity

log = logging.getLogger(__name__)
_BATCH = 200


def study_date(text: str) -> str:
    """A date as `run_stored` takes it: a DICOM DA value (YYYYMMDD) naming a day of the calendar."""
    try:
        if len(text) == 8 and text.isascii() and text.isdigit():
            datetime.strptime(text, "%Y%m%d")
            return text
    except ValueError:
        pass
    raise ValueError(f"{text[:20]!r} is not a date as YYYYMMDD")


def touch_studies(connection: Connection, study_uids: set[str]) -> None:
    """In the transaction that changed the studies (STOW, DELETE): one
    statement for all of them, rows taken in UID order as every writer does."""
    if not study_uids:
        return
    now = now_micros()
    connection.execute(
        _touch_statement(connection.dialect.name),
        [{"study_instance_uid": study_uid, "changed_at": now} for study_uid in sorted(study_uids)],
    )


@functools.cache
def _touch_statement(dialect_name: str) -> Any:
    """The upsert of `touch_studies`, built once per dialect: every STOW runs it.
    RETURNING: one statement for all the rows (`dialect_insert`)."""
    upsert = dialect_insert(dialect_name, study_activity)
    return upsert.on_conflict_do_update(
        index_elements=["study_instance_uid"], set_={"changed_at": upsert.excluded.changed_at}
    ).returning(study_activity.c.study_instance_uid)


class StudyTriggers:
    def __init__(self, engine: Engine, queue: JobQueue, registry: ModelRegistry, quiet_seconds: float) -> None:
        self.engine = engine
        self.queue = queue
        self.registry = registry
        self.quiet_seconds = quiet_seconds

    def scan(self) -> list[str]:
        """Start the jobs of every study quiet long enough; the new task ids."""
        quiet_since = now_micros() - int(self.quiet_seconds * 1e6)
        with reading(self.engine) as connection:
            rows = connection.execute(
                select(study_activity).where(study_activity.c.changed_at <= quiet_since).limit(100)
            ).all()
        started: list[str] = []
        for row in rows:
            try:
                with write_connection(self.engine) as connection:
                    started += self._start(connection, row.study_instance_uid, row.changed_at)
            except IntegrityError:
                log.info("another server process started the jobs of study %s", row.study_instance_uid)
            except Exception:  # one study (a damaged bundle, say) must not hold up the others
                log.exception("could not start the jobs of study %s", row.study_instance_uid)
        return started

    def _start(self, connection: Connection, study_uid: str, changed_at: int) -> list[str]:
        taken = connection.execute(
            delete(study_activity).where(
                study_activity.c.study_instance_uid == study_uid, study_activity.c.changed_at == changed_at
            )
        ).rowcount
        if not taken:  # changed again since we looked, or taken by another process
            return []
        return [
            task_id for model in self.registry.active(connection)
            for task_id in self._start_model(connection, model, study_uid)
        ]

    def run_stored(self, key: str, study_date_from: str | None = None) -> list[str]:
        """Queue an active model on the studies stored before it was active (or
        while it was not): automatic jobs for each series it accepts, once per
        content, as a STOW would have started them. `study_date_from`
        (YYYYMMDD) leaves out older studies. Study by study, each in its own
        transaction; the new task ids."""
        model = self.registry.get(key)
        if not model.active:
            raise ActivationRefused(f"{key} is not active: activate it first (`medaiflow models activate {key}`)")
        started: list[str] = []
        after = 0
        while True:
            statement = select(studies.c.id, studies.c.study_instance_uid).where(studies.c.id > after)
            if study_date_from is not None:
                statement = statement.where(studies.c.study_date >= study_date_from)
            with reading(self.engine) as connection:
                batch = connection.execute(statement.order_by(studies.c.id).limit(_BATCH)).all()
            for row in batch:
                try:
                    with write_connection(self.engine) as connection:
                        if not self.registry.get(key, connection).active:  # deactivated meanwhile: no more
                            log.info("%s was deactivated: run-stored stops after %d jobs", key, len(started))
                            return started
                        started += self._start_model(connection, model, row.study_instance_uid)
                except IntegrityError:
                    log.info("another server process started the jobs of study %s", row.study_instance_uid)
            if len(batch) < _BATCH:
                return started
            after = batch[-1].id

    def _start_model(self, connection: Connection, model: RegisteredModel, study_uid: str) -> list[str]:
        started = []
        for stored in accepted_series(connection, study_uid, model.bundle.card.series):
            content = series_content(connection, stored.series_instance_uid)
            if self._has_run(connection, model.id, stored.series_instance_uid, content):
                continue
            task_id = str(uuid.uuid4())
            task = self.queue.create(
                connection, task_id, model.id, study_uid, stored.series_instance_uid, automatic=True,
                series_content=content,
            )
            self.queue.store.put(connection, task, task_id, "POST")
            started.append(task_id)
        return started

    @staticmethod
    def _has_run(connection: Connection, model_id: int, series_uid: str, content: str) -> bool:
        """Whether a job of the model stands for this content of the series:
        an automatic one started for it, or an order whose results from it are current."""
        jobs = inference_jobs.c
        return connection.execute(
            select(jobs.task_id).where(
                jobs.model_id == model_id,
                jobs.series_instance_uid == series_uid,
                or_(
                    # Jobs made before contents were recorded (migration 0009) stand for any content.
                    and_(jobs.automatic, or_(jobs.series_content == content, jobs.series_content.is_(None))),
                    and_(~jobs.automatic, jobs.status == COMPLETED, ~jobs.results_withdrawn,
                         jobs.series_content == content),
                ),
            )
        ).first() is not None
