"""What every DICOMweb handler needs, built once per app by `create_app`."""

from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.requests import Request

from dicom.errors import NotAcceptable
from dicom.media_types import MediaRange, accept_from_request, admits_part
from server.ingest import Ingestor
from server.settings import Settings
from server.storage import FileStore

DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    store: FileStore
    ingestor: Ingestor


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def negotiated_accept(request: Request) -> list[MediaRange]:
    return accept_from_request(request.query_params.getlist("accept"), request.headers.getlist("accept"))


def require_dicom_json(request: Request, what: str) -> None:
    """QIDO results and metadata exist as DICOM JSON only (plain JSON accepted as its alias)."""
    if not any(
        admits_part(range_, DICOM_JSON, DICOM_JSON) or admits_part(range_, "application/json", DICOM_JSON)
        for range_ in negotiated_accept(request)
    ):
        raise NotAcceptable(f"{what} is available as application/dicom+json only")


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
