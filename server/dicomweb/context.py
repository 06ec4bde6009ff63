"""Request helpers every DICOMweb handler shares: negotiation and the public root."""

from starlette.requests import Request

from dicom.errors import NotAcceptable
from dicom.media_types import MediaRange, accept_from_request, admits_part
from server.public_url import public_root

DICOM_JSON = "application/dicom+json"


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
    return f"{public_root(request)}/dicom-web"
