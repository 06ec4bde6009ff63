"""Unit tests for dicom.qido_attributes and dicom.matching (no server, no database)."""

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicom.errors import InvalidRequest
from dicom.matching import (
    NAME_GROUPS,
    WHOLE_NAME,
    PersonNameMatch,
    QidoQuery,
    Range,
    SequenceMatch,
    SingleValue,
    UidList,
    ValueList,
    Wildcard,
    fuzzy_name_tokens,
    name_search_key,
    normalise_person_name,
    normalise_time,
    parse_qido_query,
    person_name_groups,
    wildcard_to_glob,
    wildcard_to_like,
)
from dicom.qido_attributes import (
    ATTRIBUTES,
    default_result_tags,
    query_attributes,
    resolve_attribute,
)


def parse(level: str, *params: tuple[str, str], max_limit: int = 100) -> QidoQuery:
    return parse_qido_query(level, list(params), max_limit)


def only(query: QidoQuery):
    assert len(query.conditions) == 1
    return query.conditions[0]


def rejects(level: str, *params: tuple[str, str], naming: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(level, *params)
    assert naming in info.value.message


# --- attribute tables -------------------------------------------------------


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_tables_agree_with_the_data_dictionary(level):
    for attr in ATTRIBUTES[level]:
        for a in (attr, *attr.items):
            assert tag_for_keyword(a.keyword) == a.tag, a.keyword
            assert dictionary_VR(a.tag) == a.vr, a.keyword


def test_required_keys_are_present():
    study = {a.keyword for a in ATTRIBUTES["study"]}
    assert {"StudyDate", "ModalitiesInStudy", "PatientName", "StudyInstanceUID", "NumberOfStudyRelatedInstances"} <= study
    series = {a.keyword: a for a in ATTRIBUTES["series"]}
    assert {i.keyword for i in series["RequestAttributesSequence"].items} == {"RequestedProcedureID", "ScheduledProcedureStepID"}
    instance = {a.keyword: a for a in ATTRIBUTES["instance"]}
    assert {"SOPClassUID", "NumberOfFrames", "AvailableTransferSyntaxUID"} <= set(instance)


def test_computed_attributes_are_marked():
    study = {a.keyword: a for a in ATTRIBUTES["study"]}
    assert study["ModalitiesInStudy"].computed and study["ModalitiesInStudy"].matching
    assert study["NumberOfStudyRelatedSeries"].computed and not study["NumberOfStudyRelatedSeries"].matching
    assert study["RetrieveURL"].computed and study["InstanceAvailability"].computed
    assert not study["PatientID"].computed


def test_levels_above_are_allowed_and_own_level_wins():
    assert "SeriesInstanceUID" not in query_attributes("study")
    assert "PatientID" in query_attributes("series")
    assert {"PatientID", "Modality", "SOPInstanceUID"} <= set(query_attributes("instance"))
    assert query_attributes("series")["RetrieveURL"] in ATTRIBUTES["series"]


def test_default_result_tags_include_levels_above():
    tags = default_result_tags("series")
    assert 0x0020000D in tags and 0x0020000E in tags and 0x00080018 not in tags


def test_resolve_attribute_keyword_and_tag():
    assert resolve_attribute("PatientID") == ("PatientID", 0x00100020)
    assert resolve_attribute("00100020") == ("PatientID", 0x00100020)
    assert resolve_attribute("0020000d") == ("StudyInstanceUID", 0x0020000D)


@pytest.mark.parametrize("name", ["NoSuchKeyword", "patientid", "0010002", "00191234", "ZZZZZZZZ", ""])
def test_resolve_attribute_rejects_unknown(name):
    with pytest.raises(InvalidRequest):
        resolve_attribute(name)


# --- helpers ----------------------------------------------------------------


def test_wildcard_to_like_maps_and_escapes():
    assert wildcard_to_like("DOE*") == ("DOE%", "\\")
    assert wildcard_to_like("D?E") == ("D_E", "\\")
    assert wildcard_to_like("100%_a*") == ("100\\%\\_a%", "\\")
    assert wildcard_to_like("a\\b") == ("a\\\\b", "\\")


def test_wildcard_to_glob_keeps_wildcards_and_escapes_brackets():
    assert wildcard_to_glob("DOE*") == "DOE*"
    assert wildcard_to_glob("D?E") == "D?E"
    assert wildcard_to_glob("A[1]%_*") == "A[[]1]%_*"


def test_fuzzy_name_tokens():
    assert fuzzy_name_tokens("doe^john") == ["DOE", "JOHN"]
    assert fuzzy_name_tokens("John  Doe") == ["JOHN", "DOE"]
    assert fuzzy_name_tokens("^*") == []


def test_fuzzy_name_tokens_keep_their_wildcards():
    # PS3.4 C.2.2.2.4: a value with * or ? is matched as a pattern, fuzzy or not.
    assert fuzzy_name_tokens("joh*") == ["JOH*"]
    assert fuzzy_name_tokens("*oh*") == ["*OH*"]
    assert fuzzy_name_tokens("Doe^J?hn") == ["DOE", "J?HN"]
    assert fuzzy_name_tokens("*^john=**") == ["JOHN"]


def test_name_search_key_covers_all_groups():
    assert name_search_key("Doe^John^^Dr") == " DOE JOHN DR "
    assert name_search_key("Yamada^Tarou=山田^太郎") == " YAMADA TAROU 山田 太郎 "
    assert name_search_key("") == ""


def test_fuzzy_tokens_are_word_prefixes_of_the_search_key():
    key = name_search_key("Doe^Johnathan")
    assert all(f" {t}" in key for t in fuzzy_name_tokens("john DOE"))


def test_normalise_time():
    assert normalise_time("1030") == "103000.000000"
    assert normalise_time("10:30:15.5 ") == "103015.500000"
    assert normalise_time("2561") is None


# --- conditions ---------------------------------------------------------------


def test_single_value_is_exact():
    assert only(parse("study", ("PatientID", "abc"))) == SingleValue("PatientID", 0x00100020, "abc")
    assert only(parse("study", ("00100020", "abc"))) == SingleValue("PatientID", 0x00100020, "abc")


def test_wildcard_on_string_vr():
    assert only(parse("study", ("AccessionNumber", "A1*"))) == Wildcard("AccessionNumber", 0x00080050, "A1*")
    assert only(parse("study", ("StudyDescription", "CT?HEAD"))) == Wildcard("StudyDescription", 0x00081030, "CT?HEAD")


def test_lone_star_is_universal():
    q = parse("study", ("AccessionNumber", "*"))
    assert q.conditions == () and 0x00080050 in q.include_fields


def test_empty_value_becomes_include_field():
    q = parse("study", ("PatientName", ""), ("NumberOfStudyRelatedSeries", ""))
    assert q.conditions == ()
    assert q.include_fields == {0x00100010, 0x00201206}


def test_uid_list():
    cond = only(parse("study", ("StudyInstanceUID", "1.2.3,1.2.4")))
    assert cond == UidList("StudyInstanceUID", 0x0020000D, ("1.2.3", "1.2.4"))
    assert only(parse("study", ("StudyInstanceUID", "1.2.3\\1.2.4"))) == cond
    assert only(parse("study", ("StudyInstanceUID", "1.2.3"))) == SingleValue("StudyInstanceUID", 0x0020000D, "1.2.3")


def test_modality_list():
    cond = only(parse("study", ("ModalitiesInStudy", "CT,MR")))
    assert cond == ValueList("ModalitiesInStudy", 0x00080061, ("CT", "MR"))
    assert only(parse("series", ("Modality", "CT\\MR"))) == ValueList("Modality", 0x00080060, ("CT", "MR"))


def test_modality_single_value_takes_wildcards_but_list_items_do_not():
    assert only(parse("series", ("Modality", "M?"))) == Wildcard("Modality", 0x00080060, "M?")
    assert only(parse("study", ("ModalitiesInStudy", "M*"))) == Wildcard("ModalitiesInStudy", 0x00080061, "M*")
    assert only(parse("series", ("Modality", "MR"))) == SingleValue("Modality", 0x00080060, "MR")
    rejects("series", ("Modality", "CT,M*"), naming="Modality")


@pytest.mark.parametrize("value", ["1.2.*", "1.2.3,,1.2.4", "abc", "1.2.3,"])
def test_bad_uid_values(value):
    rejects("study", ("StudyInstanceUID", value), naming="StudyInstanceUID")


def test_backslash_refused_outside_lists():
    rejects("study", ("PatientID", "a\\b"), naming="PatientID")


def test_date_ranges():
    assert only(parse("study", ("StudyDate", "20200101-"))) == Range("StudyDate", 0x00080020, "20200101", None, "DA")
    assert only(parse("study", ("StudyDate", "-20201231"))) == Range("StudyDate", 0x00080020, None, "20201231", "DA")
    assert only(parse("study", ("StudyDate", "20200101-20201231"))).low == "20200101"
    assert only(parse("study", ("StudyDate", "20200229"))) == SingleValue("StudyDate", 0x00080020, "20200229")


def test_time_ranges_pad_to_full_precision():
    assert only(parse("study", ("StudyTime", "1030-"))) == Range("StudyTime", 0x00080030, "103000.000000", None, "TM")
    assert only(parse("study", ("StudyTime", "-12"))).high == "125959.999999"
    assert only(parse("study", ("StudyTime", "10"))) == Range("StudyTime", 0x00080030, "100000.000000", "105959.999999", "TM")
    assert only(parse("study", ("StudyTime", "103000.5-103000.5"))).high == "103000.599999"


def test_datetimes_west_of_utc_in_values_and_ranges():
    """PS3.4 C.2.2.2.5.1 lets either end of a DT range carry an offset, so a
    `-` either separates the ends or starts an offset west of UTC."""
    key = "ScheduledProcedureStepStartDateTime"

    def bounds(value: str) -> tuple[str | None, str | None]:
        condition = only(parse("workitem", (key, value)))
        return condition.low, condition.high

    assert bounds("20240601030000-0500") == ("20240601080000.000000", "20240601080000.999999")
    assert bounds("20240601000000-0500-20240601040000-0500") == ("20240601050000.000000", "20240601090000.999999")
    assert bounds("20240601000000-0500-") == ("20240601050000.000000", None)
    assert bounds("-20240601040000-0500") == (None, "20240601090000.999999")
    assert bounds("20240601000000+0200-20240601040000-0500") == ("20240531220000.000000", "20240601090000.999999")
    # Read as ranges before offsets were read, and so still.
    assert bounds("20240501-20240531") == ("20240501000000.000000", "20240531235959.999999")
    assert bounds("1000-1100") == ("10000101000000.000000", "11001231235959.999999")
    too_long = "2024-" * 3000
    for bad in ("2024-05", "20240601-0500-20240501", "20240601000000-0500-20240601000000-0600-", "-", "--", too_long):
        rejects("workitem", (key, bad), naming=key)


@pytest.mark.parametrize(
    "key,value",
    [
        ("StudyDate", "2020-01-01"),
        ("StudyDate", "20200230"),
        ("StudyDate", "2020"),
        ("StudyDate", "-"),
        ("StudyDate", "20201231-20200101"),
        ("StudyDate", "2020*"),
        ("StudyTime", "25"),
        ("StudyTime", "1060"),
        ("StudyTime", "10.5"),
        ("StudyTime", "12-10"),
    ],
)
def test_bad_dates_and_times(key, value):
    rejects("study", (key, value), naming=key)


def test_person_name_exact_and_fuzzy():
    assert only(parse("study", ("PatientName", "Doe^J*"))) == PersonNameMatch("PatientName", 0x00100010, "Doe^J*", False)
    assert only(parse("study", ("PatientName", "Doe^J*"))).is_wildcard
    # fuzzymatching applies to names given before it too.
    q = parse("study", ("ReferringPhysicianName", "smith"), ("fuzzymatching", "true"))
    assert q.fuzzy and only(q) == PersonNameMatch("ReferringPhysicianName", 0x00080090, "smith", True)
    assert not parse("study", ("fuzzymatching", "false")).fuzzy


def test_person_names_lose_trailing_empty_components():
    # PS3.5 6.2.1.1: trailing empty components, and their ^, are insignificant.
    assert normalise_person_name("Roe^Jane^^^") == "Roe^Jane"
    assert normalise_person_name("Roe^Jane^^=^^=") == "Roe^Jane"
    assert normalise_person_name("Yamada^Tarou^^=山田^太郎^") == "Yamada^Tarou=山田^太郎"
    assert normalise_person_name("=^Jane") == "=^Jane"
    assert normalise_person_name("^Jane") == "^Jane"
    assert only(parse("study", ("PatientName", "Roe^Jane^^^"))).value == "Roe^Jane"
    assert only(parse("study", ("PatientName", "Roe^J*^^"))).value == "Roe^J*"
    assert parse("study", ("PatientName", "^^=^")).conditions == ()  # the empty name: universal, like ""


JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_person_name_groups():
    assert person_name_groups(JAPANESE) == ("Yamada^Tarou", "山田^太郎", "やまだ^たろう")
    assert person_name_groups("Doe^John^^") == ("Doe^John", None, None)
    assert person_name_groups("=山田^太郎") == (None, "山田^太郎", None)
    assert person_name_groups("==やまだ") == (None, None, "やまだ")
    assert person_name_groups("") == (None, None, None)


@pytest.mark.parametrize(
    "query,groups",
    [
        ("Yamada^Tarou=山田^太郎", ("Yamada^Tarou", "山田^太郎")),
        ("=山田^太郎^^", (None, "山田^太郎")),
        # `=` asks for groups even where normalising drops it: the alphabetic group alone.
        ("Yamada^Tarou=", ("Yamada^Tarou", None)),
        ("*=山田*=", (None, "山田*", None)),
        # Empty groups past the third are trailing empty groups, which PS3.5 6.2.1.1 makes insignificant.
        ("Yamada^Tarou===", ("Yamada^Tarou", None, None)),
        ("a=b=c=^^", ("a", "b", "c")),
        ("Yamada^Tarou", None),
    ],
)
def test_person_name_groups_of_a_query(query, groups):
    assert only(parse("study", ("PatientName", query))).groups == groups


@pytest.mark.parametrize("query", ["*=*", "=", "**=*=", "^=*^"])
def test_person_name_of_empty_or_star_groups_is_universal(query):
    assert parse("study", ("PatientName", query)).conditions == ()


def test_person_name_of_four_groups_is_refused():
    rejects("study", ("PatientName", "a=b=c=d"), naming="PatientName")
    rejects("study", ("PatientName", "a===d"), naming="PatientName")
    # Fuzzy matching reads words, whatever the groups.
    assert only(parse("study", ("PatientName", "a=b=c=d"), ("fuzzymatching", "true"))).fuzzy


STORED_NAMES = [JAPANESE, "Yamada^Hanako=山田^花子=やまだ^はなこ", "=山田^太郎", "Yamada^Tarou", "Doe^John"]


@pytest.mark.parametrize(
    "query,expected",
    [
        ("Yamada^Tarou", {JAPANESE, "Yamada^Tarou"}),
        ("山田^太郎", {JAPANESE, "=山田^太郎"}),
        ("やまだ^たろう", {JAPANESE}),
        ("山田^*", {JAPANESE, "Yamada^Hanako=山田^花子=やまだ^はなこ", "=山田^太郎"}),
        ("*^太郎", {JAPANESE, "=山田^太郎"}),
        ("*太郎*", {JAPANESE, "=山田^太郎"}),
        ("Yamada*たろう", {JAPANESE}),  # across groups: the whole value
        ("Yamada^Tarou=山田^太郎", {JAPANESE}),
        ("=山田^太郎", {JAPANESE, "=山田^太郎"}),
        ("Yamada^Tarou=", {JAPANESE, "Yamada^Tarou"}),
        ("==やまだ^*", {JAPANESE, "Yamada^Hanako=山田^花子=やまだ^はなこ"}),
        ("Yamada^Tarou=山田^花子", set()),
        ("yamada^tarou", set()),
        ("山田", set()),
    ],
)
def test_person_name_rule(query, expected):
    condition = only(parse("study", ("PatientName", query)))
    assert {name for name in STORED_NAMES if condition.matches(name)} == expected


@pytest.mark.parametrize("query", ["Yamada^Tarou", "山田^*", "*^太郎", "*太郎*", "Yamada*", "Y*う", "?amada^Tarou"])
def test_person_name_compared_parts_leave_out_only_implied_matches(query):
    """Searching only `compared_parts` finds what trying every part finds."""
    condition = only(parse("study", ("PatientName", query)))
    for stored in STORED_NAMES + ["Yamada^Tarou=Yamada^Tarou", "X=Yamada^Tarou"]:
        parts = dict(zip(NAME_GROUPS, person_name_groups(stored)), **{WHOLE_NAME: stored})
        shortened = any(
            parts[part] is not None and PersonNameMatch("PatientName", 0x00100010, query, False).matches(parts[part])
            for part in condition.compared_parts()
        )
        assert shortened == condition.matches(stored), stored


def test_integer_keys():
    assert only(parse("series", ("SeriesNumber", "007"))) == SingleValue("SeriesNumber", 0x00200011, "7")
    rejects("series", ("SeriesNumber", "1*"), naming="SeriesNumber")


def test_sequence_matching_groups_item_keys():
    q = parse(
        "series",
        ("RequestAttributesSequence.RequestedProcedureID", "RP1"),
        ("Modality", "CT"),
        ("00400275.00400009", "SPS*"),
    )
    seq = q.conditions[-1]
    assert seq == SequenceMatch(
        "RequestAttributesSequence",
        0x00400275,
        (SingleValue("RequestedProcedureID", 0x00401001, "RP1"), Wildcard("ScheduledProcedureStepID", 0x00400009, "SPS*")),
    )


def test_sequence_errors():
    rejects("series", ("RequestAttributesSequence", "x"), naming="RequestAttributesSequence")
    rejects("series", ("RequestAttributesSequence.PatientID", "x"), naming="RequestAttributesSequence.PatientID")
    rejects("series", ("RequestAttributesSequence.RequestedProcedureID.PatientID", "x"), naming="RequestAttributesSequence")


# --- includefield, paging, errors --------------------------------------------------------


def test_includefield_variants():
    q = parse(
        "study",
        ("includefield", "00081030,PatientAge"),
        ("includefield", "StudyID"),
        ("includefield", "RequestAttributesSequence.RequestedProcedureID"),
    )
    assert q.include_fields == {0x00081030, 0x00101010, 0x00200010, 0x00400275}
    assert not q.include_all
    assert parse("study", ("includefield", "all")).include_all
    assert parse("study", ("includefield", "all,PatientAge")).include_fields == {0x00101010}


@pytest.mark.parametrize("value", ["Nope", "PatientID,,StudyID", "", "PatientID,"])
def test_bad_includefield(value):
    rejects("study", ("includefield", value), naming="includefield")


def test_limit_and_offset():
    q = parse("study", ("limit", "10"), ("offset", "20"))
    assert (q.limit, q.offset) == (10, 20)
    assert parse("study", ("limit", "500"), max_limit=100).limit == 100
    assert parse("study").limit == 100 and parse("study").offset == 0


@pytest.mark.parametrize(
    "name,value",
    [("limit", "-1"), ("limit", "ten"), ("limit", ""), ("offset", "1.5"), ("offset", "99999999999"), ("fuzzymatching", "yes")],
)
def test_bad_paging_and_flags(name, value):
    rejects("study", (name, value), naming=name)


def test_control_parameters_only_once():
    rejects("study", ("limit", "1"), ("limit", "2"), naming="limit")


def test_same_attribute_twice():
    rejects("study", ("PatientID", "a"), ("00100020", "b"), naming="00100020")
    rejects("study", ("PatientID", ""), ("PatientID", "b"), naming="PatientID")


def test_unknown_and_misplaced_attributes():
    rejects("study", ("Frobnicate", "1"), naming="Frobnicate")
    rejects("study", ("SeriesInstanceUID", "1.2"), naming="SeriesInstanceUID")
    rejects("study", ("PatientAge", "030Y"), naming="PatientAge")
    rejects("series", ("SOPInstanceUID", "1.2"), naming="SOPInstanceUID")


def test_relational_keys_allowed_below_study():
    assert only(parse("series", ("PatientID", "p"))).keyword == "PatientID"
    q = parse("instance", ("StudyInstanceUID", "1.2"), ("SeriesInstanceUID", "1.3"), ("SOPClassUID", "1.4"))
    assert [c.keyword for c in q.conditions] == ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"]


def test_return_only_keys_cannot_be_matched():
    rejects("study", ("NumberOfStudyRelatedSeries", "3"), naming="NumberOfStudyRelatedSeries")


def test_transport_parameters_are_left_to_the_route():
    assert parse("study", ("accept", "application/dicom+json")).conditions == ()


def test_result_tags():
    q = parse("study", ("PatientAge", ""), ("StudyDescription", "x"))
    assert {0x00101010, 0x00081030, 0x0020000D} <= q.result_tags


def test_empty_value_of_any_dictionary_attribute_is_an_include():
    q = parse("study", ("PatientAge", ""), ("00100030", ""))
    assert q.conditions == () and q.include_fields == {0x00101010, 0x00100030}
    rejects("study", ("PatientAge", ""), ("PatientAge", ""), naming="PatientAge")
