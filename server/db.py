"""Database engines: SQLite (WAL) by default, PostgreSQL by URL.

SQLite takes its write lock late by default, so two writers that both read
first can fail with "database is locked" instead of waiting. Write units ask
for `BEGIN IMMEDIATE` through `write_connection()`, which makes them queue on
the busy timeout instead.
"""

import random
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

SQLITE_BUSY_TIMEOUT_MS = 60_000
SQLITE_POOL_SIZE = 40


# The autocommit companion of each PostgreSQL engine, for `reading()`.
_READ_ENGINES: "weakref.WeakKeyDictionary[Engine, Engine]" = weakref.WeakKeyDictionary()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # A database host that stops answering must fail /readyz quickly, not after minutes. Sessions are named
    # (a URL may name them otherwise): a type history waits only for this server's open transactions.
    connect_args = {"connect_timeout": 5, "application_name": parsed.query.get("application_name", "medaiflow")}
    options = {"pool_size": 10, "max_overflow": 20, "connect_args": connect_args}
    engine = create_engine(url, pool_pre_ping=True, **options)  # type: ignore[arg-type]
    # Reads get a pool of their own whose connections are in autocommit from
    # the start: switching a pooled connection's isolation level costs a
    # round trip at checkout and another at checkin. It pings no connection
    # either: a read that meets a dropped one fails once, and the pool then
    # replaces all of them.
    # Nor does it roll back at checkin: in autocommit there is nothing to undo.
    reader = create_engine(url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **options)  # type: ignore[arg-type]
    _READ_ENGINES[engine] = reader
    event.listen(engine, "engine_disposed", lambda _: reader.dispose())
    return engine


def database_files(engine: Engine) -> frozenset[Path]:
    """The files of an SQLite database: itself, its WAL, shared-memory and
    rollback journal. Nothing in this process may open one and close it
    again (reading a folder of files, say): closing any descriptor of a file
    drops every POSIX lock the process holds on it, and another process that
    then thinks itself alone checkpoints the WAL away or corrupts the
    database (sqlite.org/howtocorrupt.html, 2.2). None for other databases."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return frozenset()
    path = Path(database).resolve()
    return frozenset({path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))})


def _sqlite_engine(url: str) -> Engine:
    # A pool as large as the request thread pool: connections beyond the pool
    # are closed after each use, and each new one pays for its PRAGMAs.
    engine = create_engine(
        url,
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=SQLITE_POOL_SIZE,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("sqlite_autocommit"):
            return
        mode = "IMMEDIATE" if options.get("sqlite_immediate") else "DEFERRED"
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


class CommitWitness(Protocol):
    """Told of every write transaction in its context (one request): it may
    write inside the transaction before the commit, and learns of the commit."""

    def before_commit(self, connection: Connection) -> None: ...

    def committed(self) -> None: ...


commit_witness: ContextVar[CommitWitness | None] = ContextVar("commit_witness", default=None)


@contextmanager
def write_connection(engine: Engine, bookkeeping: bool = False) -> Iterator[Connection]:
    """A connection whose transaction holds the write lock from its start (SQLite);
    on PostgreSQL an ordinary READ COMMITTED transaction. What `before_commit`
    registered on it runs last, inside the transaction, then the context's
    commit witness, unless the transaction is `bookkeeping` (a journal of
    files on their way in or out, not the change a request asked for)."""
    witness = None if bookkeeping else commit_witness.get()
    with engine.connect().execution_options(sqlite_immediate=True) as connection:
        try:
            with connection.begin():
                yield connection
                _flush(connection)
                if connection.info.get(_CHANGED_NOTHING):
                    witness = None
                if witness is not None:
                    witness.before_commit(connection)
        finally:
            _forget(connection)
    if witness is not None:
        witness.committed()


@contextmanager
def rehearsal_connection(engine: Engine) -> Iterator[Connection]:
    """A write transaction that is always rolled back, its `before_commit`
    work done first: whether a write would succeed, judged by the write
    itself (FHIR $validate), with nothing of it kept and nothing recorded."""
    with engine.connect().execution_options(sqlite_immediate=True) as connection:
        transaction = connection.begin()
        try:
            yield connection
            _flush(connection)
        finally:
            transaction.rollback()
            _forget(connection)


def _flush(connection: Connection) -> None:
    for hooks in (_BEFORE_COMMIT, _LAST_BEFORE_COMMIT):
        for flush in connection.info.get(hooks, {}).values():
            flush(connection)


def _forget(connection: Connection) -> None:
    # `info` belongs to the pooled DBAPI connection: nothing may leak into its next use.
    for key in (_BEFORE_COMMIT, _LAST_BEFORE_COMMIT, _WRITTEN, _CHANGED_NOTHING):
        connection.info.pop(key, None)


def changed_nothing(connection: Connection) -> None:
    """This write transaction turned out to change nothing that its request
    asked for (a STOW whose every instance was refused, or already stored):
    it commits as bookkeeping, and the request is recorded by its answer,
    which then says what happened (409, say), not a committed change."""
    connection.info[_CHANGED_NOTHING] = True


# PostgreSQL ends one of two transactions that wait on each other (deadlock
# detected) or that cannot be serialized; run again, the loser then succeeds.
_RETRIED_SQLSTATES = frozenset({"40P01", "40001"})
_ATTEMPTS = 3
ResultT = TypeVar("ResultT")


def retried_on_conflict(work: Callable[[], ResultT]) -> ResultT:
    """`work` (which opens its own write transactions), run again when
    PostgreSQL ended its transaction to break a deadlock. Everything it wrote
    was rolled back, its audit record included, so running it again is safe."""
    attempt = 1
    while True:
        try:
            return work()
        except DBAPIError as error:
            if getattr(error.orig, "pgcode", None) not in _RETRIED_SQLSTATES or attempt == _ATTEMPTS:
                raise
        time.sleep(random.uniform(0.005, 0.05) * attempt)
        attempt += 1


# SQLite's SQLITE_FULL ("database or disk is full"); PostgreSQL's SQLSTATE class 53,
# Insufficient Resources (disk full, out of memory, too many connections).
_SQLITE_FULL = 13
_POSTGRES_INSUFFICIENT_RESOURCES = "53"


def database_out_of_room(error: Exception) -> bool:
    """Whether the database refused a write for want of room, not for what was written."""
    if not isinstance(error, DBAPIError):
        return False
    if getattr(error.orig, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    return str(getattr(error.orig, "pgcode", None) or "").startswith(_POSTGRES_INSUFFICIENT_RESOURCES)


_BEFORE_COMMIT = "medaiflow.before_commit"
_LAST_BEFORE_COMMIT = "medaiflow.last_before_commit"
_WRITTEN = "medaiflow.written"
_CHANGED_NOTHING = "medaiflow.changed_nothing"


class Written(NamedTuple):
    resources: set[str]
    patients: set[str]
    # Each study whose ImagingStudy this transaction synced: its Patient id as written, None for a study gone.
    study_patients: dict[str, str | None]


def advisory_locks(connection: Connection, names: Iterable[str]) -> None:
    """Hold these named locks until the transaction ends, on PostgreSQL
    (SQLite's writers take turns already): for rows that may not exist yet,
    which FOR UPDATE cannot hold. Taken in one statement, in the order of
    the locks themselves (64-bit hashes of the names; the subquery's order
    is the order they are taken), as every writer takes them: writers of
    overlapping sets queue instead of deadlocking."""
    wanted = sorted(set(names))
    if connection.dialect.name == "postgresql" and wanted:
        connection.execute(
            text("SELECT pg_advisory_xact_lock(lock) FROM (SELECT DISTINCT hashtextextended(name, 0) AS lock"
                 " FROM unnest(CAST(:names AS text[])) AS name ORDER BY 1) AS ordered"),
            {"names": wanted},
        )


def note_written(connection: Connection, reference: str, patients: Iterable[str] = ()) -> None:
    """A resource (`Type/id`) this write transaction changes, and the Patient
    ids its versions before and after belong to, for the audit record of its
    commit (`written`); forgotten if it rolls back."""
    note = connection.info.setdefault(_WRITTEN, Written(set(), set(), {}))
    note.resources.add(reference)
    note.patients.update(patients)


def note_study_patients(connection: Connection, patients: Mapping[str, str | None]) -> None:
    """The Patient id of each study whose ImagingStudy this write transaction
    synced (None: the study is gone), so that its audit record need not look
    them up again; forgotten if it rolls back."""
    connection.info.setdefault(_WRITTEN, Written(set(), set(), {})).study_patients.update(patients)


def written(connection: Connection) -> Written:
    note = connection.info.get(_WRITTEN)
    if note is None:
        return Written(set(), set(), {})
    return Written(set(note.resources), set(note.patients), dict(note.study_patients))


FlushT = TypeVar("FlushT", bound=Callable[[Connection], None])


def before_commit(connection: Connection, key: str, make: Callable[[], FlushT], last: bool = False) -> FlushT:
    """The flush registered under `key` on this write transaction, made by
    `make` the first time: work gathered during the transaction and written
    once at its end (e.g. in one lock order for every writer). `last` flushes
    run after the others, whenever they were registered: the audit chain's
    head is taken last by every writer, so no two wait on each other for it."""
    hooks = connection.info.setdefault(_LAST_BEFORE_COMMIT if last else _BEFORE_COMMIT, {})
    if key not in hooks:
        hooks[key] = make()
    return hooks[key]  # type: ignore[no-any-return]


@contextmanager
def writing(engine: Engine, connection: Connection | None = None) -> Iterator[Connection]:
    """The caller's write transaction when it has one (a FHIR transaction
    Bundle, a STOW batch), else a new one."""
    if connection is not None:
        yield connection
        return
    with write_connection(engine) as own:
        yield own


@contextmanager
def reading(engine: Engine, connection: Connection | None = None) -> Iterator[Connection]:
    """The caller's connection when it has one (to see its own uncommitted
    writes, as in a FHIR transaction), else a fresh one without a transaction.

    Each statement of a read then commits on its own: no BEGIN and ROLLBACK
    round trips around a single SELECT, which is most of a FHIR read's cost
    on PostgreSQL. Reads see committed data, statement by statement.
    """
    if connection is not None:
        yield connection
        return
    reader = _READ_ENGINES.get(engine)
    if reader is not None:
        with reader.connect() as own:
            yield own
        return
    with engine.connect().execution_options(sqlite_autocommit=True) as own:
        yield own


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def insert_rows(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Many rows of plain values (text, numbers, None; no column type that
    converts them), one set of keys for all, into `table`: past SQLAlchemy's
    handling of each row's parameters, which took half of the time of
    inserting a STOW's FHIR search-index rows. psycopg2's execute_values
    sends them as a few INSERTs of many rows; sqlite3's executemany runs one
    prepared statement for all."""
    if not rows:
        return
    columns = list(rows[0])
    values = [tuple(map(row.__getitem__, columns)) for row in rows]
    names = ", ".join(columns)
    if connection.dialect.name == "postgresql":
        from psycopg2.extras import execute_values

        statement = f"INSERT INTO {table.name} ({names}) VALUES %s"
        driver_error = connection.dialect.loaded_dbapi.Error
        with connection.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
            try:
                execute_values(cursor, statement, values, page_size=1000)
            except driver_error as error:  # as SQLAlchemy would raise it: callers handle those (and retry deadlocks)
                raise DBAPIError.instance(statement, None, error, driver_error) from error
    else:
        marks = ", ".join("?" for _ in columns)
        connection.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", values)


def dialect_insert(dialect_name: str, table: Table) -> "postgresql.Insert | sqlite.Insert":
    """An INSERT that can take ON CONFLICT (PostgreSQL's, or else SQLite's).

    Executed with many rows, one with ON CONFLICT needs a RETURNING clause to
    go as one statement: without one, SQLAlchemy hands it to psycopg2's
    executemany, a round trip per row."""
    return (postgresql if dialect_name == "postgresql" else sqlite).insert(table)

