"""Preparing the SEG writer (what a worker does as it starts) changes how
fast highdicom answers its questions about the standard, never the answers."""

from collections.abc import Callable

import pytest
from highdicom import _standard_utils
from pydicom.uid import CTImageStorage, SegmentationStorage

from inference.demo.phantom import make_phantom, phantom_datasets
from inference.seg import prepare_seg_writer
from tests.inference_checks import SMALL

_ATTRIBUTES = ("NumberOfFrames", "ImagePositionPatient", "ContentDate", "TotalPixelMatrixRows")


def test_remembered_answers_are_the_answers_of_a_scan_of_the_tables():
    prepare_seg_writer()
    remembered = _standard_utils.is_attribute_in_iod
    for sop_class_uid in _standard_utils.get_sop_class_iod_map():
        for attribute in _ATTRIBUTES:
            expected = _outcome(remembered.scan, attribute, sop_class_uid)
            assert _outcome(remembered, attribute, sop_class_uid) == expected, (attribute, sop_class_uid)
            assert _outcome(remembered, attribute, sop_class_uid) == expected, (attribute, sop_class_uid)  # from memory


def _outcome(ask: Callable[[str, str], bool], attribute: str, sop_class_uid: str) -> bool | str:
    """The answer, or the error: a few of highdicom's IODs name modules its tables lack."""
    try:
        return ask(attribute, sop_class_uid)
    except KeyError as error:
        return f"KeyError: {error}"


def test_an_unknown_sop_class_is_an_error_each_time():
    prepare_seg_writer()
    for _ in range(2):
        with pytest.raises(KeyError, match="No IOD found"):
            _standard_utils.is_attribute_in_iod("NumberOfFrames", "1.2.3.4.5.6")


def test_questions_that_exclude_path_elements_are_remembered_by_what_they_exclude():
    prepare_seg_writer()
    remembered = _standard_utils.is_attribute_in_iod
    for sop_class_uid in (CTImageStorage, SegmentationStorage):
        for excluded in (["IconImageSequence"], ["PixelData"], ()):
            expected = remembered.scan("PixelData", sop_class_uid, excluded)
            assert remembered("PixelData", sop_class_uid, excluded) == expected
    # An exclusion is part of the question: (CT, excluded icons) and (CT, excluded overlays) are two.
    misses = remembered.answer.cache_info().misses
    remembered("ReferencedSOPInstanceUID", CTImageStorage, ["IconImageSequence"])
    remembered("ReferencedSOPInstanceUID", CTImageStorage, ["ReferencedImageSequence"])
    assert remembered.answer.cache_info().misses == misses + 2
    before = remembered.answer.cache_info()
    assert _standard_utils.does_iod_have_pixel_data(CTImageStorage)  # asks with IconImageSequence excluded
    after = remembered.answer.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)


def test_highdicoms_multiframe_check_is_answered_from_memory():
    prepare_seg_writer()
    answers = _standard_utils.is_attribute_in_iod.answer
    ct_slice = phantom_datasets(make_phantom(91, SMALL, lesion_count=1))[0]
    _standard_utils.is_multiframe_image(ct_slice)
    hits = answers.cache_info().hits
    assert _standard_utils.is_multiframe_image(ct_slice) is False
    assert answers.cache_info().hits == hits + 1


def test_preparing_twice_wraps_the_scan_once():
    prepare_seg_writer()
    first = _standard_utils.is_attribute_in_iod
    prepare_seg_writer()
    assert _standard_utils.is_attribute_in_iod is first
    assert not hasattr(first.scan, "scan")
