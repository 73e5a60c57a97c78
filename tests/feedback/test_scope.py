"""The worst-of transform (feedback/scope.py): coordinators -> the pod's composite."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from market_data_sidecar.feedback.model import COMPOSITE_KEY, Feedback
from market_data_sidecar.feedback.scope import (
    VACANT_REASON,
    next_pod_composite,
    pod_composite,
    rank,
    signature,
    vacant,
    worst,
)
from tests.support.helpers import feedback

LEVELS = ("ok", "soft", "hard")


def test_the_most_severe_level_wins_whatever_the_utilization() -> None:
    states = [feedback("a", 990, level="soft"), feedback("b", 10, level="hard")]
    chosen = worst(states)
    assert chosen is not None
    assert chosen.coordinator_id == "b"


def test_among_the_worst_the_highest_utilization_wins() -> None:
    states = [
        feedback("a", 800, level="hard"),
        feedback("b", 950, level="hard"),
        feedback("c", 999, level="soft"),
    ]
    chosen = worst(states)
    assert chosen is not None
    assert chosen.coordinator_id == "b"


def test_ties_are_broken_by_id_so_the_choice_is_total() -> None:
    states = [feedback("a", 900, level="hard"), feedback("b", 900, level="hard")]
    assert worst(states) is worst(list(reversed(states)))


def test_the_composite_is_the_worst_coordinators_event_with_the_counts() -> None:
    hard = feedback("bars", 900, level="hard", reason="high_watermark")
    current = {"bars": hard, "quotes": feedback("quotes", 100, level="ok")}
    composite = pod_composite(current, "pod-a")
    assert composite is not None
    assert composite.event == hard.event
    assert composite.reason == "high_watermark"
    assert composite.key == COMPOSITE_KEY
    assert composite.id != hard.id
    assert composite.headers() | {"event_id": ""} == {
        "event_id": "",
        "utilization": "0.900000",
        "reason": "high_watermark",
        "scope": "pod",
        "member": "pod-a",
        "coordinator": "bars",
        "members": "1",
        "coordinators": "2",
    }
    wire = composite.wire()
    assert (wire["level"], wire["scope"], wire["member"], wire["coordinators"]) == (
        "hard",
        "pod",
        "pod-a",
        2,
    )


def test_no_coordinator_no_composite() -> None:
    assert pod_composite({}, "pod-a") is None


def test_once_every_coordinator_is_gone_the_pod_says_ok_with_none_counted() -> None:
    before = pod_composite({"bars": feedback("bars", 900, level="hard")}, "pod-a")
    assert before is not None
    after = next_pod_composite(before, {}, "bars", "pod-a")
    assert after is not None
    assert after.event.level.value == "ok"
    assert after.event.queue_size == 0
    assert after.reason == VACANT_REASON
    assert after.composite is not None
    assert (after.composite.coordinators, after.composite.member) == (0, "pod-a")
    assert signature(vacant(after)) == signature(after)


def test_the_signature_ignores_delivery_id_receipt_and_resync() -> None:
    composite = pod_composite({"bars": feedback("bars", 900, level="hard")}, "pod-a")
    assert composite is not None
    assert signature(composite.resynced()) == signature(composite)
    assert signature(None) is None


# -- the incremental step equals the full computation, whatever happens ----------------------

update = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.one_of(st.none(), st.sampled_from(LEVELS)),  # None: the coordinator is gone
    st.integers(min_value=0, max_value=1000),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(update, max_size=40))
def test_the_incremental_composite_is_always_the_full_one(
    updates: list[tuple[str, str | None, int]],
) -> None:
    current: OrderedDict[str, Feedback] = OrderedDict()
    composite: Feedback | None = None
    for coordinator, level, queue_size in updates:
        if level is None:
            current.pop(coordinator, None)
        else:
            current[coordinator] = feedback(coordinator, queue_size, level=level)
        composite = next_pod_composite(composite, current, coordinator, "pod-a")
        full = pod_composite(current, "pod-a")
        if full is None:
            # Every coordinator gone: `ok` with none counted, or nothing ever known.
            assert composite is None or composite.reason == VACANT_REASON
            continue
        assert composite is not None
        assert signature(composite) == signature(full)
        assert rank(composite) == max(rank(state) for state in current.values())
