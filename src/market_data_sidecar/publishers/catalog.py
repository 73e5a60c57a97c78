"""Which publisher each configured target `kind` is: a map from kind to factory.

Factories import their module when called, so redis-py is imported only when a Redis
target is configured (it is an optional extra).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from market_data_sidecar.feedback.delivery import Publisher
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import ConfigError, Settings, TargetSettings

Factory = Callable[[Any, Metrics | None], Publisher]


def _http(target: Any, metrics: Metrics | None) -> Publisher:
    from market_data_sidecar.publishers.http import HttpPublisher

    return HttpPublisher(target)


def _redis_pubsub(target: Any, metrics: Metrics | None) -> Publisher:
    return _redis(target).RedisPubSubPublisher(target, metrics=metrics)  # type: ignore[no-any-return]


def _redis_stream(target: Any, metrics: Metrics | None) -> Publisher:
    return _redis(target).RedisStreamPublisher(target, metrics=metrics)  # type: ignore[no-any-return]


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
            publishers.append(FACTORIES[target.kind](target, metrics))
        except _MissingRedis:
            raise ConfigError(
                f"invalid configuration: SIDECAR_TARGETS[{index}]: kind {target.kind!r} needs "
                "redis-py: pip install 'market-data-sidecar[redis]'"
            ) from None
    return publishers
