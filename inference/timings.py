"""Seconds spent per stage of inference, summed over runs (the benchmark reads them).

A stage timed in parts names each "stage: part" (SEG writing is built in an
offload process, then stored by the worker): `totals` adds them up."""

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timings:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def totals(self) -> dict[str, float]:
        """Seconds per stage, its parts added up."""
        totals: dict[str, float] = defaultdict(float)
        for name, spent in self.seconds.items():
            totals[name.partition(":")[0]] += spent
        return dict(totals)

    def parts(self) -> dict[str, float]:
        """Seconds per part of the stages timed in parts."""
        return {name: spent for name, spent in self.seconds.items() if ":" in name}

    def add(self, seconds: dict[str, float]) -> None:
        """Stages timed elsewhere (another process)."""
        for name, spent in seconds.items():
            self.seconds[name] += spent
