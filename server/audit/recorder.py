"""Group commit for audit events that have no write transaction of their own
(reads, searches, queries, logins): the events of many requests share one
transaction, and each request waits until its own event is durable, so an
action whose record cannot be written fails (fail closed).

The thread also signs a checkpoint of the head every `checkpoint_seconds`.
"""

import asyncio
import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

from server.audit.chain import AuditChain
from server.db import write_connection

log = logging.getLogger(__name__)


class AuditUnavailable(RuntimeError):
    """The audit record could not be written: the action must not go ahead."""


# Who waits for an event's sequence number: a thread, or a request on an event loop.
_Waiter = Future[int] | asyncio.Future[int]


class AuditRecorder:
    """Appends wait up to `linger_seconds` for more events to share their
    transaction.

    The searchable copies are written when this process has appended nothing
    for `project_seconds`, or once `project_backlog` events wait: a copy
    costs more than the request it records (extracting and writing a dozen
    index rows), so a busy server defers it and an idle one catches up. A read
    of AuditEvents catches up first (`AuditChain.catch_up`), so it never
    misses an event; the chain itself, the record, is never deferred.
    """

    def __init__(self, chain: AuditChain, max_batch: int = 256, checkpoint_seconds: float = 10.0,
                 linger_seconds: float = 0.002, project_seconds: float = 1.0, project_batch: int = 1000,
                 project_backlog: int = 20_000) -> None:
        self.chain = chain
        self.max_batch = max_batch
        self.checkpoint_seconds = checkpoint_seconds
        self.linger_seconds = linger_seconds
        self.project_seconds = project_seconds
        self.project_batch = project_batch
        self.project_backlog = project_backlog
        self._last_append = 0.0
        # The events of one action and who waits for them; none: a `flush` waiting for everything queued before it.
        self._pending: queue.Queue[tuple[tuple[dict[str, Any], ...], _Waiter]] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._projector: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="audit-recorder", daemon=True)
        self._thread.start()
        self._projector = threading.Thread(target=self._project, name="audit-projector", daemon=True)
        self._projector.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in (self._thread, self._projector):
            if thread is not None:
                thread.join(timeout=30)
        self._thread = self._projector = None

    def submit(self, *events: dict[str, Any]) -> "asyncio.Future[int]":
        """From an event loop: the sequence number of the last of the events
        (one action's, appended in one transaction: all or none) to come, once
        committed; the future fails when they cannot be. The futures of one
        batch are settled by one call into their loop, not one each."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(events, done)
        return done

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event submitted before this call has been
        appended (or failed, which its requester learns): a reader of the
        chain as of now, such as a Bulk Data export at its transactionTime,
        must not miss one still waiting here. AuditUnavailable after
        `timeout`. This process's queue only: another server process's
        events are its own."""
        if self._thread is None:
            return  # nothing queued is waiting: `stop` drains the queue before it returns
        done: Future[int] = Future()
        self._pending.put(((), done))
        try:
            done.result(timeout)
        except TimeoutError as error:
            raise AuditUnavailable(f"the audit events queued were not appended within {timeout} s") from error

    def _enqueue(self, events: tuple[dict[str, Any], ...], done: _Waiter) -> None:
        if self._thread is None:
            raise AuditUnavailable("the audit recorder is not running")
        if not events:
            raise ValueError("nothing to record")
        self._pending.put((events, done))

    def record(self, *events: dict[str, Any], timeout: float = 30.0) -> int:
        """The sequence number of the last of the events (one action's, in one
        transaction), once committed; AuditUnavailable otherwise."""
        done: Future[int] = Future()
        try:
            self._enqueue(events, done)
            return done.result(timeout)
        except AuditUnavailable:
            raise
        except Exception as error:
            raise AuditUnavailable(f"the audit record could not be written: {error}") from error

    def _run(self) -> None:
        last_checkpoint = time.monotonic()
        while not (self._stopping.is_set() and self._pending.empty()):
            batch = self._take()
            actions = [(events, done) for events, done in batch if events]
            if actions:
                self._append(actions)
            # Taken and appended in the order submitted: all that came before a flush's mark is settled now.
            for events, done in batch:
                if not events:
                    done.set_result(0)
            # Whoever moved the head: write transactions append their own records, not through here.
            if time.monotonic() - last_checkpoint >= self.checkpoint_seconds:
                last_checkpoint = time.monotonic()
                try:
                    self.chain.checkpoint()
                except Exception:  # the next tick tries again; appends do not wait on it
                    log.exception("could not write an audit checkpoint")

    def _project(self) -> None:
        """On its own thread, so appends never wait for it: the searchable
        copies of what was appended (here, or by a write transaction
        elsewhere), deferred while this process is busy (see the class). A
        failure only delays them."""
        while not self._stopping.is_set():
            try:
                busy = time.monotonic() - self._last_append < self.project_seconds
                deferred = busy and self.chain.backlog() < self.project_backlog
                if deferred or self.chain.project(self.project_batch) < self.project_batch:  # or caught up
                    self._stopping.wait(self.project_seconds)
            except Exception:
                log.exception("could not write the searchable copies of audit events")
                self._stopping.wait(1.0)

    def _take(self) -> list[tuple[tuple[dict[str, Any], ...], _Waiter]]:
        try:
            batch = [self._pending.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.linger_seconds
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._pending.get(timeout=remaining) if remaining > 0 else self._pending.get_nowait())
            except queue.Empty:
                break
        return batch

    def _append(self, batch: list[tuple[tuple[dict[str, Any], ...], "_Waiter"]]) -> None:
        try:
            with write_connection(self.chain.engine) as connection:
                appended = self.chain.append(connection, [event for events, _ in batch for event in events])
            # Each action's waiter learns the number of its last event.
            ends = itertools.accumulate(len(events) for events, _ in batch)
            numbers: list[int] | None = [appended[end - 1] for end in ends]
            error: Exception | None = None
            self._last_append = time.monotonic()
        except Exception as failure:  # every waiting request learns it failed
            log.exception("could not append %d audit events", len(batch))
            numbers, error = None, failure
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], int | None]]] = {}
        for position, (_, done) in enumerate(batch):
            number = numbers[position] if numbers is not None else None
            if isinstance(done, asyncio.Future):
                by_loop.setdefault(done.get_loop(), []).append((done, number))
            elif number is not None:
                done.set_result(number)
            else:
                done.set_exception(error or AuditUnavailable("no sequence number"))
        for loop, waiters in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, waiters, error)
            except RuntimeError:  # the loop has closed: nobody waits any more
                pass


def _settle(waiters: list[tuple["asyncio.Future[int]", int | None]], error: Exception | None) -> None:
    for done, number in waiters:
        if done.done():  # its request gave up waiting
            continue
        if number is not None:
            done.set_result(number)
        else:
            done.set_exception(error or AuditUnavailable("no sequence number"))
