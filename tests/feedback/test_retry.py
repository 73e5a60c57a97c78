"""Backoff with full jitter and a cap; the circuit breaker's closed/open/half-open cycle."""

from __future__ import annotations

from market_data_sidecar.feedback.retry import CircuitBreaker, CircuitState
from tests.support import parts


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap() -> None:
    backoff = parts.retry_policy(retry_initial=0.1, retry_max=1.0).backoff
    for failures, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (80, 1.0)]:
        delays = [backoff.delay(failures) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays)
        # Full jitter: spread over the whole range, not clustered at the ceiling.
        assert min(delays) < ceiling * 0.2
        assert max(delays) > ceiling * 0.8


def test_retry_after_is_a_floor_capped_by_retry_after_max() -> None:
    backoff = parts.retry_policy(retry_initial=0.1, retry_max=1.0, retry_after_max=30.0).backoff
    assert all(backoff.delay(1, retry_after=5.0) == 5.0 for _ in range(50))
    assert backoff.delay(1, retry_after=3600.0) == 30.0
    assert 0 <= backoff.delay(3, retry_after=-4) <= 0.4


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(circuit: CircuitBreaker) -> CircuitState:
    """The circuit's state, read afresh (mypy would narrow `circuit.state` across calls)."""
    return circuit.state


def test_circuit_opens_after_consecutive_failures_and_tries_once_after_cooldown() -> None:
    clock, changes = Clock(), []

    def record(state: CircuitState) -> None:
        changes.append(state)

    circuit = CircuitBreaker(3, 10.0, clock=clock, on_change=record)
    circuit.record_failure()
    circuit.record_failure()
    circuit.record_success()  # consecutive, so a success in between resets the count
    circuit.record_failure()
    circuit.record_failure()
    assert state(circuit) == "closed"
    assert circuit.wait_time() == 0
    circuit.record_failure()
    assert state(circuit) == "open"
    clock.now += 4
    assert circuit.wait_time() == 6
    clock.now += 6
    assert circuit.wait_time() == 0
    assert state(circuit) == "half-open"
    circuit.record_failure()  # the trial failed: open for another cool-down
    assert state(circuit) == "open"
    assert circuit.wait_time() == 10
    clock.now += 10
    assert circuit.wait_time() == 0
    circuit.record_success()
    assert state(circuit) == "closed"
    assert circuit.consecutive_failures == 0
    assert changes == ["open", "half-open", "open", "half-open", "closed"]
