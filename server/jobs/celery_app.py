"""Celery for distributed workers: `medaiflow worker` on any number of machines.

A message carries only a job id; the job itself is claimed from the database
with a lease, so a message delivered twice (late acknowledgement after a
worker died) finds its job taken or done and does nothing.
"""

import logging

from celery import Celery

from server.jobs.executors import RUN_JOB, worker_name

log = logging.getLogger(__name__)


def make_celery(broker_url: str, queue: str, lease_seconds: float) -> Celery:
    app = Celery("medaiflow", broker=broker_url)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        # Acknowledged after the job ran: a worker killed mid-job leaves the
        # message to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_connection_max_retries=1,
        # A broker that is down must not hold the scheduler for long: the job
        # stays queued in the database and is sent again on a later tick.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        # Redis gives unacknowledged messages back after this long.
        broker_transport_options={"visibility_timeout": int(lease_seconds * 2), "max_retries": 1},
        task_ignore_result=True,
    )
    return app


def run_worker() -> None:
    """The `medaiflow worker` process: builds the stores from the same settings
    as the server and runs jobs as their ids arrive, one batch at a time."""
    from server.jobs.service import build_worker_jobs

    jobs = build_worker_jobs()
    settings = jobs.settings
    # What dead processes left in the store (a worker killed mid-job, often the one this
    # one replaces), cleared as a server's start clears it, not only at the next one.
    jobs.ingestor.recover()
    runner = jobs.make_runner()
    owner = worker_name("celery")
    app = make_celery(settings.broker_url, settings.broker_queue, settings.job_lease_seconds)

    @app.task(name=RUN_JOB)
    def run_job(task_id: str) -> None:
        claimed = jobs.queue.claim(owner, settings.batch_size, task_id=task_id)
        if claimed:
            runner.run(claimed)
        else:
            log.info("job %s is taken, done or cancelled already", task_id)

    # One process, one job at a time: the model stays loaded, and a GPU is not shared.
    app.worker_main(["worker", "--loglevel=INFO", "--pool=solo", "-Q", settings.broker_queue])
