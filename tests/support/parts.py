"""The sidecar's parts as wiring builds them from `Settings` (whose defaults are the only
ones), each with a test's settings as overrides: a test says what it changes, never a
default again."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, SecretStr

from market_data_sidecar import wiring
from market_data_sidecar.checks import Check
from market_data_sidecar.checks.database import DatabaseCheck
from market_data_sidecar.checks.feedback import FeedbackCheck
from market_data_sidecar.feedback.delivery import Publisher
from market_data_sidecar.feedback.intake import Intake
from market_data_sidecar.feedback.lane import RetryPolicy, Target
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.feedback.router import Router
from market_data_sidecar.health import Clock, HealthMonitor
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import HttpTargetSettings, TargetSettings
from tests.support.sidecar import make_settings


def intake(metrics: Metrics | None = None, **overrides: Any) -> Intake:
    """The intake of `POST /feedback` (`token`, `max_body_bytes`, ... as overrides)."""
    return wiring.intake_from(make_settings(**overrides), metrics or Metrics())


def health_monitor(
    checks: Sequence[Check],
    *,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
    **overrides: Any,
) -> HealthMonitor:
    """The monitor of `checks` (`rise`, `fall`, `liveness_intervals`, ... as overrides)."""
    return wiring.build_monitor(
        make_settings(**overrides), checks, metrics or Metrics(), clock=clock
    )


def retry_policy(**overrides: Any) -> RetryPolicy:
    """A target's retry policy (`retry_initial`, `retry_max`, `circuit_failures`, ... as
    overrides)."""
    return wiring.retry_policy_from(make_settings(**overrides))


def router(
    targets: Sequence[Target], *, metrics: Metrics | None = None, **overrides: Any
) -> Router:
    """The router of `targets` (`retry_initial`, `circuit_failures`, `resync_interval`, ...
    as overrides; resyncs off unless given, as in `make_settings`)."""
    return wiring.build_router(make_settings(**overrides), targets, metrics or Metrics())


def relay(
    routed: Router,
    *,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
    **overrides: Any,
) -> Relay:
    """The relay over `routed`, without watermarks: it synthesizes nothing."""
    settings = make_settings(**overrides)
    return wiring.relay_from(settings, routed, metrics or Metrics(), watermarks=None, clock=clock)


def feedback_check(
    relay: Relay, *, clock: Callable[[], float] = time.time, **overrides: Any
) -> FeedbackCheck:
    """The `feedback` component of `relay` (`check_timeout`, `feedback_ttl` as overrides)."""
    return wiring.feedback_check(relay, make_settings(**overrides), clock=clock)


def database_check(dsn: str, metrics: Metrics | None = None, **overrides: Any) -> DatabaseCheck:
    """The check of the database at `dsn` (`database_role`, its thresholds, ... as
    overrides)."""
    return wiring.database_check(SecretStr(dsn), make_settings(**overrides), metrics or Metrics())


def target_of(publisher: Publisher, settings: TargetSettings) -> Target:
    """The router's target of `publisher`, as wiring makes it of a configured target."""
    return wiring.target_from(publisher, settings)


def target(
    publisher: Publisher, *, kind: str = "memory", endpoint: str = "", **overrides: Any
) -> Target:
    """The router's target of an in-memory `publisher` (`buffer`, `scope` as overrides), its
    options defaulting as a webhook's settings do: a stream's scope defaults to `fleet`,
    which only the fleet's publisher carries."""
    options = target_defaults(HttpTargetSettings, Target) | overrides
    return Target(publisher, kind=kind, endpoint=endpoint, **options)


def target_defaults(model: type[BaseModel], taking: Callable[..., object]) -> dict[str, Any]:
    """The defaults of the target settings `model` that `taking` takes by the same names:
    what the settings would give it where a test says nothing."""
    parameters = inspect.signature(taking).parameters
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if name in parameters and not field.is_required()
    }
