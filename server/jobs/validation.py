"""`medaiflow models validate`: run a registered version on a labelled set and
record the figures on the registry and on its Device."""

from pathlib import Path

from fhir_mappings.device import ValidationMetric
from inference.segmenter import Segmenter
from inference.validation import LabelledSet, ValidationReport, validate
from server.db import database_files
from server.jobs.registry import ModelRegistry, RegisteredModel, Validation


def validate_model(registry: ModelRegistry, key: str, directory: Path) -> tuple[ValidationReport, RegisteredModel]:
    model = registry.get(key)
    model.bundle.verify_weights()
    # Building the Segmenter runs the bundle's configs: a folder that is no
    # labelled set is refused first, without them.
    labelled_set = LabelledSet.read(directory, untouchable=database_files(registry.engine))
    segmenter = Segmenter(model.bundle)
    report = validate(segmenter.segment, model.bundle.card, labelled_set)
    metrics = (
        ValidationMetric("dice", "Mean Dice similarity coefficient", report.mean_dice, "1"),
        ValidationMetric("volume-error", "Mean absolute total volume error", report.mean_volume_error_percent, "%"),
        ValidationMetric("count-accuracy", "Cases with the exact finding count", report.count_accuracy * 100, "%"),
        ValidationMetric("cases", "Labelled cases", float(report.cases), "1"),
    )
    recorded = registry.record_validation(key, Validation(metrics, report.passed, report.summary))
    return report, recorded
