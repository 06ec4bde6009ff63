"""The tamper-evident audit trail: a hash chain of AuditEvents with signed
checkpoints of its head.

Each appended event gets the next sequence number; its hash is SHA-256 over
its predecessor's hash (hex) and the RFC 8785 canonical JSON of the event,
which is stored as those exact bytes. Appenders lock the one head row, so on
PostgreSQL and SQLite alike the chain never forks, skips or repeats a number.
The chain is the record. Its searchable copy, a FHIR AuditEvent per event
(id = sequence number, the chain's numbers in an extension), is written by
`project` later, outside the appender's transaction (see the recorder for
when): an append is then a few rows, and verification never reads the copy.

Every `checkpoint_every` events, and on `checkpoint()`, the head (sequence,
hash, time) is signed with the server's Ed25519 key: editing, removing or
reordering events breaks the hashes, and cutting events off the end leaves a
checkpoint (or the head row) pointing past the end. `verify` reports the first
broken sequence number.

The database alone cannot vouch for its own end: whoever can write it can
rewrite the last events, recompute their hashes, and delete the checkpoints
that named them. So each checkpoint `checkpoint()` signs is also written to
the anchor file, beside the signing key in the data directory, and `verify`
holds the chain against it too: the record can then be cut or rewritten
unnoticed only by someone who can also write the data directory, and that
one holds the key anyway.
"""

import base64
import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Dialect, Engine, String, and_, cast, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from server.db import reading, write_connection
from server.fhir.store import ResourceStore, misindexed, stored_json
from server.tables import audit_checkpoints, audit_events, audit_head, audit_projection, fhir_resources

GENESIS = "0" * 64
CHAIN_EXTENSION = "urn:medaiflow:audit-chain"
_HEAD_ID = 1
# The copies whose index rows verification reads and recomputes together.
_INDEX_CHECKED_AT_ONCE = 1000


def canonical_json(event: dict[str, Any]) -> bytes:
    """RFC 8785 (JCS). For JSON without floating-point numbers, which is what
    AuditEvents hold, orjson with sorted keys writes exactly the JCS bytes
    (same escapes, UTF-8, no spaces, keys in code-point order: tests pin this
    against the reference implementation), ten times faster; anything with a
    float goes through the reference implementation."""
    if _has_float(event):
        return rfc8785.dumps(event)
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return False


def event_hash(previous_hash: str, canonical: bytes | memoryview) -> str:
    digest = hashlib.sha256(previous_hash.encode("ascii"))
    digest.update(canonical)
    return digest.hexdigest()


def chained_resource(event: dict[str, Any], seq: int, previous_hash: str, digest: str) -> dict[str, Any]:
    """The AuditEvent as served: the event, its id, and the chain's numbers."""
    return {
        **event,
        "id": str(seq),
        "extension": [*event.get("extension", []), {
            "url": CHAIN_EXTENSION,
            "extension": [
                {"url": "sequence", "valueInteger": seq},
                {"url": "previousHash", "valueString": previous_hash},
                {"url": "hash", "valueString": digest},
            ],
        }],
    }


@dataclass(frozen=True)
class Verification:
    events: int
    checkpoints: int
    first_broken: int | None  # the first sequence number whose record cannot be trusted
    problem: str | None

    @property
    def intact(self) -> bool:
        return self.first_broken is None


class Signer:
    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)

    @staticmethod
    def _statement(seq: int, digest: str, created: int) -> bytes:
        return f"medaiflow-audit-checkpoint:{seq}:{digest}:{created}".encode()

    def sign(self, seq: int, digest: str, created: int) -> str:
        return base64.b64encode(self._key.sign(self._statement(seq, digest, created))).decode()

    def verifies(self, seq: int, digest: str, created: int, signature: str) -> bool:
        try:
            self._key.public_key().verify(base64.b64decode(signature), self._statement(seq, digest, created))
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    created: int
    signature: str


class AuditChain:
    def __init__(
        self, engine: Engine, store: ResourceStore, signer: Signer, checkpoint_every: int = 1000,
        anchor: Path | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.anchor = anchor

    def append(self, connection: Connection, events: Sequence[dict[str, Any]]) -> list[int]:
        """In the caller's write transaction: the action and its record commit,
        or roll back, together. Returns the sequence numbers given."""
        if not events:
            return []
        statements = _AppendStatements.for_dialect(connection.dialect)
        cursor = connection.connection.cursor()
        try:
            cursor.execute(statements.head)
            first, previous = cursor.fetchone()
            seq, values = first, []
            for event in events:
                seq += 1
                canonical = canonical_json(event)
                digest = event_hash(previous, canonical)
                values += (seq, previous, digest, canonical)
                previous = digest
            cursor.execute(statements.insert(len(events)), values)
            cursor.execute(statements.move_head, (seq, previous))
        except connection.dialect.loaded_dbapi.Error as error:  # as SQLAlchemy would raise it: callers handle those
            raise DBAPIError.instance(statements.head, None, error, connection.dialect.loaded_dbapi.Error) from error
        finally:
            cursor.close()
        if seq // self.checkpoint_every > first // self.checkpoint_every:
            self._checkpoint(connection, seq, previous)
        return list(range(first + 1, seq + 1))

    def project(self, limit: int = 1000) -> int:
        """Write the next events of the chain as FHIR AuditEvents; how many.
        One projector at a time (the row lock), each event exactly once."""
        if self.backlog() == 0:  # a read: no write lock while there is nothing to do
            return 0
        with write_connection(self.engine) as connection:
            done = connection.execute(
                select(audit_projection.c.seq).where(audit_projection.c.id == _HEAD_ID).with_for_update()
            ).scalar_one()
            rows = connection.execute(
                select(audit_events).where(audit_events.c.seq > done).order_by(audit_events.c.seq).limit(limit)
            ).all()
            if not rows:
                return 0
            self.store.add_new(connection, [
                (chained_resource(orjson.loads(row.event_json), row.seq, row.previous_hash, row.hash), str(row.seq))
                for row in rows
            ])
            connection.execute(
                update(audit_projection).where(audit_projection.c.id == _HEAD_ID).values(seq=rows[-1].seq)
            )
            return len(rows)

    def backlog(self) -> int:
        """Events appended but not yet projected."""
        with reading(self.engine) as connection:
            done = connection.execute(select(audit_projection.c.seq)).scalar_one()
            newest = connection.execute(select(audit_head.c.seq)).scalar_one()
        return int(newest - done)

    def catch_up(self) -> None:
        """Project everything appended so far: before AuditEvents are read,
        so that a search sees every event recorded before it."""
        while self.project() > 0:
            pass

    def checkpoint(self) -> int | None:
        """Sign the head now, if it moved since the last checkpoint."""
        with reading(self.engine) as connection:  # an idle server takes no write lock
            if connection.execute(select(audit_head.c.seq)).scalar_one() == self._last_checkpoint(connection):
                return None
        with write_connection(self.engine) as connection:
            head = connection.execute(
                select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == _HEAD_ID).with_for_update()
            ).one()
            if head.seq == 0 or head.seq == self._last_checkpoint(connection):
                return None
            signed = self._checkpoint(connection, head.seq, head.hash)
        self._write_anchor(signed)  # once committed: an anchor past the chain would say events were cut
        return int(head.seq)

    @staticmethod
    def _last_checkpoint(connection: Connection) -> int | None:
        return connection.execute(
            select(audit_checkpoints.c.seq).order_by(audit_checkpoints.c.seq.desc()).limit(1)
        ).scalar()

    def _checkpoint(self, connection: Connection, seq: int, digest: str) -> Checkpoint:
        created = time.time_ns() // 1000
        signed = Checkpoint(seq, digest, created, self.signer.sign(seq, digest, created))
        connection.execute(insert(audit_checkpoints).values(
            seq=seq, hash=digest, created=created, signature=signed.signature
        ))
        return signed

    def _write_anchor(self, checkpoint: Checkpoint) -> None:
        """Replace the anchor with `checkpoint`, atomically, unless it holds a
        later one (written by another server process meanwhile)."""
        if self.anchor is None:
            return
        current = self.read_anchor()
        if current is not None and current.seq >= checkpoint.seq:
            return
        partial = self.anchor.with_name(f".{self.anchor.name}.{os.getpid()}")
        partial.write_text(json.dumps(checkpoint.__dict__))
        os.replace(partial, self.anchor)

    def read_anchor(self) -> Checkpoint | None:
        if self.anchor is None or not self.anchor.exists():
            return None
        try:
            return Checkpoint(**json.loads(self.anchor.read_text()))
        except (TypeError, ValueError):
            return Checkpoint(0, "", 0, "")  # unreadable: no signature verifies it, so verify reports it

    def verify(self, chunk: int = 20_000) -> Verification:
        """Recompute the chain from its stored bytes, then hold the
        checkpoints, the anchor, the head and the searchable copies against it."""
        anchor = self.read_anchor()
        with reading(self.engine) as connection:
            checkpoints = connection.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq)).all()
            head = connection.execute(select(audit_head).where(audit_head.c.id == _HEAD_ID)).one()
            wanted = {checkpoint.seq for checkpoint in checkpoints} | ({anchor.seq} if anchor else set())
            hashes: dict[int, str] = {}
            expected, previous, after = 1, GENESIS, 0
            statements = _AppendStatements.for_dialect(connection.dialect)
            cursor = connection.connection.cursor()
            try:
                while True:
                    # Up to the head read above: events appended meanwhile are the next verification's.
                    rows = statements.read_events(cursor, connection.dialect, (after, head.seq, chunk))
                    for seq, previous_hash, digest, event_json in rows:
                        problem = _check(seq, previous_hash, digest, event_json, expected, previous)
                        if problem is not None:
                            return Verification(expected - 1, len(checkpoints), min(expected, seq), problem)
                        if seq in wanted:
                            hashes[seq] = digest
                        expected, previous = seq + 1, digest
                    if len(rows) < chunk:
                        break
                    after = rows[-1][0]
            finally:
                cursor.close()
        last = expected - 1
        named = [(f"the checkpoint at {checkpoint.seq}", checkpoint) for checkpoint in checkpoints]
        if anchor is not None:
            named.append((f"the anchor file's checkpoint ({self.anchor})", anchor))
        for name, checkpoint in named:
            if not self.signer.verifies(checkpoint.seq, checkpoint.hash, checkpoint.created, checkpoint.signature):
                return Verification(last, len(checkpoints), checkpoint.seq, f"{name} is not signed by this server")
            if checkpoint.seq > last:
                return Verification(last, len(checkpoints), last + 1,
                                    f"events {last + 1} to {checkpoint.seq} were removed: {name} vouches for them")
            if hashes.get(checkpoint.seq) != checkpoint.hash:
                return Verification(last, len(checkpoints), checkpoint.seq,
                                    f"event {checkpoint.seq} differs from {name}")
        if head.seq != last or head.hash != previous:
            return Verification(last, len(checkpoints), min(head.seq, last) + 1,
                                f"the chain ends at {last} but its head says {head.seq}")
        for problem in (self._first_differing_copy(chunk), self._first_copy_of_no_event(chunk, last)):
            if problem is not None:
                return Verification(last, len(checkpoints), *problem)
        return Verification(last, len(checkpoints), None, None)

    def _first_differing_copy(self, chunk: int) -> tuple[int, str] | None:
        """The copies are what reads and searches serve: one edited in place
        would be served as the record while the chain stays intact, and one
        removed or marked deleted would hide its event from the auditor. So
        are their search-index rows, recomputed from the verified event: one
        altered, removed or added makes a search of the trail miss the event
        or find it by what it does not say."""
        if self.engine.dialect.name == "sqlite":
            return self._compare_copies(chunk, as_text=False)
        try:
            # Text, as the chain's own read (`read_events`): psycopg2 fetches bytea several times slower.
            return self._compare_copies(chunk, as_text=True)
        except DBAPIError:  # bytes that are not UTF-8, put there by hand: compared as bytes
            return self._compare_copies(chunk, as_text=False)

    def _compare_copies(self, chunk: int, as_text: bool) -> tuple[int, str] | None:
        def fetched(column: Any) -> Any:
            return func.convert_from(column, "UTF8") if as_text else column

        statement = (
            select(audit_events.c.seq, audit_events.c.previous_hash, audit_events.c.hash,
                   fetched(audit_events.c.event_json), fhir_resources.c.id, fetched(fhir_resources.c.resource_json),
                   fhir_resources.c.version_id, fhir_resources.c.last_updated, fhir_resources.c.deleted)
            .outerjoin(fhir_resources, and_(fhir_resources.c.resource_type == "AuditEvent",
                                            fhir_resources.c.resource_id == cast(audit_events.c.seq, String)))
            .order_by(audit_events.c.seq).limit(chunk)
        )
        after = 0
        with reading(self.engine) as connection:
            # Read first: every event up to it had its copy committed by then (`project` moves it with them).
            projected = connection.execute(select(audit_projection.c.seq)).scalar_one()
            while True:
                rows = connection.execute(statement.where(audit_events.c.seq > after)).all()
                copies: list[tuple[int, int, dict[str, Any]]] = []  # (pk, seq, copy) whose index is still to check
                for seq, previous_hash, digest, event_json, pk, copy_json, version_id, last_updated, deleted in rows:
                    problem = None
                    if version_id is None or deleted:
                        if seq <= projected:
                            problem = f"the searchable copy of event {seq} (AuditEvent/{seq}) is gone"
                    else:
                        resource = chained_resource(orjson.loads(event_json), seq, previous_hash, digest)
                        # Written once, by `project`: the bytes it wrote are the only right ones.
                        copy = copy_json.encode() if isinstance(copy_json, str) else copy_json
                        if copy is None or bytes(copy) != stored_json(resource, str(seq), version_id, last_updated):
                            problem = f"the searchable copy of event {seq} (AuditEvent/{seq}) differs from the chain"
                        else:
                            copies.append((pk, seq, resource))
                    # The copies before it come first; a thousand at a time bounds what is held.
                    if problem is not None or len(copies) >= _INDEX_CHECKED_AT_ONCE:
                        found = _first_misindexed(connection, copies)
                        copies = []
                        if found is not None or problem is not None:
                            return found or (int(seq), problem)
                found = _first_misindexed(connection, copies)
                if found is not None:
                    return found
                if len(rows) < chunk:
                    return None
                after = rows[-1][0]

    def _first_copy_of_no_event(self, chunk: int, last: int) -> tuple[int, str] | None:
        """An AuditEvent that is no copy of an event of the chain: served as a
        record of something that was never recorded. The copies' ids are the
        sequence numbers, as `project` writes them, and none comes before its
        event."""
        ids = (select(fhir_resources.c.resource_id).where(fhir_resources.c.resource_type == "AuditEvent")
               .order_by(fhir_resources.c.resource_id).limit(chunk))
        after = ""
        with reading(self.engine) as connection:
            while True:
                found = connection.execute(ids.where(fhir_resources.c.resource_id > after)).scalars().all()
                for resource_id in found:
                    seq = int(resource_id) if resource_id.isdecimal() and resource_id.isascii() else None
                    if seq is None or str(seq) != resource_id or seq < 1:
                        return last + 1, f"AuditEvent/{resource_id} is no event of the chain"
                    if seq > last and connection.execute(
                        select(audit_events.c.seq).where(audit_events.c.seq == seq)
                    ).first() is None:
                        return seq, f"AuditEvent/{resource_id} is no event of the chain"
                if len(found) < chunk:
                    return None
                after = found[-1]


def _first_misindexed(connection: Connection, copies: list[tuple[int, int, dict[str, Any]]],
                      ) -> tuple[int, str] | None:
    """The first of these (pk, seq, copy) whose search-index rows are not the ones the copy gives."""
    wrong = set(misindexed(connection, [(pk, resource) for pk, _, resource in copies]))
    seq = next((seq for pk, seq, _ in copies if pk in wrong), None)
    if seq is None:
        return None
    return int(seq), (f"the search index of event {seq} (AuditEvent/{seq}) differs from the event: "
                      f"searches of the audit trail would miss it or find it by what it does not say")


@dataclass(frozen=True)
class _AppendStatements:
    """The chain's hot statements in the driver's own SQL: every request
    appends, and SQLAlchemy's work per statement cost several times the
    statements themselves (bench/RESULTS.md); verification reads every row."""

    head: str
    move_head: str
    events_after: str  # (after, up to, limit): a chunk of the chain to verify
    events_after_as_text: str | None  # the same with the JSON as text, where bytes cost more to fetch
    mark: str

    @staticmethod
    @functools.cache
    def for_dialect(dialect: Dialect) -> "_AppendStatements":
        marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}
        if dialect.paramstyle not in marks:
            raise NotImplementedError(f"no audit append for the {dialect.paramstyle} parameter style")
        mark = marks[dialect.paramstyle]
        # SQLite's write transaction (BEGIN IMMEDIATE) already shuts out other writers.
        lock = "" if dialect.name == "sqlite" else " FOR UPDATE"
        return _AppendStatements(
            head=f"SELECT seq, hash FROM audit_head WHERE id = {_HEAD_ID}{lock}",
            move_head=f"UPDATE audit_head SET seq = {mark}, hash = {mark} WHERE id = {_HEAD_ID}",
            events_after=f"SELECT seq, previous_hash, hash, event_json FROM audit_events"
                         f" WHERE seq > {mark} AND seq <= {mark} ORDER BY seq LIMIT {mark}",
            # PostgreSQL sends bytea as hex text: five times slower to fetch than the UTF-8 text it holds.
            events_after_as_text=None if dialect.name == "sqlite" else
            f"SELECT seq, previous_hash, hash, convert_from(event_json, 'UTF8') FROM audit_events"
            f" WHERE seq > {mark} AND seq <= {mark} ORDER BY seq LIMIT {mark}",
            mark=mark,
        )

    def read_events(self, cursor: Any, dialect: Dialect, chunk: tuple[int, int, int]) -> list[tuple[Any, ...]]:
        """A chunk of the chain. Bytes that are not UTF-8 (tampered with, as
        the canonical JSON always is UTF-8) are read as bytes, so that
        verification reports them rather than failing."""
        if self.events_after_as_text is not None:
            try:
                cursor.execute(self.events_after_as_text, chunk)
                return [(seq, previous, digest, text.encode("utf-8")) for seq, previous, digest, text in cursor.fetchall()]
            except dialect.loaded_dbapi.Error:
                cursor.connection.rollback()
        cursor.execute(self.events_after, chunk)
        return list(cursor.fetchall())

    def insert(self, count: int) -> str:
        row = f"({self.mark}, {self.mark}, {self.mark}, {self.mark})"
        return f"INSERT INTO audit_events (seq, previous_hash, hash, event_json) VALUES {', '.join([row] * count)}"


def _check(seq: int, previous_hash: str, digest: str, event_json: bytes | memoryview, expected: int,
           previous: str) -> str | None:
    if seq != expected:
        return f"event {expected} is missing"
    if previous_hash != previous:
        return f"event {seq} does not follow event {seq - 1} (moved, or its predecessor was replaced)"
    # The chain stores bytes; a value of another type (text, a number) was put there by hand.
    if not isinstance(event_json, (bytes, memoryview)) or event_hash(previous, event_json) != digest:
        return f"event {seq} was altered after it was recorded"
    return None
