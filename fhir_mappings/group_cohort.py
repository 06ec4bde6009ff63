"""A FHIR R4 Group (group.html) as the cohort of a Group-level `$export`
(Bulk Data Access v2.0.0, group.html of the IG): the Patients it holds now.

A member counts while its membership holds: R4 Group.member.inactive marks
one that no longer does, and Group.member.period says when one does (an
open end: ongoing). The IG leaves it to the server which members it exports;
this one exports those whose membership holds at the kick-off. A Group of
other things than Patients (a `practitioner` or `device` Group, say) is no
cohort of patients and is refused whole, rather than exported in part.
With `_since`, the members who joined after it (by the Group's version then)
are exported whole.
"""

from typing import Any

from fhir_mappings.date_ranges import date_range
from fhir_mappings.errors import InvalidRequest
from fhir_mappings.search_values import split_reference


def current_patients(group: dict[str, Any], now: int) -> tuple[str, ...]:
    """The ids of the Patients `group` holds at `now` (microseconds), each
    once, in the Group's order; InvalidRequest when a member is not a Patient."""
    patients, others = _held(group, now)
    if others:
        raise InvalidRequest(
            f"Group/{group.get('id')} has members that are not Patients ({', '.join(others[:3])[:200]}): a"
            " Group-level export takes a Group of Patients"
        )
    return tuple(dict.fromkeys(patients))


def newcomers(members: tuple[str, ...], group_then: dict[str, Any] | None, since: int) -> frozenset[str]:
    """Which of `members` (a Group's at the kick-off) joined it after `since`
    (microseconds): those whose membership did not hold then by the Group's
    version at `since` (none: the Group was not there, or was deleted), by
    the kick-off's rule (inactive, period). What a Group-level export with
    `_since` exports whole: a client that exported the Group at `since` has
    none of their older data (export.html, `_since`)."""
    held = set(_held(group_then, since)[0]) if group_then is not None else set()
    return frozenset(members) - held


def _held(group: dict[str, Any], at: int) -> tuple[list[str], list[str]]:
    """The Patient ids whose membership holds at `at`, and the references of members that are not Patients."""
    patients: list[str] = []
    others: list[str] = []
    for member in group.get("member", []):
        reference = member.get("entity", {}).get("reference")
        target = split_reference(reference) if isinstance(reference, str) else None
        if target is None or target[0] != "Patient":
            others.append(reference if isinstance(reference, str) else "a member without a literal reference")
        elif _holds(member, at):
            patients.append(target[1])
    return patients, others


def _holds(member: dict[str, Any], now: int) -> bool:
    if member.get("inactive") is True:
        return False
    period = member.get("period", {})
    start = date_range(period["start"]) if isinstance(period.get("start"), str) else None
    end = date_range(period["end"]) if isinstance(period.get("end"), str) else None
    # A bound known to a day (or a month) counts whole: a membership ending today still holds today.
    return (start is None or start[0] <= now) and (end is None or now <= end[1])
