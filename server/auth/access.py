"""Which SMART permission each request needs: one table for the whole server.

FHIR interactions map to their type and letter (read r, search s, create c,
update u, delete d); DICOMweb to ImagingStudy (QIDO searches, WADO reads,
STOW creates, DELETE deletes), except UPS-RS, whose workitems are the jobs'
Tasks (creating orders one, searching and retrieving read them, and so do
subscribing to their event reports and opening the channel that carries
them; any other request changes one); the model API to Device. A batch or
transaction Bundle is judged entry by entry, with the same function.
"""

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from fhir_mappings.errors import Forbidden
from fhir_mappings.search_parameters import DEFINITIONS
from fhir_mappings.search_query import Condition, SearchRequest
from server.auth.scopes import PATIENT_TYPES, Grant
from server.fhir.service import WRITABLE_TYPES

# Anonymous by design: probes, discovery and the way to get a token.
_READ = frozenset(("GET", "HEAD"))
_PUBLIC_PATHS = {"/healthz": _READ, "/readyz": _READ, "/fhir/metadata": _READ, "/auth/token": frozenset(("POST",)),
                "/auth/authorize": frozenset(("GET", "HEAD", "POST"))}
_PUBLIC_PREFIXES = ("/.well-known/",)
_QIDO_RESOURCES = frozenset(("studies", "series", "instances"))


@dataclass(frozen=True)
class Permission:
    resource_type: str
    letter: str  # c r u d s


# POST /fhir: the entries of the Bundle decide.
BUNDLE = Permission("Bundle", "")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str | None
    grant: Grant
    client: bool
    app: str | None = None  # the app a user acts through (a SMART App Launch token)
    patient: str | None = None  # the Patient id of its launch context, which its patient/ scopes reach

    def may(self, permission: Permission) -> bool:
        return self.grant.allows(permission.resource_type, permission.letter, self.patient is not None)

    def reads_every(self, resource_type: str) -> bool:
        """Whether it may read every resource of the type, not only its patient's:
        what a study's existence and patient tell (ordering inference on it) needs this."""
        return self.may(Permission(resource_type, "r")) and not self.within_patient(resource_type)

    def write_compartment(self, resource_type: str, letter: str) -> str | None:
        """The Patient whose compartment a write (`letter`: c, u or d) of the
        type must keep to: this principal's patient, when its patient/ scopes
        may allow the write and its other scopes do not; else None."""
        if self.patient is None or self.grant.in_context("user", "system").allows(resource_type, letter):
            return None
        return self.patient

    def within_patient(self, resource_type: str) -> bool:
        """Whether what this principal sees of the type is its patient's
        compartment alone: it reaches the type through patient/ scopes, and
        its other scopes do not let it both read and search every one."""
        if self.patient is None or resource_type not in PATIENT_TYPES:
            return False
        wider = self.grant.in_context("user", "system")
        return not (wider.allows(resource_type, "r") and wider.allows(resource_type, "s"))


# The principal of the request being handled (set by the authentication
# middleware), for a write hook that must know who writes: a Subscription runs
# with the rights of whoever wrote it last.
current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)


@contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """The visibility rules see `principal` as the principal of the request
    (where there is none, or where its rights are judged as another's)."""
    token = current_principal.set(principal)
    try:
        yield
    finally:
        current_principal.reset(token)


def search_permissions(request: SearchRequest) -> set[Permission]:
    """What a search reads besides its own type: the resources it includes
    (`_include` targets, `_revinclude` sources; an include that may reach any
    type needs every type) and the types its chains look into."""
    needed: set[Permission] = set()
    for include in request.includes:
        targets = (include.target_type,) if include.target_type else include.parameter.targets
        types = DEFINITIONS.keys() if "Resource" in targets else targets
        needed |= {Permission(resource_type, "r") for resource_type in types}
    needed |= {Permission(include.source_type, "r") for include in request.revincludes}
    needed |= {Permission(chain_type, "s") for chain_type in _chain_types(request.conditions)}
    return needed


def require_search_rights(principal: Principal, request: SearchRequest) -> None:
    """Raises Forbidden unless `principal` may run the search: search its
    type, and read or search what it includes and chains into."""
    needed = search_permissions(request) | {Permission(request.resource_type, "s")}
    refused = sorted(f"{p.resource_type}.{p.letter}" for p in needed if not principal.may(p))
    if refused:
        raise Forbidden(f"{principal.name} may not run this search: it needs {', '.join(refused)}")


def _chain_types(conditions: tuple[Condition, ...]) -> set[str]:
    types = set()
    for condition in conditions:
        if condition.chain is not None:
            types.add(condition.chain.other_type)
            types |= _chain_types((condition.chain.condition,))
    return types


def basic_credentials(encoded: str) -> tuple[str, str] | None:
    """The name and password (or client id and secret) of an HTTP Basic
    credential (the part after `Basic `); None when it is not base64 of name:password."""
    try:
        name, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text
        return None
    return (name, secret) if name else None


def is_public(method: str, path: str) -> bool:
    # CORS preflights carry no credentials (the CORS middleware answers them).
    if method == "OPTIONS":
        return True
    return method in _PUBLIC_PATHS.get(path, _READ if path.startswith(_PUBLIC_PREFIXES) else frozenset())


def required_permission(method: str, path: str) -> Permission | None:
    """None: any authenticated identity may (documentation, unknown paths that answer 404)."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        return None
    if parts[0] == "fhir":
        return fhir_permission(method, parts[1:])
    if parts[0] == "dicom-web":
        return _dicomweb_permission(method, parts[1:])
    if parts == ["wado"]:
        return Permission("ImagingStudy", "r")  # WADO-URI: one instance, as WADO-RS reads it
    if parts[:2] == ["admin", "models"]:
        return _model_permission(method, parts[2:])
    return None


_EXPORT_PATHS = frozenset(("$export-status", "$export-file"))
# Operations that change nothing (R4 OperationDefinition affectsState false).
_READ_ONLY_OPERATIONS = frozenset(("$everything",))


def fhir_permission(method: str, parts: list[str]) -> Permission | None:
    """`parts`: the path below /fhir, e.g. ["Task", "abc", "_history", "2"]."""
    if not parts:
        return BUNDLE if method == "POST" else None
    if parts[-1] == "$export" or parts[0] in _EXPORT_PATHS:
        return None  # Bulk Data export: its routes judge the rights type by type, and an export is its starter's
    if parts[-1] == "$validate":
        return None  # what it needs depends on the mode it is asked in, which its route reads
    if parts == ["_history"]:
        return None  # the whole-system history lists the types the caller may search, as its route judges
    resource_type = parts[0]
    if method in ("GET", "HEAD"):
        if resource_type == "Patient" and len(parts) == 3 and parts[2] in DEFINITIONS:
            return Permission(parts[2], "s")  # a compartment search (Patient/[id]/[type]) searches that type
        # The type's history lists every resource of it: a search, not a read.
        return Permission(resource_type, "s" if len(parts) == 1 or parts[1:] == ["_history"] else "r")
    if method == "POST" and parts[-1] in _READ_ONLY_OPERATIONS:
        return fhir_permission("GET", parts)  # invoked by POST only to carry its input in a body
    if method == "POST" and parts[1:] == ["_search"]:
        return Permission(resource_type, "s")
    if resource_type in DEFINITIONS and resource_type not in WRITABLE_TYPES:
        return None  # written by nobody: the interaction answers 405 to everyone, not 403 to some
    if method == "POST":
        return Permission(resource_type, "c")
    if method in ("PUT", "PATCH"):  # a patch is written as an update (R4 http.html#patch)
        return Permission(resource_type, "u")
    if method == "DELETE":
        return Permission(resource_type, "d")
    return Permission(resource_type, "r")


def _dicomweb_permission(method: str, parts: list[str]) -> Permission:
    # UPS Watch: a subscription changes no workitem; it reads them as they change.
    if parts[:1] == ["subscribers"] or (parts[:1] == ["workitems"] and parts[2:3] == ["subscribers"]):
        return Permission("Task", "r")
    if parts[:1] == ["workitems"]:
        if method in ("GET", "HEAD"):
            return Permission("Task", "s" if len(parts) == 1 else "r")
        return Permission("Task", "c" if method == "POST" and len(parts) == 1 else "u")
    if method == "POST":
        return Permission("ImagingStudy", "c")
    if method == "DELETE":
        return Permission("ImagingStudy", "d")
    return Permission("ImagingStudy", "s" if parts and parts[-1] in _QIDO_RESOURCES else "r")


def _model_permission(method: str, parts: list[str]) -> Permission:
    if method == "GET":
        return Permission("Device", "s" if not parts else "r")
    if parts[1:] == ["run-stored"]:
        return Permission("Task", "c")  # it changes no model: it creates jobs (and the route checks study reading)
    return Permission("Device", "c" if not parts else "u")
