"""Failed logins, limited per user name and per address; requests, limited
per client. An address is what `limited_address` makes of it (an IPv6
one's /64).

After `limit` failures within `window_seconds` for a name, or for an
address, further attempts are refused (HTTP 429 with Retry-After) until the
oldest failure leaves the window, whether or not the password is right:
guessing gets no faster by spreading over names, or over addresses.

Requests refused for missing or bad credentials (a 401, the 429 of too
many failed logins, a refused token request) are limited per address too,
`UnauthenticatedRefusals`: each is recorded in the audit
trail, so an address sending them without end would flood the trail (and
the server's work) with them. Over the limit they get 429, and only the
first of each window is recorded, saying how many before it went
unrecorded; requests with good credentials from the address are not held
back, so a shared address cannot be locked out by one abuser.

Requests of each authenticated client (a user or a system client) are
limited by a token bucket when a rate is configured: `per_second` on
average, up to `burst` at once.

Counts live in the process; each server process keeps its own, so with
`serve --workers N` a client gets up to N times the configured rate.
"""

import ipaddress
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_IPV6_HOLDING = 64  # the prefix one host or home network is commonly given (RFC 6177)


def limited_address(scope: Mapping[str, Any]) -> str:
    """Where a request comes from, as the limits count it: its IPv4
    address, or the /64 network of its IPv6 one: one host commonly holds a
    whole /64, and counted address by address it would get each limit 2^64
    times over."""
    client = scope.get("client")
    if not client:
        return "unknown"
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:  # a Unix socket's peer, or a test client's name
        return str(client[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _IPV6_HOLDING), strict=False))
    return str(address)


class FailedLogins:
    _MEMORY = 10_000  # names and addresses kept before those whose window has passed are forgotten

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
            if len(self._failures) >= self._MEMORY:
                # A name tried once and never again was kept for good: one
                # client trying a new name each time grew this without end.
                self._failures = defaultdict(deque, {
                    key: failures for key, failures in self._failures.items()
                    if failures and now - failures[-1] <= self.window_seconds
                })
            wait = self._wait(now, keys)
            if wait is None:
                for key in keys:
                    self._failures[key].append(now)
            return wait

    def succeeded(self, *keys: str, afresh: str | None = None) -> None:
        """The attempt was right: it does not count against `keys`, and the
        name that logged in (`afresh`, one of them) starts afresh. An address
        only gives its attempt back: the failures of others' names tried from
        it still stand."""
        with self._lock:
            for key in keys:
                failures = self._failures.get(key)
                if failures:
                    failures.pop()
                if key == afresh or not failures:
                    self._failures.pop(key, None)


@dataclass(frozen=True)
class OverLimit:
    wait: int  # seconds until the address's oldest counted refusal leaves the window
    recorded: bool  # the first refusal over the limit in its window: the one the audit trail records
    unrecorded: int  # the address's refusals left unrecorded before this one, since the last recorded


class UnauthenticatedRefusals(FailedLogins):
    """Refusals of credentials per address: `limit` in `window_seconds` (a
    client whose token expired gets a few, an abuser thousands)."""

    def __init__(self, limit: int = 60, window_seconds: float = 60.0) -> None:
        super().__init__(limit, window_seconds)
        self._quiet: dict[str, tuple[float, int]] = {}  # address over the limit: (last recorded, unrecorded since)

    def refused(self, address: str) -> OverLimit | None:
        """Count a refusal for `address`; None while it is within the limit, else the 429 to answer instead."""
        wait = self.attempt(f"address:{address}")
        if wait is None:
            return None
        now = time.monotonic()
        with self._lock:
            if len(self._quiet) >= self._MEMORY:
                self._quiet = {key: quiet for key, quiet in self._quiet.items()
                               if now - quiet[0] < self.window_seconds}
            recorded_at, unrecorded = self._quiet.get(address, (-math.inf, 0))
            if now - recorded_at >= self.window_seconds:
                self._quiet[address] = (now, 0)
                return OverLimit(wait, True, unrecorded)
            self._quiet[address] = (recorded_at, unrecorded + 1)
            return OverLimit(wait, False, unrecorded)


class RequestRate:
    _MEMORY = 10_000  # clients remembered before those whose bucket has refilled are forgotten

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("a request rate is positive, and its burst at least one request")
        self.clock = clock
        self.per_second = per_second
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # client: (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, client: str) -> int | None:
        """None when the client may make one more request now; else the whole
        seconds until it may."""
        now = self.clock()
        with self._lock:
            tokens, counted = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - counted) * self.per_second)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return max(1, math.ceil((1.0 - tokens) / self.per_second))
            if client not in self._buckets and len(self._buckets) >= self._MEMORY:
                self._forget_idle(now)
            self._buckets[client] = (tokens - 1.0, now)
            return None

    def _forget_idle(self, now: float) -> None:
        full = [client for client, (tokens, counted) in self._buckets.items()
                if tokens + (now - counted) * self.per_second >= self.burst]
        for client in full:  # a full bucket is what a forgotten client starts with
            del self._buckets[client]
