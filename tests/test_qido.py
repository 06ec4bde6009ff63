"""QIDO-RS over HTTP (PS3.18 §10.6, matching per PS3.4 §C.2.2.2).

Every test stores a few small instances through STOW-RS, then searches. The
suite runs on SQLite by default and on PostgreSQL with
MEDAIFLOW_TEST_DATABASE_URL, so a rule that only one database honours fails
in one of the two runs.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.dicom_files import make_ct, multipart_body

DICOM_JSON = "application/dicom+json"
ROOT = "http://testserver/dicom-web"

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
PATIENT_AGE = "00101010"
PATIENT_WEIGHT = "00101030"
STUDY_DESCRIPTION = "00081030"
MODALITIES_IN_STUDY = "00080061"
RETRIEVE_URL = "00081190"
REQUEST_ATTRIBUTES = "00400275"


# --- helpers ------------------------------------------------------------------


def store(client, *payloads: bytes) -> None:
    body, content_type = multipart_body(payloads)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def search(
    client, path: str, params: Sequence[tuple[str, str]] = (), headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    response = client.get(f"/dicom-web{path}", params=list(params), headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DICOM_JSON
    results = response.json()
    assert isinstance(results, list)
    return results


def value(result: dict[str, Any], tag: str) -> Any:
    return result[tag]["Value"][0]


def values(results: Iterable[dict[str, Any]], tag: str) -> list[Any]:
    return [value(result, tag) for result in results]


def uids(results: Iterable[dict[str, Any]], tag: str = STUDY_UID) -> set[str]:
    return {value(result, tag) for result in results}


def bad_request(client, path: str, params: Sequence[tuple[str, str]], naming: str) -> None:
    response = client.get(f"/dicom-web{path}", params=list(params))
    assert response.status_code == 400, response.text
    assert naming in response.json()["message"]


def studies_with(client, key: str, stored: Sequence[str], **common: object) -> dict[str, str]:
    """One single-instance study per value of `key`; value -> StudyInstanceUID."""
    by_value = {}
    for text in stored:
        study = generate_uid()
        store(client, make_ct(study_uid=study, **{key: text}, **common))
        by_value[text] = study
    return by_value


def matched(client, by_value: dict[str, str], params: Sequence[tuple[str, str]], path: str = "/studies") -> set[str]:
    """The stored values whose studies a search returns."""
    found = uids(search(client, path, params))
    return {text for text, study in by_value.items() if study in found}


@pytest.fixture
def hierarchy(client) -> dict[str, Any]:
    """Study A: a CT series of two instances and an MR series of one; study B: one CT instance."""
    a, b = generate_uid(), generate_uid()
    a_ct, a_mr, b_ct = generate_uid(), generate_uid(), generate_uid()
    ids = {"a": a, "b": b, "a_ct": a_ct, "a_mr": a_mr, "b_ct": b_ct}
    # MR stored first so that ModalitiesInStudy must be sorted, not in arrival order.
    ids["a_mr_1"] = generate_uid()
    store(
        client,
        make_ct(a, a_mr, ids["a_mr_1"], Modality="MR", SeriesNumber=2, InstanceNumber=1, SeriesDescription="T1 AX"),
    )
    ids["a_ct_1"], ids["a_ct_2"] = generate_uid(), generate_uid()
    store(
        client,
        make_ct(a, a_ct, ids["a_ct_1"], SeriesNumber=1, InstanceNumber=1, SeriesDescription="HEAD", PatientAge="042Y"),
        make_ct(a, a_ct, ids["a_ct_2"], SeriesNumber=1, InstanceNumber=2, SeriesDescription="HEAD", PatientAge="042Y"),
    )
    ids["b_ct_1"] = generate_uid()
    store(client, make_ct(b, b_ct, ids["b_ct_1"], PatientName="Roe^Richard", PatientID="PID-2", StudyDate="20230601"))
    return ids


# --- endpoints ------------------------------------------------------------------


def test_every_endpoint_searches_its_level_and_scope(client, hierarchy):
    h = hierarchy
    assert uids(search(client, "/studies")) == {h["a"], h["b"]}
    assert uids(search(client, "/series"), SERIES_UID) == {h["a_ct"], h["a_mr"], h["b_ct"]}
    assert uids(search(client, "/instances"), SOP_UID) == {h["a_ct_1"], h["a_ct_2"], h["a_mr_1"], h["b_ct_1"]}
    assert uids(search(client, f"/studies/{h['a']}/series"), SERIES_UID) == {h["a_ct"], h["a_mr"]}
    assert uids(search(client, f"/studies/{h['b']}/series"), SERIES_UID) == {h["b_ct"]}
    assert uids(search(client, f"/studies/{h['a']}/instances"), SOP_UID) == {h["a_ct_1"], h["a_ct_2"], h["a_mr_1"]}
    in_series = search(client, f"/studies/{h['a']}/series/{h['a_ct']}/instances")
    assert uids(in_series, SOP_UID) == {h["a_ct_1"], h["a_ct_2"]}
    # A series of another study is not found through this study's path.
    assert search(client, f"/studies/{h['b']}/series/{h['a_ct']}/instances") == []


def test_scoped_endpoints_combine_with_query_keys(client, hierarchy):
    h = hierarchy
    assert uids(search(client, f"/studies/{h['a']}/series", [("Modality", "MR")]), SERIES_UID) == {h["a_mr"]}
    assert search(client, f"/studies/{h['b']}/series", [("Modality", "MR")]) == []
    found = search(client, f"/studies/{h['a']}/instances", [("SeriesInstanceUID", h["a_mr"])])
    assert uids(found, SOP_UID) == {h["a_mr_1"]}
    found = search(client, f"/studies/{h['a']}/series/{h['a_ct']}/instances", [("InstanceNumber", "2")])
    assert uids(found, SOP_UID) == {h["a_ct_2"]}


# --- default result attributes ----------------------------------------------------


def test_study_results_carry_counts_modalities_and_url(client, hierarchy):
    h = hierarchy
    by_uid = {value(r, STUDY_UID): r for r in search(client, "/studies")}
    a, b = by_uid[h["a"]], by_uid[h["b"]]
    assert a["00201206"] == {"vr": "IS", "Value": [2]}
    assert a["00201208"] == {"vr": "IS", "Value": [3]}
    assert a[MODALITIES_IN_STUDY] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert a[RETRIEVE_URL]["Value"] == [f"{ROOT}/studies/{h['a']}"]
    assert a["00080056"]["Value"] == ["ONLINE"]
    assert a[PATIENT_NAME] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert value(a, PATIENT_ID) == "PID-1"
    assert value(a, "00080020") == "20240115"
    assert value(a, "00080030") == "101530"
    assert (b["00201206"]["Value"], b["00201208"]["Value"], b[MODALITIES_IN_STUDY]["Value"]) == ([1], [1], ["CT"])
    assert value(b, PATIENT_NAME) == {"Alphabetic": "Roe^Richard"}
    # Not a default attribute: it comes back only when asked for.
    assert PATIENT_AGE not in a
    # No series or instance attributes at study level.
    assert SERIES_UID not in a and SOP_UID not in a and "00080060" not in a


def test_series_results_carry_their_study(client, hierarchy):
    h = hierarchy
    by_uid = {value(r, SERIES_UID): r for r in search(client, "/series")}
    ct, mr, other = by_uid[h["a_ct"]], by_uid[h["a_mr"]], by_uid[h["b_ct"]]
    assert ct["00201209"] == {"vr": "IS", "Value": [2]}
    assert mr["00201209"] == {"vr": "IS", "Value": [1]}
    assert value(ct, "00080060") == "CT" and value(mr, "00080060") == "MR"
    assert ct["00200011"] == {"vr": "IS", "Value": [1]}
    assert value(mr, "0008103E") == "T1 AX"
    assert ct[RETRIEVE_URL]["Value"] == [f"{ROOT}/studies/{h['a']}/series/{h['a_ct']}"]
    # Study attributes of the right study on each row.
    assert value(ct, STUDY_UID) == h["a"] and value(other, STUDY_UID) == h["b"]
    assert value(ct, PATIENT_NAME) == {"Alphabetic": "Doe^John"}
    assert value(other, PATIENT_NAME) == {"Alphabetic": "Roe^Richard"}
    assert value(other, "00080020") == "20230601"
    assert SOP_UID not in ct


def test_instance_results_carry_identifiers_and_image_size(client, hierarchy):
    h = hierarchy
    [found] = search(client, "/instances", [("SOPInstanceUID", h["a_ct_2"])])
    assert value(found, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
    assert value(found, SOP_UID) == h["a_ct_2"]
    assert found["00200013"] == {"vr": "IS", "Value": [2]}
    assert found["00280010"] == {"vr": "US", "Value": [16]}
    assert found["00280011"] == {"vr": "US", "Value": [16]}
    assert found[RETRIEVE_URL]["Value"] == [f"{ROOT}/studies/{h['a']}/series/{h['a_ct']}/instances/{h['a_ct_2']}"]
    assert (value(found, STUDY_UID), value(found, SERIES_UID)) == (h["a"], h["a_ct"])
    assert value(found, "00080060") == "CT"
    assert value(found, "00083002") == "1.2.840.10008.1.2.1"
    # Pixel data and other non-default attributes stay out.
    assert "7FE00010" not in found and "00281052" not in found


def test_results_follow_the_json_model(client, hierarchy):
    for path in ("/studies", "/series", "/instances"):
        response = client.get(f"/dicom-web{path}", params=[("includefield", "all")])
        assert response.status_code == 200
        assert response.headers["content-type"] == DICOM_JSON
        assert "BulkDataURI" not in response.text and "InlineBinary" not in response.text
        for result in response.json():
            keys = list(result)
            assert keys == sorted(keys) and all(len(k) == 8 and k == k.upper() for k in keys)
            assert all("Value" not in element or isinstance(element["Value"], list) for element in result.values())
            assert isinstance(value(result, PATIENT_NAME), dict)


def test_bulk_data_never_appears_even_nested(client):
    icon = Dataset()
    icon.Rows = icon.Columns = 64
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = bytes(64 * 64)  # above the inline threshold: a BulkDataURI in metadata
    icon.ICCProfile = b"small-profile"  # below it: InlineBinary in metadata
    study = generate_uid()
    store(client, make_ct(study, IconImageSequence=[icon], ICCProfile=b"top-level-profile"))
    for path in ("/instances", f"/studies/{study}/instances"):
        response = client.get(f"/dicom-web{path}", params=[("includefield", "all")])
        assert response.status_code == 200
        text = response.text
        assert "BulkDataURI" not in text and "InlineBinary" not in text and "medaiflow-base" not in text
        [found] = response.json()
        # The sequence itself is still answered, only its binary values are left out.
        [item] = found["00880200"]["Value"]
        assert item["00280010"]["Value"] == [64]
        assert "7FE00010" not in item and "7FE00010" not in found


# --- single values, lists ---------------------------------------------------------


def test_single_value_matching(client, hierarchy):
    h = hierarchy
    assert uids(search(client, "/studies", [("PatientID", "PID-2")])) == {h["b"]}
    assert search(client, "/studies", [("PatientID", "PID")]) == []
    assert search(client, "/studies", [("PatientID", "pid-2")]) == []
    assert uids(search(client, "/studies", [("StudyDate", "20240115")])) == {h["a"]}
    assert uids(search(client, "/studies", [("PatientName", "Roe^Richard")])) == {h["b"]}
    assert uids(search(client, "/series", [("Modality", "MR")]), SERIES_UID) == {h["a_mr"]}
    assert uids(search(client, "/series", [("SeriesNumber", "2")]), SERIES_UID) == {h["a_mr"]}
    assert uids(search(client, "/series", [("SeriesDescription", "HEAD")]), SERIES_UID) == {h["a_ct"]}
    assert uids(search(client, "/instances", [("InstanceNumber", "2")]), SOP_UID) == {h["a_ct_2"]}
    assert uids(search(client, "/instances", [("SOPInstanceUID", h["b_ct_1"])]), SOP_UID) == {h["b_ct_1"]}
    # Tag form of the key.
    assert uids(search(client, "/studies", [("00100020", "PID-2")])) == {h["b"]}
    # Relational: study keys at series and instance level.
    assert uids(search(client, "/series", [("PatientID", "PID-2")]), SERIES_UID) == {h["b_ct"]}
    assert uids(search(client, "/instances", [("StudyDate", "20240115"), ("Modality", "CT")]), SOP_UID) == {
        h["a_ct_1"],
        h["a_ct_2"],
    }


def test_uid_lists(client, hierarchy):
    h = hierarchy
    third = generate_uid()
    store(client, make_ct(third))
    assert uids(search(client, "/studies", [("StudyInstanceUID", f"{h['a']},{h['b']}")])) == {h["a"], h["b"]}
    assert uids(search(client, "/studies", [("StudyInstanceUID", f"{h['b']}\\{third}")])) == {h["b"], third}
    assert uids(search(client, "/studies", [("StudyInstanceUID", f"{h['b']},1.2.3.999")])) == {h["b"]}
    found = search(client, "/series", [("SeriesInstanceUID", f"{h['a_mr']},{h['b_ct']}")])
    assert uids(found, SERIES_UID) == {h["a_mr"], h["b_ct"]}
    found = search(client, "/instances", [("SOPInstanceUID", f"{h['a_ct_1']},{h['b_ct_1']}")])
    assert uids(found, SOP_UID) == {h["a_ct_1"], h["b_ct_1"]}
    assert uids(search(client, "/series", [("Modality", "MR,US")]), SERIES_UID) == {h["a_mr"]}


# --- wildcards ---------------------------------------------------------------


WILDCARD_CASES = [
    ("PatientName", ["Doe^John", "Doe^Jane", "Smith^John"], "Doe*", {"Doe^John", "Doe^Jane"}),
    ("PatientName", ["Doe^John", "Doe^Jane", "Smith^John"], "*^John", {"Doe^John", "Smith^John"}),
    ("PatientName", ["Doe^John", "Doe^Jane", "Smith^John"], "Doe^J?n*", {"Doe^Jane"}),
    ("PatientName", ["Doe^John", "Doe^Jane", "Smith^John"], "doe*", set()),
    ("PatientID", ["PAT-001", "PAT-002", "XPAT-3"], "PAT-00?", {"PAT-001", "PAT-002"}),
    ("PatientID", ["PAT-001", "PAT-002", "XPAT-3"], "*PAT*", {"PAT-001", "PAT-002", "XPAT-3"}),
    ("PatientID", ["PAT-001", "PAT-002", "XPAT-3"], "PAT?", set()),
    ("PatientID", ["PAT-001", "PAT-002", "XPAT-3"], "pat*", set()),
    ("AccessionNumber", ["ACC100", "ACC200", "B100"], "*100", {"ACC100", "B100"}),
    ("AccessionNumber", ["ACC100", "ACC200", "B100"], "ACC*", {"ACC100", "ACC200"}),
    ("AccessionNumber", ["ACC100", "ACC200", "B100"], "acc*", set()),
    ("StudyDescription", ["CT HEAD", "CT CHEST", "MR HEAD"], "*HEAD", {"CT HEAD", "MR HEAD"}),
    ("StudyDescription", ["CT HEAD", "CT CHEST", "MR HEAD"], "?R HEAD", {"MR HEAD"}),
    ("StudyDescription", ["CT HEAD", "CT CHEST", "MR HEAD"], "ct*", set()),
]


@pytest.mark.parametrize("key,stored,pattern,expected", WILDCARD_CASES)
def test_wildcards_are_case_sensitive_patterns(client, key, stored, pattern, expected):
    by_value = studies_with(client, key, stored)
    assert matched(client, by_value, [(key, pattern)]) == expected


def test_lone_star_matches_everything_and_returns_the_key(client):
    by_value = studies_with(client, "AccessionNumber", ["A1", "B2"])
    assert matched(client, by_value, [("AccessionNumber", "*")]) == {"A1", "B2"}


@pytest.mark.parametrize("pattern", ["*", "**", "***"])
def test_stars_alone_match_empty_values_too(client, pattern):
    # `*` matches any run of characters, none included (PS3.4 C.2.2.2.4).
    by_value = studies_with(client, "StudyDescription", ["CT HEAD", ""])
    assert matched(client, by_value, [("StudyDescription", pattern)]) == {"CT HEAD", ""}


def test_wildcard_on_series_keys(client, hierarchy):
    h = hierarchy
    assert uids(search(client, "/series", [("SeriesDescription", "T1*")]), SERIES_UID) == {h["a_mr"]}
    assert uids(search(client, "/series", [("Modality", "M?")]), SERIES_UID) == {h["a_mr"]}
    assert uids(search(client, "/studies", [("ModalitiesInStudy", "M*")])) == {h["a"]}


@pytest.mark.parametrize(
    "query,expected",
    [
        ("A%1", {"A%1"}),
        ("A_1", {"A_1"}),
        ("A%*", {"A%1"}),
        ("A_*", {"A_1"}),
        ("*%*", {"A%1"}),
        ("*_?", {"A_1"}),
        ("A?1", {"A%1", "AB1", "A_1", "AX1"}),
    ],
)
def test_percent_and_underscore_are_literal(client, query, expected):
    by_value = studies_with(client, "PatientID", ["A%1", "AB1", "A_1", "AX1"])
    assert matched(client, by_value, [("PatientID", query)]) == expected


def test_brackets_are_literal(client):
    # SQLite runs wildcards as GLOB, where `[` opens a character class.
    by_value = studies_with(client, "PatientID", ["A[1]", "A1", "B[1]"])
    assert matched(client, by_value, [("PatientID", "A[*")]) == {"A[1]"}
    assert matched(client, by_value, [("PatientID", "?[1]")]) == {"A[1]", "B[1]"}
    assert matched(client, by_value, [("PatientID", "A[1]")]) == {"A[1]"}


def test_percent_and_underscore_are_literal_in_names(client):
    by_value = studies_with(client, "PatientName", ["Do_e^Ann", "Doxe^Ann", "Do%e^Ann"])
    assert matched(client, by_value, [("PatientName", "Do_e*")]) == {"Do_e^Ann"}
    assert matched(client, by_value, [("PatientName", "Do%e^Ann")]) == {"Do%e^Ann"}
    assert matched(client, by_value, [("PatientName", "do_e"), ("fuzzymatching", "true")]) == {"Do_e^Ann"}


# --- dates and times ------------------------------------------------------------


@pytest.mark.parametrize(
    "query,expected",
    [
        ("20240101-20240131", {"20240101", "20240115", "20240131"}),
        ("20240101-", {"20240101", "20240115", "20240131", "20240201"}),
        ("-20231231", {"20231215"}),
        ("20240115", {"20240115"}),
        ("20240116-20240130", set()),
    ],
)
def test_study_date_ranges(client, query, expected):
    by_value = studies_with(client, "StudyDate", ["20231215", "20240101", "20240115", "20240131", "20240201"])
    assert matched(client, by_value, [("StudyDate", query)]) == expected


@pytest.mark.parametrize(
    "query,expected",
    [
        ("1000-1100", {"101530"}),
        ("-0900", {"083000"}),
        ("12-", {"1200", "235959.5"}),
        ("10", {"101530"}),
        ("120000-120000", {"1200"}),
        ("101530.000001-", {"1200", "235959.5"}),
        ("0830-1015", {"083000", "101530"}),
        ("0830-1014", {"083000"}),
        ("0830-101530", {"083000", "101530"}),
    ],
)
def test_study_time_ranges(client, query, expected):
    by_value = studies_with(client, "StudyTime", ["083000", "101530", "1200", "235959.5"])
    assert matched(client, by_value, [("StudyTime", query)]) == expected


def test_date_range_at_series_and_instance_level(client, hierarchy):
    h = hierarchy
    found = search(client, "/series", [("StudyDate", "-20231231")])
    assert uids(found, SERIES_UID) == {h["b_ct"]}
    found = search(client, "/instances", [("StudyDate", "20240101-")])
    assert uids(found, SOP_UID) == {h["a_ct_1"], h["a_ct_2"], h["a_mr_1"]}


# --- ModalitiesInStudy ------------------------------------------------------------


@pytest.fixture
def modality_studies(client) -> dict[str, Any]:
    """Study "ct_mr" has a CT and an MR series, "ct" only CT, "us" only US."""
    ids: dict[str, Any] = {name: generate_uid() for name in ("ct_mr", "ct", "us")}
    ids["ct_mr_series"] = {"CT": generate_uid(), "MR": generate_uid()}
    for modality, series in ids["ct_mr_series"].items():
        store(client, make_ct(ids["ct_mr"], series, Modality=modality))
    store(client, make_ct(ids["ct"]))
    store(client, make_ct(ids["us"], Modality="US"))
    return ids


@pytest.mark.parametrize(
    "query,expected",
    [("CT", {"ct_mr", "ct"}), ("MR", {"ct_mr"}), ("CT,MR", {"ct_mr", "ct"}), ("MR,US", {"ct_mr", "us"}), ("NM", set())],
)
def test_modalities_in_study_at_study_level(client, modality_studies, query, expected):
    found = uids(search(client, "/studies", [("ModalitiesInStudy", query)]))
    assert found == {modality_studies[name] for name in expected}


def test_modalities_in_study_at_series_level_looks_at_the_whole_study(client, modality_studies):
    ids = modality_studies
    found = search(client, "/series", [("ModalitiesInStudy", "MR")])
    # The CT series of a study that also has MR is a match: the key describes the study.
    assert uids(found, SERIES_UID) == set(ids["ct_mr_series"].values())
    found = search(client, "/series", [("ModalitiesInStudy", "MR"), ("Modality", "CT")])
    assert uids(found, SERIES_UID) == {ids["ct_mr_series"]["CT"]}
    found = search(client, "/instances", [("ModalitiesInStudy", "MR,US")])
    assert uids(found, STUDY_UID) == {ids["ct_mr"], ids["us"]} and len(found) == 3


# --- fuzzy person-name matching ---------------------------------------------------


NAMES = ["Doe^John", "Smith^Johanna", "Johnson^Mary", "Doe^Jane"]


@pytest.mark.parametrize(
    "query,fuzzy,expected",
    [
        ("john doe", "true", {"Doe^John"}),
        ("DOE^JOHN", "true", {"Doe^John"}),
        ("doe", "true", {"Doe^John", "Doe^Jane"}),
        ("JOH", "true", {"Doe^John", "Smith^Johanna", "Johnson^Mary"}),
        ("joh*", "true", {"Doe^John", "Smith^Johanna", "Johnson^Mary"}),
        ("mary JOHN", "true", {"Johnson^Mary"}),
        ("ohn", "true", set()),
        # Wildcards keep their meaning (PS3.4 C.2.2.2.4); each token still matches from a word's start.
        ("*oh*", "true", {"Doe^John", "Smith^Johanna", "Johnson^Mary"}),
        ("*oe", "true", {"Doe^John", "Doe^Jane"}),
        ("Doe^J?hn", "true", {"Doe^John"}),
        ("j?hn DOE", "true", {"Doe^John"}),
        ("*ann*", "true", {"Smith^Johanna"}),
        ("?ohn", "true", {"Doe^John", "Johnson^Mary"}),
        ("john doe", "false", set()),
        ("doe^john", "false", set()),
        ("Doe^John", "false", {"Doe^John"}),
        ("Doe^John", None, {"Doe^John"}),
        ("doe^john", None, set()),
        ("JOH", None, set()),
    ],
)
def test_patient_name_matching(client, query, fuzzy, expected):
    by_value = studies_with(client, "PatientName", NAMES)
    params = [("PatientName", query)] + ([("fuzzymatching", fuzzy)] if fuzzy else [])
    assert matched(client, by_value, params) == expected


@pytest.mark.parametrize("query", ["*oh*", "*ohn", "Doe^J?hn", "D*n", "Doe?John", "*^John", "Do*^J*", "Doe^John"])
def test_fuzzy_matching_finds_whatever_exact_matching_finds(client, query):
    """Fuzzy matching only loosens case and word order, so it never finds less."""
    by_value = studies_with(client, "PatientName", NAMES)
    exact = matched(client, by_value, [("PatientName", query)])
    assert exact and exact <= matched(client, by_value, [("PatientName", query), ("fuzzymatching", "true")])


@pytest.mark.parametrize("query", ["Roe^Jane", "Roe^Jane^^^", "Roe^Jane^", "Roe^J*^^", "Roe^Jane=", "Roe^Jane^^^=^"])
def test_trailing_empty_name_components_are_insignificant(client, query):
    """PS3.5 6.2.1.1: Roe^Jane^^^ and Roe^Jane are one name, stored or asked for."""
    by_value = studies_with(client, "PatientName", ["Roe^Jane^^^", "Roe^Jane", "Roe^Jane^^Dr", "Roe^Janet"])
    expected = {"Roe^Jane^^^", "Roe^Jane"} | ({"Roe^Jane^^Dr", "Roe^Janet"} if "*" in query else set())
    assert matched(client, by_value, [("PatientName", query)]) == expected
    referring = studies_with(client, "ReferringPhysicianName", ["House^Gregory^^^"])
    assert matched(client, referring, [("ReferringPhysicianName", "House^Gregory")]) == {"House^Gregory^^^"}


def test_fuzzy_matching_covers_every_component_group(client):
    names = ["Yamada^Tarou=山田^太郎", "Müller^Hans", "Yamamoto^Hanako"]
    by_value = studies_with(client, "PatientName", names, SpecificCharacterSet="ISO_IR 192")
    assert matched(client, by_value, [("PatientName", "tarou yamada"), ("fuzzymatching", "true")]) == {names[0]}
    assert matched(client, by_value, [("PatientName", "山田"), ("fuzzymatching", "true")]) == {names[0]}
    assert matched(client, by_value, [("PatientName", "müller"), ("fuzzymatching", "true")]) == {names[1]}
    assert matched(client, by_value, [("PatientName", "yama"), ("fuzzymatching", "true")]) == {names[0], names[2]}
    assert matched(client, by_value, [("PatientName", "Müller^Hans")]) == {names[1]}


def test_fuzzy_matching_applies_to_referring_physician_and_series_level(client):
    by_value = studies_with(client, "ReferringPhysicianName", ["House^Gregory", "Wilson^James"])
    fuzzy = [("fuzzymatching", "true"), ("ReferringPhysicianName", "greg")]
    assert matched(client, by_value, fuzzy) == {"House^Gregory"}
    assert matched(client, by_value, [("ReferringPhysicianName", "greg")]) == set()
    found = search(client, "/series", [("ReferringPhysicianName", "james wilson"), ("fuzzymatching", "true")])
    assert uids(found) == {by_value["Wilson^James"]}


# --- person names by component group -------------------------------------------------


JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"
HANAKO = "Yamada^Hanako=山田^花子=やまだ^はなこ"
GROUPED_NAMES = [JAPANESE, HANAKO, "=山田^太郎", "Yamada^Tarou", "Doe^John"]


@pytest.mark.parametrize(
    "query,expected",
    [
        ("Yamada^Tarou", {JAPANESE, "Yamada^Tarou"}),  # the alphabetic group, or a name of that group only
        ("山田^太郎", {JAPANESE, "=山田^太郎"}),  # the ideographic group, the alphabetic one empty or not
        ("やまだ^たろう", {JAPANESE}),  # the phonetic group
        ("山田^*", {JAPANESE, HANAKO, "=山田^太郎"}),
        ("*^太郎", {JAPANESE, "=山田^太郎"}),
        ("Yamada^T*", {JAPANESE, "Yamada^Tarou"}),
        ("*太郎*", {JAPANESE, "=山田^太郎"}),
        ("Yamada*たろう", {JAPANESE}),  # a pattern across groups matches the whole value
        ("Yamada^Tarou=山田^太郎", {JAPANESE}),  # group by group; the phonetic group not asked for
        ("=山田^太郎", {JAPANESE, "=山田^太郎"}),
        ("Yamada^Tarou=", {JAPANESE, "Yamada^Tarou"}),
        ("==やまだ^*", {JAPANESE, HANAKO}),
        ("Yamada*=山田^花子", {HANAKO}),
        ("*=*", set(GROUPED_NAMES)),
        ("Yamada^Tarou=山田^花子", set()),
        ("yamada^tarou", set()),  # case-sensitive, as before
        ("山田", set()),  # a group is matched whole, not a component of it
    ],
)
def test_person_names_match_per_component_group(client, query, expected):
    by_value = studies_with(client, "PatientName", GROUPED_NAMES, SpecificCharacterSet="ISO_IR 192")
    assert matched(client, by_value, [("PatientName", query)]) == expected


def test_referring_physician_matches_per_component_group_at_every_level(client):
    by_value = studies_with(client, "ReferringPhysicianName", [JAPANESE, "Doe^John"], SpecificCharacterSet="ISO_IR 192")
    for path in ("/studies", "/series", "/instances"):
        assert matched(client, by_value, [("ReferringPhysicianName", "山田^太郎")], path) == {JAPANESE}
        assert matched(client, by_value, [("ReferringPhysicianName", "=山田^太郎=やまだ^*")], path) == {JAPANESE}
    assert matched(client, by_value, [("ReferringPhysicianName", "やまだ"), ("fuzzymatching", "true")]) == {JAPANESE}


def test_group_matching_leaves_the_answer_as_stored(client):
    """A name found by one group is answered whole, with the attributes asked for, as any other match."""
    [study] = studies_with(client, "PatientName", [JAPANESE], SpecificCharacterSet="ISO_IR 192").values()
    whole = {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    by_group = search(client, "/studies", [("PatientName", "山田^太郎"), ("includefield", "PatientID")])
    by_study = search(client, "/studies", [("StudyInstanceUID", study), ("includefield", "PatientID")])
    assert by_group == by_study
    assert by_group[0][PATIENT_NAME] == {"vr": "PN", "Value": [whole]}
    assert value(by_group[0], PATIENT_ID) == "PID-1"


def test_more_than_three_name_groups_are_refused(client):
    bad_request(client, "/studies", [("PatientName", "a=b=c=d")], naming="PatientName")


def test_names_longer_than_their_index_columns_are_matched_on_the_whole_name(client):
    """The name columns hold 324 characters; a longer name (groups of 200, as
    readers that take 64 per component allow) is cut there, so a pattern is
    decided on the stored whole, by the group past the cut and by its end."""
    long_name = "Q" * 200 + "=" + "B" * 200 + "^Z"
    by_value = studies_with(client, "PatientName", [long_name, "Doe^John"], SpecificCharacterSet="ISO_IR 192")
    for path in ("/studies", "/series", "/instances"):
        assert matched(client, by_value, [("PatientName", "*Z*")], path) == {long_name}  # the ideographic group
        assert matched(client, by_value, [("PatientName", "Q*^Z")], path) == {long_name}  # the whole
        assert matched(client, by_value, [("PatientName", "*B")], path) == set()  # only where the column was cut
        assert matched(client, by_value, [("PatientName", "Q*=B*^Z")], path) == {long_name}
        assert matched(client, by_value, [("PatientName", "B" * 200 + "^Z")], path) == {long_name}
        assert matched(client, by_value, [("PatientName", long_name)], path) == {long_name}
    pages = [search(client, "/studies", [("PatientName", "*Z*"), ("limit", "1"), ("offset", offset)])
             for offset in ("0", "1")]
    assert [len(page) for page in pages] == [1, 0]


# --- includefield ----------------------------------------------------------------


@pytest.fixture
def described(client) -> str:
    study = generate_uid()
    store(
        client,
        make_ct(
            study,
            PatientAge="042Y",
            PatientWeight=70.5,
            StudyDescription="CT HEAD",
            Manufacturer="ACME",
            RescaleIntercept=-1024,
        ),
    )
    return study


@pytest.mark.parametrize(
    "query",
    [
        "includefield=PatientAge,PatientWeight",
        "includefield=PatientAge%2CPatientWeight",
        "includefield=PatientAge&includefield=PatientWeight",
        "includefield=00101010%2C00101030",
        "includefield=all",
        "PatientAge=&PatientWeight=",
    ],
)
def test_includefield_adds_attributes(client, described, query):
    response = client.get(f"/dicom-web/studies?{query}")
    assert response.status_code == 200, response.text
    [found] = response.json()
    assert found[PATIENT_AGE] == {"vr": "AS", "Value": ["042Y"]}
    assert found[PATIENT_WEIGHT] == {"vr": "DS", "Value": [70.5]}
    # Defaults stay.
    assert value(found, STUDY_UID) == described and found["00201208"]["Value"] == [1]


def test_includefield_tag_form_and_levels(client, described):
    [found] = search(client, "/studies", [("includefield", "00081030")])
    assert value(found, STUDY_DESCRIPTION) == "CT HEAD"
    [plain] = search(client, "/series")
    assert "00080070" not in plain
    [found] = search(client, "/series", [("includefield", "Manufacturer")])
    assert value(found, "00080070") == "ACME"
    [plain] = search(client, "/instances")
    assert "00281052" not in plain
    [found] = search(client, "/instances", [("includefield", "RescaleIntercept,00101010")])
    assert found["00281052"] == {"vr": "DS", "Value": [-1024]}
    assert value(found, PATIENT_AGE) == "042Y"


def test_matching_keys_come_back_in_results(client, described):
    [found] = search(client, "/series", [("PatientWeight", "")])
    assert found[PATIENT_WEIGHT]["Value"] == [70.5]


# --- paging ------------------------------------------------------------------------


def test_limit_and_offset_page_without_gaps_or_duplicates(client):
    stored = [generate_uid() for _ in range(7)]
    for study in stored:
        store(client, make_ct(study))
    pages = [search(client, "/studies", [("limit", "3"), ("offset", str(offset))]) for offset in (0, 3, 6, 9)]
    assert [len(page) for page in pages] == [3, 3, 1, 0]
    paged = [value(r, STUDY_UID) for page in pages for r in page]
    assert sorted(paged) == sorted(stored) and len(set(paged)) == 7
    # The same order on every request.
    assert values(search(client, "/studies"), STUDY_UID) == paged
    assert values(search(client, "/studies", [("offset", "2"), ("limit", "2")]), STUDY_UID) == paged[2:4]


def test_a_page_cut_short_carries_the_warning_and_the_last_does_not(client):
    for _ in range(3):
        store(client, make_ct(generate_uid()))
    first = client.get("/dicom-web/studies", params={"limit": "2"})
    assert first.status_code == 200 and len(first.json()) == 2
    assert first.headers["warning"].startswith("299 ")
    assert "Additional results can be requested" in first.headers["warning"]
    last = client.get("/dicom-web/studies", params={"limit": "2", "offset": "2"})
    assert len(last.json()) == 1 and "warning" not in last.headers
    exact = client.get("/dicom-web/studies", params={"limit": "3"})
    assert len(exact.json()) == 3 and "warning" not in exact.headers


def test_paging_at_series_and_instance_level(client, hierarchy):
    all_series = values(search(client, "/series"), SERIES_UID)
    pages = [search(client, "/series", [("limit", "1"), ("offset", str(offset))]) for offset in range(3)]
    paged = [value(r, SERIES_UID) for page in pages for r in page]
    assert paged == all_series and len(set(paged)) == 3
    all_instances = values(search(client, "/instances"), SOP_UID)
    first = search(client, "/instances", [("limit", "3")])
    rest = search(client, "/instances", [("limit", "3"), ("offset", "3")])
    assert values(first + rest, SOP_UID) == all_instances and len(set(all_instances)) == 4


def test_limit_is_capped_by_the_server_maximum(client, services, monkeypatch):
    for _ in range(4):
        store(client, make_ct())
    monkeypatch.setattr(services.settings, "qido_max_limit", 2)
    assert len(search(client, "/studies")) == 2
    assert len(search(client, "/studies", [("limit", "3")])) == 2
    assert len(search(client, "/studies", [("limit", "1")])) == 1
    assert len(search(client, "/studies", [("offset", "3"), ("limit", "100")])) == 1


# --- empty results and errors ---------------------------------------------------


def test_no_match_is_200_with_an_empty_list(client, hierarchy):
    assert search(client, "/studies", [("PatientID", "nobody")]) == []
    assert search(client, f"/studies/{generate_uid()}/series") == []
    assert search(client, f"/studies/{generate_uid()}/instances") == []
    assert search(client, "/studies", [("offset", "50")]) == []


def test_empty_index_is_200_with_an_empty_list(client):
    for path in ("/studies", "/series", "/instances"):
        assert search(client, path) == []


@pytest.mark.parametrize(
    "path,params,naming",
    [
        ("/studies", [("Frobnicate", "1")], "Frobnicate"),
        ("/studies", [("StudyDate", "2024-01-15")], "StudyDate"),
        ("/studies", [("StudyDate", "20240230")], "StudyDate"),
        ("/studies", [("StudyDate", "20240131-20240101")], "StudyDate"),
        ("/studies", [("StudyTime", "2500")], "StudyTime"),
        ("/studies", [("limit", "ten")], "limit"),
        ("/studies", [("limit", "-1")], "limit"),
        ("/studies", [("offset", "1.5")], "offset"),
        ("/studies", [("SOPInstanceUID", "1.2.3")], "SOPInstanceUID"),
        ("/studies", [("SeriesInstanceUID", "1.2.3")], "SeriesInstanceUID"),
        ("/studies", [("fuzzymatching", "maybe")], "fuzzymatching"),
        ("/studies", [("includefield", "NoSuchAttribute")], "includefield"),
        ("/studies", [("StudyInstanceUID", "not-a-uid")], "StudyInstanceUID"),
        ("/studies", [("NumberOfStudyRelatedSeries", "2")], "NumberOfStudyRelatedSeries"),
        ("/series", [("SeriesNumber", "one")], "SeriesNumber"),
        ("/series", [("RequestAttributesSequence.PatientID", "x")], "RequestAttributesSequence.PatientID"),
        ("/studies/not-a-uid/series", [], "StudyInstanceUID"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(client, path, params, naming):
    bad_request(client, path, params, naming)


# --- media types ---------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        None,
        DICOM_JSON,
        "application/json",
        "*/*",
        "application/*",
        "application/dicom+xml;q=0.5, application/dicom+json",
    ],
)
def test_json_answers_when_acceptable(client, hierarchy, accept):
    headers = {"Accept": accept} if accept else {}
    found = search(client, "/studies", headers=headers)
    assert len(found) == 2


def test_accept_query_parameter(client, hierarchy):
    assert len(search(client, "/studies", [("accept", DICOM_JSON)], headers={"Accept": "application/dicom+xml"})) == 2
    response = client.get("/dicom-web/studies", params={"accept": "image/png"}, headers={"Accept": DICOM_JSON})
    assert response.status_code == 406


@pytest.mark.parametrize("path", ["/studies", "/series", "/instances"])
def test_neither_json_nor_xml_is_not_acceptable(client, hierarchy, path):
    response = client.get(f"/dicom-web{path}", headers={"Accept": "text/plain"})
    assert response.status_code == 406
    assert "message" in response.json()


# --- sequence matching -------------------------------------------------------------


REQUESTED_PROCEDURE = "RequestAttributesSequence.RequestedProcedureID"
SCHEDULED_STEP = "RequestAttributesSequence.ScheduledProcedureStepID"


def _request(procedure: str, step: str | None = None) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = procedure
    if step is not None:
        item.ScheduledProcedureStepID = step
    return item


@pytest.fixture
def requested(client) -> dict[str, str]:
    study = generate_uid()
    ids = {"study": study, "x": generate_uid(), "y": generate_uid(), "z": generate_uid()}
    store(
        client,
        make_ct(study, ids["x"], RequestAttributesSequence=[_request("RP1", "SPS1"), _request("RP2", "SPS2")]),
        make_ct(study, ids["y"], RequestAttributesSequence=[_request("RP3")]),
        make_ct(study, ids["z"]),
    )
    return ids


@pytest.mark.parametrize(
    "params,expected",
    [
        ([(REQUESTED_PROCEDURE, "RP2")], {"x"}),
        ([(REQUESTED_PROCEDURE, "RP3")], {"y"}),
        ([(REQUESTED_PROCEDURE, "RP*")], {"x", "y"}),
        ([("00400275.00401001", "RP1")], {"x"}),
        ([(SCHEDULED_STEP, "SPS2")], {"x"}),
        ([(REQUESTED_PROCEDURE, "RP9")], set()),
        # Both keys must hold in the same item.
        ([(REQUESTED_PROCEDURE, "RP1"), (SCHEDULED_STEP, "SPS1")], {"x"}),
        ([(REQUESTED_PROCEDURE, "RP1"), (SCHEDULED_STEP, "SPS2")], set()),
    ],
)
def test_sequence_matching_at_series_level(client, requested, params, expected):
    found = uids(search(client, "/series", params), SERIES_UID)
    assert found == {requested[name] for name in expected}


def test_a_series_matches_only_the_requests_of_the_instances_it_holds(client):
    study, series = generate_uid(), generate_uid()
    kept, deleted, moved = generate_uid(), generate_uid(), generate_uid()
    store(client, make_ct(study, series, kept, RequestAttributesSequence=[_request("RP-A")]))
    store(client, make_ct(study, series, deleted, RequestAttributesSequence=[_request("RP-B")]))
    store(client, make_ct(study, series, moved, RequestAttributesSequence=[_request("RP-C")]))

    def matching(procedure: str) -> set[str]:
        return uids(search(client, "/series", [("StudyInstanceUID", study), (REQUESTED_PROCEDURE, procedure)]),
                    SERIES_UID)

    assert matching("RP-B") == {series}
    assert client.delete(f"/dicom-web/studies/{study}/series/{series}/instances/{deleted}").status_code == 200
    assert matching("RP-B") == set() and matching("RP-A") == {series}
    # The same instance sent again into another series of the study: its old series loses its request.
    other = generate_uid()
    store(client, make_ct(study, other, moved, RequestAttributesSequence=[_request("RP-C")]))
    assert matching("RP-C") == {other}
    # Sent again with other requests: what the replaced copy brought goes with it.
    store(client, make_ct(study, series, kept, RequestAttributesSequence=[_request("RP-D")]))
    assert matching("RP-A") == set() and matching("RP-D") == {series}


def test_sequence_matching_results_carry_the_sequence(client, requested):
    [found] = search(client, "/series", [(REQUESTED_PROCEDURE, "RP3")])
    [item] = found[REQUEST_ATTRIBUTES]["Value"]
    assert item["00401001"]["Value"] == ["RP3"]
    found = search(client, f"/studies/{requested['study']}/instances", [(REQUESTED_PROCEDURE, "RP2")])
    assert uids(found, SERIES_UID) == {requested["x"]}


@pytest.mark.parametrize("query", ["PatientName=Doe%00", "PatientID=a%00b", "StudyDescription=x%00*", "Modality%00=CT"])
def test_a_nul_in_a_query_is_400(client, query):
    response = client.get(f"/dicom-web/studies?{query}")
    assert response.status_code == 400
    assert "NUL" in response.json()["message"]


# --- values longer than their index columns -------------------------------------


def test_a_value_longer_than_its_index_column_matches_whole_only(client):
    """Index columns hold the first 64 characters of a PatientID; a longer
    one (legacy systems send them) is found by its whole value, and not by
    another that starts alike, at every level and across pages."""
    long_id = "LEGACY-" + "9" * 70
    alike = long_id[:-1] + "0"
    studies = [generate_uid() for _ in range(4)]
    for study, patient_id in zip(studies, [long_id, alike, long_id, long_id]):
        store(client, make_ct(study, PatientID=patient_id))
    wanted = {studies[0], studies[2], studies[3]}

    assert {value(r, STUDY_UID) for r in search(client, "/studies", [("PatientID", long_id)])} == wanted
    assert {value(r, STUDY_UID) for r in search(client, "/studies", [("PatientID", alike)])} == {studies[1]}
    assert {value(r, STUDY_UID) for r in search(client, "/series", [("PatientID", long_id)])} == wanted
    assert {value(r, STUDY_UID) for r in search(client, "/instances", [("PatientID", long_id)])} == wanted
    assert search(client, "/studies", [("PatientID", long_id[:64])]) == []  # the start alone is another value

    pages = [search(client, "/studies", [("PatientID", long_id), ("limit", "2"), ("offset", offset)])
             for offset in ("0", "2", "3")]
    assert [len(page) for page in pages] == [2, 1, 0]
    assert {value(r, STUDY_UID) for page in pages for r in page} == wanted


def test_wildcards_match_the_whole_of_a_value_longer_than_its_index_column(client):
    """The index column holds the first 64 characters; a pattern is matched on
    the whole value, at every level and across pages."""
    long_id, short_id = "X" * 70 + "END", "XX"
    description = "CT CHEST ABDOMEN AND PELVIS WITH CONTRAST, PORTAL VENOUS PHASE, IN words"
    assert len(description) > 64 and "words" not in description[:64]
    studies = [generate_uid() for _ in range(4)]
    for study, patient_id in zip(studies, [long_id, short_id, long_id, long_id]):
        store(client, make_ct(study, PatientID=patient_id, StudyDescription=description))
    long_ones = {studies[0], studies[2], studies[3]}

    def found(path: str, *params: tuple[str, str]) -> set[str]:
        return {value(r, STUDY_UID) for r in search(client, path, params)}

    assert found("/studies", ("PatientID", "*END")) == long_ones
    assert found("/studies", ("PatientID", "X*END")) == long_ones
    assert found("/studies", ("PatientID", "X*N?")) == long_ones
    assert found("/studies", ("PatientID", "X*")) == set(studies)
    assert found("/studies", ("PatientID", "*X")) == {studies[1]}  # the cut start of the long ones ends in X
    assert found("/studies", ("PatientID", "X" * 66 + "*")) == long_ones
    assert found("/studies", ("PatientID", "Y*END")) == set()
    assert found("/studies", ("StudyDescription", "*words*")) == set(studies)
    assert found("/studies", ("StudyDescription", "*words")) == set(studies)
    assert found("/series", ("PatientID", "*END")) == long_ones
    assert found("/instances", ("PatientID", "*END")) == long_ones

    pages = [search(client, "/studies", [("PatientID", "*END"), ("limit", "2"), ("offset", offset)])
             for offset in ("0", "2", "3")]
    assert [len(page) for page in pages] == [2, 1, 0]
    assert {value(r, STUDY_UID) for page in pages for r in page} == long_ones


def test_wildcards_match_the_whole_of_a_long_series_value(client):
    study, series = generate_uid(), generate_uid()
    description = "AXIAL SOFT TISSUE RECONSTRUCTION 1.25 MM WITH ITERATIVE NOISE REDUCTION, LATE"
    assert len(description) > 64
    store(client, make_ct(study, series, SeriesDescription=description))
    assert uids(search(client, "/series", [("SeriesDescription", "*LATE")]), SERIES_UID) == {series}
    assert uids(search(client, "/instances", [("SeriesDescription", "AXIAL*LATE")]), SERIES_UID) == {series}
    assert search(client, "/series", [("SeriesDescription", "*EARLY")]) == []


def test_values_that_only_fill_their_index_column_are_not_checked_on_the_stored_attributes(client, monkeypatch):
    """A 64-character PatientID (a SHA-256 pseudonym) is a whole LO value: a
    wildcard search decides it in SQL, and checks on the stored attributes
    only the rows whose values were cut."""
    from server.dicomweb import qido

    checked = []

    def counted(row, condition, level):
        checked.append(row.study_instance_uid)
        return holds_whole(row, condition, level)

    holds_whole = qido._holds_whole
    monkeypatch.setattr(qido, "_holds_whole", counted)
    hashed = [generate_uid() for _ in range(3)]
    for index, study in enumerate(hashed):
        store(client, make_ct(study, PatientID=f"{index:064x}"))
    long_one = generate_uid()
    store(client, make_ct(long_one, PatientID="X" * 70 + "END"))

    assert search(client, "/studies", [("PatientID", "*zzz*")]) == []
    assert search(client, "/series", [("PatientID", "*zzz*")]) == []
    assert checked == [long_one, long_one]  # cut, so it might hold zzz further on
    assert uids(search(client, "/studies", [("PatientID", "*END")]), STUDY_UID) == {long_one}
    assert uids(search(client, "/studies", [("PatientID", "*2")]), STUDY_UID) == {hashed[2]}
    # A match among whole values is decided in SQL too: only the cut row is ever parsed.
    assert set(checked) == {long_one}


def test_long_values_inside_sequences_are_compared_whole(client):
    """Sequence items are not checked on the stored attributes: a value longer
    than its column must not match a stored value that only starts alike."""
    study, series = generate_uid(), generate_uid()
    store(client, make_ct(study, series, RequestAttributesSequence=[_request("RP-0123456789ABC")]))  # 16: fits
    assert search(client, "/series", [(REQUESTED_PROCEDURE, "RP-0123456789ABCX")]) == []
    assert uids(search(client, "/series", [(REQUESTED_PROCEDURE, "RP-0123456789ABC")]), SERIES_UID) == {series}


def test_exact_dates_and_uids_are_paged_in_sql():
    """Dates and UIDs are stored canonical, so a value as wide as its column
    needs no check on the stored attributes (which would page in Python)."""
    from dicom.matching import SingleValue
    from server.dicomweb.qido import _beyond_index

    assert not _beyond_index(SingleValue("StudyDate", 0x00080020, "20240115"))
    assert not _beyond_index(SingleValue("StudyInstanceUID", 0x0020000D, "1." + "2" * 62))
    assert _beyond_index(SingleValue("PatientID", 0x00100020, "P" * 64))
