"""The catalog hands every threshold setting to its check."""

from __future__ import annotations

import dataclasses

import pytest

from market_data_sidecar.checks.database import DatabaseThresholds
from market_data_sidecar.checks.disk import DiskThresholds
from market_data_sidecar.server.connections import Bounds
from market_data_sidecar.settings import Settings
from market_data_sidecar.wiring import thresholds_from
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
    [(DatabaseThresholds, "database_"), (DiskThresholds, "disk_"), (Bounds, "")],
)
def test_thresholds_have_no_default_but_the_settings(kind: type, prefix: str) -> None:
    """Each default is written once, in `Settings`: the dataclasses have none of their own,
    and every field is a setting of the same name."""
    fields = dataclasses.fields(kind)
    assert all(f.default is dataclasses.MISSING for f in fields)
    assert {prefix + f.name for f in fields} <= set(Settings.model_fields)
