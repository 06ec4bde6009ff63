"""The FHIR side's one exception tree (STYLE 5).

Each error carries the OperationOutcome issue code (FHIR R4 ValueSet
issue-type) and a diagnostics string a person can act on; `server/errors.py`
maps the classes to HTTP statuses in one place.
"""


class FhirError(Exception):
    issue_code = "processing"

    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics


class InvalidRequest(FhirError):
    """A request the server cannot act on as sent: 400."""

    issue_code = "invalid"


class InvalidResource(FhirError):
    """A resource that parses but breaks FHIR R4 rules: 422 (FHIR R4 http.html#2.21.0.3)."""

    issue_code = "invalid"


class NotSupported(InvalidResource):
    """Valid FHIR beyond what this server implements where it must understand
    all of it (FHIRPath outside the subset a FHIRPath Patch is evaluated in): 422."""

    issue_code = "not-supported"


class ResourceNotFound(FhirError):
    issue_code = "not-found"


class ResourceGone(FhirError):
    """Deleted: 410 on read (FHIR R4 http.html#read)."""

    issue_code = "deleted"


class VersionConflict(FhirError):
    """If-Match names a version that is no longer current: 412."""

    issue_code = "conflict"


class ResourceConflict(FhirError):
    """The write would clash with a resource as it is: 409 (e.g. a conditional
    update that matches nothing, naming an id that exists, http.html#cond-update)."""

    issue_code = "conflict"


class Forbidden(FhirError):
    """The identity may not do this (HTTP 403)."""

    issue_code = "forbidden"


class MethodNotAllowed(FhirError):
    """405; `allowed` the methods the URL does take (the Allow header)."""

    issue_code = "not-supported"

    def __init__(self, diagnostics: str, allowed: str) -> None:
        super().__init__(diagnostics)
        self.allowed = allowed


class NotAcceptable(FhirError):
    issue_code = "not-supported"


class UnsupportedMediaType(FhirError):
    issue_code = "not-supported"


class PayloadTooLarge(FhirError):
    issue_code = "too-costly"
