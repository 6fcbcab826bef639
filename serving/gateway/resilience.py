"""Retry backoff and a circuit breaker for the calls to the model server."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: ``attempt`` 0 -> [base/2, base], 1 -> [base, 2*base], ..."""
    ceiling = min(cap, base * (2**attempt))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` consecutive failures -> half-open after ``reset_timeout``.

    While open, calls fail fast (no connection attempt, no queueing behind a dead server). Half-open lets a
    single probe call through: success closes the circuit, failure opens it again for ``reset_timeout``.
    Single-threaded (one event loop): no locking.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
    STATE_VALUES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.reset_timeout = reset_timeout
        self.clock = clock
        self.on_change = on_change
        self.state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.last_error: str | None = None
        self._probe_out = False

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(state)

    def allow(self) -> bool:
        """May a call go out now? (In half-open state, True once: the probe.)"""
        if self.state == self.CLOSED:
            return True
        if self.state == self.OPEN:
            if self.clock() - self.opened_at < self.reset_timeout:
                return False
            self._set(self.HALF_OPEN)
            self._probe_out = False
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def retry_after(self) -> float:
        """Seconds until a call may be tried again (0 when closed)."""
        if self.state == self.CLOSED:
            return 0.0
        return max(0.0, self.reset_timeout - (self.clock() - self.opened_at))

    def success(self) -> None:
        self.failures = 0
        self._probe_out = False
        self._set(self.CLOSED)

    def failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self._probe_out = False
        if self.state == self.HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self._set(self.OPEN)

    def release_probe(self) -> None:
        """A probe call ended without a verdict (e.g. cancelled): let another one through."""
        self._probe_out = False
