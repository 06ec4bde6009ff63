"""`medaiflow models ...`, `medaiflow infer` and `medaiflow worker`."""

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from fhir_mappings.audit_event import AuditKind
from server.auth.identities import SERVER_AGENT
from server.db import write_connection
from server.jobs.queue import FINAL, Stage
from server.jobs.registry import RegisteredModel
from server.jobs.service import JobsService
from server.jobs.triggers import study_date
from server.services import Services
from server.settings import load_settings

_STAGES = ("queued", *(stage.business_status for stage in Stage))
_ATTEMPT_POLL_SECONDS = 0.5


@contextmanager
def _services() -> Iterator[Services]:
    from server.app import build_services
    from server.migrate import upgrade

    services = build_services(load_settings())
    try:
        upgrade(services.engine)
        yield services
    finally:
        services.engine.dispose()


def _describe(model: RegisteredModel) -> str:
    validation = model.validation
    checked = "not validated" if validation is None else ("validation passed" if validation.passed else "validation FAILED")
    state = "active" if model.active else "inactive"
    forced = ", activated without a passing validation" if model.forced and model.active else ""
    return f"{model.key:40} {state:8} {checked}{forced}  Device/{model.device_id}"


def _add(args: argparse.Namespace) -> int:
    with _services() as services:
        model, created = services.jobs.registry.add(Path(args.path))
        done = "registered" if created else "already registered:"
        print(f"{done} {model.key} (weights sha256 {model.bundle.weights_sha256})")
        print(_describe(model))
    return 0


def _list(_: argparse.Namespace) -> int:
    with _services() as services:
        for model in services.jobs.registry.registered():
            print(_describe(model))
    return 0


def _activate(args: argparse.Namespace) -> int:
    with _services() as services:
        print(_describe(services.jobs.registry.activate(args.model, force=args.force)))
    return 0


def _deactivate(args: argparse.Namespace) -> int:
    with _services() as services:
        print(_describe(services.jobs.registry.deactivate(args.model)))
    return 0


def _run_stored(args: argparse.Namespace) -> int:
    with _services() as services:
        started = services.jobs.triggers.run_stored(args.model, args.study_date_from)
    print(f"{len(started)} jobs queued for {args.model}; the running server's workers take them")
    return 0


def _study_date(text: str) -> str:
    try:
        return study_date(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _validate(args: argparse.Namespace) -> int:
    from server.jobs.validation import validate_model

    with _services() as services:
        report, model = validate_model(services.jobs.registry, args.model, Path(args.directory))
        for line in report.lines:
            print(line)
        print(report.summary)
        print(_describe(model))
    return 0 if report.passed else 1


def _infer(args: argparse.Namespace) -> int:
    """Order a job as a client would, run it here unless a server takes it
    first, and follow it to the end."""
    from server.fhir import interactions

    with _services() as services:
        task = {"resourceType": "Task", "status": "requested", "intent": "order",
                "focus": {"reference": f"ImagingStudy/{args.study}"}}
        if args.model:
            task["owner"] = {"reference": f"Device/{services.jobs.registry.get(args.model).device_id}"}
        if args.series:
            task["input"] = [{"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                   "code": "121232"}]}, "valueId": args.series}]
        queue = services.jobs.queue
        with write_connection(services.engine) as connection:
            task_id = interactions.create(services.fhir, "Task", task, connection).resource_id
            # Ordered with no request whose audit record would name it: recorded as the server's own.
            job = queue.get(task_id, connection)
            assert job is not None
            services.audit.record_in(connection, AuditKind.CREATE, SERVER_AGENT, "inference Task requested",
                                     resources=[f"Task/{task_id}"], patients=[job.patient_id] if job.patient_id else [])
        print(f"Task/{task_id}")
        stop = threading.Event()
        worker = threading.Thread(target=_run_attempts, args=(services.jobs, task_id, stop), daemon=True)
        worker.start()
        with tqdm(total=len(_STAGES), unit="stage", disable=args.quiet) as progress:
            while True:
                job = queue.get(task_id)
                assert job is not None
                reached = _STAGES.index(job.business_status) + 1 if job.business_status in _STAGES else progress.n
                progress.update(max(0, reached - progress.n))
                progress.set_description(job.business_status or job.status)
                if job.status in FINAL:
                    progress.update(len(_STAGES) - progress.n)
                    break
                time.sleep(0.2)
        stop.set()
        worker.join()
        print(f"{job.status}" + (f": {job.reason}" if job.status != "completed" and job.reason else ""))
        if job.status == "completed":
            print(f"DiagnosticReport/{task_id}")
    return 0 if job.status == "completed" else 1


def _run_attempts(jobs: JobsService, task_id: str, stop: threading.Event) -> None:
    """Runs the job here, attempt after attempt (a failure that may pass
    queues it again after a backoff, and no scheduler may be running to hand
    it on), unless a server's worker takes it first; until it ends, or `stop`."""
    runner = jobs.make_runner()  # loads torch: before the claim, so that the job's lease is not spent on it
    try:
        while not stop.is_set():
            claimed = jobs.queue.claim(f"cli:{task_id}", 1, task_id=task_id)
            if claimed:
                runner.run(claimed)
            job = jobs.queue.get(task_id)
            if job is None or job.status in FINAL:
                return
            stop.wait(_ATTEMPT_POLL_SECONDS)
    finally:
        runner.close()


def _worker(_: argparse.Namespace) -> int:
    from server.jobs.celery_app import run_worker

    run_worker()
    return 0


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    models = commands.add_parser("models", help="model versions (MONAI bundles)").add_subparsers(
        dest="models_command", required=True
    )
    add = models.add_parser("add", help="register a MONAI bundle directory (copied under the data directory)")
    add.add_argument("path")
    add.set_defaults(run=_add)
    models.add_parser("list", help="registered versions, their state and validation").set_defaults(run=_list)
    activate = models.add_parser("activate", help="let a validated version run (automatic and ordered jobs)")
    activate.add_argument("model", metavar="NAME@VERSION")
    activate.add_argument("--force", action="store_true", help="without a passing validation (recorded on its Device)")
    activate.set_defaults(run=_activate)
    deactivate = models.add_parser("deactivate", help="stop a version from taking new jobs")
    deactivate.add_argument("model", metavar="NAME@VERSION")
    deactivate.set_defaults(run=_deactivate)
    run_stored = models.add_parser(
        "run-stored", help="queue an active version on the studies already stored (once per series content)"
    )
    run_stored.add_argument("model", metavar="NAME@VERSION")
    run_stored.add_argument("--study-date-from", type=_study_date, metavar="YYYYMMDD", help="leave out older studies")
    run_stored.set_defaults(run=_run_stored)
    validate = models.add_parser(
        "validate", help="run a version on a labelled set (DICOM series with reference SEGs); exits 1 if it fails"
    )
    validate.add_argument("model", metavar="NAME@VERSION")
    validate.add_argument("directory", metavar="DIR")
    validate.set_defaults(run=_validate)

    infer = commands.add_parser("infer", help="run a model on a stored study now, with progress; exits 1 unless it completes")
    infer.add_argument("--study", required=True, metavar="UID")
    infer.add_argument("--model", metavar="NAME@VERSION", help="default: the active model that accepts a series")
    infer.add_argument("--series", metavar="UID", help="default: the accepted series with the most slices")
    infer.add_argument("--quiet", action="store_true", help="no progress bar")
    infer.set_defaults(run=_infer)

    commands.add_parser(
        "worker", help="run inference jobs from the Celery broker (MEDAIFLOW_BROKER_URL), on this machine's GPU or CPU"
    ).set_defaults(run=_worker)
