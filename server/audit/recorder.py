"""Group commit for audit events that have no write transaction of their own
(reads, searches, queries, logins): the events of many requests share one
transaction, and each request waits until its own event is durable, so an
action whose record cannot be written fails (fail closed).

The thread also signs a checkpoint of the head every `checkpoint_seconds`.
"""

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


class AuditRecorder:
    def __init__(self, chain: AuditChain, max_batch: int = 256, checkpoint_seconds: float = 10.0) -> None:
        self.chain = chain
        self.max_batch = max_batch
        self.checkpoint_seconds = checkpoint_seconds
        self._pending: queue.Queue[tuple[dict[str, Any], Future[int]]] = queue.Queue()
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

    def submit(self, event: dict[str, Any]) -> "Future[int]":
        """The event's sequence number to come, once committed; the future
        fails when it cannot be. An event loop awaits it without a thread."""
        if self._thread is None:
            raise AuditUnavailable("the audit recorder is not running")
        done: Future[int] = Future()
        self._pending.put((event, done))
        return done

    def record(self, event: dict[str, Any], timeout: float = 30.0) -> int:
        """The event's sequence number, once committed; AuditUnavailable otherwise."""
        try:
            return self.submit(event).result(timeout)
        except AuditUnavailable:
            raise
        except Exception as error:
            raise AuditUnavailable(f"the audit record could not be written: {error}") from error

    def _run(self) -> None:
        last_checkpoint = time.monotonic()
        appended = False  # since the last checkpoint: an idle server takes no write lock
        while not (self._stopping.is_set() and self._pending.empty()):
            batch = self._take()
            if batch:
                self._append(batch)
                appended = True
            if appended and time.monotonic() - last_checkpoint >= self.checkpoint_seconds:
                last_checkpoint, appended = time.monotonic(), False
                try:
                    self.chain.checkpoint()
                except Exception:  # the next tick tries again; appends do not wait on it
                    log.exception("could not write an audit checkpoint")

    def _project(self) -> None:
        """On its own thread, so appends never wait for it: the searchable
        copies of what was appended (here, or by a write transaction
        elsewhere). A failure only delays them."""
        while not self._stopping.is_set():
            try:
                if self.chain.project() == 0:
                    self._stopping.wait(0.2)
            except Exception:
                log.exception("could not write the searchable copies of audit events")
                self._stopping.wait(1.0)

    def _take(self) -> list[tuple[dict[str, Any], "Future[int]"]]:
        try:
            batch = [self._pending.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < self.max_batch:
            try:
                batch.append(self._pending.get_nowait())
            except queue.Empty:
                break
        return batch

    def _append(self, batch: list[tuple[dict[str, Any], "Future[int]"]]) -> None:
        try:
            with write_connection(self.chain.engine) as connection:
                numbers = self.chain.append(connection, [event for event, _ in batch])
        except Exception as error:  # every waiting request learns it failed
            log.exception("could not append %d audit events", len(batch))
            for _, done in batch:
                done.set_exception(error)
            return
        for (_, done), number in zip(batch, numbers):
            done.set_result(number)
