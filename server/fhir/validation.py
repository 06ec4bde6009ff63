"""`$validate` (R4 OperationDefinition Resource-validate): would this content
be accepted, in general, or as a create, an update or a delete here? Or is
this stored resource valid (mode `profile`)?

The answer is an OperationOutcome, 200 whether or not the content is valid;
a 4xx means the question itself could not be asked (R4 operation-resource-
validate.html). A mode is answered by rehearsing the write in a transaction
that is always rolled back, so that it meets exactly the rules a write meets
(the Task and Subscription write hooks among them) and cannot drift from them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir_mappings import fhir_json
from fhir_mappings.errors import FhirError, Forbidden, InvalidRequest
from fhir_mappings.operation_parameters import named_parameters
from fhir_mappings.outcome import operation_outcome
from fhir_mappings.patient_compartment import patients_of_json
from fhir_mappings.resources import client_resource, validate_resource
from server.audit.middleware import note_patients
from server.db import rehearsal_connection, retried_on_conflict, written
from server.fhir import interactions
from server.fhir.preconditions import Preconditions
from server.fhir.service import FhirService

# R4 ValueSet resource-validation-mode (4.0.1): `profile` checks a stored resource, nominated by id, against
# the nominated profile; the others rehearse a write.
MODES = frozenset(("create", "update", "delete", "profile"))
# The right each mode needs: `profile` tells of what is stored, as a read would.
_RIGHTS = {"create": ("c", "create"), "update": ("u", "update"), "delete": ("d", "delete"), "profile": ("r", "read")}
_CORE_PROFILES = "http://hl7.org/fhir/StructureDefinition/"


@dataclass(frozen=True)
class ValidationRequest:
    """The operation's input, checked: a mode the level allows, and the
    resource whenever the mode reads it."""

    resource_type: str
    resource_id: str | None  # the instance level's
    resource: Any
    mode: str | None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise InvalidRequest(
                f"$validate mode must be one of create, update, delete, profile, not {self.mode[:40]!r}"
            )
        if self.resource_id is None and self.mode in ("update", "delete", "profile"):
            raise InvalidRequest(f"$validate mode {self.mode} names a resource: use [type]/[id]/$validate")
        if self.resource_id is not None and self.mode == "create":
            raise InvalidRequest("$validate mode create is asked of the type: use [type]/$validate")
        if self.mode == "profile" and self.resource is not None:
            raise InvalidRequest("$validate mode profile checks the stored resource: send no resource with it")
        if self.resource is None and self.mode not in ("delete", "profile"):
            raise InvalidRequest("$validate needs the resource, as the body or a Parameters 'resource'")


def validation_request(
    resource_type: str, resource_id: str | None, body: Any, query: list[tuple[str, str]]
) -> ValidationRequest:
    """From the body (the resource itself, or a Parameters resource holding
    it) and the URL's parameters, which a POST of a resource carries beside
    it (R4 operations.html#request)."""
    named: dict[str, list[Any]] = {}
    for name, value in query:
        named.setdefault(name, []).append(value)
    if isinstance(body, dict) and body.get("resourceType") == "Parameters" and resource_type != "Parameters":
        for name, value in _parameters(body):
            named.setdefault(name, []).append(value)
    else:
        named.setdefault("resource", []).append(body)
    unknown = sorted(set(named) - {"resource", "mode", "profile"})
    if unknown:
        raise InvalidRequest(f"$validate takes resource, mode and profile, not {', '.join(unknown)[:80]}")
    once = {name: _one(name, values) for name, values in named.items()}
    _require_known_profile(resource_type, once.get("profile"))
    return ValidationRequest(resource_type, resource_id, once.get("resource"), once.get("mode"))


def validate(
    service: FhirService, request: ValidationRequest, preconditions: Preconditions | None, may: Callable[[str], bool]
) -> dict[str, Any]:
    """The OperationOutcome. `may(letter)`: whether the caller holds that right
    (c, u, d, r) on the type; a mode is judged only for a caller that may do
    what it asks about, since its answer tells what is stored."""
    service.require_type(request.resource_type)
    letter, verb = _RIGHTS.get(request.mode or "", (None, None))
    # Writes to a type the server alone writes are refused whoever asks, which tells nothing stored.
    judged = request.mode == "profile" or request.resource_type in service.writable_types
    if letter is not None and judged and not may(letter):
        raise Forbidden(f"$validate mode {request.mode}: this client may not {verb} {request.resource_type}")
    # Not there (or not the caller's to see): nothing to check, a 404, not an outcome about content.
    stored = _stored(service, request) if request.mode == "profile" else None
    try:
        if stored is not None:
            validate_resource(stored, request.resource_type)
        elif request.mode is None:
            client_resource(request.resource, request.resource_type)
        else:
            retried_on_conflict(lambda: _rehearse(service, request, preconditions, may("c")))
    except FhirError as error:
        return operation_outcome(error.issue_code, error.diagnostics)
    if request.mode is None:
        found = f"no errors: this {request.resource_type} is valid against the base FHIR R4 definition"
    elif stored is not None:
        found = (f"no errors: {request.resource_type}/{request.resource_id} is valid against the base FHIR R4"
                 " definition as stored")
    else:
        found = f"no errors: {_WOULD[request.mode]} {request.resource_type} would be accepted here; nothing was written"
    return operation_outcome("informational", f"{found} (profiles are not checked)", "information")


_WOULD = {"create": "a create of this", "update": "an update to this", "delete": "a deletion of this"}


def _stored(service: FhirService, request: ValidationRequest) -> dict[str, Any]:
    """The current version that mode `profile` checks, parsed as written; its
    patients named in the request's record, as a read's are."""
    assert request.resource_id is not None
    version = interactions.read(service, request.resource_type, request.resource_id)
    assert version.body is not None
    note_patients(patients_of_json(version.body))
    return fhir_json.loads(version.body)  # type: ignore[no-any-return]


def _rehearse(
    service: FhirService, request: ValidationRequest, preconditions: Preconditions | None, may_create: bool
) -> None:
    with rehearsal_connection(service.engine) as connection:
        try:
            if request.mode == "create":
                interactions.create(service, request.resource_type, request.resource, connection)
            elif request.mode == "update":
                assert request.resource_id is not None
                interactions.update(service, request.resource_type, request.resource_id, request.resource,
                                    preconditions, connection, may_create=may_create)
            else:
                assert request.resource_id is not None
                interactions.delete(service, request.resource_type, request.resource_id, preconditions, connection)
        finally:
            # The answer tells of what is stored (its version, whether its hooks allow the change): the
            # request's record names the patients of the versions the write would replace and write, as the
            # write's own record would. Taken before the rollback forgets them.
            note_patients(written(connection).patients)


def _parameters(body: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs = []
    for parameter in named_parameters(body, "$validate"):
        name = parameter["name"]
        if name == "resource":
            if "resource" not in parameter:
                raise InvalidRequest("the $validate parameter 'resource' takes a resource")
            pairs.append((name, parameter["resource"]))
            continue
        values = [value for key, value in parameter.items() if key.startswith("value")]
        if len(values) != 1 or not isinstance(values[0], str):
            raise InvalidRequest(f"the $validate parameter {name[:40]!r} takes one code or uri value")
        pairs.append((name, values[0]))
    return pairs


def _one(name: str, values: list[Any]) -> Any:
    if len(values) > 1:
        raise InvalidRequest(f"$validate takes one {name}, not {len(values)}")
    return values[0]


def _require_known_profile(resource_type: str, profile: str | None) -> None:
    """A profile nominated that the server cannot validate against SHALL be an
    error (Resource-validate); the base definition of the type is the one it can."""
    if profile is not None and profile.split("|")[0] != f"{_CORE_PROFILES}{resource_type}":
        raise InvalidRequest(
            f"$validate checks against the base FHIR R4 definition of {resource_type} only, not the profile"
            f" {profile[:120]!r}"
        )
