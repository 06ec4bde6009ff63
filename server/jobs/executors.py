"""Who runs queued jobs: threads in the server process, or Celery workers.

The database is the queue of record either way; an executor only decides
where a job runs. The local one polls the queue (and is woken early); the
Celery one hands job ids to a broker, and `medaiflow worker` processes on
any number of machines claim them from the database when they arrive.
"""

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from kombu.exceptions import OperationalError

from server.jobs.queue import Job, JobQueue

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
RUN_JOB = "medaiflow.run_job"


def worker_name(kind: str) -> str:
    return f"{kind}:{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Runner(Protocol):
    def start(self, jobs: list[Job], behind: Any = None) -> Any:
        """Begin preparing a batch, to be finished after the batch `behind`;
        returns what `finish` takes."""

    def finish(self, batch: Any) -> None: ...

    def run(self, jobs: list[Job]) -> None: ...

    def close(self) -> None: ...


class Executor(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def dispatch(self) -> None:
        """Hand over what is queued; called by the scheduler on every tick."""


class NoExecutor:
    """Jobs wait in the queue (a server whose workers run elsewhere, or tests)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def dispatch(self) -> None:
        pass


class LocalExecutor:
    """Worker threads inside the server: the embedded default."""

    def __init__(self, queue: JobQueue, make_runner: Callable[[], Runner], threads: int, batch_size: int) -> None:
        self.queue = queue
        self.make_runner = make_runner
        self.thread_count = threads
        self.batch_size = batch_size
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stopping.clear()
        for index in range(self.thread_count):
            thread = threading.Thread(target=self._work, name=f"inference-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []

    def dispatch(self) -> None:
        self._wake.set()

    def _work(self) -> None:
        """Claims the next batch, and starts preparing it, before running the
        network on the current one: volume reading overlaps inference."""
        owner = worker_name("local")
        runner: Runner | None = None
        current = None
        while not self._stopping.is_set():
            try:
                if runner is None and self.queue.any_ready():
                    # Loads torch: with the first job, not the server, and before that job is
                    # claimed, so that its lease does not run out while torch loads.
                    runner = self.make_runner()
                jobs = self.queue.claim(owner, self.batch_size) if runner is not None else []
                upcoming = runner.start(jobs, current) if jobs and runner else None
                # Moved on before finishing: a batch whose finish fails is not finished twice,
                # and the one prepared meanwhile is not dropped.
                previous, current = current, upcoming
                if previous is not None and runner is not None:
                    runner.finish(previous)
                if current is not None:
                    continue
            except Exception:  # the loop must outlive a database outage
                log.exception("the inference worker could not take jobs; trying again")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
        if runner is not None:
            if current is not None:
                runner.finish(current)  # claimed jobs finish rather than wait for their leases to run out
            runner.close()


_BROKER_DOWN = "queued: the job broker is unreachable; the job is handed over when it is back"


class CeleryExecutor:
    """Sends each queued job's id to the broker; the workers claim and run it."""

    def __init__(self, queue: JobQueue, broker_url: str, broker_queue: str) -> None:
        from server.jobs.celery_app import make_celery

        self.queue = queue
        self.broker_queue = broker_queue
        self.celery = make_celery(broker_url, broker_queue, queue.policy.lease_seconds)
        # What the broker's transport raises when it cannot take a message: refused
        # connections, and also a broker that answers but refuses this server (a
        # wrong password, a missing vhost). Read from the transport, not connecting.
        with self.celery.connection_for_write() as transport:
            self._send_errors = (OperationalError, OSError, *transport.connection_errors, *transport.channel_errors)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def dispatch(self) -> None:
        # Sent again only long after the broker should have delivered it (its
        # visibility timeout is two leases): a lost message, not a backlog.
        task_ids = self.queue.undispatched(older_than_seconds=5 * self.queue.policy.lease_seconds)
        if not task_ids:
            return
        # Marked before sending: a job retried meanwhile is set back to "not
        # sent" by its retry, after this mark, and goes out on the next tick.
        self.queue.mark_dispatched(task_ids, True)
        sent = 0
        try:
            for task_id in task_ids:
                self.celery.send_task(RUN_JOB, args=[task_id], queue=self.broker_queue)
                sent += 1
        except self._send_errors as error:
            unsent = task_ids[sent:]
            log.warning("the broker is unreachable (%s); %d jobs wait in the queue", type(error).__name__, len(unsent))
            self.queue.mark_dispatched(unsent, False)
            self.queue.note_waiting(unsent, _BROKER_DOWN)
        # Handed over now: a Task that said the broker was down says so no more.
        self.queue.note_waiting(task_ids[:sent], "queued", replacing=_BROKER_DOWN)
