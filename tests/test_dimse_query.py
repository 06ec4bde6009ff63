"""C-FIND identifiers as QIDO-RS parameters, and matches as C-FIND responses (dicom/dimse_query.py)."""

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom.dimse_query import find_level, qido_parameters, response_identifier
from dicom.errors import InvalidRequest
from dicom.matching import parse_qido_query


def _identifier(level: str, **keys: object) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def test_keys_become_the_parameters_a_qido_client_would_send():
    item = Dataset()
    item.RequestedProcedureID = "RP-1"
    identifier = _identifier(
        "SERIES", SpecificCharacterSet="ISO_IR 100", PatientName="Doe*", StudyDate="20240101-",
        StudyInstanceUID=["1.2.3", "1.2.4"], StudyDescription="", RequestAttributesSequence=Sequence([item]),
        ReferringPhysicianName=None,
    )
    assert find_level(identifier) == "series"
    assert qido_parameters(identifier) == [
        ("StudyDate", "20240101-"), ("ReferringPhysicianName", ""), ("StudyDescription", ""),
        ("PatientName", "Doe*"), ("StudyInstanceUID", "1.2.3,1.2.4"),
        ("RequestAttributesSequence.RequestedProcedureID", "RP-1"),
    ]
    query = parse_qido_query("series", qido_parameters(identifier), 100)
    assert {condition.tag for condition in query.conditions} == {0x00080020, 0x00100010, 0x0020000D, 0x00400275}
    assert {0x00080090, 0x00081030} <= query.include_fields


def test_an_empty_sequence_key_asks_for_the_sequence():
    identifier = _identifier("SERIES", RequestAttributesSequence=Sequence([]))
    assert qido_parameters(identifier) == [("RequestAttributesSequence", "")]
    with pytest.raises(InvalidRequest, match="at most one"):
        qido_parameters(_identifier("SERIES", RequestAttributesSequence=Sequence([Dataset(), Dataset()])))


@pytest.mark.parametrize("level", ["PATIENT", "", "FRAME"])
def test_levels_other_than_study_series_and_image_are_refused(level):
    with pytest.raises(InvalidRequest, match="Query/Retrieve Level"):
        find_level(_identifier(level))


def test_a_response_holds_every_key_asked_for_and_the_unique_keys_above():
    identifier = _identifier("IMAGE", SOPInstanceUID="", InstanceNumber="", ImageComments="", AccessionNumber="")
    match = Dataset()
    match.StudyInstanceUID, match.SeriesInstanceUID, match.SOPInstanceUID = "1.2", "1.2.3", "1.2.3.4"
    match.InstanceNumber = 7
    match.AccessionNumber = "ACC-1"
    match.Rows = 512  # not asked for: left out
    response = response_identifier(identifier, "instance", match)
    assert response.QueryRetrieveLevel == "IMAGE" and response.SpecificCharacterSet == "ISO_IR 192"
    assert (response.StudyInstanceUID, response.SeriesInstanceUID, response.SOPInstanceUID) == ("1.2", "1.2.3",
                                                                                              "1.2.3.4")
    assert response.InstanceNumber == 7 and response.AccessionNumber == "ACC-1"
    assert "ImageComments" in response and response.ImageComments in (None, "")
    assert "Rows" not in response
