"""DICOMweb cases (DICOM PS3.18 2024; matching rules from PS3.4 C.2.2.2).

They run in order: the first stores the suite's own study (see
`conformance.instances`), and the later ones search and retrieve it.
"""

import base64
import uuid
from io import BytesIO
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import httpx
import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian

from conformance.case import CaseFailed, CaseSkipped, Registry
from conformance.instances import (
    FRAMES,
    IDEOGRAPHIC,
    PHONETIC,
    TestStudy,
    multipart_related,
    parse_multipart,
)
from conformance.session import Session

REGISTRY = Registry("dicomweb")
case = REGISTRY.case

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
# PS3.18 Table 10.6.3-3: attributes a QIDO-RS study search returns whatever the query.
STUDY_RETURN_KEYS = ("00080020", "00080030", "00080050", "00080061", "00080090", "00100010", "00100020",
                     "0020000D", "00200010", "00201206", "00201208")
SERIES_RETURN_KEYS = ("00080060", "0020000E", "00200011", "00201209")
INSTANCE_RETURN_KEYS = ("00080016", "00080018", "00200013")


def _study(session: Session) -> TestStudy:
    """The suite's study, stored by DW-STOW-01, or here when that case was not
    selected (`--case` of one case that needs it)."""
    study = session.state.get("study")
    if study is not None and "stow_tried" not in session.state:
        try:
            stow_study(session)
        except CaseFailed as error:
            if not session.state.get("stored"):
                # No case of the run reports the store: this one must, or a run of it alone
                # would pass nothing and exit 0.
                raise CaseFailed(f"the suite's study could not be stored (DW-STOW-01 {error})") from error
    if study is None or not session.state.get("stored"):
        raise CaseSkipped("the suite's study could not be stored (see DW-STOW-01)")
    return study  # type: ignore[no-any-return]


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def _study_uids(found: list[dict[str, Any]]) -> list[str]:
    return [_value(item, "0020000D") for item in found]


def _own_study(session: Session, **params: str) -> dict[str, Any]:
    """The suite's study as a study search by its UID (and `params`) answers it."""
    uid = _study(session).study_instance_uid
    [found] = _search(session, "/studies", {"StudyInstanceUID": uid, **params}) or [{}]
    session.expect(found, f"a search by its UID {'with ' + str(params) + ' ' if params else ''}did not find the study")
    return found


def _only_own_study(session: Session, params: dict[str, str], failure: str) -> list[dict[str, Any]]:
    """A study search that must find the suite's study and nothing else."""
    found = _search(session, "/studies", params)
    session.expect(_study_uids(found) == [_study(session).study_instance_uid], failure)
    return found


def _finds_study(session: Session, params: dict[str, str]) -> bool:
    """Whether a study search with `params` finds the suite's study."""
    return _study(session).study_instance_uid in _study_uids(_search(session, "/studies", params))


def _wrongly_matched(session: Session, keyword: str, matches: dict[str, bool]) -> list[str]:
    """Each `keyword` value, within the suite's patient, that finds the suite's
    study when it should not ("matched") or does not when it should ("missed")."""
    patient = _study(session).patient_id
    return [f"{value} {'missed' if expected else 'matched'}" for value, expected in matches.items()
            if _finds_study(session, {"PatientID": patient, keyword: value}) != expected]


def _search(session: Session, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    # "*", "?" and "," stay as they are: percent-encoded they are other characters to a server (RFC 3986 2.2).
    query = f"?{urlencode(params, safe='*?,')}" if params else ""
    response = session.get(session.dicomweb(path) + query, headers={"Accept": DICOM_JSON})
    session.expect_status(response, 200, 204)
    if response.status_code == 204 or not response.content:
        return []
    return _qido_json(session, response)


def _qido_json(session: Session, response: httpx.Response) -> list[dict[str, Any]]:
    """The matches of a QIDO-RS answer in JSON: an array of DICOM JSON objects (PS3.18 F.2)."""
    session.expect(_media_type(response) in (DICOM_JSON, "application/json"),
                   f"a QIDO-RS answer is {DICOM_JSON}, got {_media_type(response)!r}")
    body = session.json(response)
    session.expect(isinstance(body, list) and all(isinstance(item, dict) for item in body),
                   "a QIDO-RS answer is a JSON array of objects")
    return body  # type: ignore[no-any-return]


# --- STOW-RS ----------------------------------------------------------------------
@case("DW-STOW-01", "PS3.18 10.5.3", "STOW-RS stores a study; 200 with a ReferencedSOPSequence naming each instance")
def stow_study(session: Session) -> None:
    study: TestStudy = session.state["study"]
    session.state["stow_tried"] = True
    body, content_type = multipart_related([instance.payload for instance in study.instances])
    response = session.post(session.dicomweb("/studies"), content=body,
                            headers={"Content-Type": content_type, "Accept": DICOM_JSON})
    session.expect_status(response, 200, 202)
    sent = {instance.sop_instance_uid for instance in study.instances}
    if response.status_code == 200:
        session.state["stored"] = True  # 200: every instance is stored, whatever else the answer gets wrong
    session.expect(_media_type(response) == DICOM_JSON,
                   f"the STOW-RS answer is {_media_type(response)!r}, not {DICOM_JSON}")
    answer = session.json(response)
    session.expect(isinstance(answer, dict), "the STOW-RS answer is not one DICOM JSON object")
    referenced = answer.get("00081199", {}).get("Value", [])
    stored = {_value(item, "00081155") for item in referenced}
    failed = answer.get("00081198", {}).get("Value")
    # 202 (PS3.18 Table 10.5.3-1): stored with warnings; every instance referenced and none failed is a full store.
    if response.status_code == 202 and stored == sent and not failed:
        session.state["stored"] = True
    session.expect(stored == sent, f"ReferencedSOPSequence names {sorted(stored)}, not the {len(sent)} instances sent")
    session.expect(all(_value(item, "00081150") for item in referenced), "each reference has its SOP Class UID")
    session.expect(all(_value(item, "00081190") for item in referenced), "each reference has its Retrieve URL")
    session.expect(not failed, "nothing failed, yet FailedSOPSequence has items")
    # A Retrieve URL must lead to the instance (PS3.18 10.5.3.1): the first one is fetched.
    first = referenced[0]
    parts = _retrieved(session, session.get(_value(first, "00081190"),
                                            headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"}))
    session.expect([str(part.SOPInstanceUID) for part in parts] == [_value(first, "00081155")],
                   "the first reference's Retrieve URL does not give its instance")


@case("DW-STOW-02", "PS3.18 10.5.3.2", "STOW-RS to a study URL with an instance of another study: 409, the instance in FailedSOPSequence")
def stow_wrong_study(session: Session) -> None:
    study = _study(session)
    body, content_type = multipart_related([study.instance("ct").payload])
    response = session.post(session.dicomweb("/studies/1.2.3.999999.1"), content=body,
                            headers={"Content-Type": content_type, "Accept": DICOM_JSON})
    session.expect_status(response, 409)
    failed = session.json(response).get("00081198", {}).get("Value", [])
    session.expect(len(failed) == 1 and _value(failed[0], "00081155") == study.instance("ct").sop_instance_uid,
                   "the FailedSOPSequence names the refused instance")
    session.expect(_value(failed[0], "00081197") is not None, "the failure has a Failure Reason (0008,1197)")


@case("DW-STOW-03", "PS3.18 10.5.1.3", "STOW-RS with a media type it does not take: 415")
def stow_unsupported_media_type(session: Session) -> None:
    response = session.post(session.dicomweb("/studies"), content=b"not DICOM",
                            headers={"Content-Type": "text/plain", "Accept": DICOM_JSON})
    session.expect_status(response, 415)


# --- QIDO-RS ----------------------------------------------------------------------
@case("DW-QIDO-01", "PS3.18 10.6.3.3.1", "QIDO-RS study search by UID returns the study with every required return key")
def qido_study_keys(session: Session) -> None:
    study = _study(session)
    found = _own_study(session)
    missing = [tag for tag in STUDY_RETURN_KEYS if tag not in found]
    session.expect(not missing, f"required return keys missing: {missing}")
    session.expect(_value(found, "00201208") == len(study.instances),
                   f"NumberOfStudyRelatedInstances is {_value(found, '00201208')}, not {len(study.instances)}")


@case("DW-QIDO-02", "PS3.4 C.2.2.2.4", "QIDO-RS wildcard matching: PatientName=PREFIX* finds the study")
def qido_wildcard(session: Session) -> None:
    name = _study(session).patient_family_name
    # The second value is the name and one more letter: a server that ignored PatientName would find the study by it.
    wrong = _wrongly_matched(session, "PatientName", {f"{name[:-2]}*": True, f"{name}X*": False})
    session.expect(not wrong, f"PatientName {name}: {wrong}")


@case("DW-QIDO-03", "PS3.4 C.2.2.2.5", "QIDO-RS range matching on StudyDate includes the bounds and excludes outside dates")
def qido_date_range(session: Session) -> None:
    study = _study(session)
    inside = _search(session, "/studies", {"PatientID": study.patient_id, "StudyDate": "20240315-20240315"})
    outside = _search(session, "/studies", {"PatientID": study.patient_id, "StudyDate": "20240316-"})
    session.expect(len(inside) == 1, f"a range whose bounds equal the date found {len(inside)} studies, not 1")
    session.expect(outside == [], f"a range after the date found {len(outside)} studies")


@case("DW-QIDO-04", "PS3.18 8.3.4.4", "QIDO-RS limit and offset page through series without overlap")
def qido_paging(session: Session) -> None:
    study = _study(session)
    path = f"/studies/{study.study_instance_uid}/series"
    everything = {_value(item, "0020000E") for item in _search(session, path, {})}
    session.expect(len(everything) == 3, f"the study has 3 series, a search without limit found {len(everything)}")
    pages = [_search(session, path, {"limit": "1", "offset": str(offset)}) for offset in range(len(everything))]
    session.expect(all(len(page) == 1 for page in pages), f"limit=1 pages held {[len(page) for page in pages]} series")
    seen = [_value(page[0], "0020000E") for page in pages]
    session.expect(sorted(seen) == sorted(everything), "limit/offset pages skip or repeat series")


@case("DW-QIDO-05", "PS3.18 8.3.4.3", "QIDO-RS includefield adds the attribute asked for")
def qido_includefield(session: Session) -> None:
    found = _own_study(session, includefield="00081030")
    session.expect(_value(found, "00081030") == "Conformance suite study",
                   "StudyDescription (0008,1030) was asked for with includefield and not returned")


@case("DW-QIDO-18", "PS3.18 8.3.4.3 / 10.6.3.3.1 (includefield=all)", "QIDO-RS includefield=all adds the study's attributes beyond the default ones")
def qido_includefield_all(session: Session) -> None:
    found = _own_study(session, includefield="all")
    # Optional study-level keys (PS3.4 Table C.6-5), neither returned by default (PS3.18 Table 10.6.3-3);
    # a server that returns one when asked for it by tag supports it, so "all" includes it.
    expected = {"00081030": "Conformance suite study", "00100030": "19700101"}
    missing = [tag for tag, value in expected.items() if _value(found, tag) != value]
    session.expect(not missing, f"includefield=all left out {missing}")


@case("DW-QIDO-06", "PS3.18 8.3.4.1", "QIDO-RS with an invalid parameter value: 400")
def qido_bad_parameter(session: Session) -> None:
    response = session.get(session.dicomweb("/studies"), params={"limit": "many"}, headers={"Accept": DICOM_JSON})
    session.expect_status(response, 400)


@case("DW-QIDO-07", "PS3.18 10.6.3.3.2-3", "QIDO-RS series and instance searches return their required keys")
def qido_series_and_instances(session: Session) -> None:
    study = _study(session)
    series = _search(session, f"/studies/{study.study_instance_uid}/series", {})
    session.expect(len(series) == 3, f"the study has 3 series, {len(series)} came back")
    missing = sorted({tag for item in series for tag in SERIES_RETURN_KEYS if tag not in item})
    session.expect(not missing, f"series return keys missing: {missing}")
    instances = _search(session, f"/studies/{study.study_instance_uid}/instances", {})
    session.expect(len(instances) == len(study.instances), f"{len(instances)} instances came back, not {len(study.instances)}")
    missing = sorted({tag for item in instances for tag in INSTANCE_RETURN_KEYS if tag not in item})
    session.expect(not missing, f"instance return keys missing: {missing}")


@case("DW-QIDO-08", "PS3.18 8.7.3 (Accept q-values)", "An Accept with q-values is honoured: the preferred acceptable type comes back")
def qido_accept_q_values(session: Session) -> None:
    study = _study(session)
    response = session.get(session.dicomweb("/studies"), params={"StudyInstanceUID": study.study_instance_uid},
                           headers={"Accept": "application/xml;q=0.1, application/dicom+json;q=0.9, */*;q=0.01"})
    session.expect_status(response, 200)
    session.expect(_media_type(response) == DICOM_JSON, f"got {_media_type(response)!r}, not {DICOM_JSON}")
    found = _qido_json(session, response)
    session.expect(_study_uids(found) == [study.study_instance_uid], "the answer is not the study searched for")


@case("DW-QIDO-09", "PS3.4 C.2.2.2.2", "QIDO-RS list of UID matching: StudyInstanceUID=a,b finds each study listed")
def qido_uid_list(session: Session) -> None:
    _only_own_study(session, {"StudyInstanceUID": f"1.2.3.999999.3,{_study(session).study_instance_uid}"},
                    "a list of two UIDs did not find the one stored study")


@case("DW-QIDO-10", "PS3.4 C.2.2.2.4", "QIDO-RS wildcard ? matches exactly one character")
def qido_single_character_wildcard(session: Session) -> None:
    name = _study(session).patient_family_name
    # ? is one character: in place of the name's last, or (twice) where there are none.
    wrong = _wrongly_matched(session, "PatientName", {f"{name[:-1]}?*": True, f"{name}??^Test": False})
    session.expect(not wrong, f"PatientName {name}: {wrong}")


@case("DW-QIDO-11", "PS3.18 10.6.3.2 / 8.3.4", "QIDO-RS with no match: 200 with an empty array, or 204")
def qido_no_match(session: Session) -> None:
    response = session.get(session.dicomweb("/studies?PatientID=CONFORMANCE-NOBODY"), headers={"Accept": DICOM_JSON})
    session.expect_status(response, 200, 204)
    if response.status_code == 200:
        session.expect(session.json(response) == [], "a search that matches nothing must answer []")


@case("DW-QIDO-12", "PS3.18 10.6.3.3.1 (ModalitiesInStudy)", "QIDO-RS ModalitiesInStudy matches a modality of any of the study's series")
def qido_modalities_in_study(session: Session) -> None:
    study = _study(session)
    found = _only_own_study(session, {"PatientID": study.patient_id, "ModalitiesInStudy": "OT"},
                            "the study with an OT series is not found by ModalitiesInStudy=OT")
    modalities = set(found[0].get("00080061", {}).get("Value", [])) if found else set()
    session.expect(modalities == {"CT", "OT"}, f"ModalitiesInStudy is {sorted(modalities)}, not CT and OT")
    session.expect(not _finds_study(session, {"PatientID": study.patient_id, "ModalitiesInStudy": "MR"}),
                   "ModalitiesInStudy=MR found the study, which has no MR series")


@case("DW-QIDO-13", "PS3.4 C.2.2.2.5", "QIDO-RS range matching on StudyTime: bounds are inclusive, either end may be open")
def qido_time_range(session: Session) -> None:
    # The study's StudyTime is 101500.
    wrong = _wrongly_matched(session, "StudyTime", {"1010-1020": True, "101500-101500": True, "-101500": True,
                                                    "101500-": True, "101501-": False, "-101459": False})
    session.expect(not wrong, f"StudyTime 101500: {wrong}")


@case("DW-QIDO-14", "PS3.18 8.3.4.2, Table 8.3.4-1 / 8.3", "QIDO-RS fuzzymatching (mandatory for origin servers): true still finds what matches without it; an invalid value is 400")
def qido_fuzzymatching_parameter(session: Session) -> None:
    # What fuzzy matching matches is the server's to define (PS3.4 C.2.2.2.1),
    # and a server without it ignores the flag, so only this much is sound:
    # the flag is taken, what matched still matches, and a bad value is refused.
    study = _study(session)
    fuzzy = {"PatientID": study.patient_id, "fuzzymatching": "true"}
    session.expect(_finds_study(session, {**fuzzy, "PatientName": f"{study.patient_family_name}*"}),
                   "with fuzzymatching=true the patient name no longer finds the study")
    # No letter in common with the name: no fuzzy matching makes it the patient's, and a server that ignores
    # PatientName would find the study by it.
    session.expect(not _finds_study(session, {**fuzzy, "PatientName": "XYZZYQ"}),
                   "with fuzzymatching=true, PatientName=XYZZYQ found the study of another name")
    response = session.get(session.dicomweb("/studies"), params={"fuzzymatching": "perhaps"}, headers={"Accept": DICOM_JSON})
    session.expect_status(response, 400)


@case("DW-QIDO-15", "PS3.4 C.2.2.2.4 / RFC 3986 2.1", "QIDO-RS matching across PatientName components: FAMILY^Tes* with its ^ sent percent-encoded (%5E)")
def qido_person_name_components(session: Session) -> None:
    # "^" may not appear bare in a URI (RFC 3986 2.2-2.3): %5E is the same character.
    # The trailing * also matches the names with ideographic groups: which of
    # the study's instances gives the study its name is the server's choice.
    _only_own_study(session, {"PatientName": f"{_study(session).patient_family_name}^Tes*"},
                    "the family and given name components did not find the study")


@case("DW-QIDO-16", "PS3.4 C.2.2.2.1 / C.2.2.2.4", "QIDO-RS: % and _ in a value are literal characters, never wildcards (AccessionNumber A%_…)")
def qido_literal_percent_and_underscore(session: Session) -> None:
    study = _study(session)
    accession = study.instances[0].dataset.AccessionNumber  # "A%_" and the run's id
    # What each value would match were % and _ SQL LIKE wildcards: every one of them.
    wrong = _wrongly_matched(session, "AccessionNumber", {
        accession: True, f"{accession[:2]}*": True, "A%": False, f"A_{accession[2:]}": False,
        f"A_{accession[2]}*": False, f"{accession}%": False,
    })
    session.expect(not wrong, f"AccessionNumber {accession}: {wrong}")


@case("DW-QIDO-17", "PS3.4 C.2.2.2.6 / PS3.18 10.6.1.2.1 (RequestAttributesSequence)", "QIDO-RS sequence matching: RequestAttributesSequence.RequestedProcedureID, by keyword and by tag, finds the series that holds it")
def qido_sequence_matching(session: Session) -> None:
    study = _study(session)
    ct = study.instance("ct")
    requested = str(ct.dataset.RequestAttributesSequence[0].RequestedProcedureID)
    path = f"/studies/{study.study_instance_uid}/series"
    wrong = []
    for key in ("RequestAttributesSequence.RequestedProcedureID", "00400275.00401001"):
        for value, expected in ((requested, [ct.series_instance_uid]), (f"{requested}-other", [])):
            found = [_value(item, "0020000E") for item in _search(session, path, {key: value})]
            if found != expected:
                wrong.append(f"{key}={value} found {len(found)} series")
    session.expect(not wrong, f"sequence matching: {wrong}")


# --- WADO-RS ----------------------------------------------------------------------
def _instance_url(session: Session, study: TestStudy, name: str, suffix: str = "") -> str:
    instance = study.instance(name)
    return session.dicomweb(f"/studies/{study.study_instance_uid}/series/{instance.series_instance_uid}"
                            f"/instances/{instance.sop_instance_uid}{suffix}")


def _retrieve_instance(session: Session, study: TestStudy, name: str, accept: str) -> httpx.Response:
    return session.get(_instance_url(session, study, name), headers={"Accept": accept})


@case("DW-WADO-01", "PS3.18 10.4.1.1.1", "WADO-RS instance retrieve with transfer-syntax=* returns the instance as stored")
def wado_instance_as_stored(session: Session) -> None:
    dataset = _retrieve_one(session, "ct", "*")
    session.expect(dataset.SOPInstanceUID == _study(session).instance("ct").sop_instance_uid, "another instance came back")


@case("DW-WADO-08", "PS3.18 10.4.1.1.1 (study and series resources)", "WADO-RS study and series retrieve with transfer-syntax=*: every instance of the study or series, each once, as stored")
def wado_study_and_series(session: Session) -> None:
    study = _study(session)
    series_uid = study.instance("ct").series_instance_uid
    levels = {f"/studies/{study.study_instance_uid}": study.instances,
              f"/studies/{study.study_instance_uid}/series/{series_uid}":
                  tuple(item for item in study.instances if item.series_instance_uid == series_uid)}
    for path, instances in levels.items():
        parts = _retrieved(session, session.get(session.dicomweb(path),
                                                headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"}))
        sent = sorted(str(part.SOPInstanceUID) for part in parts)
        session.expect(sent == sorted(item.sop_instance_uid for item in instances),
                       f"{path} sent {len(sent)} instances, not its {len(instances)}, each once")
        stored = {item.sop_instance_uid: item.transfer_syntax for item in instances}
        changed = [str(part.SOPInstanceUID) for part in parts
                   if part.file_meta.TransferSyntaxUID != stored[str(part.SOPInstanceUID)]]
        session.expect(not changed, f"{path} with transfer-syntax=* changed the transfer syntax of {changed}")


@case("DW-WADO-02", "PS3.18 8.7.3.5.2", "WADO-RS of a compressed instance asking for Explicit VR Little Endian gets it decompressed")
def wado_transcodes_to_explicit_little_endian(session: Session) -> None:
    _expect_decompressed(session, "rle")


def _parameters(content_type: str) -> dict[str, str]:
    pairs = (parameter.strip().partition("=") for parameter in content_type.split(";")[1:])
    return {name.strip().lower(): value.strip().strip('"') for name, _, value in pairs if name}


def _parts(session: Session, response: httpx.Response, part_type: str, transfer_syntax: str = "*") -> list[bytes]:
    """The parts of a 200 multipart/related answer, in order, once its framing is
    what was asked for (PS3.18 8.7.3.3, RFC 2387): multipart/related whose type
    is `part_type`, each part of that type; where a transfer syntax was named,
    a part that states one states it."""
    session.expect_status(response, 200)
    content_type = response.headers.get("content-type", "")
    session.expect(_media_type(response) == "multipart/related",
                   f"the answer is {_media_type(response)!r}, not multipart/related")
    stated = _parameters(content_type).get("type", "").lower()
    session.expect(stated == part_type, f"the multipart answer's type parameter is {stated!r}, not {part_type!r}")
    parts = []
    for headers, content in parse_multipart(response.content, content_type):
        kind = headers.get("content-type", "")
        session.expect(kind.split(";")[0].strip().lower() == part_type, f"a part is {kind!r}, not {part_type}")
        syntax = _parameters(kind).get("transfer-syntax")
        session.expect(transfer_syntax == "*" or syntax in (None, transfer_syntax),
                       f"a part's transfer-syntax is {syntax}, not {transfer_syntax} as asked")
        parts.append(content)
    return parts


def _retrieved(session: Session, response: httpx.Response, transfer_syntax: str = "*") -> list[Dataset]:
    """The instances of a WADO-RS answer, in order."""
    return [dcmread(BytesIO(part)) for part in _parts(session, response, "application/dicom", transfer_syntax)]


def _retrieve_one(session: Session, name: str, transfer_syntax: str) -> Dataset:
    """The suite's instance `name`, retrieved in one part in `transfer_syntax` ("*": as stored)."""
    study = _study(session)
    parts = _retrieved(session, _retrieve_instance(session, study, name,
                                                   f"{MULTIPART_DICOM}; transfer-syntax={transfer_syntax}"),
                       transfer_syntax)
    session.expect(len(parts) == 1, f"{len(parts)} parts came back, not 1")
    dataset = parts[0]
    expected = study.instance(name).transfer_syntax if transfer_syntax == "*" else transfer_syntax
    session.expect(dataset.file_meta.TransferSyntaxUID == expected,
                   f"the instance came back in {dataset.file_meta.TransferSyntaxUID}, not {expected}")
    return dataset


def _expect_as_stored(session: Session, name: str) -> None:
    dataset = _retrieve_one(session, name, "*")
    session.expect(dataset.PixelData == _study(session).instance(name).dataset.PixelData,
                   "the compressed pixel data came back changed")


def _expect_decompressed(session: Session, name: str, tolerance: int = 0) -> Dataset:
    """`tolerance`: the largest difference per pixel from the suite's own decoding
    (lossy codecs leave decoders some freedom in rounding)."""
    dataset = _retrieve_one(session, name, ExplicitVRLittleEndian)
    original = _study(session).instance(name).dataset.pixel_array
    sent = dataset.pixel_array
    session.expect(sent.shape == original.shape, f"the decompressed image is {sent.shape}, not {original.shape}")
    difference = int(np.abs(sent.astype(np.int32) - original).max())
    session.expect(difference <= tolerance, f"the decompressed pixels differ from the original by up to {difference}")
    return dataset


@case("DW-WADO-05", "PS3.18 8.7.3.5.2", "WADO-RS of a JPEG 2000 instance asking for Explicit VR Little Endian gets it decompressed")
def wado_decompresses_jpeg_2000(session: Session) -> None:
    _expect_decompressed(session, "j2k")


@case("DW-WADO-06", "PS3.18 10.4.1.1.1 / 8.7.3.5.2", "WADO-RS of a JPEG-LS Lossless instance: as stored with transfer-syntax=*, decompressed exactly to Explicit VR Little Endian")
def wado_jpeg_ls(session: Session) -> None:
    _expect_as_stored(session, "jpeg_ls")
    _expect_decompressed(session, "jpeg_ls")


@case("DW-WADO-07", "PS3.18 10.4.1.1.1 / 8.7.3.5.2; PS3.3 C.7.6.1.1.5", "WADO-RS of a JPEG Baseline instance: as stored with transfer-syntax=*, decompressed to Explicit VR Little Endian and still marked lossy")
def wado_jpeg_baseline(session: Session) -> None:
    _expect_as_stored(session, "jpeg")
    # IJG-derived decoders round the inverse DCT differently by a level or two.
    dataset = _expect_decompressed(session, "jpeg", tolerance=4)
    session.expect(dataset.get("LossyImageCompression") == "01",
                   "decompressed lossy pixels must keep Lossy Image Compression (0028,2110) 01")


@case("DW-WADO-03", "PS3.18 8.7.3.1 / 10.4.1", "WADO-RS with only unacceptable media types in Accept: 406")
def wado_not_acceptable(session: Session) -> None:
    study = _study(session)
    response = _retrieve_instance(session, study, "ct", "application/pdf")
    session.expect_status(response, 406)


@case("DW-WADO-04", "PS3.18 10.4.1.1.2", "WADO-RS of an unknown study: 404")
def wado_unknown_study(session: Session) -> None:
    response = session.get(session.dicomweb("/studies/1.2.3.999999.2"), headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"})
    session.expect_status(response, 404)


@case("DW-META-01", "PS3.18 F.2", "Metadata JSON: PN as objects per group, IS/DS as numbers, AT as a tag string, empty values without Value")
def metadata_json_model(session: Session) -> None:
    study = _study(session)
    items = _metadata(session, study)
    by_sop = {_value(item, "00080018"): item for item in items}
    ct = by_sop.get(study.instance("ct").sop_instance_uid)
    session.expect(ct is not None, "the CT instance is missing from the study metadata")
    assert ct is not None
    name = _value(ct, "00100010")
    session.expect(isinstance(name, dict) and name.get("Alphabetic") == f"{study.patient_family_name}^Test",
                   f"PatientName is {name!r}, not {{'Alphabetic': ...}}")
    thickness = _value(ct, "00180050")
    session.expect(isinstance(thickness, int | float) and not isinstance(thickness, bool) and thickness == 1.25,
                   f"SliceThickness (DS) is {thickness!r}, not the number 1.25")
    series_number = _value(ct, "00200011")
    session.expect(isinstance(series_number, int) and series_number == 1, f"SeriesNumber (IS) is {series_number!r}")
    referring = ct.get("00080090")
    session.expect(referring is not None and referring.get("vr") == "PN" and "Value" not in referring,
                   f"an empty ReferringPhysicianName is {referring!r}, not a vr without Value")
    multiframe = by_sop.get(study.instance("multiframe").sop_instance_uid, {})
    pointer = _value(multiframe, "00280009")
    session.expect(pointer == "00181063", f"FrameIncrementPointer (AT) is {pointer!r}, not '00181063'")
    utf8 = by_sop.get(study.instance("utf8").sop_instance_uid, {})
    utf8_name = _value(utf8, "00100010") or {}
    session.expect(utf8_name.get("Ideographic") == "山田^太郎",
                   f"a UTF-8 ideographic name came back as {utf8_name!r}")


@case("DW-META-02", "PS3.18 F.2.6-7", "Metadata bulk data: PixelData by a resolvable BulkDataURI or InlineBinary")
def metadata_bulk_data(session: Session) -> None:
    study = _study(session)
    pixel_data = _metadata_of(session, study, "ct").get("7FE00010", {})
    if "InlineBinary" in pixel_data:
        session.expect(len(base64.b64decode(pixel_data["InlineBinary"])) == len(study.instance("ct").dataset.PixelData),
                       "InlineBinary PixelData has the wrong length")
        return
    uri = pixel_data.get("BulkDataURI")
    session.expect(uri, f"PixelData has neither BulkDataURI nor InlineBinary: {pixel_data!r}")
    parts = _parts(session, session.get(uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'}),
                   "application/octet-stream")
    session.expect(parts and len(parts[0]) == len(study.instance("ct").dataset.PixelData),
                   "the bulk data behind BulkDataURI is not the pixel data")


@case("DW-META-03", "PS3.18 F.2.2 / PS3.5 H.3.1", "Metadata: an ISO 2022 Japanese name (JIS X 0208 by escape sequences) comes back in UTF-8 as Alphabetic, Ideographic and Phonetic groups")
def metadata_iso_2022_name(session: Session) -> None:
    study = _study(session)
    expected = {"Alphabetic": f"{study.patient_family_name}^Test", "Ideographic": IDEOGRAPHIC, "Phonetic": PHONETIC}
    name = _value(_metadata_of(session, study, "iso2022"), "00100010")
    session.expect(name == expected, f"PatientName is {name!r}, not {expected!r}")


MULTIPART_DICOM_XML = 'multipart/related; type="application/dicom+xml"'


def _xml_documents(session: Session, response: httpx.Response, what: str) -> list[ElementTree.Element]:
    """The NativeDicomModel documents of a multipart/related XML answer (PS3.18 8.7.3.2, PS3.19 A.1)."""
    session.expect_status(response, 200)
    session.expect(_media_type(response) == "multipart/related", f"{what} in XML is {_media_type(response)!r}")
    documents = []
    for headers, body in parse_multipart(response.content, response.headers.get("content-type", "")):
        part_type = headers.get("content-type", "").split(";")[0].strip().lower()
        session.expect(part_type == "application/dicom+xml", f"a part of {what} is {part_type!r}")
        try:
            document = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            session.expect(False, f"a part of {what} is not well-formed XML: {exc}")
        session.expect(_local_name(document) == "NativeDicomModel", f"a part of {what} is <{_local_name(document)}>")
        documents.append(document)
    return documents


def _local_name(element: ElementTree.Element) -> str:
    # The namespace of PS3.19 is declared by some writers and not by others.
    return element.tag.rsplit("}", 1)[-1]


def _xml_attribute(document: ElementTree.Element, tag: str) -> list[ElementTree.Element]:
    """What the DicomAttribute of `tag` holds (Value, PersonName, BulkData ...); [] when it is absent."""
    for child in document:
        if _local_name(child) == "DicomAttribute" and child.get("tag") == tag:
            return list(child)
    return []


def _xml_values(document: ElementTree.Element, tag: str) -> list[str]:
    return [value.text or "" for value in _xml_attribute(document, tag) if _local_name(value) == "Value"]


@case("DW-XML-01", "PS3.18 8.7.3.2, 10.6.3 / PS3.19 A.1", "QIDO-RS in XML: multipart/related with one NativeDicomModel per match")
def qido_xml(session: Session) -> None:
    study = _study(session)
    response = session.get(session.dicomweb("/studies"), params={"StudyInstanceUID": study.study_instance_uid},
                           headers={"Accept": MULTIPART_DICOM_XML})
    documents = _xml_documents(session, response, "a QIDO-RS answer")
    session.expect(len(documents) == 1, f"{len(documents)} documents for one matching study")
    uids = _xml_values(documents[0], "0020000D")
    session.expect(uids == [study.study_instance_uid], f"StudyInstanceUID is {uids!r}")


@case("DW-XML-02", "PS3.18 8.7.3.2, 10.4.1.1.2 / PS3.19 A.1", "Instance metadata in XML: PN by components, DS as text, PixelData by BulkData or InlineBinary")
def metadata_xml(session: Session) -> None:
    study = _study(session)
    response = session.get(_instance_url(session, study, "ct", "/metadata"), headers={"Accept": MULTIPART_DICOM_XML})
    documents = _xml_documents(session, response, "instance metadata")
    session.expect(len(documents) == 1, f"{len(documents)} documents for one instance")
    [document] = documents
    session.expect(_xml_values(document, "00080018") == [study.instance("ct").sop_instance_uid],
                   "the document is not the instance asked for")
    components = {
        _local_name(component): component.text
        for person in _xml_attribute(document, "00100010")
        for group in person if _local_name(group) == "Alphabetic" for component in group
    }
    session.expect(components.get("FamilyName") == study.patient_family_name and components.get("GivenName") == "Test",
                   f"PatientName components are {components!r}")
    thickness = _xml_values(document, "00180050")
    session.expect(len(thickness) == 1 and float(thickness[0]) == 1.25, f"SliceThickness is {thickness!r}")
    kinds = [_local_name(child) for child in _xml_attribute(document, "7FE00010")]
    session.expect(kinds in (["BulkData"], ["InlineBinary"]), f"PixelData holds {kinds!r}")


def _wado_uri(session: Session, name: str, **extra: str) -> httpx.Response:
    study = _study(session)
    instance = study.instance(name)
    query = {"requestType": "WADO", "studyUID": study.study_instance_uid, "seriesUID": instance.series_instance_uid,
             "objectUID": instance.sop_instance_uid, **extra}
    # "/" (in media types) and "," are sent as they are: a query may hold both (RFC 3986 3.4).
    return session.get(f"{session.wado_uri()}?{urlencode(query, safe='/,')}")


@case("DW-URI-01", "PS3.18 9.4", "WADO-URI Retrieve DICOM Instance: contentType=application/dicom gives the instance as a Part 10 file")
def wado_uri_instance(session: Session) -> None:
    response = _wado_uri(session, "ct", contentType="application/dicom")
    session.expect_status(response, 200)
    session.expect(_media_type(response) == "application/dicom", f"the answer is {_media_type(response)!r}")
    try:
        dataset = dcmread(BytesIO(response.content))
    except Exception as error:  # noqa: BLE001 - whatever pydicom makes of a body that is no Part 10 file
        session.expect(False, f"the answer is not a Part 10 file: {error}")
    expected = _study(session).instance("ct")
    session.expect(dataset.SOPInstanceUID == expected.sop_instance_uid, "the file is another instance")
    session.expect(np.array_equal(dataset.pixel_array, expected.dataset.pixel_array), "the pixel data differs")


@case("DW-URI-02", "PS3.18 9.3, 9.5", "WADO-URI Retrieve Rendered Instance: no contentType gives a JPEG; rows bounds its size")
def wado_uri_rendered(session: Session) -> None:
    response = _wado_uri(session, "ct")
    session.expect_status(response, 200)
    session.expect(_media_type(response) == "image/jpeg" and response.content[:2] == b"\xff\xd8",
                   f"not a JPEG image ({_media_type(response)!r})")
    small = _wado_uri(session, "ct", contentType="image/jpeg", rows="16")
    session.expect_status(small, 200)
    image = Image.open(BytesIO(small.content))
    session.expect(image.height == 16, f"rows=16 gave an image {image.height} pixels high")


@case("DW-FRAMES-01", "PS3.18 10.4.1.1.5", "Frames of a multi-frame instance, one part per frame asked for")
def frames(session: Session) -> None:
    study = _study(session)
    instance = study.instance("multiframe")
    url = _instance_url(session, study, "multiframe", f"/frames/1,{FRAMES}")
    parts = _parts(session, session.get(
        url, headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}),
        "application/octet-stream")
    frame_bytes = len(instance.dataset.PixelData) // FRAMES
    session.expect([len(part) for part in parts] == [frame_bytes, frame_bytes],
                   f"frames 1 and {FRAMES} came back as {[len(part) for part in parts]} bytes")
    pixel_data = instance.dataset.PixelData
    for number, part in zip((1, FRAMES), parts, strict=True):
        session.expect(part == pixel_data[(number - 1) * frame_bytes:number * frame_bytes],
                       f"the part for frame {number} is another frame")


@case("DW-RENDERED-01", "PS3.18 10.4.1.1.3 / 8.3.5", "Rendered instance as image/jpeg")
def rendered(session: Session) -> None:
    study = _study(session)
    response = session.get(_instance_url(session, study, "ct", "/rendered"), headers={"Accept": "image/jpeg"})
    session.expect_status(response, 200)
    session.expect(_media_type(response) == "image/jpeg" and response.content[:2] == b"\xff\xd8",
                   f"not a JPEG image ({_media_type(response)!r})")


@case("DW-THUMB-01", "PS3.18 10.4.1.1.3 (Sup 203)", "Study, series and instance thumbnails are each one image/jpeg")
def thumbnails(session: Session) -> None:
    study = _study(session)
    instance = study.instance("ct")
    series_url = session.dicomweb(f"/studies/{study.study_instance_uid}/series/{instance.series_instance_uid}")
    urls = {
        "instance": _instance_url(session, study, "ct", "/thumbnail"),
        "series": f"{series_url}/thumbnail",
        "study": session.dicomweb(f"/studies/{study.study_instance_uid}/thumbnail"),
    }
    answers = {level: session.get(url, headers={"Accept": "image/jpeg"}) for level, url in urls.items()}
    if all(response.status_code in (404, 405, 501) for response in answers.values()):
        raise CaseSkipped(f"the server offers no thumbnails (the instance's answered {answers['instance'].status_code})")
    for level, response in answers.items():
        session.expect(response.status_code == 200, f"the {level} thumbnail answered {response.status_code}")
        session.expect(_media_type(response) == "image/jpeg" and response.content[:2] == b"\xff\xd8",
                       f"the {level} thumbnail is not a JPEG image ({_media_type(response)!r})")


_NOT_OFFERED = (404, 405, 501)


def _levels(session: Session, study: TestStudy, name: str, suffix: str) -> dict[str, str]:
    """The URLs of `suffix` on the study, the series and the instance of the suite's instance `name`."""
    instance = study.instance(name)
    study_url = session.dicomweb(f"/studies/{study.study_instance_uid}")
    return {"study": f"{study_url}{suffix}",
            "series": f"{study_url}/series/{instance.series_instance_uid}{suffix}",
            "instance": _instance_url(session, study, name, suffix)}


@case("DW-PIXELDATA-01", "PS3.18 10.4.1.1.6, 10.4.3.3.6", "Pixel Data of a study, series and instance: every frame of their images, each part at the BulkDataURI its metadata gives")
def pixel_data(session: Session) -> None:
    study = _study(session)
    native = {"Accept": 'multipart/related; type="application/octet-stream"'}
    series_url, instance_url = (_levels(session, study, "ct", "/pixeldata")[level] for level in ("series", "instance"))
    multiframe_url = _levels(session, study, "multiframe", "/pixeldata")["instance"]
    study_url = session.dicomweb(f"/studies/{study.study_instance_uid}/pixeldata")
    answers = {url: session.get(url, headers=native) for url in (series_url, multiframe_url, study_url)}
    if all(response.status_code in _NOT_OFFERED for response in answers.values()):
        status = answers[series_url].status_code
        raise CaseSkipped(f"the server offers no Pixel Data resources (a series' answered {status})")
    # The CT series: three native single-frame images, each frame its whole Pixel Data.
    ct_series = [instance for instance in study.instances
                 if instance.series_instance_uid == study.instance("ct").series_instance_uid]
    by_pixels = {bytes(instance.dataset.PixelData): instance for instance in ct_series}
    _parts(session, answers[series_url], "application/octet-stream")
    parts = parse_multipart(answers[series_url].content, answers[series_url].headers["content-type"])
    session.expect(sorted(content for _, content in parts) == sorted(by_pixels),
                   f"the series' {len(parts)} parts are not the frames of its {len(ct_series)} images")
    metadata = session.json(session.get(series_url.removesuffix("/pixeldata") + "/metadata",
                                        headers={"Accept": DICOM_JSON}))
    uris = {_value(item, "00080018"): item.get("7FE00010", {}).get("BulkDataURI") for item in metadata}
    for headers, content in parts:
        uri = uris.get(by_pixels[content].sop_instance_uid) if content in by_pixels else None
        session.expect(uri is None or headers.get("content-location") == uri,
                       f"a part's Content-Location is {headers.get('content-location')!r}, not the BulkDataURI {uri!r}")
    # A multi-frame instance: one part per frame, in order.
    frames = _parts(session, answers[multiframe_url], "application/octet-stream")
    pixel_data = study.instance("multiframe").dataset.PixelData
    size = len(pixel_data) // FRAMES
    session.expect(frames == [pixel_data[at:at + size] for at in range(0, len(pixel_data), size)],
                   f"the multi-frame instance's {len(frames)} parts are not its {FRAMES} frames in order")
    # The study: every frame of the series among its parts (a server that cannot decode some other image leaves it out).
    session.expect_status(answers[study_url], 200, 206)
    everything = [content for _, content in parse_multipart(answers[study_url].content,
                                                            answers[study_url].headers["content-type"])]
    session.expect(all(frame in everything for frame in by_pixels), "the study's answer lacks a frame of the CT series")
    session.expect_status(session.get(instance_url, headers=native), 200)


@case("DW-RENDERED-02", "PS3.18 10.4.1.1.3, 8.7.4", "Rendered study and series: one image/jpeg part per image")
def rendered_levels(session: Session) -> None:
    study = _study(session)
    urls = _levels(session, study, "ct", "/rendered")
    jpeg = {"Accept": 'multipart/related; type="image/jpeg"'}
    answers = {level: session.get(urls[level], headers=jpeg) for level in ("study", "series")}
    if all(response.status_code in _NOT_OFFERED for response in answers.values()):
        status = answers["series"].status_code
        raise CaseSkipped(f"the server offers no rendered studies or series (a series' answered {status})")
    images = _parts(session, answers["series"], "image/jpeg")
    ct_series = [instance for instance in study.instances
                 if instance.series_instance_uid == study.instance("ct").series_instance_uid]
    session.expect(len(images) == len(ct_series), f"the series' {len(ct_series)} images came as {len(images)} parts")
    session.expect_status(answers["study"], 200, 206)
    images += [content for _, content in parse_multipart(answers["study"].content,
                                                         answers["study"].headers["content-type"])]
    session.expect(all(image[:2] == b"\xff\xd8" for image in images), "a part is not a JPEG image")


@case("DW-CORS-01", "Fetch Standard 3.2 (CORS protocol)", "A CORS preflight from an allowed origin is answered with Access-Control-Allow-Origin")
def cors_preflight(session: Session) -> None:
    origin = session.target.origin
    if not origin:
        raise CaseSkipped("no --origin given: the server's allowed browser origins are not known")
    response = session.request("OPTIONS", session.dicomweb("/studies"), headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "accept, authorization"})
    session.expect_status(response, 200, 204)
    allowed = response.headers.get("access-control-allow-origin")
    session.expect(allowed in (origin, "*"), f"Access-Control-Allow-Origin is {allowed!r}")


# --- UPS-RS (optional: skipped where the server offers no worklist) ---------------
def _require_worklist(session: Session) -> None:
    response = session.get(session.dicomweb("/workitems?limit=1"), headers={"Accept": DICOM_JSON})
    if response.status_code in (404, 405, 501):
        raise CaseSkipped(f"the server offers no UPS-RS worklist (GET /workitems answered {response.status_code})")


@case("DW-UPS-01", "PS3.18 11.9.3", "UPS-RS Search Workitems answers a JSON array of workitems, or 204 for no match")
def ups_search(session: Session) -> None:
    _require_worklist(session)
    response = session.get(session.dicomweb("/workitems?ProcedureStepState=SCHEDULED&limit=5"),
                           headers={"Accept": DICOM_JSON})
    session.expect_status(response, 200, 204)
    if response.status_code == 200:
        found = session.json(response)
        session.expect(isinstance(found, list), "the search answer is not a JSON array")
        states = {_value(item, "00741000") for item in found}
        session.expect(states <= {"SCHEDULED"}, f"ProcedureStepState=SCHEDULED matched workitems in {states}")


@case("DW-UPS-02", "PS3.18 11.5.3.1", "UPS-RS Retrieve Workitem of a UID the server never knew: 404")
def ups_unknown_workitem(session: Session) -> None:
    _require_worklist(session)
    response = session.get(session.dicomweb(f"/workitems/{_unknown_uid()}"), headers={"Accept": DICOM_JSON})
    session.expect_status(response, 404)


@case("DW-UPS-03", "PS3.18 11.4.3.1 / PS3.4 Table CC.2.5-3", "UPS-RS Create Workitem not SCHEDULED: 400")
def ups_create_not_scheduled(session: Session) -> None:
    _require_worklist(session)
    uid = _unknown_uid()
    workitem = {
        "00404005": {"vr": "DT", "Value": ["20240501100000"]},
        "00404021": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": [_study(session).study_instance_uid]}}]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00741000": {"vr": "CS", "Value": ["COMPLETED"]},
        "00741200": {"vr": "CS", "Value": ["LOW"]},
        "00741204": {"vr": "LO", "Value": ["conformance: must be refused"]},
    }
    response = session.post(session.dicomweb(f"/workitems?{uid}"), json=workitem,
                            headers={"Content-Type": DICOM_JSON, "Accept": DICOM_JSON})
    session.expect_status(response, 400)
    session.expect_status(session.get(session.dicomweb(f"/workitems/{uid}"), headers={"Accept": DICOM_JSON}), 404)


def _unknown_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _metadata(session: Session, study: TestStudy) -> list[dict[str, Any]]:
    response = session.get(session.dicomweb(f"/studies/{study.study_instance_uid}/metadata"),
                           headers={"Accept": DICOM_JSON})
    session.expect_status(response, 200)
    body = session.json(response)
    session.expect(isinstance(body, list) and len(body) == len(study.instances),
                   f"the study metadata has {len(body) if isinstance(body, list) else 'no'} instances, not {len(study.instances)}")
    return body  # type: ignore[no-any-return]


def _metadata_of(session: Session, study: TestStudy, name: str) -> dict[str, Any]:
    """The study metadata of the suite's instance `name`."""
    uid = study.instance(name).sop_instance_uid
    [found] = [item for item in _metadata(session, study) if _value(item, "00080018") == uid] or [{}]
    session.expect(found, f"the {name} instance is missing from the study metadata")
    return found
