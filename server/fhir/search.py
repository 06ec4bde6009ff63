"""Search: one page of a searchset Bundle, its includes and its links.

Paging is by keyset: a cursor names the sort-key values and id of the last
row of a page, and the next page is the rows strictly after it. Rows created
while a client pages therefore neither shift nor repeat what it sees; the
first page fetches one row more than it shows, so a page with a `next` link
never leads to an empty page.
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import Connection, Engine, false, func, select

from fhir_mappings.errors import InvalidRequest
from fhir_mappings.search_query import (
    Condition,
    Include,
    SearchRequest,
    Summary,
    Total,
    parse_search,
)
from fhir_mappings.subsetting import subset_json
from server.db import reading
from server.fhir.cursor import CursorCodec
from server.fhir.search_sql import (
    COUNTED,
    RECORDS_OF_READING,
    RESOURCES,
    after,
    leader_sizes,
    names_resources,
    order_by,
    records_so_far,
    search_clauses,
    sort_parts,
    where_current,
)
from server.fhir.update_counts import count_in, last_updated_interval
from server.fhir.visibility import Visibility
from server.tables import fhir_references, fhir_resources

# How many index rows of a condition are counted, at most, to choose where a SQLite search starts.
_LEADER_PROBE_ROWS = 1000

# How many rounds of :iterate are followed before stopping (cycles end earlier).
_MAX_ITERATIONS = 4


@dataclass(frozen=True)
class Row:
    pk: int
    resource_type: str
    resource_id: str
    body: bytes


@dataclass
class SearchPage:
    # `_summary` and `_elements`, as each resource of the page is shown.
    subsetting: tuple[Summary, tuple[str, ...]]
    # The search as run, a cursor's included: whose patients it reads is said by these.
    parameters: tuple[tuple[str, str], ...]
    matches: list[Row]
    included: list[Row]
    total: int | None
    links: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def with_link_parameters(self, parameters: list[tuple[str, str]]) -> "SearchPage":
        """Links that keep how the client asked for the page (`_format`, `_pretty`),
        which is not part of the search and so not in the cursor."""
        if not parameters:
            return self
        suffix = urlencode(parameters)
        links = {relation: f"{url}{'&' if '?' in url else '?'}{suffix}" for relation, url in self.links.items()}
        return replace(self, links=links)


class Searcher:
    def __init__(self, engine: Engine, cursors: CursorCodec, max_included: int, visibility: Visibility) -> None:
        self.engine = engine
        self.cursors = cursors
        self.max_included = max_included
        self.visibility = visibility

    def search(
        self, resource_type: str, pairs: list[tuple[str, str]], base: str, strict: bool,
        connection: Connection | None = None, authorize: Callable[[SearchRequest], None] | None = None,
        within: tuple[str, str] | None = None,
    ) -> SearchPage:
        """`authorize` judges the parsed search (what it includes, where its
        chains look) before anything is read; it raises to refuse. `within`:
        a parameter every page keeps (a compartment's), a cursor's too."""
        cursor_token = next((value for name, value in pairs if name == "_cursor"), None)
        state: dict[str, Any] = {}
        if cursor_token is not None:
            state = self.cursors.decode(cursor_token)
            pairs = [(str(name), str(value)) for name, value in state.get("params", [])]
            if state.get("type") != resource_type or (within is not None and tuple(within) not in pairs):
                raise _tampered()
        elif within is not None:
            pairs = [within, *pairs]
        request = parse_search(resource_type, pairs, strict=strict and cursor_token is None)
        if authorize is not None:
            authorize(request)
        counted_with_page = cursor_token is None and request.total is Total.ACCURATE
        upto = state.get("upto")
        with reading(self.engine, connection) as session:
            leader = self._leader(session, request)
            if request.summary is Summary.COUNT or request.count == 0:
                rows, keys, has_more, total = [], [], False, self._total(session, request, leader)
            else:
                rows, keys, has_more, counted = self._page(
                    session, request, leader, state.get("position"), bool(state.get("backwards")), counted_with_page,
                    upto,
                )
                if has_more and cursor_token is None and request.resource_type in RECORDS_OF_READING:
                    upto = records_so_far(session)
                if counted_with_page:
                    total = counted
                elif cursor_token is None:
                    total = _within_what_was_seen(self._total(session, request, leader), len(rows), has_more)
                else:
                    total = state.get("total")
            included, cut = self._includes(session, request, rows)
        links = self._links(request, base, cursor_token, keys, has_more, state, total, upto)
        warnings = [f"unknown search parameter {name!r} was ignored" for name in request.ignored]
        if cut is not None:
            warnings.append(cut)
        return SearchPage(
            (request.summary, request.elements), request.parameters, rows, included, total, links, warnings
        )

    def _leader(self, connection: Connection, request: SearchRequest) -> Condition | None:
        """Where a search starts, on SQLite. SQLite starts from the first
        `id IN (rows)` it is given and gathers every other such list whole
        before the first row is read: `Observation?code=x&subject=y` gathered
        the half of all Observations that had the code to keep the few of one
        patient (93 ms of 100,000, against 9 on PostgreSQL, whose planner picks
        its own start), and with the patient leading instead, a patient of
        40,000 Observations and a rare code took twice as long as before. So
        the condition with the fewest index rows leads, each counted up to a
        bound; one naming resources wins a tie, and leads when none has fewer
        than the bound (a patient's rows are usually fewer than a code's)."""
        if connection.dialect.name != "sqlite" or len(request.conditions) < 2:
            return None
        sizes = [
            (size if isinstance(size, int) else connection.execute(size).scalar_one(), condition)
            for condition, size in leader_sizes(request.conditions, _LEADER_PROBE_ROWS)
        ]
        fewest = min(sizes, key=lambda sized: (sized[0], not names_resources(sized[1])), default=None)
        if fewest is not None and fewest[0] < _LEADER_PROBE_ROWS:
            return fewest[1]
        return next((condition for _, condition in sizes if names_resources(condition)), None)

    def _filtered(self, request: SearchRequest, resources: Any, leader: Condition | None) -> Any:
        clauses = [where_current(resources, request.resource_type, self.visibility)]
        clauses += search_clauses(request.conditions, resources, self.visibility, leader)
        return clauses

    def _counting(self, request: SearchRequest, resources: Any, leader: Condition | None) -> Any:
        return select(func.count()).select_from(resources).where(*self._filtered(request, resources, leader))

    def _matches(self, request: SearchRequest, leader: Condition | None) -> Any:
        """How many resources match, as a scalar subquery: from the per-second
        update counts when the search is by `_lastUpdated` alone, else counted."""
        interval = last_updated_interval(request.conditions)
        # The per-second counts are of every resource of the type, seen by the request or not.
        if interval is not None and not self.visibility.where(COUNTED.c.resource_type, COUNTED.c.resource_id,
                                                              request.resource_type):
            return count_in(request.resource_type, interval)
        return self._counting(request, COUNTED, leader).scalar_subquery()

    def _total(self, connection: Connection, request: SearchRequest, leader: Condition | None) -> int | None:
        if request.total is Total.NONE:
            return None
        counting = self._counting(request, RESOURCES, leader)
        estimated = request.total is Total.ESTIMATE and not self._hides_rows(request)
        if estimated and connection.dialect.name == "postgresql":
            # The planner's row estimate for the count's input: no rows are read.
            compiled = counting.compile(connection)
            plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled.string}", compiled.params).scalar()
            plan = plan if isinstance(plan, list) else orjson.loads(plan)
            return int(plan[0]["Plan"].get("Plans", [plan[0]["Plan"]])[0]["Plan Rows"])
        return int(connection.execute(select(self._matches(request, leader))).scalar_one())

    def _hides_rows(self, request: SearchRequest) -> bool:
        """Whether a visibility rule (a patient context's compartment, a
        Subscription's owner) keeps rows of the searched type, or of a type its
        chains reach, from this request. The planner's estimate of a query
        under such a rule is a guess from the statistics of the whole table,
        rows the request may not see among them: only a count keeps to the rule."""
        reached = {request.resource_type, *(condition.chain.other_type for condition in request.conditions
                                            if condition.chain is not None)}
        return any(self.visibility.where(RESOURCES.c.resource_type, RESOURCES.c.resource_id, resource_type)
                   for resource_type in reached)

    def _page(
        self, connection: Connection, request: SearchRequest, leader: Condition | None, position: list[Any] | None,
        backwards: bool, count_all: bool, upto: int | None,
    ) -> tuple[list[Row], list[list[Any]], bool, int | None]:
        """A page of rows, each row's sort-key values, whether more lie beyond
        it, and (with `count_all`) how many rows match in all: counted by a
        subquery of the same statement, which saves the count a round trip of
        its own (and, unlike a window, never fetches the rows it counts).
        `upto`: the last resource row of RECORDS_OF_READING that the search's
        first page could see."""
        resources = RESOURCES
        parts = sort_parts(request.sort, resources)
        counted = [self._matches(request, leader).label("matches")] if count_all else []
        statement = (
            select(
                resources.c.id, resources.c.resource_id, resources.c.resource_json, *counted,
                *(part.expression.label(f"k{index}") for index, part in enumerate(parts)),
            )
            .where(*self._filtered(request, resources, leader))
            .order_by(*order_by(parts, backwards))
            .limit(request.count + 1)
        )
        if position is not None:
            if len(position) != len(parts):
                raise _tampered()
            statement = statement.where(after(parts, position, backwards))
        if upto is not None:
            statement = statement.where(resources.c.id <= upto)
        fetched = connection.execute(statement).all()
        has_more = len(fetched) > request.count
        fetched = fetched[: request.count]
        if backwards:
            fetched.reverse()
        keys = [[row._mapping[f"k{index}"] for index in range(len(parts))] for row in fetched]
        rows = [Row(row.id, request.resource_type, row.resource_id, row.resource_json) for row in fetched]
        total = (int(fetched[0].matches) if fetched else 0) if count_all else None
        return rows, keys, has_more, total

    def _links(
        self, request: SearchRequest, base: str, cursor_token: str | None, keys: list[list[Any]], has_more: bool,
        state: dict[str, Any], total: int | None, upto: int | None,
    ) -> dict[str, str]:
        common = {"type": request.resource_type, "params": [list(pair) for pair in request.parameters], "total": total}
        if upto is not None:
            common["upto"] = upto
        links, cursor_url = page_links(
            self.cursors, f"{base}/{request.resource_type}", common, request.parameters, request.count, cursor_token
        )
        # A page reached from another page has rows on the side it came from.
        backwards = bool(state.get("backwards"))
        reached_from_a_page = state.get("position") is not None
        if keys:
            if (reached_from_a_page if backwards else has_more):
                links["next"] = cursor_url(position=keys[-1], backwards=False)
            if (has_more if backwards else reached_from_a_page):
                links["previous"] = cursor_url(position=keys[0], backwards=True)
        return links

    def _includes(
        self, connection: Connection, request: SearchRequest, rows: list[Row]
    ) -> tuple[list[Row], str | None]:
        if not (request.includes or request.revincludes) or not rows:
            return [], None
        seen = {(row.resource_type, row.resource_id) for row in rows}
        included: list[Row] = []
        frontier = rows
        for round_number in range(_MAX_ITERATIONS + 1):
            wanted = [
                include for include in request.includes if include.iterate or round_number == 0
            ]
            reverse = [include for include in request.revincludes if include.iterate or round_number == 0]
            found: list[Row] = []
            for include in wanted:
                sources = [row for row in frontier if row.resource_type == include.source_type]
                found += self._forward(connection, include, sources)
            for include in reverse:
                found += self._reverse(connection, include, frontier)
            fresh = []
            for row in found:
                key = (row.resource_type, row.resource_id)
                if key not in seen:
                    seen.add(key)
                    fresh.append(row)
            if len(included) + len(fresh) > self.max_included:
                included += fresh[: self.max_included - len(included)]
                return included, f"only the first {self.max_included} included resources are returned"
            included += fresh
            if not fresh or not any(include.iterate for include in (*request.includes, *request.revincludes)):
                return included, None
            frontier = fresh
        return included, f"includes are followed {_MAX_ITERATIONS + 1} levels deep: what may lie deeper is left out"

    def _forward(self, connection: Connection, include: Include, sources: list[Row]) -> list[Row]:
        if not sources:
            return []
        references = fhir_references.alias("ref")
        targets = fhir_resources.alias("t")
        statement = (
            select(targets.c.id, targets.c.resource_type, targets.c.resource_id, targets.c.resource_json)
            .join(references, (references.c.target_type == targets.c.resource_type) & (references.c.target_id == targets.c.resource_id))
            .where(
                references.c.resource_pk.in_([row.pk for row in sources]),
                references.c.param == include.parameter.name,
                targets.c.deleted == false(),
                *self.visibility.where(targets.c.resource_type, targets.c.resource_id),
            )
            .distinct()
        )
        if include.target_type is not None:
            statement = statement.where(targets.c.resource_type == include.target_type)
        return [Row(r.id, r.resource_type, r.resource_id, r.resource_json) for r in connection.execute(statement)]

    def _reverse(self, connection: Connection, include: Include, targets_seen: list[Row]) -> list[Row]:
        by_type: dict[str, list[str]] = {}
        for row in targets_seen:
            if include.target_type is None or include.target_type == row.resource_type:
                by_type.setdefault(row.resource_type, []).append(row.resource_id)
        found: list[Row] = []
        for target_type, ids in by_type.items():
            references = fhir_references.alias("ref")
            sources = fhir_resources.alias("s")
            statement = (
                select(sources.c.id, sources.c.resource_type, sources.c.resource_id, sources.c.resource_json)
                .join(references, references.c.resource_pk == sources.c.id)
                .where(
                    sources.c.resource_type == include.source_type,
                    sources.c.deleted == false(),
                    *self.visibility.where(sources.c.resource_type, sources.c.resource_id, include.source_type),
                    references.c.param == include.parameter.name,
                    references.c.target_type == target_type,
                    references.c.target_id.in_(ids),
                )
                .distinct()
            )
            found += [Row(r.id, r.resource_type, r.resource_id, r.resource_json) for r in connection.execute(statement)]
        return found


def _within_what_was_seen(estimate: int | None, shown: int, has_more: bool) -> int | None:
    """A first page's estimated total, no lower than the matches the page
    holds and no other than their number when it holds them all: the
    planner's guess on a small table is often 1 (PostgreSQL)."""
    if estimate is None:
        return None
    return max(estimate, shown + 1) if has_more else shown


def page_links(
    cursors: CursorCodec, url: str, search: dict[str, Any], parameters: tuple[tuple[str, str], ...], count: int,
    cursor_token: str | None,
) -> tuple[dict[str, str], Callable[..., str]]:
    """The self and first links of a page of `url`, and the maker of a link
    to another page of it (a position's): each holds `search` in a cursor."""

    def cursor_url(**position: Any) -> str:
        return f"{url}?{urlencode({'_cursor': cursors.encode({**search, **position})})}"

    if cursor_token is not None:
        self_url = f"{url}?{urlencode({'_cursor': cursor_token})}"
    else:
        # The search as run (R4 search.html#self): a `_count` above the cap says the cap.
        run = [(name, str(count) if name == "_count" else value) for name, value in parameters]
        self_url = f"{url}?{urlencode(run)}" if run else url
    return {"self": self_url, "first": cursor_url()}, cursor_url


def _tampered() -> InvalidRequest:
    return InvalidRequest("the paging cursor (_cursor) does not belong to this search")


def render_searchset(page: SearchPage, base: str) -> bytes:
    """The Bundle as bytes: stored resource JSON is spliced in, never reparsed,
    unless `_summary`/`_elements` ask for a subset."""
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        head["total"] = page.total
    head["link"] = [{"relation": relation, "url": url} for relation, url in page.links.items()]
    entries = [_entry(base, row, page.subsetting, "match") for row in page.matches]
    entries += [_entry(base, row, page.subsetting, "include") for row in page.included]
    if page.warnings:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "informational", "diagnostics": text} for text in page.warnings],
        }
        entries.append(b'{"resource":' + orjson.dumps(outcome) + b',"search":{"mode":"outcome"}}')
    body = orjson.dumps(head)
    if not entries:
        return body
    return body[:-1] + b',"entry":[' + b",".join(entries) + b"]}"


def _entry(base: str, row: Row, subsetting: tuple[Summary, tuple[str, ...]], mode: str) -> bytes:
    body = subset_json(row.body, *subsetting)
    full_url = orjson.dumps(f"{base}/{row.resource_type}/{row.resource_id}")
    return b'{"fullUrl":' + full_url + b',"resource":' + body + b',"search":{"mode":"' + mode.encode() + b'"}}'

