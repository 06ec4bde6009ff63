"""Which stored resources the request being served may see, beyond what its
scopes allow: a rule per type (a Subscription is its owner's), or a rule over
every type (a patient context sees its patient's compartment), applied to the
rows every read path selects (read, vread, history, a search's matches, its
chains and what it includes), so that what a rule hides is, to the caller,
not there: 404, never matched, counted or included. A rule over a past
version's own body (a patient context's, whose compartment a resource can
leave) keeps history and vread from showing an earlier version that the row
rules, which judge a resource by its current version, would let through."""

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, or_

# The rows of a type the request may see, as a clause on their id column; None when it may see all.
VisibleIds = Callable[[Any], ColumnElement[bool] | None]
# The rows of any type the request may see, as a clause on their type and id columns, given the one type they
# are of when the query has one; None when it may see all.
VisibleRows = Callable[[Any, Any, str | None], ColumnElement[bool] | None]
# Whether the request may see a past version of a type, given its stored JSON.
VisibleVersion = Callable[[str, bytes], bool]


class Visibility:
    def __init__(self) -> None:
        self.rules: dict[str, VisibleIds] = {}
        self.row_rules: list[VisibleRows] = []
        self.version_rules: list[VisibleVersion] = []

    def where(self, types: Any, ids: Any, resource_type: str | None = None) -> list[ColumnElement[bool]]:
        """Clauses keeping the visible rows of a table with these type and id
        columns: of `resource_type` alone when given, else of any type."""
        clauses = []
        for ruled_type, visible_ids in self.rules.items():
            if resource_type not in (None, ruled_type):
                continue
            clause = visible_ids(ids)
            if clause is not None:
                clauses.append(clause if resource_type is not None else or_(types != ruled_type, clause))
        clauses += [clause for rule in self.row_rules if (clause := rule(types, ids, resource_type)) is not None]
        return clauses

    def shows_version(self, resource_type: str, body: bytes | None) -> bool:
        """Whether a version the row rules let through is shown: one recording a deletion (no body) is."""
        return body is None or all(rule(resource_type, body) for rule in self.version_rules)
