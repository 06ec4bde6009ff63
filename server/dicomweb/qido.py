"""QIDO-RS (PS3.18 §10.6): condition objects from `dicom.matching` made into SQL.

The matching rules themselves live in `dicom/`; this module only knows which
column holds each key and how the levels join.
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeGuard

import orjson
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    String,
    and_,
    distinct,
    func,
    or_,
    select,
    true,
)

from dicom.matching import (
    NAME_GROUPS,
    TEXT_VRS,
    WHOLE_NAME,
    Condition,
    PersonNameMatch,
    QidoQuery,
    Range,
    SequenceMatch,
    SingleValue,
    UidList,
    ValueList,
    Wildcard,
    fuzzy_name_tokens,
    person_name_text,
    wildcard_to_glob,
    wildcard_to_like,
)
from dicom.qido_attributes import ATTRIBUTES, LEVELS
from server.fhir.patient_context import visible_studies
from server.tables import instances, series, series_requests, studies

# Where each matching key lives: the column it is compared with, and for PN
# the normalised column that fuzzy matching searches.
_COLUMNS: dict[int, Any] = {
    0x00080020: studies.c.study_date,
    0x00080030: studies.c.study_time,
    0x00080050: studies.c.accession_number,
    0x00080090: studies.c.referring_physician_name,
    0x00081030: studies.c.study_description,
    0x00100010: studies.c.patient_name,
    0x00100020: studies.c.patient_id,
    0x00100021: studies.c.issuer_of_patient_id,
    0x00100030: studies.c.patient_birth_date,
    0x00100040: studies.c.patient_sex,
    0x0020000D: studies.c.study_instance_uid,
    0x00200010: studies.c.study_id,
    0x00080060: series.c.modality,
    0x0008103E: series.c.series_description,
    0x00180015: series.c.body_part_examined,
    0x0020000E: series.c.series_instance_uid,
    0x00200011: series.c.series_number,
    0x00400244: series.c.performed_procedure_step_start_date,
    0x00400245: series.c.performed_procedure_step_start_time,
    0x00080016: instances.c.sop_class_uid,
    0x00080018: instances.c.sop_instance_uid,
    0x00200013: instances.c.instance_number,
    0x00401001: series_requests.c.requested_procedure_id,
    0x00400009: series_requests.c.scheduled_procedure_step_id,
}
_NAME_SEARCH_COLUMNS = {
    0x00100010: studies.c.patient_name_search,
    0x00080090: studies.c.referring_physician_name_search,
}
# For non-fuzzy PN matching, the column of each part of the name that
# `PersonNameMatch` compares: the whole value, and each component group.
_NAME_PART_COLUMNS = {
    tag: {WHOLE_NAME: whole} | {group: studies.c[f"{whole.name}_{group}"] for group in NAME_GROUPS}
    for tag, whole in ((0x00100010, studies.c.patient_name), (0x00080090, studies.c.referring_physician_name))
}
_MODALITIES_IN_STUDY = 0x00080061
_REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275
_INTEGER_TAGS = {0x00200011, 0x00200013}
# Rows read at a time where a page is filled in Python (`search`): the first
# batch fills most pages, and no answer holds every match in memory.
_CHECKED_BATCH = 500


@dataclass(frozen=True)
class Scope:
    """The UIDs fixed by the URL path (e.g. /studies/{study}/series)."""

    study_uid: str | None = None
    series_uid: str | None = None


def _wildcard(column: Any, pattern: str, dialect: str) -> ColumnElement[bool]:
    """`column` matched against a `*`/`?` pattern, case-sensitively on every database.

    SQLite's LIKE ignores ASCII case (and then cannot use an index), so there
    the pattern runs as a GLOB, which is case-sensitive and uses the index of
    a column for a literal prefix.
    """
    if dialect == "sqlite":
        return column.op("GLOB")(wildcard_to_glob(pattern))
    like, escape = wildcard_to_like(pattern)
    return column.like(like, escape=escape)


def _text_match(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    """Exact, or a pattern when `value` holds a wildcard (PS3.4 C.2.2.2.4)."""
    return _wildcard(column, value, dialect) if "*" in value or "?" in value else column == value


def _width(column: Any) -> int | None:
    return column.type.length if isinstance(column.type, String) else None


_Checked = SingleValue | Wildcard | PersonNameMatch


def _beyond_index(condition: Condition) -> TypeGuard[_Checked]:
    """A text condition that the index column of its attribute cannot decide:
    an exact value as long as the column or longer, or any pattern (a person
    name's groups are as wide as the whole, and cut only where it is). The
    column holds only the start of a longer stored value, so for such a
    condition it can only narrow the search: the stored attributes decide
    (`_holds_whole`). A shorter exact value never equals a cut one, but a
    pattern may match in the part that was cut off. Dates, times and UIDs
    are stored in their canonical forms, which fit."""
    column = _COLUMNS.get(condition.tag)
    width = None if column is None else _width(column)
    if width is None or _VRS.get(condition.tag) not in TEXT_VRS:
        return False
    if isinstance(condition, PersonNameMatch):
        wanted = (condition.value, *(group for group in condition.groups or () if group))
        return not condition.fuzzy and (condition.is_wildcard or any(len(value) >= width for value in wanted))
    return isinstance(condition, Wildcard) or (isinstance(condition, SingleValue) and len(condition.value) >= width)


_VRS = {attribute.tag: attribute.vr for level in LEVELS for attribute in ATTRIBUTES[level]}


def _holds_whole(row: Any, condition: _Checked, level: str) -> bool:
    table = _COLUMNS[condition.tag].table
    if table is instances:
        stored = row.metadata_json
    elif table is series:
        stored = row.attributes_json if level == "series" else row.series_json
    else:
        stored = row.attributes_json if level == "study" else row.study_json
    element = orjson.loads(stored).get(f"{condition.tag:08X}", {})
    if isinstance(condition, PersonNameMatch):
        names = (person_name_text(value) for value in element.get("Value", ()) if isinstance(value, dict))
        return any(condition.matches(name) for name in names)
    return any(isinstance(value, str) and condition.matches(value) for value in element.get("Value", ()))


def _decided_in_sql(row: Any, condition: _Checked) -> bool:
    """A pattern or a name that matched a row none of whose values was cut
    matched the whole value (`column_matches` lets in no other uncut row):
    nothing to parse."""
    table = _COLUMNS[condition.tag].table
    cut = row.series_cut if table is series else row.study_cut if table is studies else True
    return isinstance(condition, (Wildcard, PersonNameMatch)) and not cut


def column_matches(column: Any, condition: Condition, dialect: str, checked: bool = False) -> ColumnElement[bool]:
    """`condition` applied to the column that holds its attribute; `checked`:
    the rows found are checked on the whole value (`_holds_whole`)."""
    if isinstance(condition, SingleValue):
        if condition.tag in _INTEGER_TAGS:
            return column == int(condition.value)
        if checked and _beyond_index(condition):
            return column == condition.value[: _width(column)]
        return column == condition.value
    if isinstance(condition, (UidList, ValueList)):
        return column.in_(condition.values)
    if isinstance(condition, Wildcard):
        matched = _wildcard(column, condition.pattern, dialect)
        if not (checked and _beyond_index(condition)):
            return matched
        # A cut value (its row says so, and it fills the column) stays a
        # candidate when it starts as the pattern does up to its first `*`,
        # as a whole value that matches must. One that only fills its column
        # is whole, and decided by the pattern like any other.
        width = _width(column)
        start = condition.pattern.split("*", 1)[0][:width] + "*"
        cut = and_(column.table.c.index_cut, func.length(column) == width, _wildcard(column, start, dialect))
        return or_(matched, cut)
    if isinstance(condition, Range):
        bounds = []
        if condition.low is not None:
            bounds.append(column >= condition.low)
        if condition.high is not None:
            bounds.append(column <= condition.high)
        return and_(*bounds)
    if isinstance(condition, PersonNameMatch):
        if condition.fuzzy:
            # The search column holds " WORD WORD " in upper case: each
            # token, its wildcards included, must match from a word's start.
            search = _NAME_SEARCH_COLUMNS[condition.tag]
            return and_(*(_wildcard(search, f"* {token}*", dialect) for token in fuzzy_name_tokens(condition.value)))
        parts = _NAME_PART_COLUMNS[condition.tag]
        if condition.groups is not None:
            named = and_(*(
                _text_match(parts[group], wanted, dialect)
                for group, wanted in zip(NAME_GROUPS, condition.groups) if wanted is not None
            ))
        else:
            # Each group has an indexed column, so for an exact value both databases
            # look each term of the OR up in its own index (SQLite's MULTI-INDEX OR,
            # PostgreSQL's BitmapOr) rather than scan the table.
            named = or_(*(_text_match(parts[part], condition.value, dialect) for part in condition.compared_parts()))
        if not (checked and _beyond_index(condition)):
            return named
        return or_(named, _cut_name_candidates(condition, parts, dialect))
    raise AssertionError(f"unhandled condition {condition!r}")


def _cut_name_candidates(condition: PersonNameMatch, parts: dict[str, Any], dialect: str) -> ColumnElement[bool]:
    """The rows whose name was cut to its columns (the row says so, and the
    whole fills its column) and might match past the cut, or only in the
    part kept: the stored whole decides (`_holds_whole`). `compared_parts`
    takes the whole to hold each group, which a cut one need not. A name
    that matches has a part that starts as the value does up to its first
    `*`: the whole where the whole or its alphabetic group matches, else the
    group; matched against that start, each term can use its column's index."""
    whole = parts[WHOLE_NAME]
    cut = and_(whole.table.c.index_cut, func.length(whole) == _width(whole))
    if condition.groups is None:
        starts = [(parts[part], condition.value) for part in (WHOLE_NAME, *NAME_GROUPS[1:])]
    else:  # every group asked for must match: any one of them narrows enough
        starts = [next((parts[group], wanted) for group, wanted in zip(NAME_GROUPS, condition.groups) if wanted)]
    return or_(*(
        and_(cut, _wildcard(column, value.split("*", 1)[0][: _width(whole)] + "*", dialect))
        for column, value in starts
    ))


def _clause(condition: Condition, dialect: str, top_level: bool = True) -> ColumnElement[bool]:
    if isinstance(condition, SequenceMatch):
        if condition.tag != _REQUEST_ATTRIBUTES_SEQUENCE:
            raise AssertionError(f"no sequence table for {condition.keyword}")
        # One row per item, so all item conditions hold in the same item.
        # IN rather than a correlated EXISTS: SQLite runs EXISTS once per
        # outer row, but drives an IN subquery from the item column's index.
        items = select(series_requests.c.series_pk).where(
            *(_clause(item, dialect, top_level=False) for item in condition.conditions)
        )
        return series.c.id.in_(items)
    if condition.tag == _MODALITIES_IN_STUDY:
        # An alias, so that at series level the subquery looks at every series
        # of the study rather than at the outer series row; IN as above.
        sibling = series.alias("sibling_series")
        modality = column_matches(sibling.c.modality, condition, dialect)
        return studies.c.id.in_(select(sibling.c.study_pk).where(modality))
    return column_matches(_COLUMNS[condition.tag], condition, dialect, checked=top_level)


def _statement(query: QidoQuery, scope: Scope, dialect: str, paged: bool) -> Select[Any]:
    conditions = [_clause(condition, dialect) for condition in query.conditions]
    if scope.study_uid is not None:
        conditions.append(studies.c.study_instance_uid == scope.study_uid)
    if scope.series_uid is not None:
        conditions.append(series.c.series_instance_uid == scope.series_uid)
    if (visible := visible_studies()) is not None:
        conditions.append(visible)  # a patient context finds its patient's studies alone
    if query.level == "study":
        statement = select(
            studies.c.id, studies.c.study_instance_uid, studies.c.attributes_json,
            studies.c.index_cut.label("study_cut"),
        )
        order = studies.c.id
    elif query.level == "series":
        statement = select(
            series.c.id,
            studies.c.study_instance_uid,
            series.c.series_instance_uid,
            studies.c.attributes_json.label("study_json"),
            series.c.attributes_json,
            studies.c.index_cut.label("study_cut"),
            series.c.index_cut.label("series_cut"),
        ).join_from(series, studies, series.c.study_pk == studies.c.id)
        order = series.c.id
    else:
        statement = (
            select(
                instances.c.id,
                studies.c.study_instance_uid,
                series.c.series_instance_uid,
                instances.c.sop_instance_uid,
                instances.c.transfer_syntax_uid,
                studies.c.attributes_json.label("study_json"),
                series.c.attributes_json.label("series_json"),
                instances.c.metadata_json,
                studies.c.index_cut.label("study_cut"),
                series.c.index_cut.label("series_cut"),
            )
            .join_from(instances, series, instances.c.series_pk == series.c.id)
            .join(studies, instances.c.study_pk == studies.c.id)
        )
        order = instances.c.id
    # Insertion order is stable, so limit/offset pages neither repeat nor skip.
    # One row past the page tells whether more results exist.
    statement = statement.where(and_(true(), *conditions)).order_by(order)
    return statement.limit(query.limit + 1).offset(query.offset) if paged else statement


@dataclass(frozen=True)
class SearchPage:
    results: list[dict[str, Any]]
    more: bool  # results beyond this page exist


def search(engine: Engine, query: QidoQuery, scope: Scope, dicomweb_root: str) -> SearchPage:
    checks = [c for c in query.conditions if _beyond_index(c)]
    with engine.connect() as connection:
        statement = _statement(query, scope, engine.dialect.name, paged=not checks)
        if checks:
            # Rows a check refuses cannot be counted in SQL: page after
            # checking, reading rows in batches only until the page is full.
            result = connection.execute(statement.execution_options(yield_per=_CHECKED_BATCH))
            kept = (
                row for row in result
                if all(_decided_in_sql(row, check) or _holds_whole(row, check, query.level) for check in checks)
            )
            rows = list(islice(kept, query.offset, query.offset + query.limit + 1))
            result.close()
        else:
            rows = connection.execute(statement).all()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        if query.level == "study":
            counts = _study_counts(connection, [row.id for row in rows])
        elif query.level == "series":
            counts = _series_counts(connection, [row.id for row in rows])
        else:
            counts = {}
    keep = None if query.include_all else query.result_tags
    results = []
    for row in rows:
        study_url = f"{dicomweb_root}/studies/{row.study_instance_uid}"
        if query.level == "study":
            n_series, n_instances, modalities = counts.get(row.id, (0, 0, []))
            merged = orjson.loads(row.attributes_json) | {
                "00080056": _cs("ONLINE"),
                "00080061": {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"},
                "00081190": {"vr": "UR", "Value": [study_url]},
                "00201206": {"vr": "IS", "Value": [n_series]},
                "00201208": {"vr": "IS", "Value": [n_instances]},
            }
        elif query.level == "series":
            merged = orjson.loads(row.study_json) | orjson.loads(row.attributes_json) | {
                "00081190": {"vr": "UR", "Value": [f"{study_url}/series/{row.series_instance_uid}"]},
                "00201209": {"vr": "IS", "Value": [counts.get(row.id, 0)]},
            }
        else:
            url = f"{study_url}/series/{row.series_instance_uid}/instances/{row.sop_instance_uid}"
            merged = (
                orjson.loads(row.study_json)
                | orjson.loads(row.series_json)
                | orjson.loads(row.metadata_json)
                | {
                    "00080056": _cs("ONLINE"),
                    "00081190": {"vr": "UR", "Value": [url]},
                    "00083002": {"vr": "UI", "Value": [row.transfer_syntax_uid]},
                }
            )
        results.append(selected_attributes(merged, keep))
    return SearchPage(results, more)


def _cs(value: str) -> dict[str, Any]:
    return {"vr": "CS", "Value": [value]}


def selected_attributes(attributes: dict[str, Any], keep: frozenset[int] | None) -> dict[str, Any]:
    selected = {key: value for key, value in sorted(attributes.items()) if keep is None or int(key, 16) in keep}
    return _without_bulk_data(selected)


def _without_bulk_data(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes less every binary value, inside sequence items too.

    Bulk data is never part of a QIDO answer: a result is a summary, and
    PS3.18 §10.6.3 leaves binary attributes out of it. Stored BulkDataURIs
    also still carry the index's base marker, which only WADO-RS replaces.
    """
    kept = {}
    for key, element in attributes.items():
        if "BulkDataURI" in element or "InlineBinary" in element:
            continue
        if element.get("vr") == "SQ" and "Value" in element:
            element = element | {"Value": [_without_bulk_data(item) for item in element["Value"]]}
        kept[key] = element
    return kept


def _study_counts(connection: Any, study_pks: Sequence[int]) -> dict[int, tuple[int, int, list[str]]]:
    if not study_pks:
        return {}
    instance_counts = dict(
        connection.execute(
            select(instances.c.study_pk, func.count())
            .where(instances.c.study_pk.in_(study_pks))
            .group_by(instances.c.study_pk)
        ).all()
    )
    series_counts: dict[int, int] = defaultdict(int)
    modalities: dict[int, list[str]] = defaultdict(list)
    for study_pk, modality, count in connection.execute(
        select(series.c.study_pk, series.c.modality, func.count(distinct(series.c.id)))
        .where(series.c.study_pk.in_(study_pks))
        .group_by(series.c.study_pk, series.c.modality)
        .order_by(series.c.study_pk, series.c.modality)
    ):
        series_counts[study_pk] += count
        if modality:
            modalities[study_pk].append(modality)
    return {pk: (series_counts[pk], instance_counts.get(pk, 0), modalities[pk]) for pk in study_pks}


def _series_counts(connection: Any, series_pks: Sequence[int]) -> dict[int, int]:
    if not series_pks:
        return {}
    return dict(
        connection.execute(
            select(instances.c.series_pk, func.count())
            .where(instances.c.series_pk.in_(series_pks))
            .group_by(instances.c.series_pk)
        ).all()
    )


