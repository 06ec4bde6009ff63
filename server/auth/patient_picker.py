"""The patients a user may pick as the context of a SMART launch
(`launch/patient`): the Patients the user may read and search, found by
name or identifier with the FHIR search itself, so that whatever hides a
Patient from the user hides it here too (`server.fhir.visibility`)."""

from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from fhir_mappings.errors import FhirError, Forbidden
from fhir_mappings.resources import require_id
from server.auth.access import Permission, Principal, acting_as, require_search_rights
from server.fhir.service import FhirService

PAGE_SIZE = 20


class NotPickable(Exception):
    """A patient the user may not pick (not there, or not the user's to read); the message says so."""


@dataclass(frozen=True)
class Choice:
    patient_id: str
    name: str
    birth_date: str
    identifiers: tuple[str, ...]


@dataclass(frozen=True)
class ChoicePage:
    choices: list[Choice]
    next_cursor: str | None  # the search's own paging cursor, for the page after this one


def patients_to_pick(fhir: FhirService, user: Principal, name: str, identifier: str, cursor: str) -> ChoicePage:
    """A page of the Patients `user` may pick: those whose name starts with
    `name` and that have `identifier` (`system|value` or a value), when given.
    Raises FhirError for a search that cannot be run (bad input, no right)."""
    if not (user.may(Permission("Patient", "r")) and user.may(Permission("Patient", "s"))):
        raise Forbidden(f"{user.name} may not read and search Patients, so may pick none")
    if cursor:  # the search's own cursor, signed: it holds the parameters of the first page
        pairs = [("_cursor", cursor)]
    else:
        pairs = [(parameter, value) for parameter, value in (("name", name), ("identifier", identifier)) if value]
        pairs.append(("_count", str(PAGE_SIZE)))
    with acting_as(user):
        # A cursor's search is whatever its first page was (someone else's too): the user's rights judge it.
        page = fhir.searcher.search("Patient", pairs, "", strict=True, authorize=partial(require_search_rights, user))
    following = parse_qs(urlsplit(page.links.get("next", "")).query).get("_cursor", [None])[0]
    return ChoicePage([_choice(orjson.loads(row.body)) for row in page.matches], following)


def require_pickable(fhir: FhirService, user: Principal, patient_id: str) -> None:
    """Raises NotPickable unless `user` may read the Patient `patient_id`."""
    if not user.may(Permission("Patient", "r")):
        raise NotPickable(f"{user.name} may not read Patients")
    try:
        require_id(patient_id)  # a form may post anything (a NUL, which PostgreSQL's text cannot hold)
        with acting_as(user):
            fhir.store.read("Patient", patient_id)
    except FhirError as error:  # not there, gone, or hidden from this user: all the same to the user
        raise NotPickable(f"there is no Patient {patient_id!r} that {user.name} may read") from error


def _choice(patient: dict[str, Any]) -> Choice:
    names = patient.get("name") or [{}]
    first = names[0]
    name = first.get("text") or " ".join([*first.get("given", []), first.get("family", "")]).strip()
    identifiers = tuple(
        f"{item['system']}|{item['value']}" if item.get("system") else item["value"]
        for item in patient.get("identifier", []) if item.get("value")
    )
    return Choice(patient["id"], name or "(no name)", patient.get("birthDate", ""), identifiers)
