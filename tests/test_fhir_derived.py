"""ImagingStudy, Patient and Endpoint stay in step with the DICOM store
through STOW and DELETE (FHIR R4 imagingstudy.html, patient.html)."""

import threading

import pytest
from pydantic import ValidationError
from pydicom.uid import generate_uid

from fhir_mappings.imaging_study import InstanceRecord, SeriesRecord, StudyRecord, imaging_study_from_dicom
from fhir_mappings.patient import PatientRecord, patient_resource_id
from tests.dicom_files import make_ct, multipart_body
from tests.fhir_checks import ids
from tests.round_trips import round_trips


def _stow(client, *payloads):
    body, content_type = multipart_body(payloads)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def _imaging_study(fhir, study_uid):
    response = fhir.get(f"/fhir/ImagingStudy/{study_uid}")
    assert response.status_code == 200, response.text
    return response.json()


def test_stow_creates_imaging_study_and_patient(fhir):
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    patient = {"IssuerOfPatientID": "1.2.840.99", "PatientBirthDate": "19800229", "PatientSex": "F"}
    _stow(
        fhir,
        make_ct(study, series_a, sops[0], AccessionNumber="ACC-7", BodyPartExamined="CHEST",
                StudyDescription="CT chest", **patient),
        make_ct(study, series_a, sops[1], InstanceNumber=2, AccessionNumber="ACC-7", BodyPartExamined="CHEST", **patient),
        make_ct(study, series_b, sops[2], Modality="MR", SeriesNumber=2, AccessionNumber="ACC-7", **patient),
    )
    resource = _imaging_study(fhir, study)
    assert resource["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}
    assert resource["identifier"][1]["value"] == "ACC-7"
    assert resource["identifier"][1]["type"]["coding"][0]["code"] == "ACSN"
    assert resource["status"] == "available"
    assert resource["started"] == "2024-01-15"
    assert resource["numberOfSeries"] == 2 and resource["numberOfInstances"] == 3
    assert [coding["code"] for coding in resource["modality"]] == ["CT", "MR"]
    assert resource["endpoint"] == [{"reference": "Endpoint/dicomweb-wado-rs"}]
    first, second = resource["series"]
    assert first["uid"] == series_a and first["number"] == 1 and first["modality"]["code"] == "CT"
    assert first["bodySite"]["code"] == "51185008"
    assert [instance["uid"] for instance in first["instance"]] == sops[:2]
    assert first["instance"][0]["sopClass"] == {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}
    assert second["modality"]["code"] == "MR"

    patient_id = resource["subject"]["reference"].split("/")[1]
    patient = fhir.get(f"/fhir/Patient/{patient_id}").json()
    assert patient["name"][0]["family"] == "Doe" and patient["name"][0]["given"] == ["John"]
    assert patient["identifier"] == [{"system": "urn:oid:1.2.840.99", "value": "PID-1"}]
    assert patient["gender"] == "female" and patient["birthDate"] == "1980-02-29"


def test_more_instances_update_the_same_study(fhir):
    study, series = generate_uid(), generate_uid()
    _stow(fhir, make_ct(study, series))
    _stow(fhir, make_ct(study, series), make_ct(study, generate_uid(), SeriesNumber=5))
    resource = _imaging_study(fhir, study)
    assert resource["meta"]["versionId"] == "2"
    assert resource["numberOfSeries"] == 2 and resource["numberOfInstances"] == 3
    # The Patient is the same after the second series: no second, identical version.
    assert fhir.get(f"/fhir/{resource['subject']['reference']}").json()["meta"]["versionId"] == "1"


def test_a_resent_instance_changes_nothing(fhir):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    payload = make_ct(study, series, sop)
    _stow(fhir, payload)
    _stow(fhir, payload)
    assert _imaging_study(fhir, study)["meta"]["versionId"] == "1"


def test_delete_keeps_fhir_in_step(fhir):
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    _stow(fhir, make_ct(study, series_a), make_ct(study, series_b, SeriesNumber=2))
    patient_ref = _imaging_study(fhir, study)["subject"]["reference"]
    assert fhir.delete(f"/dicom-web/studies/{study}/series/{series_a}").status_code == 200
    resource = _imaging_study(fhir, study)
    assert [series["uid"] for series in resource["series"]] == [series_b]
    assert fhir.delete(f"/dicom-web/studies/{study}").status_code == 200
    assert fhir.get(f"/fhir/ImagingStudy/{study}").status_code == 410
    assert fhir.get(f"/fhir/{patient_ref}").status_code == 410
    assert ids(fhir.get("/fhir/ImagingStudy").json()) == []


def test_after_a_delete_the_imaging_study_and_patient_are_those_of_what_remains(fhir):
    study, kept, gone = generate_uid(), generate_uid(), generate_uid()
    _stow(fhir, make_ct(study, kept, PatientID="KEEP-2", StudyDescription="first"))
    _stow(fhir, make_ct(study, gone, PatientID="GONE-2", StudyDescription="second", Modality="MR"))
    gone_patient = _imaging_study(fhir, study)["subject"]["reference"]
    assert fhir.delete(f"/dicom-web/studies/{study}/series/{gone}").status_code == 200
    resource = _imaging_study(fhir, study)
    assert resource["description"] == "first"
    patient = fhir.get(f"/fhir/{resource['subject']['reference']}").json()
    assert patient["identifier"][0]["value"] == "KEEP-2"
    assert fhir.get(f"/fhir/{gone_patient}").status_code == 410


def test_an_instance_sent_twice_in_one_request_gives_the_imaging_study_the_patient_of_the_copy_stored(fhir):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    _stow(fhir, *(make_ct(study, series, sop, PatientID=patient) for patient in ("FIRST-COPY", "STORED-COPY")))
    patient = fhir.get(f"/fhir/{_imaging_study(fhir, study)['subject']['reference']}").json()
    assert patient["identifier"][0]["value"] == "STORED-COPY"
    assert fhir.get("/fhir/Patient", params={"identifier": "FIRST-COPY"}).json()["total"] == 0


def test_a_patient_stays_while_another_study_refers_to_it(fhir):
    first, second = generate_uid(), generate_uid()
    _stow(fhir, make_ct(first), make_ct(second))
    patient_ref = _imaging_study(fhir, first)["subject"]["reference"]
    assert _imaging_study(fhir, second)["subject"]["reference"] == patient_ref
    fhir.delete(f"/dicom-web/studies/{first}")
    assert fhir.get(f"/fhir/{patient_ref}").status_code == 200


def test_one_stow_of_many_studies_and_patients_keeps_each_patient_as_its_newest_study(fhir):
    """A STOW's studies and Patients are written together (`put_many`); each
    Patient is described by its most recently updated study."""
    old, newer, other = generate_uid(), generate_uid(), generate_uid()
    _stow(fhir, make_ct(old, PatientID="P-MANY", PatientName="Doe^Old"))
    _stow(
        fhir,
        make_ct(newer, PatientID="P-MANY", PatientName="Doe^New"),
        make_ct(other, PatientID="Q-MANY", PatientName="Roe^Q"),
        make_ct(old, PatientID="P-MANY", PatientName="Doe^Old", SeriesNumber=2),
    )
    patient_ref = _imaging_study(fhir, old)["subject"]["reference"]
    assert _imaging_study(fhir, newer)["subject"]["reference"] == patient_ref
    assert _imaging_study(fhir, other)["subject"]["reference"] != patient_ref
    assert _imaging_study(fhir, old)["numberOfInstances"] == 2
    names = {entry["resource"]["identifier"][0]["value"]: entry["resource"]["name"][0]["given"]
             for entry in fhir.get("/fhir/Patient").json()["entry"]}
    assert names["Q-MANY"] == ["Q"] and "P-MANY" in names
    assert fhir.delete(f"/dicom-web/studies/{newer}").status_code == 200
    assert fhir.get(f"/fhir/{patient_ref}").json()["name"][0]["given"] == ["Old"]
    assert fhir.delete(f"/dicom-web/studies/{old}").status_code == 200
    assert fhir.get(f"/fhir/{patient_ref}").status_code == 410
    assert fhir.get("/fhir/Patient", params={"identifier": "Q-MANY"}).json()["total"] == 1


def test_patients_are_kept_apart_by_issuer_and_studies_without_id(fhir):
    _stow(
        fhir,
        make_ct(generate_uid(), IssuerOfPatientID="HOSP-A"),
        make_ct(generate_uid(), IssuerOfPatientID="HOSP-B"),
        make_ct(generate_uid(), PatientID=""),
        make_ct(generate_uid(), PatientID=""),
    )
    patients = fhir.get("/fhir/Patient").json()
    assert patients["total"] == 4
    assigners = sorted(
        entry["resource"]["identifier"][0]["assigner"]["display"]
        for entry in patients["entry"] if "identifier" in entry["resource"]
    )
    assert assigners == ["HOSP-A", "HOSP-B"]


def test_long_patient_ids_that_share_their_first_64_characters_are_two_patients(fhir):
    first, second = generate_uid(), generate_uid()
    long_id = "X" * 64
    accession = "A" * 70
    _stow(
        fhir,
        make_ct(first, PatientID=long_id + "-ALPHA", PatientName="Alpha^One", AccessionNumber=accession),
        make_ct(second, PatientID=long_id + "-BETA", PatientName="Beta^Two"),
    )
    subjects = {_imaging_study(fhir, uid)["subject"]["reference"] for uid in (first, second)}
    assert len(subjects) == 2
    for subject, expected in zip(sorted(subjects, key=lambda ref: fhir.get(f"/fhir/{ref}").json()["name"][0]["family"]),
                                 ("-ALPHA", "-BETA")):
        patient = fhir.get(f"/fhir/{subject}").json()
        assert patient["identifier"][0]["value"] == long_id + expected
    accessions = [identifier["value"] for identifier in _imaging_study(fhir, first)["identifier"]
                  if identifier.get("type", {}).get("coding", [{}])[0].get("code") == "ACSN"]
    assert accessions == [accession]


def test_dicom_text_of_nothing_but_control_characters_is_left_out(fhir):
    """FHIR strings may not hold control characters, nor be empty: text made
    only of them is no value at all (the schema check of every answer fails
    on an empty string)."""
    study = generate_uid()
    _stow(fhir, make_ct(study, PatientID="CTRL-1\x01", PatientName="\x02", IssuerOfPatientID="\x03",
                        StudyDescription="\x04", AccessionNumber="\x05", SeriesDescription="\x06",
                        BodyPartExamined="\x07"))
    resource = _imaging_study(fhir, study)
    assert [identifier["system"] for identifier in resource["identifier"]] == ["urn:dicom:uid"]
    assert "description" not in resource
    assert not {"description", "bodySite"} & set(resource["series"][0])
    patient = fhir.get(f"/fhir/{resource['subject']['reference']}").json()
    assert patient["identifier"] == [{"value": "CTRL-1"}] and "name" not in patient


@pytest.mark.parametrize("blank", ["\t", "\u00a0", "\x01", " \x01"])
def test_a_patient_id_of_nothing_but_spaces_or_control_characters_is_no_id(fhir, blank):
    """As with an empty PatientID, each such study has a Patient of its own:
    the ID does not make everyone sent with it one person."""
    subjects = []
    for name in ("Alpha^Ann", "Beta^Bob"):
        study = generate_uid()
        _stow(fhir, make_ct(study, PatientName=name, PatientID=blank))
        subjects.append(_imaging_study(fhir, study)["subject"]["reference"])
    assert subjects[0] != subjects[1]
    assert "identifier" not in fhir.get(f"/fhir/{subjects[0]}").json()


def test_dicom_values_that_fhir_types_refuse_are_made_valid_or_left_out(fhir):
    """A modality with a control character inside is still a code; an issuer
    that starts like a URI but holds a space is no system; a no-break space
    (Latin-1 text) is a plain one, as the R4 JSON schema reads strings."""
    study = generate_uid()
    _stow(fhir, make_ct(study, Modality="C \x01 T", PatientID="P-9", IssuerOfPatientID="urn:x y",
                        SpecificCharacterSet="ISO_IR 100", StudyDescription="CT\u00a0THORAX"))
    resource = _imaging_study(fhir, study)
    assert resource["series"][0]["modality"]["code"] == "C T" and resource["description"] == "CT THORAX"
    patient = fhir.get(f"/fhir/{resource['subject']['reference']}").json()
    assert patient["identifier"] == [{"value": "P-9", "assigner": {"display": "urn:x y"}}]
    # A byte order mark (U+FEFF) in UTF-8 text, as Windows tools leave one, shows nothing and is left out.
    marked = generate_uid()
    _stow(fhir, make_ct(marked, SpecificCharacterSet="ISO_IR 192", StudyDescription="\ufeffCT", PatientID="\ufeffP-10",
                        SeriesDescription="A\ufeffB", IssuerOfPatientID="urn:x\ufeffy"))
    resource = _imaging_study(fhir, marked)
    assert resource["description"] == "CT" and resource["series"][0]["description"] == "AB"
    patient = fhir.get(f"/fhir/{resource['subject']['reference']}").json()
    assert patient["identifier"] == [{"value": "P-10", "system": "urn:xy"}]


def test_patient_ids_are_those_earlier_versions_gave():
    """A Patient's id is a digest of the PatientID and issuer as sent: a
    change of it would give a stored patient a second Patient."""
    def patient_id(patient_id, issuer=None):  # type: ignore[no-untyped-def]
        return patient_resource_id(PatientRecord(patient_id, issuer, None, None, None, "1.2.3"))

    assert patient_id("P1\x01") == "dcm-0e61f36ca2e3f8d4440c9dbdce051bdb7e4567ea"
    assert patient_id("PID-1", "1.2.840.99") == "dcm-53ca00cf280aef0f454df453e4d0b7c323cbca3c"
    assert patient_id(" \tP2 ") == "dcm-8b53054fa0ac7397c5f013f9dcbf74df204c656d"
    assert patient_id("\t") == patient_id("") != patient_resource_id(PatientRecord("", None, None, None, None, "1.2.4"))


def test_a_study_sent_an_instance_at_a_time_is_searchable_by_each_instance(fhir):
    """Each arrival adds its instance to the ImagingStudy's index (`_reindex`
    keeps the earlier rows); a deleted instance leaves it."""
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(4)]
    for number, sop in enumerate(sops, start=1):
        _stow(fhir, make_ct(study, series, sop, InstanceNumber=number))
    for sop in sops:
        assert ids(fhir.get("/fhir/ImagingStudy", params={"instance": sop}).json()) == [study]
    assert fhir.delete(f"/dicom-web/studies/{study}/series/{series}/instances/{sops[1]}").status_code == 200
    assert ids(fhir.get("/fhir/ImagingStudy", params={"instance": sops[1]}).json()) == []
    assert ids(fhir.get("/fhir/ImagingStudy", params={"instance": sops[2]}).json()) == [study]
    assert _imaging_study(fhir, study)["numberOfInstances"] == 3


def test_an_imaging_study_built_on_its_stored_version_is_the_one_built_anew():
    """Instances the stored version holds unchanged are not validated again;
    an instance whose element changed is, even under the same UID."""
    def study(*instances):
        series = SeriesRecord("1.2.3.1", 1, "CT", "CHEST", "axial", instances)
        return StudyRecord("1.2.3", "ACC", "20240115", "CT", "dcm-1", (series,))

    stored = imaging_study_from_dicom(study(*(InstanceRecord(f"1.2.3.1.{n}", "1.2.840.10008.5.1.4.1.1.2", n)
                                              for n in range(1, 4))))
    grown = study(*(InstanceRecord(f"1.2.3.1.{n}", "1.2.840.10008.5.1.4.1.1.2", n) for n in range(1, 6)))
    assert imaging_study_from_dicom(grown, stored) == imaging_study_from_dicom(grown)
    assert imaging_study_from_dicom(grown, stored)["series"][0]["numberOfInstances"] == 5
    # A stored element under a UID R4 refuses (not a FHIR id) stands for its own content only.
    odd = {**stored, "series": [{**stored["series"][0], "instance": [{"uid": "1.2 3", "sopClass": {
        "system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}, "number": 1}]}]}
    with pytest.raises(ValidationError):
        imaging_study_from_dicom(study(InstanceRecord("1.2 3", "1.2.840.10008.5.1.4.1.1.4", 1)), odd)


def test_an_instance_resent_under_another_study_leaves_no_stale_study_or_patient(fhir):
    first, second, kept = generate_uid(), generate_uid(), generate_uid()
    sop, other_sop = generate_uid(), generate_uid()
    _stow(fhir, make_ct(first, sop_uid=sop, PatientID="MOVE-1"))
    _stow(fhir, make_ct(kept, sop_uid=other_sop, PatientID="KEEP-1"), make_ct(kept, PatientID="KEEP-1"))
    _stow(fhir, make_ct(second, sop_uid=sop, PatientID="MOVE-2"))  # the same instance, now in another study
    assert fhir.get(f"/fhir/ImagingStudy/{first}").status_code in (404, 410)
    assert fhir.get("/fhir/Patient", params={"identifier": "MOVE-1"}).json()["total"] == 0
    assert _imaging_study(fhir, second)["numberOfInstances"] == 1
    _stow(fhir, make_ct(second, sop_uid=other_sop, PatientID="MOVE-2"))  # one of two instances moves out
    assert _imaging_study(fhir, kept)["numberOfInstances"] == 1
    assert _imaging_study(fhir, second)["numberOfInstances"] == 2


def test_searches_over_derived_resources(fhir):
    study = generate_uid()
    _stow(fhir, make_ct(study, AccessionNumber="A-1", PatientID="SEARCH-1"), make_ct(generate_uid(), PatientID="OTHER"))
    assert ids(fhir.get("/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study}"}).json()) == [study]
    assert ids(fhir.get("/fhir/ImagingStudy", params={"identifier": "A-1"}).json()) == [study]
    assert ids(fhir.get("/fhir/ImagingStudy", params={"patient.identifier": "SEARCH-1"}).json()) == [study]
    assert ids(fhir.get("/fhir/ImagingStudy", params={"started": "2024-01-15", "modality": "CT", "status": "available",
                                                      "endpoint": "Endpoint/dicomweb-wado-rs", "patient.identifier": "SEARCH-1"}).json()) == [study]
    bundle = fhir.get("/fhir/ImagingStudy", params={"_id": study, "_include": "ImagingStudy:patient",
                                                    "_include:iterate": "ImagingStudy:endpoint"}).json()
    assert len(ids(bundle, "include")) == 2  # the Patient and, by the :iterate include, the Endpoint
    bundle = fhir.get("/fhir/ImagingStudy", params={"_id": study, "_include": "ImagingStudy:endpoint"}).json()
    assert ids(bundle, "include") == ["dicomweb-wado-rs"]
    assert fhir.get("/fhir/Patient", params={"identifier": "SEARCH-1", "gender:missing": "true", "name": "doe",
                                             "family": "do", "given": "jo", "birthdate:missing": "true"}).json()["total"] == 1


def test_endpoints_describe_the_dicomweb_root(fhir):
    bundle = fhir.get("/fhir/Endpoint", params={"status": "active", "_sort": "_id"}).json()
    assert ids(bundle) == ["dicomweb-qido-rs", "dicomweb-stow-rs", "dicomweb-wado-rs"]
    types = [entry["resource"]["connectionType"]["code"] for entry in bundle["entry"]]
    assert types == ["dicom-qido-rs", "dicom-stow-rs", "dicom-wado-rs"]
    assert all(entry["resource"]["address"].endswith("/dicom-web") for entry in bundle["entry"])
    found = fhir.get("/fhir/Endpoint", params={"connection-type": "dicom-wado-rs"}).json()
    assert ids(found) == ["dicomweb-wado-rs"]


def test_concurrent_stows_of_one_patient_make_one_patient(fhir, services):
    studies = [generate_uid() for _ in range(6)]
    errors: list[Exception] = []

    def send(study: str) -> None:
        try:
            _stow(fhir, *(make_ct(study, PatientID="SHARED") for _ in range(3)))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=send, args=(study,)) for study in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert fhir.get("/fhir/Patient", params={"identifier": "SHARED"}).json()["total"] == 1
    found = fhir.get("/fhir/ImagingStudy", params={"patient.identifier": "SHARED", "_count": 50}).json()
    assert sorted(ids(found)) == sorted(studies)
    assert all(entry["resource"]["numberOfInstances"] == 3 for entry in found["entry"])


def test_the_fhir_and_job_side_of_a_stow_takes_as_many_statements_for_many_studies_as_for_one(fhir, services):
    """ImagingStudies, Patients, the studies' activity and their jobs are
    written for all of a STOW's studies at once: one statement per table,
    not one per study (round trips were most of a STOW's time on PostgreSQL)."""
    counts: list[int] = []
    on_change = services.ingestor.on_studies_changed

    def counted(connection, study_uids, change):  # type: ignore[no-untyped-def]
        with round_trips(connection) as count:
            on_change(connection, study_uids, change)
        counts.append(count[0])

    services.ingestor.on_studies_changed = counted
    _stow(fhir, make_ct(generate_uid(), PatientID="ONE-OF-ONE"))
    _stow(fhir, *(make_ct(generate_uid(), PatientID=f"ONE-OF-MANY-{index}") for index in range(20)))
    assert len(counts) == 2 and counts[1] == counts[0]
    assert fhir.get("/fhir/ImagingStudy", params={"_summary": "count"}).json()["total"] == 21
