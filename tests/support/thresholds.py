"""Checks' thresholds as the sidecar builds them (from `Settings`, whose defaults are the
only ones), with a test's overrides."""

from __future__ import annotations

import dataclasses
from typing import Any

from market_data_sidecar.checks.disk import DiskThresholds
from market_data_sidecar.settings import Settings
from market_data_sidecar.wiring import thresholds_from


def disk_thresholds(**overrides: Any) -> DiskThresholds:
    return dataclasses.replace(thresholds_from(DiskThresholds, Settings(), "disk_"), **overrides)
