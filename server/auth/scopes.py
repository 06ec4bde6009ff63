"""SMART App Launch v2 scopes (hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):
`context/Type.permissions`, permissions drawn from c r u d s; v1 suffixes
`read` (= rs), `write` (= cud) and `*` (= cruds) are read as their v2 sets.

Each role has the widest scopes it allows; a token's scopes are the ones it
asked for narrowed to its role's, never more. DICOMweb maps onto ImagingStudy:
QIDO and WADO read it (r, s), STOW creates it (c), DELETE deletes it (d).

patient/ scopes reach one patient, the one a SMART launch picked: they count
only in a patient context (a token that names its patient), only for the
types of the Patient compartment and the Patient itself, to read and search,
and to write only where PATIENT_WRITES says. Which rows they reach is the
rule of `server.fhir.patient_context`.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from fhir_mappings.patient_compartment import EVERYTHING_TYPES

_SCOPE = re.compile(r"(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{1,63})\.(?P<permissions>[cruds]{1,5}|read|write|\*)")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
# Types a wildcard scope does not reach: the audit trail is only for those
# whose scopes name it (the auditor, the admin), and so are Subscriptions,
# whose channel headers carry the credentials of other systems' endpoints.
_NAMED_ONLY = frozenset(("AuditEvent", "Subscription"))
_ORDER = "cruds"
PATIENT_CONTEXT = "patient"
# What patient/ scopes reach: the Patient and the types of its compartment, read and searched.
PATIENT_TYPES = frozenset(EVERYTHING_TYPES)
_PATIENT_LETTERS = frozenset("rs")
# What patient/ scopes may change besides, letter by letter: only a type whose
# every write path keeps the change within the patient's compartment. An
# ImagingStudy is created by STOW, whose instances must name the patient and
# may join or replace only what is in its compartment already
# (`server.dicomweb.patient_writes`), and deleted by DICOMweb DELETE, of the
# compartment's studies alone. The compartment's other types, and the Patient,
# are written by the server alone (405 to every client): a type made writable
# later gives patient/ scopes no write until its write paths judge the
# compartment too.
PATIENT_WRITES: Mapping[str, frozenset[str]] = MappingProxyType({"ImagingStudy": frozenset("cd")})


class Role(Enum):
    ADMIN = "admin"
    MODALITY = "modality"  # PACS and scanners: STOW only
    CLINICIAN = "clinician"  # reads DICOM and FHIR
    AI_OPERATOR = "ai-operator"  # models and inference Tasks
    AUDITOR = "auditor"  # the audit trail


@dataclass(frozen=True)
class Scope:
    context: str
    resource_type: str  # a type, or "*"
    permissions: frozenset[str]

    def __str__(self) -> str:
        letters = "".join(letter for letter in _ORDER if letter in self.permissions)
        return f"{self.context}/{self.resource_type}.{letters}"


def parse_scope(text: str) -> Scope | None:
    """None for what is not a resource scope (openid, launch, ...): ignored, as SMART allows."""
    match = _SCOPE.fullmatch(text)
    if match is None:
        return None
    letters = _V1.get(match["permissions"], match["permissions"])
    return Scope(match["context"], match["type"], frozenset(letters))


@dataclass(frozen=True)
class Grant:
    scopes: tuple[Scope, ...]

    @classmethod
    def parse(cls, text: str) -> "Grant":
        return cls(tuple(scope for scope in (parse_scope(part) for part in text.split()) if scope is not None))

    def allows(self, resource_type: str, permission: str, patient_context: bool = False) -> bool:
        """`patient_context`: whether the token names its patient; without one, patient/ scopes give nothing."""
        return any(
            permission in scope.permissions
            and (scope.resource_type == resource_type or (scope.resource_type == "*" and resource_type not in _NAMED_ONLY))
            and (scope.context != PATIENT_CONTEXT
                 or (patient_context and resource_type in PATIENT_TYPES
                     and (permission in _PATIENT_LETTERS or permission in PATIENT_WRITES.get(resource_type, ()))))
            for scope in self.scopes
        )

    def in_context(self, *contexts: str) -> "Grant":
        return Grant(tuple(scope for scope in self.scopes if scope.context in contexts))

    def narrowed_to(self, widest: "Grant") -> "Grant":
        """What of this grant `widest` also allows: type by type, letter by
        letter. A patient/ scope allows only patient/ ones: it reaches one
        patient, where user/ and system/ scopes reach every one."""
        narrowed = []
        for asked in self.scopes:
            for allowed in widest.scopes:
                if allowed.context == PATIENT_CONTEXT and asked.context != PATIENT_CONTEXT:
                    continue
                if asked.resource_type not in ("*", allowed.resource_type) and allowed.resource_type != "*":
                    continue
                if "*" in (allowed.resource_type, asked.resource_type) and _NAMED_ONLY & {
                    allowed.resource_type, asked.resource_type
                }:
                    continue  # a wildcard never reaches these, granted or asked for
                resource_type = allowed.resource_type if asked.resource_type == "*" else asked.resource_type
                permissions = asked.permissions & allowed.permissions
                if permissions:
                    narrowed.append(Scope(asked.context, resource_type, permissions))
        return Grant(tuple(dict.fromkeys(narrowed)))

    def __str__(self) -> str:
        return " ".join(str(scope) for scope in self.scopes)


# The most patient/ scopes give: reading and searching the Patient and its compartment, type by type, and the
# writes of PATIENT_WRITES.
PATIENT_REACH = Grant(tuple(
    Scope(PATIENT_CONTEXT, resource_type, _PATIENT_LETTERS | PATIENT_WRITES.get(resource_type, frozenset()))
    for resource_type in EVERYTHING_TYPES
))


def role_grant(role: Role, context: str = "user") -> Grant:
    """The widest scopes a role allows, in the given context (user for people, system for clients)."""
    widest = {
        Role.ADMIN: ["*.cruds", "AuditEvent.rs", "Subscription.cruds"],
        Role.MODALITY: ["ImagingStudy.c"],
        Role.CLINICIAN: ["*.rs"],
        Role.AI_OPERATOR: ["Task.cruds", "Device.cruds", "ImagingStudy.rs", "DiagnosticReport.rs", "Observation.rs",
                           "Provenance.rs", "Patient.rs"],
        Role.AUDITOR: ["AuditEvent.rs"],
    }[role]
    return Grant.parse(" ".join(f"{context}/{scope}" for scope in widest))
