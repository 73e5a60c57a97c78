"""The catalog hands every threshold setting to its check, and every target setting to
what carries it."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from market_data_sidecar.checks import Damping
from market_data_sidecar.checks.database import DatabaseCheck, DatabaseThresholds
from market_data_sidecar.checks.disk import DiskCheck, DiskThresholds
from market_data_sidecar.checks.feedback import FeedbackCheck
from market_data_sidecar.checks.queue import QueueCheck
from market_data_sidecar.demo.store import SimulatedStore
from market_data_sidecar.feedback.intake import Intake
from market_data_sidecar.feedback.lane import RetryPolicy, Target
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.feedback.retry import Backoff
from market_data_sidecar.feedback.router import Router
from market_data_sidecar.feedback.watermarks import Watermarks
from market_data_sidecar.health import HealthMonitor
from market_data_sidecar.logs import configure_logging
from market_data_sidecar.publishers.dead_letters import DeadLetters
from market_data_sidecar.publishers.fleet import Fleet
from market_data_sidecar.publishers.redis import RedisStreamPublisher
from market_data_sidecar.publishers.stream_copies import Copies
from market_data_sidecar.publishers.stream_readers import StreamReaders
from market_data_sidecar.server.connections import Bounds
from market_data_sidecar.settings import (
    HttpTargetSettings,
    RedisPubSubTargetSettings,
    RedisStreamTargetSettings,
    Settings,
)
from market_data_sidecar.wiring import target_from, thresholds_from
from tests.support.sidecar import make_settings


@pytest.mark.parametrize(
    ("kind", "prefix"), [(DatabaseThresholds, "database_"), (DiskThresholds, "disk_")]
)
def test_every_threshold_comes_from_its_setting(
    kind: type[DatabaseThresholds | DiskThresholds], prefix: str
) -> None:
    names = [field.name for field in dataclasses.fields(kind)]
    # Distinct values in (0, 1], valid for ratios and seconds, ordered so that each
    # "unhealthy" setting stays below its "degraded" twin where the settings check that.
    values = {prefix + name: round(0.9 - 0.1 * index, 1) for index, name in enumerate(names)}
    settings = make_settings(**values)

    thresholds: DatabaseThresholds | DiskThresholds = thresholds_from(kind, settings, prefix)

    assert dataclasses.asdict(thresholds) == {name: values[prefix + name] for name in names}


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [(DatabaseThresholds, "database_"), (DiskThresholds, "disk_"), (Bounds, ""), (Damping, "")],
)
def test_thresholds_have_no_default_but_the_settings(kind: type, prefix: str) -> None:
    """Each default is written once, in `Settings`: the dataclasses have none of their own,
    and every field is a setting of the same name."""
    fields = dataclasses.fields(kind)
    assert all(f.default is dataclasses.MISSING for f in fields)
    assert {prefix + f.name for f in fields} <= set(Settings.model_fields)


#: What the settings configure, and the arguments of each that are no setting and keep a
#: default: a clock or a check's own damping a test injects, watermarks "not given", a
#: module's constant, the process's token, the demo's noise.
CONFIGURED: list[tuple[Callable[..., object], set[str]]] = [
    (Intake, set()),
    (HealthMonitor, {"clock"}),
    (DatabaseCheck, {"damping"}),
    (DiskCheck, {"damping"}),
    (QueueCheck, {"damping"}),
    (FeedbackCheck, {"clock"}),
    (Backoff, set()),
    (RetryPolicy, set()),
    (Router, {"max_coordinators"}),
    (Watermarks, {"clock"}),
    (Relay, {"watermarks", "clock"}),
    (Fleet, {"token"}),
    (configure_logging, set()),
    (SimulatedStore, {"noise", "rate"}),
]


@pytest.mark.parametrize(
    ("configured", "not_settings"), CONFIGURED, ids=[c.__name__ for c, _ in CONFIGURED]
)
def test_what_the_settings_configure_has_no_default_of_its_own(
    configured: Callable[..., object], not_settings: set[str]
) -> None:
    """A setting's default lives in `Settings` alone: what wiring passes it to requires it,
    so a constructor cannot keep a second default that drifts from the first."""
    parameters = inspect.signature(configured).parameters.values()
    defaulted = {p.name for p in parameters if p.default is not inspect.Parameter.empty}
    assert defaulted == not_settings


#: What a target's settings configure, the settings it takes its options from, and its
#: arguments that are no setting and keep a default: the registry of metrics (a test may
#: have none) and a module's constants.
TARGET_CONFIGURED: list[tuple[Callable[..., object], type[BaseModel], set[str]]] = [
    (Target, HttpTargetSettings, set()),
    (Target, RedisPubSubTargetSettings, set()),
    (Target, RedisStreamTargetSettings, set()),
    (Copies, RedisStreamTargetSettings, {"metrics"}),
    (
        StreamReaders,
        RedisStreamTargetSettings,
        {"metrics", "interval", "stale_after", "failing_after"},
    ),
    (DeadLetters, RedisStreamTargetSettings, {"metrics"}),
]


@pytest.mark.parametrize(
    ("configured", "model", "not_settings"),
    TARGET_CONFIGURED,
    ids=[f"{c.__name__}-{m.__name__}" for c, m, _ in TARGET_CONFIGURED],
)
def test_what_a_targets_settings_configure_has_no_default_of_its_own(
    configured: Callable[..., object], model: type[BaseModel], not_settings: set[str]
) -> None:
    """A target option's default lives in its target's settings alone: what takes the
    option requires it, so no second default can drift from the settings'."""
    parameters = inspect.signature(configured).parameters.values()
    defaulted = {p.name for p in parameters if p.default is not inspect.Parameter.empty}
    assert defaulted == not_settings
    assert not defaulted & set(model.model_fields)


def stream_settings(**options: object) -> RedisStreamTargetSettings:
    """A stream target with `options` beside its URL."""
    return RedisStreamTargetSettings.model_validate(
        {"kind": "redis-stream", "url": "redis://127.0.0.1:6379/0", **options}
    )


def test_every_option_of_a_router_target_comes_from_its_settings() -> None:
    settings = stream_settings(buffer=7, scope="pod")
    target = target_from(RedisStreamPublisher(settings), settings)

    options = [
        f.name
        for f in dataclasses.fields(Target)
        if f.name in RedisStreamTargetSettings.model_fields
    ]
    assert sorted(options) == ["buffer", "kind", "scope"]
    assert {name: getattr(target, name) for name in options} == {
        name: getattr(settings, name) for name in options
    }


def test_every_option_of_a_streams_copies_comes_from_its_settings() -> None:
    settings = stream_settings(max_copies=3, readers=2, reannounce=0.5, maxlen=50)
    copies = RedisStreamPublisher(settings).copies

    taken = (copies.max_copies, copies.readers_override, copies.reannounce, copies.maxlen)
    assert taken == (3, 2, 0.5, 50)
