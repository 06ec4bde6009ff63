"""What every DICOMweb handler needs, built once per app by `create_app`."""

from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.requests import Request

from server.ingest import Ingestor
from server.settings import Settings
from server.storage import FileStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    store: FileStore
    ingestor: Ingestor


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def dicomweb_root(request: Request) -> str:
    """Absolute DICOMweb root as the client sees it, behind a reverse proxy too.

    Honours X-Forwarded-Proto/-Host/-Prefix so RetrieveURLs and BulkDataURIs
    point at the proxy, not at this process.
    """
    configured = request.app.state.services.settings.public_base_url
    if configured:
        return f"{configured.rstrip('/')}/dicom-web"
    headers = request.headers
    scheme = headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = headers.get("x-forwarded-host", headers.get("host", request.url.netloc)).split(",")[0].strip()
    prefix = headers.get("x-forwarded-prefix", "").split(",")[0].strip().rstrip("/")
    return f"{scheme}://{host}{prefix}{request.scope.get('root_path', '')}/dicom-web"
