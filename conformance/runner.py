"""Runs the suite against one server: `medaiflow conformance ...`.

Usable against any server (ours, Orthanc, another vendor's): nothing here
knows MedAIFlow. Exit status 0 only when no case failed and at least one
passed; 1 when a case failed; 2 when nothing was tested (no server named, or
every case selected was skipped).
"""

import argparse
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from conformance import dicomweb_cases, fhir_cases, fhir_schema, report
from conformance.case import Case, CaseFailed, CaseSkipped, Outcome, Verdict
from conformance.instances import make_study
from conformance.session import Session, Target

FAMILIES = {"dicomweb": dicomweb_cases.REGISTRY, "fhir": fhir_cases.REGISTRY}


def run(target: Target, families: Sequence[str], validate_fhir: Callable[[dict[str, Any]], None] | None,
        only_cases: Sequence[str] = (), timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None) -> list[Outcome]:
    session = Session.open(target, validate_fhir, timeout, transport)
    session.state["study"] = make_study(secrets.token_hex(4))
    outcomes = []
    try:
        for family in families:
            for case in FAMILIES[family].cases:
                if only_cases and case.id not in only_cases:
                    continue
                outcomes.append(_run_case(session, case))
    finally:
        session.close()
    return outcomes


def _run_case(session: Session, case: Case) -> Outcome:
    session.exchanges = []
    try:
        case.run(session)
    except CaseFailed as failure:
        return Outcome(case, Verdict.FAIL, str(failure), tuple(session.exchanges))
    except CaseSkipped as skipped:
        return Outcome(case, Verdict.SKIP, str(skipped), tuple(session.exchanges))
    except Exception as error:  # noqa: BLE001 - an answer the case could not even read is a failure, with what came back
        return Outcome(case, Verdict.FAIL, f"the answer could not be checked: {type(error).__name__}: {error}",
                       tuple(session.exchanges))
    return Outcome(case, Verdict.PASS, None, tuple(session.exchanges))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dicomweb", metavar="URL", help="DICOMweb root of the server under test, e.g. http://host/dicom-web")
    parser.add_argument("--fhir", metavar="URL", help="FHIR base of the server under test, e.g. http://host/fhir")
    parser.add_argument("--wado-uri", metavar="URL",
                        help="WADO-URI endpoint of the server under test, e.g. http://host/wado (its cases skipped without)")
    parser.add_argument("--user", help="HTTP Basic user name")
    parser.add_argument("--password", help="HTTP Basic password")
    parser.add_argument("--token", help="a Bearer token (instead of Basic)")
    parser.add_argument("--only", choices=sorted(FAMILIES), help="run one family of cases")
    parser.add_argument("--case", action="append", default=[], metavar="ID", help="run only this case (repeatable)")
    parser.add_argument("--origin", help="a browser origin the server allows, for the CORS cases (skipped without)")
    parser.add_argument("--fhir-schema", type=Path, default=fhir_schema.SCHEMA_PATH,
                        help="the official FHIR R4 JSON schema (fhir.schema.json); without it, bodies are not schema-checked")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for each answer (default 60)")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write a Markdown report")


def main(args: argparse.Namespace) -> int:
    families = [args.only] if args.only else [family for family in FAMILIES if getattr(args, family)]
    if not families or not all(getattr(args, family) for family in families):
        # A run that tests nothing must not pass as one that passed.
        print(f"name the server under test: {' and/or '.join(f'--{family} URL' for family in families or FAMILIES)}",
              file=sys.stderr)
        return 2
    known = {case.id for family in families for case in FAMILIES[family].cases}
    unknown = sorted(set(args.case) - known)
    if unknown:
        print(f"no such case in {', '.join(families)}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    validate = fhir_schema.validator_at(args.fhir_schema) if args.fhir_schema.is_file() else None
    if validate is None and "fhir" in families:
        print(f"warning: no FHIR schema at {args.fhir_schema}: FHIR bodies are not schema-checked", file=sys.stderr)
    target = Target(args.dicomweb, args.fhir, args.user, args.password, args.token, args.origin, args.wado_uri)
    outcomes = run(target, families, validate, args.case, args.timeout)
    print(report.table(outcomes))
    if args.junit:
        report.write_junit(outcomes, args.junit)
    if args.json:
        report.write_json(outcomes, args.json)
    if args.markdown:
        report.write_markdown(outcomes, args.markdown, " and ".join(url for url in (args.dicomweb, args.fhir) if url))
    if any(outcome.verdict is Verdict.FAIL for outcome in outcomes):
        return 1
    if not any(outcome.verdict is Verdict.PASS for outcome in outcomes):
        # Every case skipped: nothing was shown to conform, which must not read as a pass.
        print("nothing was tested: every case selected was skipped", file=sys.stderr)
        return 2
    return 0
