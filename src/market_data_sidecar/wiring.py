"""The composition root: settings in, the sidecar's parts out, wired in one place.

`run`, `check` and `demo` all build through `build_app`, `wire` or `wire_checks`, so how
settings become checks, publishers, the relay, the health monitor, the intake and the
bounds on clients is written once, here: the HTTP layer (`server.app.create_app`) mounts
what it is given; `feedback/` knows neither settings nor publishers, and `publishers/` knows
the relay only through `feedback.delivery`. Publishers come from a map of target kind to
factory; a factory imports its module when called, so redis-py is imported only for a
Redis target (it is an optional extra).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import SecretStr

from market_data_sidecar.checks import Check, Damping
from market_data_sidecar.checks.database import DatabaseCheck, DatabaseThresholds
from market_data_sidecar.checks.disk import DiskCheck, DiskThresholds
from market_data_sidecar.checks.exposition import MAX_COORDINATORS
from market_data_sidecar.checks.feedback import FeedbackCheck
from market_data_sidecar.checks.queue import QueueCheck
from market_data_sidecar.feedback.delivery import Publisher
from market_data_sidecar.feedback.intake import Intake
from market_data_sidecar.feedback.lane import RetryPolicy, Target
from market_data_sidecar.feedback.relay import Relay
from market_data_sidecar.feedback.retry import Backoff
from market_data_sidecar.feedback.router import Router
from market_data_sidecar.feedback.watermarks import QueueSampleSource, Watermarks
from market_data_sidecar.health import Clock, HealthMonitor
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.redaction import redact_url
from market_data_sidecar.server.app import Served, create_app
from market_data_sidecar.server.bodies import BodyBudget
from market_data_sidecar.server.connections import Bounds
from market_data_sidecar.server.faults import ClientFaults
from market_data_sidecar.server.relay_view import relay_view
from market_data_sidecar.settings import ConfigError, ScheduledCheck, Settings, TargetSettings
from market_data_sidecar.views.history import History

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


@dataclass(frozen=True)
class Parts:
    """Everything `run` serves and `demo` shows, built from one `Settings`."""

    metrics: Metrics
    relay: Relay
    monitor: HealthMonitor
    #: Every coordinator's scrapes, for the history (the health snapshot holds a few).
    history: History


def wire(
    settings: Settings,
    *,
    checks: Sequence[Check] | None = None,
    metrics: Metrics | None = None,
    publishers: Sequence[Publisher] | None = None,
) -> Parts:
    """The sidecar the settings describe. Checks default to those the settings enable plus
    the relay's own `feedback` component; given `checks` are taken as the complete list."""
    metrics = metrics or Metrics()
    relay = build_relay(settings, metrics, publishers)
    if checks is None:
        checks = [*build_checks(settings, metrics), feedback_check(relay, settings)]
    # The queue check's samples drive synthesized feedback, and tell which coordinators
    # the store no longer exports (a scrape lists at most MAX_COORDINATORS of them).
    history = History()
    for check in checks:
        if isinstance(check, QueueSampleSource):
            check.add_listener(relay.observe_queues)
            check.add_listener(
                functools.partial(relay.retire_unexported, complete_below=MAX_COORDINATORS)
            )
            check.add_listener(history.observe_queues)
    return Parts(metrics, relay, build_monitor(settings, checks, metrics), history)


def build_app(
    settings: Settings, *, checks: Sequence[Check] | None = None, metrics: Metrics | None = None
) -> web.Application:
    """The application the settings describe (`wire`'s parts, served). Checks default to
    those the settings enable plus the relay's own `feedback` component; given `checks`
    are taken as the complete list."""
    return create_app(served_from(settings, wire(settings, checks=checks, metrics=metrics)))


def served_from(settings: Settings, parts: Parts) -> Served:
    """What the HTTP layer serves of `parts`, and bounds its clients with."""
    bounds = bounds_from(settings)
    metrics = parts.metrics
    return Served(
        metrics=metrics,
        monitor=parts.monitor,
        relay=parts.relay,
        intake=intake_from(settings, metrics),
        relay_view=relay_view(parts.relay),
        bounds=bounds,
        faults=ClientFaults(metrics, bounds.fault_log_interval),
        body_budget=BodyBudget(
            bounds.body_bytes_in_flight, max_body_bytes=bounds.max_body_bytes, metrics=metrics
        ),
        drain_timeout=settings.drain_timeout,
        history=parts.history,
    )


def intake_from(settings: Settings, metrics: Metrics) -> Intake:
    """The intake of `POST /feedback`: its token and its bounds."""
    return Intake(
        metrics,
        token=settings.token.get_secret_value() if settings.token else None,
        max_body_bytes=settings.max_body_bytes,
        max_events=settings.max_events_per_request,
    )


def wire_checks(settings: Settings, metrics: Metrics | None = None) -> HealthMonitor:
    """The store's dependency checks alone, for `check` (no relay, nothing listens)."""
    metrics = metrics or Metrics()
    return build_monitor(settings, build_checks(settings, metrics), metrics)


def build_monitor(
    settings: Settings, checks: Sequence[Check], metrics: Metrics, *, clock: Clock | None = None
) -> HealthMonitor:
    return HealthMonitor(
        checks,
        service=settings.service_name,
        metrics=metrics,
        damping=Damping(rise=settings.rise, fall=settings.fall),
        liveness_intervals=settings.liveness_intervals,
        ready_when_degraded=settings.ready_when_degraded,
        clock=clock,
    )


def bounds_from(settings: Settings) -> Bounds:
    """What one client may hold, from the settings of the same names."""
    return thresholds_from(Bounds, settings, "")


def feedback_check(
    relay: Relay, settings: Settings, *, clock: Callable[[], float] = time.time
) -> FeedbackCheck:
    return FeedbackCheck(
        relay,
        interval=settings.check_interval,
        timeout=settings.check_timeout,
        ttl=settings.feedback_ttl,
        clock=clock,
    )


# -- checks ----------------------------------------------------------------------------------


def thresholds_from(kind: type[T], settings: Settings, prefix: str) -> T:
    """A check's thresholds from the settings of the same name after `prefix`.

    Every field is taken from the settings, so a threshold added to a check cannot
    silently keep its dataclass default in production.
    """
    names = [field.name for field in dataclasses.fields(kind)]
    return kind(**{name: getattr(settings, prefix + name) for name in names})


def timing_of(settings: Settings, check: ScheduledCheck) -> dict[str, Any]:
    """The schedule arguments of `check`: its own settings, the global ones by default."""
    schedule = settings.schedule(check)
    return {
        "interval": schedule.interval,
        "timeout": schedule.timeout,
        "damping": Damping(rise=schedule.rise, fall=schedule.fall),
    }


def build_checks(settings: Settings, metrics: Metrics) -> list[Check]:
    """The store's dependencies, as configured: disk always, database and queue when set."""
    checks: list[Check] = []
    if settings.database_url is not None:
        checks.append(database_check(settings.database_url, settings, metrics))
    checks.append(
        DiskCheck(
            settings.disk_paths,
            thresholds=thresholds_from(DiskThresholds, settings, "disk_"),
            metrics=metrics,
            **timing_of(settings, "disk"),
        )
    )
    if settings.store_metrics_url is not None:
        checks.append(
            QueueCheck(
                str(settings.store_metrics_url),
                capacities=settings.queue_capacities,
                default_capacity=settings.queue_capacity,
                low_watermark=settings.queue_low_watermark,
                high_watermark=settings.queue_high_watermark,
                metrics=metrics,
                **timing_of(settings, "queue"),
            )
        )
    return checks


def database_check(dsn: SecretStr, settings: Settings, metrics: Metrics) -> DatabaseCheck:
    """The check of the database at `dsn`, as the `database_` settings describe it."""
    return DatabaseCheck(
        dsn,
        thresholds=thresholds_from(DatabaseThresholds, settings, "database_"),
        metrics=metrics,
        connect_timeout=settings.database_connect_timeout,
        statement_timeout=settings.database_statement_timeout,
        probe_query=settings.database_probe_query,
        role=settings.database_role,
        **timing_of(settings, "database"),
    )


# -- publishers and relay -------------------------------------------------------------------

Factory = Callable[[Any, Metrics | None], Publisher]


def _http(target: Any, metrics: Metrics | None) -> Publisher:
    from market_data_sidecar.publishers.http import HttpPublisher

    return HttpPublisher(target)


def _redis_pubsub(target: Any, metrics: Metrics | None) -> Publisher:
    return _redis(target).RedisPubSubPublisher(target, metrics=metrics)  # type: ignore[no-any-return]


def _redis_stream(target: Any, metrics: Metrics | None) -> Publisher:
    return _redis(target).RedisStreamPublisher(target, metrics=metrics)  # type: ignore[no-any-return]


def fleet_publisher(target: Any, settings: Settings, metrics: Metrics | None) -> Publisher:
    """A stream target in `fleet` scope: this sidecar as one member of the fleet."""
    _redis(target)  # the same message as any Redis target without the extra
    from market_data_sidecar.publishers.fleet import Fleet, FleetStreamPublisher

    fleet = Fleet(
        settings.instance, settings.fleet_lease, settings.fleet_renewal, grace=settings.fleet_grace
    )
    return FleetStreamPublisher(target, fleet, metrics=metrics)


class _MissingRedis(Exception):
    """A Redis target without the `redis` extra installed."""


def _redis(target: TargetSettings) -> ModuleType:
    try:
        from market_data_sidecar.publishers import redis
    except ImportError:
        raise _MissingRedis from None
    return redis


#: Every target kind the settings accept, and how its publisher is made.
FACTORIES: dict[str, Factory] = {
    "http": _http,
    "redis-pubsub": _redis_pubsub,
    "redis-stream": _redis_stream,
}


def build_publishers(settings: Settings, metrics: Metrics | None = None) -> list[Publisher]:
    """One publisher per configured target, in configuration order."""
    publishers = []
    for index, target in enumerate(settings.targets):
        try:
            if target.scope == "fleet":
                publishers.append(fleet_publisher(target, settings, metrics))
            else:
                publishers.append(FACTORIES[target.kind](target, metrics))
        except _MissingRedis:
            raise ConfigError(
                f"invalid configuration: SIDECAR_TARGETS[{index}]: kind {target.kind!r} needs "
                "redis-py: pip install 'market-data-sidecar[redis]'"
            ) from None
    return publishers


def build_relay(
    settings: Settings, metrics: Metrics, publishers: Sequence[Publisher] | None = None
) -> Relay:
    """The relay the settings describe: one router target per configured target."""
    if publishers is None:
        publishers = build_publishers(settings, metrics)
    # build_publishers makes one publisher per configured target, in order.
    targets = [
        target_from(publisher, target)
        for publisher, target in zip(publishers, settings.targets, strict=True)
    ]
    return relay_from(
        settings,
        build_router(settings, targets, metrics),
        metrics,
        watermarks=Watermarks(settings.queue_low_watermark, settings.queue_high_watermark),
    )


def target_from(publisher: Publisher, target: TargetSettings) -> Target:
    """The router's view of a configured target: its options as its settings give them."""
    return Target(
        publisher,
        kind=target.kind,
        endpoint=redact_url(target.endpoint),
        buffer=target.buffer,
        scope=target.scope,
    )


def build_router(settings: Settings, targets: Sequence[Target], metrics: Metrics) -> Router:
    """The router of `targets`: paced, resynced and named as the settings say."""
    return Router(
        targets,
        metrics=metrics,
        policy=retry_policy_from(settings),
        resync_interval=settings.resync_interval,
        instance=settings.instance,
    )


def retry_policy_from(settings: Settings) -> RetryPolicy:
    """How a failing target is retried, when its circuit opens and when it is failing."""
    return RetryPolicy(
        backoff=Backoff(settings.retry_initial, settings.retry_max, settings.retry_after_max),
        circuit_failures=settings.circuit_failures,
        circuit_cooldown=settings.circuit_cooldown,
        failing_after=settings.target_failing_after,
    )


def relay_from(
    settings: Settings,
    router: Router,
    metrics: Metrics,
    *,
    watermarks: Watermarks | None,
    clock: Callable[[], float] = time.time,
) -> Relay:
    """The relay over `router`; without `watermarks` it synthesizes no event."""
    return Relay(
        router,
        metrics=metrics,
        watermarks=watermarks,
        synthesize=settings.synthesize_feedback,
        synthesize_after=settings.synthesize_after,
        clock=clock,
    )
