"""A model's label map as a DICOM Segmentation series (highdicom, BINARY).

The SEG references the source instances frame by frame, so viewers lay it
over the source series; the model is named in ContributingEquipmentSequence
and in the SeriesDescription. Its UIDs come from the job, so running a job
again makes the same instance, never a second one.
"""

import functools
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem, CodingSchemeResourceItem
from pydicom import config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value
from pydicom.values import convert_UI

from inference.model_card import ModelCard
from inference.volume import Volume

# Recommended Display CIELab Values, one per segment in turn (red, green, blue,
# yellow, magenta, cyan): viewers otherwise pick colours of their own and say so.
_DISPLAY_COLOURS = ((53.24, 80.09, 67.20), (87.73, -86.18, 83.18), (32.30, 79.19, -107.86),
                    (97.14, -21.55, 94.48), (60.32, 98.23, -60.82), (91.11, -48.09, -14.13))
SEG_SERIES_NUMBER = 9901
_SEG_WRITER_PREPARING = threading.Lock()


@dataclass(frozen=True)
class SegIdentity:
    series_instance_uid: str
    sop_instance_uid: str

    @classmethod
    def for_job(cls, job_id: str) -> "SegIdentity":
        return cls(
            generate_uid(entropy_srcs=[f"medaiflow-seg-series-{job_id}"]),
            generate_uid(entropy_srcs=[f"medaiflow-seg-instance-{job_id}"]),
        )


# What the SEG writer reads of every source image but the one it copies the
# patient and study from: the image plane and the identifying UIDs (highdicom
# 0.28 reads fewer; these are the modules its checks may look at). All are
# ASCII, so no character set is needed to decode them.
_SOURCE_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "FrameOfReferenceUID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "NumberOfFrames",
    "InstanceNumber",
)
_SOURCE_TAGS = tuple(tag_for_keyword(keyword) for keyword in _SOURCE_KEYWORDS)
# An undecoded element as builtins: (tag, VR, length, value bytes, ...) as RawDataElement has it.
KeptElement = tuple[Any, ...]


@dataclass(frozen=True)
class SourceHeaders:
    """What writing a series' SEG needs of its source images, kept from the
    read that built its volume: reading 128 headers again costs as much as
    the first read did, and sending pydicom's own objects to the process
    that writes the SEG costs 20 times more than sending these builtins.

    `first`: the file of the source highdicom copies the patient and study
    from (the first slice), read again whole; `others`: the rest's elements
    as read, still undecoded."""

    first: Path
    others: tuple[tuple[KeptElement, ...], ...]

    @staticmethod
    def kept(dataset: Dataset) -> tuple[KeptElement, ...]:
        """Of a source as read, before anything decodes its elements (pydicom
        decodes only SpecificCharacterSet as it reads, which is not kept, and
        empty values, which are kept as absent: an empty SliceThickness, Type
        2 in CT, is then taken from the spacing, as a missing one is)."""
        elements = (dataset.get_item(tag) for tag in _SOURCE_TAGS if tag in dataset)
        return tuple(
            (int(element.tag), *element[1:]) for element in elements
            if isinstance(element, RawDataElement) or not element.is_empty
        )

    def images(self) -> list["SourceImage"]:
        """The sources, the first with its whole header; the others' headers
        are built only when the SEG writer asks for them. Raises
        FileNotFoundError when the first was deleted since it was read."""
        first = pydicom.dcmread(self.first, stop_before_pixels=True)
        others = (
            SourceImage(
                _kept_uid(kept, "SOPClassUID"), _kept_uid(kept, "SOPInstanceUID"), functools.partial(_header, kept)
            )
            for kept in self.others
        )
        return [*source_images([first]), *others]


@dataclass(frozen=True)
class SourceImage:
    """A source image as the SEG writer needs it: its UIDs, which the SEG
    references for every slice, and its header, which `header` builds, for
    the slices the SEG places (those with a finding, and the first): building
    every slice's header was a fifth of the work of writing a SEG."""

    sop_class_uid: str
    sop_instance_uid: str
    header: Callable[[], Dataset]


def source_images(datasets: Sequence[Dataset]) -> list[SourceImage]:
    """Headers already read, as source images."""
    return [
        SourceImage(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), lambda read=dataset: read)
        for dataset in datasets
    ]


def _kept_uid(kept: tuple[KeptElement, ...], keyword: str) -> str:
    """A UID of the kept elements, decoded as pydicom decodes it (so that it
    is the same text as the volume's source UIDs)."""
    tag = tag_for_keyword(keyword)
    element = next((element for element in kept if element[0] == tag), None)
    if element is None:
        raise ValueError(f"a source image has no {keyword}")
    _, _, _, value, _, _, is_little_endian, *_ = element
    return str(convert_UI(value, is_little_endian))


def _header(kept: tuple[KeptElement, ...]) -> Dataset:
    return Dataset({BaseTag(element[0]): RawDataElement(BaseTag(element[0]), *element[1:]) for element in kept})


def segmentation(
    sources: Sequence[SourceImage],
    volume: Volume,
    labels: np.ndarray,
    card: ModelCard,
    identity: SegIdentity,
) -> Dataset:
    """`sources`: the series' images; `volume` the volume built from them
    (its slice order decides which source each label frame belongs to)."""
    by_uid = {source.sop_instance_uid: source for source in sources}
    # Segment numbers follow the card's order; labels are the network's values.
    label_map = np.zeros(labels.shape, np.uint8)
    for index, segment in enumerate(card.segments, start=1):
        label_map[labels == segment.label] = index
    if volume.source_frame_numbers:
        # One multi-frame source: highdicom takes its frames in stored order.
        ordered = [by_uid[volume.source_instance_uids[0]].header()]
        label_map = label_map[np.argsort(np.array(volume.source_frame_numbers))]
    else:
        # highdicom places the slices with a finding, and the first, whose
        # whole header the SEG copies the patient and study from: a frame of
        # nothing is left out of the SEG anyway, and placing its slice
        # (decoding its header, checking its position) was 40% of writing the
        # SEG. Every slice is referenced as a source after (`_reference_every_slice`).
        framed = [0, *(index for index in range(1, len(label_map)) if label_map[index].any())]
        ordered = [by_uid[volume.source_instance_uids[index]].header() for index in framed]
        label_map = label_map[framed]
    _fill_type2(ordered[0])  # the one source highdicom copies the patient and the study from
    if not volume.source_frame_numbers:
        _share_plane(ordered, volume)
    descriptions = [
        highdicom.seg.SegmentDescription(
            segment_number=index,
            segment_label=segment.name,
            segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
            segmented_property_type=Code(segment.finding.code, _scheme(segment.finding.system), segment.finding.display),
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            display_color=highdicom.color.CIELabColor(*_DISPLAY_COLOURS[(index - 1) % len(_DISPLAY_COLOURS)]),
            algorithm_identification=highdicom.AlgorithmIdentificationSequence(
                name=card.name, version=card.version, family=codes.cid7162.ArtificialIntelligence,
            ),
        )
        for index, segment in enumerate(card.segments, start=1)
    ]
    seg = highdicom.seg.Segmentation(
        source_images=ordered,
        pixel_array=label_map,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=identity.series_instance_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        manufacturer="MedAIFlow",
        manufacturer_model_name=card.name[:64],
        software_versions=card.version,
        device_serial_number=card.key[:64],
        # The patient's and study's text is copied from the source in whatever
        # character set it came; UTF-8 holds all of them.
        specific_character_set="ISO_IR 192",
        content_label="AI_SEG",
        content_description=f"{card.name} {card.version}"[:64],
        series_description=f"AI segmentation: {card.name} {card.version}"[:64],
        # A study with nothing found still gets its (empty) segmentation: a
        # viewer shows "nothing found" rather than a missing series.
        omit_empty_frames=bool(label_map.any()),
        coding_schemes=_private_schemes(card) or None,
        contributing_equipment=[
            highdicom.ContributingEquipment(
                manufacturer=card.manufacturer[:64],
                purpose_of_reference=codes.cid7005.ProcessingEquipment,
                manufacturer_model_name=card.name[:64],
                software_versions=card.version,
                contribution_description=f"AI model {card.key} segmented this series"[:64],
            )
        ],
    )
    if not volume.source_frame_numbers:
        _reference_every_slice(seg, [by_uid[uid] for uid in volume.source_instance_uids])
    return seg


def _reference_every_slice(seg: Dataset, sources: Sequence[SourceImage]) -> None:
    """Every slice of the series as a source of the SEG, in the series'
    order, as highdicom references each source image it is given (it is given
    only the slices it places): a reader may ask for the mask of any slice,
    and highdicom's `get_pixels_by_source_instance` refuses a slice that is
    not referenced."""
    references = []
    for source in sources:
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.sop_class_uid
        reference.ReferencedSOPInstanceUID = source.sop_instance_uid
        references.append(reference)
    seg.SourceImageSequence = references
    [series] = seg.ReferencedSeriesSequence
    series.ReferencedInstanceSequence = references


def prepare_seg_writer() -> None:
    """Done by a worker when it starts, so that no job pays for it.

    highdicom parses the standard's IOD and module tables (megabytes of JSON,
    about half a second) the first time a process checks a source image: they
    are loaded here. And for every source image it asks whether the image's
    SOP class allows multiple frames, scanning that IOD's module tables anew
    each time (0.2 ms an image, a quarter of writing a 128-slice SEG): the
    answer depends only on the SOP class, so it is remembered."""
    # No public highdicom function does either; both rely on its private
    # `_standard_utils` (pyproject pins the minor version). Its tables are
    # cached for the process's life.
    from highdicom import _standard_utils

    with _SEG_WRITER_PREPARING:  # threads starting together parse the tables once, not once each
        _standard_utils.get_sop_class_iod_map()
        _standard_utils.get_iod_module_map()
        _standard_utils.get_module_attribute_map()
        if not isinstance(_standard_utils.is_attribute_in_iod, _RememberedIodAnswers):
            _standard_utils.is_attribute_in_iod = _RememberedIodAnswers(_standard_utils.is_attribute_in_iod)


class _RememberedIodAnswers:
    """`is_attribute_in_iod`, answering each (attribute, SOP class, excluded
    path elements) question once. The tables it reads never change; an
    unknown SOP class still raises KeyError every time (errors are not
    remembered). highdicom's `is_multiframe_image` and `does_iod_have_pixel_data`
    (1.5 ms a SEG: it excludes icon images, a scan of every module) find the
    function through its module's globals, so replacing it there serves both."""

    def __init__(self, scan: Callable[..., bool]) -> None:
        self.scan = scan
        self.answer = functools.lru_cache(maxsize=None)(scan)

    def __call__(self, attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None) -> bool:
        excluded = None if exclude_path_elements is None else tuple(exclude_path_elements)
        return self.answer(attribute, str(sop_class_uid), excluded)


# Type 2 attributes of the Patient and General Study modules, which the SEG
# copies from its source (PS3.3 C.7.1.1, C.7.2.1): present, maybe empty.
_COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _fill_type2(source: Dataset) -> None:
    """A source that left out a Type 2 attribute (real files do) gets it
    empty, as the standard allows, instead of failing the SEG."""
    for keyword in _COPIED_TYPE2:
        if keyword not in source:
            setattr(source, keyword, "")


def _share_plane(sources: Sequence[Dataset], volume: Volume) -> None:
    """Single-frame sources as highdicom must see them: one orientation
    (assembly accepted them as parallel within its tolerance; highdicom
    compares them exactly), and a slice thickness on the first, whose pixel
    measures the SEG copies. A CT's SliceThickness is Type 2, so may be empty
    or (in real files) missing: the SEG's frames are then as thick as the
    slices are apart. The first also says how far apart the slices are, for
    a reader to rebuild the volume from frames that skip slices: highdicom
    works that out from the positions of the slices it places, which are
    only those with a finding (`segmentation`)."""
    first = sources[0]
    for source in sources[1:]:
        if source.ImageOrientationPatient != first.ImageOrientationPatient:
            source.ImageOrientationPatient = first.ImageOrientationPatient
    if first.get("SliceThickness") in (None, ""):
        first.SliceThickness = f"{volume.spacing[0]:.6g}"
    # As the positions have it, whatever the source says: scanners write it negative (which
    # makes the SEG invalid) or left over from a protocol with other gaps.
    first.SpacingBetweenSlices = f"{volume.spacing[0]:.6g}"


# FHIR code systems as DICOM coding scheme designators (PS3.16 Table 8-1).
_STANDARD_SCHEMES = {
    "http://snomed.info/sct": "SCT",
    "http://dicom.nema.org/resources/ontology/DCM": "DCM",
    "http://loinc.org": "LN",
    "http://radlex.org": "RADLEX",
}


def _scheme(system: str) -> str:
    """The designator of a code system: its standard one, else a private one
    of its own ("99" and a hash of the system, PS3.16 8.2), which the SEG's
    Coding Scheme Identification Sequence names (`_private_schemes`)."""
    return _STANDARD_SCHEMES.get(system) or f"99{hashlib.sha256(system.encode()).hexdigest()[:8].upper()}"


def _private_schemes(card: ModelCard) -> list[CodingSchemeIdentificationItem]:
    """What a reader of the SEG needs to know which system a private
    designator stands for: the system, whole, as the scheme's name (ST), and
    as its resource where it is a URI (VR UR, RFC 3986: a system a model card
    names in words, with spaces, would make the SEG invalid)."""
    systems = sorted({segment.finding.system for segment in card.segments} - _STANDARD_SCHEMES.keys())
    return [
        CodingSchemeIdentificationItem(
            _scheme(system), name=system[:_ST_MAX_CHARS],
            resources=[CodingSchemeResourceItem(system, "DOC")] if _is_uri(system) else None,
        )
        for system in systems
    ]


_ST_MAX_CHARS = 1024  # PS3.5 Table 6.2-1


def _is_uri(system: str) -> bool:
    try:
        validate_value("UR", system, config.RAISE)
    except ValueError:
        return False
    return True
