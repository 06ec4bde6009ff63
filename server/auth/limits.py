"""Failed logins, limited per user name and per address.

After `limit` failures within `window_seconds` for a name, or for an
address, further attempts are refused (HTTP 429 with Retry-After) until the
oldest failure leaves the window, whether or not the password is right:
guessing gets no faster by spreading over names, or over addresses. Counts
live in the process; each server process keeps its own.
"""

import threading
import time
from collections import defaultdict, deque


class FailedLogins:
    def __init__(self, limit: int = 5, window_seconds: float = 60.0) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _wait(self, now: float, keys: tuple[str, ...]) -> int | None:
        waits = []
        for key in keys:
            failures = self._failures.get(key)
            if failures is None:
                continue
            while failures and now - failures[0] > self.window_seconds:
                failures.popleft()
            if not failures:
                del self._failures[key]  # no memory kept for names tried long ago
            elif len(failures) >= self.limit:
                waits.append(self.window_seconds - (now - failures[0]))
        return max(1, int(max(waits)) + 1) if waits else None

    def attempt(self, *keys: str) -> int | None:
        """Count an attempt before its password is checked, so that attempts
        made in parallel all count; None when it may go ahead, else the
        seconds to wait. A success is given back with `succeeded`."""
        now = time.monotonic()
        with self._lock:
            wait = self._wait(now, keys)
            if wait is None:
                for key in keys:
                    self._failures[key].append(now)
            return wait

    def succeeded(self, *keys: str) -> None:
        """The attempt was right: it does not count, and the name starts afresh."""
        with self._lock:
            for position, key in enumerate(keys):
                failures = self._failures.get(key)
                if failures:
                    failures.pop()
                if position == 0 or not failures:
                    self._failures.pop(key, None)
