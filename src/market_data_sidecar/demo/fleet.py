"""The demo's line about the fleet: the composite its stream carries, and what a pipeline
reading that stream would do with it.

market-data-pipeline keeps one rate per provider and scales it by the level of each event
it reads (its `FeedbackHandler`'s defaults: ok 1.0, soft 0.5, hard 0.0), so the rate a
pipeline would run at is the composite's level through that table. Read from `GET
/feedback` (a target's `composite` and `members`), as any client of the sidecar would.
"""

from __future__ import annotations

from typing import Any

from market_data_sidecar.views.format import counted

#: market-data-pipeline's `FeedbackHandler` policy: the share of its rate at each level.
PIPELINE_SCALE = {"ok": 1.0, "soft": 0.5, "hard": 0.0}


def fleet_lines(feedback: dict[str, Any] | None) -> list[str]:
    """One line per target with a composite (`pod` or `fleet` scope); none without."""
    if not feedback:
        return []
    lines = []
    for target in feedback.get("targets") or []:
        if not isinstance(target, dict) or target.get("scope") in (None, "coordinator"):
            continue
        lines.append(_line(target))
    return lines


def _line(target: dict[str, Any]) -> str:
    name, scope = target.get("name", "?"), target.get("scope", "?")
    composite = target.get("composite")
    if not isinstance(composite, dict):
        return f"{scope} {name}: no composite yet (a pipeline would run at 1.0 of its rate)"
    level = str(composite.get("level", "?"))
    scale = PIPELINE_SCALE.get(level)
    rate = f"{scale:.1f} of its rate" if scale is not None else "an unknown rate"
    members = _count(composite.get("members", len(target.get("members") or [])), "member")
    coordinators = _count(composite.get("coordinators"), "coordinator")
    return (
        f"{scope} {name}: composite {level} from {composite.get('coordinator_id', '?')} "
        f"at {composite.get('member') or '?'} ({members}, {coordinators}): "
        f"a pipeline would run at {rate}"
    )


def _count(value: Any, noun: str) -> str:
    if not isinstance(value, int):
        return f"? {noun}s"
    return counted(value, noun)
