"""FHIR JSON read and written with each decimal as the client wrote it.

R4 datatypes.html#decimal: the precision of a decimal is part of its value
(0.010 is not 0.01) and must be kept. A JSON parser that makes floats of
numbers turns 1.10 into 1.1, so a decimal here is read as `WrittenDecimal`,
a float that remembers its text, and written back from that text.
"""

import json
import re
from typing import Any

import orjson

# A number with a fraction or an exponent, or a whole one too wide for 64
# bits (which orjson reads as a float), between JSON's delimiters. Text inside
# a string can look so too; then the second parse is merely not needed.
_MAYBE_DECIMAL = re.compile(
    rb"[:,\[]\s*-?(?:[0-9]+(?:\.[0-9]+)?[eE][-+]?[0-9]+|[0-9]+\.[0-9]+|[0-9]{20,})\s*[,\]}]"
)


class WrittenDecimal(float):
    """A JSON number with a fraction or an exponent, and the text it was
    written as. It is a float everywhere else (comparisons, search indexes),
    so code that only reads numbers need not know it."""

    text: str

    def __new__(cls, text: str) -> "WrittenDecimal":
        number = super().__new__(cls, text)
        number.text = str(text)
        return number

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def loads(raw: bytes | str) -> Any:
    """Parse strictly (orjson: no NaN, no lone surrogates, nothing after the
    value); parse again keeping decimals only where the text may hold one."""
    document = orjson.loads(raw)
    if _MAYBE_DECIMAL.search(raw.encode() if isinstance(raw, str) else raw):
        try:
            document = json.loads(raw, parse_float=WrittenDecimal, parse_int=_whole_number)
        except RecursionError:  # nested deeper than FHIR bodies may be: the caller refuses it
            pass
    return document


def _whole_number(text: str) -> int | WrittenDecimal:
    """An int, unless 64 bits cannot hold it (orjson writes no wider ints):
    then a decimal as written, which only a decimal element accepts."""
    number = int(text)
    return number if -(2**63) <= number < 2**64 else WrittenDecimal(text)


def dumps(document: Any, option: int = 0) -> bytes:
    return orjson.dumps(document, default=_written, option=option)


def _written(value: Any) -> orjson.Fragment:
    if isinstance(value, WrittenDecimal):
        return orjson.Fragment(value.text.encode())
    raise TypeError(f"{type(value).__name__} is not JSON")


def with_written_values(dumped: Any, written: Any) -> Any:
    """`dumped`, a model's JSON of the document `written`, with each primitive
    put back as `written` has it: the R4 models write every decimal as a
    float (1.10 as 1.1) and dates and times their own way (`.1` as
    `.100000`, `+00:00` as `Z`), which would change the precision a value
    claims, and that is what a date search compares."""
    if isinstance(written, WrittenDecimal):
        return written if isinstance(dumped, (int, float)) and dumped == written else dumped
    if isinstance(written, str) and isinstance(dumped, str):
        return written
    if isinstance(dumped, dict) and isinstance(written, dict):
        for key, value in dumped.items():
            if key in written:
                dumped[key] = with_written_values(value, written[key])
    elif isinstance(dumped, list) and isinstance(written, list) and len(dumped) == len(written):
        dumped[:] = [with_written_values(value, item) for value, item in zip(dumped, written)]
    return dumped


