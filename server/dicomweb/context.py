"""Request helpers every DICOMweb handler shares: negotiation and the public root."""

from starlette.requests import Request

from dicom.errors import NotAcceptable
from dicom.media_types import MULTIPART_RELATED, MediaRange, accept_from_request, inner_type, type_matches
from server.public_url import public_root

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"


def negotiated_accept(request: Request, keep_refused: bool = False) -> list[MediaRange]:
    """The client's media ranges, best first; `keep_refused`: its q=0 ranges too, last."""
    return accept_from_request(
        request.query_params.getlist("accept"), request.headers.getlist("accept"), keep_refused=keep_refused
    )


def _models_admitted(range_: MediaRange) -> list[str]:
    """DICOM_JSON and DICOM_XML, as far as `range_` admits them, in the order
    to offer them.

    Plain JSON is an alias of DICOM JSON. The XML form of a QIDO result or of
    metadata is multipart/related (PS3.18 §8.7.3.2), so a multipart range
    without a `type` means XML; a bare application/dicom+xml is taken to ask
    for the same, as Orthanc and dcm4chee take it.
    """
    if type_matches(range_.media_type, MULTIPART_RELATED) and range_.media_type != "*/*":
        inner = inner_type(MediaRange(MULTIPART_RELATED, range_.params, range_.q)) or DICOM_XML
        return [model for model in (DICOM_XML, DICOM_JSON) if type_matches(inner, model)]
    return [
        model for model, alias in ((DICOM_JSON, "application/json"), (DICOM_XML, DICOM_XML))
        if type_matches(range_.media_type, model) or type_matches(range_.media_type, alias)
    ]


def preferred_model(request: Request) -> str | None:
    """The data set model (DICOM JSON or the Native DICOM Model of PS3.19) that
    the client ranks highest and does not refuse by name with q=0; None when
    it accepts neither."""
    ranges = negotiated_accept(request, keep_refused=True)
    refused = {
        model for range_ in ranges if range_.q == 0 and not range_.media_type.endswith("/*")
        for model in _models_admitted(range_)
    }
    for range_ in ranges:
        for model in _models_admitted(range_) if range_.q > 0 else ():
            if model not in refused:
                return model
    return None


def negotiated_model(request: Request, what: str) -> str:
    model = preferred_model(request)
    if model is None:
        raise NotAcceptable(
            f'{what} is available as application/dicom+json or as multipart/related; type="{DICOM_XML}"'
        )
    return model


def dicomweb_root(request: Request) -> str:
    return f"{public_root(request)}/dicom-web"
