"""A model card is read from configs/metadata.json as written: a value of the
wrong type is refused naming its field, never converted into another meaning."""

import copy
from typing import Any

import pytest

from inference.errors import InvalidBundle
from inference.model_card import ModelCard
from tests.ai_cards import demo_metadata


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    metadata = copy.deepcopy(demo_metadata())
    *parents, last = path
    target: Any = metadata
    for key in parents:
        target = target[key]
    target[last] = value
    return metadata


def test_the_demo_metadata_makes_a_card() -> None:
    card = ModelCard.from_metadata(demo_metadata())
    assert card.series.sop_class_uids == ("1.2.840.10008.5.1.4.1.1.2",)
    assert card.segments[0].finding.display == "Lesion"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        # A string where a list belongs would be read as a tuple of its characters: the model would never run.
        (("medaiflow", "series", "sop_class_uids"), "1.2.840.10008.5.1.4.1.1.2", "medaiflow.series.sop_class_uids"),
        (("medaiflow", "series", "sop_class_uids"), [None], "medaiflow.series.sop_class_uids[0]"),
        (("medaiflow", "series", "sop_class_uids"), [], "medaiflow.series.sop_class_uids"),
        (("medaiflow", "series", "modality"), None, "medaiflow.series.modality"),
        (("medaiflow", "series", "min_slices"), "20", "medaiflow.series.min_slices"),
        (("medaiflow", "series", "min_slices"), True, "medaiflow.series.min_slices"),
        (("medaiflow", "series", "series_description"), 7, "medaiflow.series.series_description"),
        (("medaiflow", "segments", 0, "finding", "system"), None, "medaiflow.segments[0].finding.system"),
        (("medaiflow", "segments", 0, "finding", "code"), None, "medaiflow.segments[0].finding.code"),
        (("medaiflow", "segments", 0, "finding", "display"), 7, "medaiflow.segments[0].finding.display"),
        (("medaiflow", "segments", 0, "finding"), "lesion", "medaiflow.segments[0].finding"),
        (("medaiflow", "segments", 0, "min_component_ml"), "nan", "medaiflow.segments[0].min_component_ml"),
        (("medaiflow", "segments", 0, "min_component_ml"), float("nan"), "medaiflow.segments[0].min_component_ml"),
        (("medaiflow", "segments", 0, "min_component_ml"), float("inf"), "medaiflow.segments[0].min_component_ml"),
        (("medaiflow", "segments", 0, "label"), "1", "medaiflow.segments[0].label"),
        (("medaiflow", "segments", 0, "name"), None, "medaiflow.segments[0].name"),
        (("medaiflow", "segments", 0, "measurements"), {"kind": "count"}, "medaiflow.segments[0].measurements"),
        (("medaiflow", "segments", 0, "measurements", 0, "code", "code"), None,
         "medaiflow.segments[0].measurements[0].code.code"),
        (("medaiflow", "segments", 0, "measurements", 0, "unit"), None, "medaiflow.segments[0].measurements[0].unit"),
        (("medaiflow", "segments", 0, "measurements", 0, "kind"), "area", "medaiflow.segments[0].measurements[0].kind"),
        (("medaiflow", "segments"), {"label": 1}, "medaiflow.segments"),
        (("medaiflow", "manufacturer"), 7, "medaiflow.manufacturer"),
        (("name",), None, "name"),
        (("version",), 1.0, "version"),
        (("description",), ["x"], "description"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_its_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    with pytest.raises(InvalidBundle) as refused:
        ModelCard.from_metadata(_with(path, value))
    assert f"{field} must be" in refused.value.message


@pytest.mark.parametrize("path", [
    ("medaiflow", "series", "series_description"), ("medaiflow", "series", "body_part_examined"),
    ("medaiflow", "manufacturer"), ("description",),
])
def test_an_optional_field_given_as_null_is_absent(path: tuple[Any, ...]) -> None:
    """As bundles registered before the type checks wrote them: refusing them would stop the registry reading them."""
    absent = demo_metadata()
    target = absent
    for key in path[:-1]:
        target = target[key]
    target.pop(path[-1], None)
    assert ModelCard.from_metadata(_with(path, None)) == ModelCard.from_metadata(absent)


@pytest.mark.parametrize("label", [256, 257])
def test_a_label_beyond_a_byte_is_refused(label: int) -> None:
    # The network's labels are read as bytes: 257 would have been counted as label 1.
    with pytest.raises(InvalidBundle, match=f"labels go up to 255, not {label}"):
        ModelCard.from_metadata(_with(("medaiflow", "segments", 0, "label"), label))
    assert ModelCard.from_metadata(_with(("medaiflow", "segments", 0, "label"), 255)).segments[0].label == 255


def test_a_missing_field_is_named() -> None:
    metadata = demo_metadata()
    del metadata["medaiflow"]["series"]["sop_class_uids"]
    with pytest.raises(InvalidBundle, match=r"medaiflow\.series\.sop_class_uids must be .*, not missing"):
        ModelCard.from_metadata(metadata)
