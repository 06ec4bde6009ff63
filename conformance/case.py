"""A conformance case: the clause of a standard it checks, and how.

A case talks to the server under test through a `Session`, which keeps what
was sent and what came back, so that a failure can show both. A case fails
by raising `CaseFailed` (through `Session.expect`), and is skipped when the
server lacks what it needs (`CaseSkipped`): skipping is for an optional
feature or missing data, never for a wrong answer.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conformance.session import Session


class Verdict(Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


class CaseFailed(Exception):
    """The server's answer breaks the clause."""


class CaseSkipped(Exception):
    """The case cannot run here (an optional feature, data it needs)."""


@dataclass(frozen=True)
class Exchange:
    """One request and its answer, shortened for a report."""

    method: str
    url: str
    request_headers: dict[str, str]
    request_body: str
    status: int | None
    response_headers: dict[str, str]
    response_body: str

    def describe(self) -> str:
        sent = f"{self.method} {self.url}"
        headers = "".join(f"\n    {name}: {value}" for name, value in self.request_headers.items())
        body = f"\n    ({self.request_body})" if self.request_body else ""
        answer = "no answer" if self.status is None else f"{self.status}"
        answer_headers = "".join(f"\n    {name}: {value}" for name, value in self.response_headers.items())
        answer_body = f"\n    {self.response_body}" if self.response_body else ""
        return f"  sent: {sent}{headers}{body}\n  came back: {answer}{answer_headers}{answer_body}"


@dataclass(frozen=True)
class Case:
    id: str  # stable: reports and the known-deviations list name cases by it
    family: str  # "dicomweb" or "fhir"
    clause: str  # where the rule is written (PS3.18 10.5.3, FHIR R4 http.html#read, ...)
    title: str
    run: Callable[["Session"], None]


@dataclass(frozen=True)
class Outcome:
    case: Case
    verdict: Verdict
    reason: str | None = None
    exchanges: tuple[Exchange, ...] = field(default_factory=tuple)


class Registry:
    """The cases of one family, in the order they run (later cases may use
    what earlier ones stored)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.cases: list[Case] = []

    def case(self, case_id: str, clause: str, title: str) -> Callable[[Callable[["Session"], None]], Callable[["Session"], None]]:
        def register(run: Callable[["Session"], None]) -> Callable[["Session"], None]:
            if any(existing.id == case_id for existing in self.cases):
                raise ValueError(f"two cases are called {case_id}")
            self.cases.append(Case(case_id, self.family, clause, title, run))
            return run

        return register
