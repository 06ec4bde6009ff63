"""The one exception tree of the DICOM domain.

Domain code raises these; `server/` maps each class to an HTTP status in one
place, so no module below `server/` knows about HTTP.
"""


class DicomError(Exception):
    """Base of every error the DICOM domain raises on purpose."""

    def __init__(self, message: str, warning: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The text of the Warning header that PS3.18 asks for with this failure (UPS-RS, chapter 11).
        self.warning = warning


class InvalidRequest(DicomError):
    """The request is malformed: bad parameter, bad body framing (HTTP 400)."""


class UnsupportedMediaType(DicomError):
    """The request body is of a media type the service does not take (HTTP 415)."""


class NotAcceptable(DicomError):
    """Nothing the client accepts can be produced (HTTP 406)."""


class Forbidden(DicomError):
    """The identity may not do this, with this content (HTTP 403)."""


class NotFound(DicomError):
    """The addressed study, series, instance, frame or bulk data does not exist (HTTP 404)."""


class Conflict(DicomError):
    """The request is inconsistent with the current state of its target (HTTP 409)."""


class PayloadTooLarge(DicomError):
    """The request body is over the configured limit (HTTP 413)."""


class InvalidDicom(DicomError):
    """A payload is not a DICOM data set we can understand (STOW failure 0xC000)."""
