"""The OpenAPI document describes exactly the app's routes: no route undocumented, no
documented path missing, methods included."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from market_data_sidecar.metrics import Metrics
from market_data_sidecar.openapi import openapi_document
from market_data_sidecar.wiring import build_app, intake_from
from tests.support.sidecar import make_settings

#: What aiohttp adds beside each GET.
_IMPLICIT = {"HEAD"}


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method not in _IMPLICIT:
            found.add((str(path), route.method.lower()))
    return found


def documented(settings_overrides: Mapping[str, object]) -> set[tuple[str, str]]:
    document = openapi_document(intake_from(make_settings(**settings_overrides), Metrics()))
    return {(path, method) for path, item in document["paths"].items() for method in item}


def test_documented_paths_are_the_apps_routes() -> None:
    for overrides in ({}, {"token": "a-token-for-the-intake"}):
        app = build_app(make_settings(**overrides))
        assert documented(overrides) == routes_of(app)
