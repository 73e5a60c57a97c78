"""Which publishers a given configuration asks for."""

from __future__ import annotations

from market_data_sidecar.feedback.delivery import Publisher
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.settings import (
    ConfigError,
    HttpTargetSettings,
    RedisPubSubTargetSettings,
    RedisStreamTargetSettings,
    Settings,
)


def build_publishers(settings: Settings, metrics: Metrics | None = None) -> list[Publisher]:
    """One publisher per configured target, in configuration order."""
    publishers: list[Publisher] = []
    for index, target in enumerate(settings.targets):
        if isinstance(target, HttpTargetSettings):
            from market_data_sidecar.publishers.http import HttpPublisher

            publishers.append(HttpPublisher(target))
            continue
        try:
            from market_data_sidecar.publishers import redis as redis_publishers
        except ImportError:
            raise ConfigError(
                f"invalid configuration: SIDECAR_TARGETS[{index}]: kind {target.kind!r} needs "
                "redis-py: pip install 'market-data-sidecar[redis]'"
            ) from None
        if isinstance(target, RedisPubSubTargetSettings):
            publishers.append(redis_publishers.RedisPubSubPublisher(target, metrics=metrics))
        elif isinstance(target, RedisStreamTargetSettings):
            publishers.append(redis_publishers.RedisStreamPublisher(target, metrics=metrics))
    return publishers
