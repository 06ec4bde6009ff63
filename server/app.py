"""The composition root: `create_app(settings)` wires settings, database,
storage and the routers into one ASGI app. Nothing here runs at import time."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware.cors import CORSMiddleware

from fhir_mappings.audit_event import AuditKind
from server import health
from server.audit.actors import current_actor
from server.audit.middleware import AuditMiddleware, note_studies
from server.audit.service import AuditService, build_audit
from server.auth.authorize import router as authorize_router
from server.auth.ehr_launch import router as ehr_launch_router
from server.auth.identities import SERVER_AGENT, Identities
from server.auth.middleware import AuthMiddleware
from server.auth.routes import router as auth_router
from server.auth.service import build_auth
from server.date_header import DateHeader
from server.db import make_engine, write_connection, written
from server.dicomweb.routes import router as dicomweb_router
from server.dicomweb.wado_uri import router as wado_uri_router
from server.dicomweb.workitem_subscriptions import job_changed
from server.dimse.peers import Peers
from server.dimse.routes import router as dimse_peers_router
from server.dimse.scp import start_dimse
from server.errors import install_error_handlers
from server.fhir.bulk_export_routes import router as bulk_export_router
from server.fhir.bulk_export_worker import build_exports
from server.fhir.derived import ensure_endpoints, study_patients, sync_studies
from server.fhir.patient_context import version_within_patient_context, within_patient_context
from server.fhir.routes import router as fhir_router
from server.fhir.service import FhirService, build_fhir
from server.fhir.subscription_delivery import DeliveryPolicy, Dispatcher
from server.fhir.subscriptions import SubscriptionWrites, outbox_notifications, owned_subscriptions
from server.ingest import Ingestor, StudyChange
from server.jobs.routes import router as models_router
from server.jobs.service import JobsService, build_jobs
from server.jobs.study_changes import follow_studies
from server.jobs.triggers import touch_studies
from server.logs import RequestLogMiddleware, configure_logging
from server.methods import HeadAsGet
from server.services import Services
from server.settings import Settings, load_settings
from server.settling import settle_process
from server.storage import FileStore

log = logging.getLogger(__name__)


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    store = FileStore(settings.storage_dir)
    store.prepare()
    fhir = build_fhir(engine, settings.data_dir, settings.fhir_max_included)
    fhir.visibility.row_rules.append(within_patient_context)
    fhir.visibility.version_rules.append(version_within_patient_context)

    def studies_changed(connection: Connection, study_uids: set[str], change: StudyChange) -> None:
        patients = sync_studies(fhir.store, connection, study_uids)
        follow_studies(jobs.queue, connection, patients)  # `jobs` is built below, before any study changes
        touch_studies(connection, study_uids)
        if not note_studies(study_uids):  # no request to record it: the server's own doing
            _audit_own_dicom_change(audit, connection, study_uids, change, patients)

    ingestor = Ingestor(engine, store, studies_changed)
    jobs = build_jobs(settings, engine, fhir.store, store, ingestor)
    fhir.write_hooks["Task"] = jobs.tasks
    audit = build_audit(engine, fhir.store, settings.data_dir, settings.audit_checkpoint_every,
                        settings.audit_checkpoint_seconds, settings.public_root)
    _audit_own_changes(audit, jobs)
    jobs.queue.on_job = job_changed  # UPS event reports, in the transaction of each change
    auth = build_auth(engine, settings.data_dir, settings.public_root, settings.token_seconds,
                      settings.requests_per_second, settings.request_burst)
    auth.identities.on_change = lambda connection, name, description: audit.record_in(
        connection, AuditKind.SECURITY_CHANGE, SERVER_AGENT, description)
    subscriptions = _subscriptions(settings, fhir, auth.identities, audit)
    exports = build_exports(fhir, audit, settings.data_dir, settings.export_retention_hours,
                            settings.export_max_per_caller)
    peers = Peers(engine)
    peers.on_change = lambda connection, description: audit.record_in(
        connection, AuditKind.SECURITY_CHANGE, SERVER_AGENT, description)
    return Services(settings=settings, engine=engine, store=store, ingestor=ingestor, fhir=fhir, jobs=jobs, audit=audit,
                    auth=auth, subscriptions=subscriptions, exports=exports, peers=peers)


def _subscriptions(settings: Settings, fhir: FhirService, identities: Identities, audit: AuditService) -> Dispatcher:
    """Subscriptions written by clients and seen by their owners, an outbox
    row for each version written that one watches (whoever writes it), and
    their sender."""
    fhir.write_hooks["Subscription"] = SubscriptionWrites(settings.subscription_endpoint_list)
    fhir.visibility.rules["Subscription"] = owned_subscriptions
    fhir.store.on_written = outbox_notifications
    policy = DeliveryPolicy(settings.subscription_attempts, settings.subscription_retry_seconds,
                            settings.subscription_timeout_seconds)
    return Dispatcher(fhir.engine, fhir.store, fhir.searcher, identities, audit, policy, f"{settings.public_root}/fhir",
                      settings.subscription_endpoint_list)


def _audit_own_dicom_change(
    audit: AuditService, connection: Connection, study_uids: set[str], change: StudyChange,
    patients: dict[str, str | None],
) -> None:
    """Instances stored or deleted for no HTTP request: by the server itself
    (a job's segmentation, a withdrawn job's segmentation taken out, an
    import), or for a DIMSE peer (`current_actor`), named with its address.
    Recorded in the transaction that made the change, as a request's would be.
    A study it emptied has no patient now: the patients its ImagingStudy
    named until this transaction (`written`) are in the record too."""
    kind = AuditKind.STOW if change is StudyChange.STORED else AuditKind.STUDY_DELETED
    named = {patient for patient in patients.values() if patient} | written(connection).patients
    actor = current_actor.get()
    if actor is None:
        audit.record_in(connection, kind, SERVER_AGENT, f"DICOM instances {change.value} by the server",
                        patients=sorted(named), study_uids=sorted(study_uids))
        return
    audit.record_in(connection, kind, actor.name, actor.description, patients=sorted(named),
                    study_uids=sorted(study_uids), client_address=actor.address)
    actor.recorded = True


def _audit_own_changes(audit: AuditService, jobs: JobsService) -> None:
    """The server's own changes go into the audit trail in their transactions:
    every Task state change of a job, every model registration, activation,
    deactivation and validation."""

    def task_changed(connection: Connection, task_id: str, status: str, patient_id: str | None, owner: str | None) -> None:
        audit.record_in(connection, AuditKind.UPDATE, owner or SERVER_AGENT, f"inference Task {status}",
                        resources=[f"Task/{task_id}"], patients=[patient_id] if patient_id else [])

    def model_changed(connection: Connection, device_id: str, description: str) -> None:
        audit.record_in(connection, AuditKind.APPLICATION_ACTIVITY, SERVER_AGENT, description,
                        resources=[f"Device/{device_id}"])

    jobs.queue.on_change = task_changed
    jobs.registry.on_change = model_changed


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    try:
        with write_connection(services.engine) as connection:
            ensure_endpoints(services.fhir.store, connection, f"{services.settings.public_root}/dicom-web")
    except SQLAlchemyError as error:
        # Serve anyway: /readyz reports the database, and the next start writes them.
        log.warning("could not write the DICOMweb Endpoint resources: %s", type(error).__name__)
    services.audit.recorder.start()
    services.jobs.start()
    services.subscriptions.start()
    services.exports.worker.start()
    app.state.dimse = start_dimse(services)
    try:
        yield
    finally:
        if app.state.dimse is not None:
            app.state.dimse.stop()
        services.exports.worker.stop()
        services.subscriptions.stop()
        services.jobs.stop()
        services.audit.recorder.stop()


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or (services.settings if services else load_settings())
    services = services or build_services(settings)
    app = FastAPI(title="MedAIFlow", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=_lifespan)
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(AuthMiddleware, auth=services.auth)
    # Outside authentication, so that refused requests are recorded too.
    app.add_middleware(AuditMiddleware, chain=services.audit.chain, recorder=services.audit.recorder,
                       server_name=settings.public_root, patients_of_studies=study_patients)
    app.include_router(health.router)
    app.include_router(dicomweb_router, prefix="/dicom-web")
    app.include_router(wado_uri_router)
    app.include_router(bulk_export_router, prefix="/fhir")  # before the route table's [type]/[id]
    app.include_router(fhir_router, prefix="/fhir")
    app.include_router(models_router, prefix="/admin")
    app.include_router(dimse_peers_router, prefix="/admin")
    app.include_router(auth_router)
    app.include_router(authorize_router)
    app.include_router(ehr_launch_router)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Accept", "Content-Type", "Authorization", "X-Request-ID", "If-Match", "If-None-Match", "If-Modified-Since", "Prefer",
                           "Content-Encoding"],
            expose_headers=["X-Request-ID", "Content-Location", "Warning", "ETag", "Last-Modified", "Location",
                            "X-Progress", "Retry-After"],
        )
    app.add_middleware(RequestLogMiddleware)
    app.add_middleware(HeadAsGet)
    app.add_middleware(DateHeader)
    return app


def create_app_from_environment() -> FastAPI:
    """The app of one worker process of `medaiflow serve --workers N`."""
    settings = load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    settle_process()
    return app

