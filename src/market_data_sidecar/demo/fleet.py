"""The demo's line about the fleet: the composite its stream carries, and what a pipeline
reading that stream would do with it.

market-data-pipeline keeps one rate per provider and scales it by the level of each event
it reads (its `FeedbackHandler`'s defaults: ok 1.0, soft 0.5, hard 0.0), so the rate a
pipeline would run at is the composite's level through that table. Read from the
view the demo shows (a target's `composite`, from `GET /feedback`), as any client of the
sidecar would.
"""

from __future__ import annotations

from collections.abc import Sequence

from market_data_sidecar.feedback.state import TargetState
from market_data_sidecar.views.format import counted

#: market-data-pipeline's `FeedbackHandler` policy: the share of its rate at each level.
PIPELINE_SCALE = {"ok": 1.0, "soft": 0.5, "hard": 0.0}


def fleet_lines(targets: Sequence[TargetState]) -> list[str]:
    """One line per target with a composite (`pod` or `fleet` scope); none without."""
    return [_line(target) for target in targets if target.scope != "coordinator"]


def _line(target: TargetState) -> str:
    name, scope, composite = target.name, target.scope, target.composite
    if composite is None:
        return f"{scope} {name}: no composite yet (a pipeline would run at 1.0 of its rate)"
    scale = PIPELINE_SCALE.get(composite.level)
    rate = f"{scale:.1f} of its rate" if scale is not None else "an unknown rate"
    members = counted(composite.members, "member")
    coordinators = counted(composite.coordinators, "coordinator")
    return (
        f"{scope} {name}: composite {composite.level} from {composite.coordinator_id or '?'} "
        f"at {composite.member or '?'} ({members}, {coordinators}): "
        f"a pipeline would run at {rate}"
    )
