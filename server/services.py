"""What every handler needs, built once per app by `build_services`."""

from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.requests import HTTPConnection

from server.audit.service import AuditService
from server.auth.service import AuthService
from server.dimse.peers import Peers
from server.fhir.bulk_export_worker import BulkExports
from server.fhir.service import FhirService
from server.fhir.subscription_delivery import Dispatcher
from server.ingest import Ingestor
from server.jobs.service import JobsService
from server.settings import Settings
from server.storage import FileStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    store: FileStore
    ingestor: Ingestor
    fhir: FhirService
    jobs: JobsService
    audit: AuditService
    auth: AuthService
    subscriptions: Dispatcher  # sends the notifications of FHIR Subscriptions
    exports: BulkExports  # FHIR Bulk Data $export jobs and the thread that writes them
    peers: Peers  # the remote AEs the DIMSE gateway lets in


def services(request: HTTPConnection) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]
