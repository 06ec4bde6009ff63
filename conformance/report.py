"""What a run found, as a table on the terminal, JUnit XML for CI, JSON for
tools, and Markdown for people."""

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from conformance.case import Outcome, Verdict

_SHOWN_EXCHANGES = 3  # a failure shows the last requests of its case
# What XML 1.0 cannot hold (its Char production, section 2.2): a server's answer may carry any of it.
_NOT_XML_CHARACTERS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def printable(text: str) -> str:
    """`text` with what XML 1.0 (and a terminal) cannot hold shown as \\xNN or \\uNNNN escapes."""
    return _NOT_XML_CHARACTERS.sub(lambda found: ascii(found.group())[1:-1], text)


def summary(outcomes: Sequence[Outcome]) -> str:
    counts = Counter(outcome.verdict for outcome in outcomes)
    return f"{counts[Verdict.PASS]} passed, {counts[Verdict.FAIL]} failed, {counts[Verdict.SKIP]} skipped"


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("case", "clause", "result", "checks")]
    rows += [(outcome.case.id, outcome.case.clause, outcome.verdict.value, outcome.case.title) for outcome in outcomes]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * 6)
    details = [_detail(outcome) for outcome in outcomes if outcome.verdict is not Verdict.PASS]
    return "\n".join(lines + [""] + details + [summary(outcomes)])


def _detail(outcome: Outcome) -> str:
    if outcome.verdict is Verdict.SKIP:
        return printable(f"{outcome.case.id} skipped: {outcome.reason}\n")
    exchanges = "\n".join(exchange.describe() for exchange in outcome.exchanges[-_SHOWN_EXCHANGES:])
    return printable(f"{outcome.case.id} FAILED ({outcome.case.clause}): {outcome.reason}\n{exchanges}\n")


def write_json(outcomes: Sequence[Outcome], path: Path) -> None:
    path.write_text(json.dumps([{
        "id": outcome.case.id, "family": outcome.case.family, "clause": outcome.case.clause,
        "title": outcome.case.title, "result": outcome.verdict.value, "reason": outcome.reason,
        "exchanges": [exchange.__dict__ for exchange in outcome.exchanges],
    } for outcome in outcomes], indent=2, ensure_ascii=False))


def write_junit(outcomes: Sequence[Outcome], path: Path) -> None:
    counts = Counter(outcome.verdict for outcome in outcomes)
    suite = ET.Element("testsuite", name="medaiflow-conformance", tests=str(len(outcomes)),
                       failures=str(counts[Verdict.FAIL]), skipped=str(counts[Verdict.SKIP]), errors="0")
    for outcome in outcomes:
        element = ET.SubElement(suite, "testcase", classname=outcome.case.family,
                                name=f"{outcome.case.id} {outcome.case.title}")
        if outcome.verdict is Verdict.FAIL:
            failure = ET.SubElement(element, "failure", message=printable(outcome.reason or ""))
            failure.text = _detail(outcome)
        elif outcome.verdict is Verdict.SKIP:
            ET.SubElement(element, "skipped", message=printable(outcome.reason or ""))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def write_markdown(outcomes: Sequence[Outcome], path: Path, target: str) -> None:
    lines = [f"# Conformance report: {target}", "", summary(outcomes), "",
             "| case | clause | result | checks |", "|---|---|---|---|"]
    lines += [f"| {outcome.case.id} | {outcome.case.clause} | {outcome.verdict.value} | {_cell(outcome.case.title)} |"
              for outcome in outcomes]
    failures = [outcome for outcome in outcomes if outcome.verdict is not Verdict.PASS]
    if failures:
        lines += ["", "## Failures and skips", ""]
        for outcome in failures:
            lines += [f"### {outcome.case.id}: {outcome.verdict.value}", "", "```", _detail(outcome).rstrip(), "```", ""]
    path.write_text("\n".join(lines) + "\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
