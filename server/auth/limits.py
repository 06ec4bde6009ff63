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

    def retry_after(self, *keys: str) -> int | None:
        """Seconds to wait before any of `keys` may try again, or None."""
        now = time.monotonic()
        waits = []
        with self._lock:
            for key in keys:
                failures = self._failures.get(key)
                if failures is None:
                    continue
                while failures and now - failures[0] > self.window_seconds:
                    failures.popleft()
                if len(failures) >= self.limit:
                    waits.append(self.window_seconds - (now - failures[0]))
        return max(1, int(max(waits)) + 1) if waits else None

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._failures[key].append(now)

    def succeeded(self, name_key: str) -> None:
        with self._lock:
            self._failures.pop(name_key, None)
