"""`GET /openapi.json`: an OpenAPI 3.1 description of the sidecar's HTTP surface.

Schemas come from pydantic models, so the document cannot drift from the wire: Core's
`HealthStatus` and `FeedbackEvent` as Core defines them, and small models of the
sidecar's own answers (`GET /feedback`, the 202 and error bodies). The intake event is
Core's `FeedbackEvent` schema loosened the way the intake is (no `ts` needed, the store's
`reason` and `utilization` allowed) and tightened where it is (id lengths). The document
depends on the intake it documents (token, limits), so it is built once per application.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Literal

from aiohttp import web
from market_data_core.telemetry import FeedbackEvent, HealthStatus
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from market_data_sidecar import __version__
from market_data_sidecar.feedback.bounds import (
    ID_PATTERN,
    MAX_COUNT,
    MAX_ID_LENGTH,
    MAX_TS,
    MAX_UTILIZATION,
)
from market_data_sidecar.feedback.intake import MAX_REASON_LENGTH, Intake
from market_data_sidecar.feedback.state import RelayState
from market_data_sidecar.views.history import DEFAULT_CHANGES, MAX_CHANGES, HistoryState

PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"

_DOCUMENT = web.AppKey("openapi_document", bytes)
#: The sidecar's own answers are documented exactly: a field added to one of them fails
#: the schema tests until it is described here too.
_EXACT = ConfigDict(extra="forbid")


# -- the sidecar's own answers ---------------------------------------------------------------


class Accepted(BaseModel):
    """`POST /feedback` answered before delivery: how many events the relay took."""

    model_config = _EXACT

    accepted: int = Field(ge=0, description="Events accepted; each goes to every target.")


class ErrorBody(BaseModel):
    """Every 4xx: what was wrong, never the input itself."""

    model_config = _EXACT

    error: str = Field(description="What was wrong, in one line.")
    index: int | None = Field(
        default=None, ge=0, description="The first invalid element of an array body."
    )
    field: str | None = Field(default=None, description="The invalid field, when one is.")


# -- the document ----------------------------------------------------------------------------


def add_openapi_route(app: web.Application, intake: Intake) -> None:
    """Serve the document at `GET /openapi.json`, rendered once for `intake`."""
    app[_DOCUMENT] = json.dumps(openapi_document(intake), separators=(",", ":")).encode()
    app.router.add_get(PATH, openapi_endpoint)


async def openapi_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_DOCUMENT], content_type="application/json")


def openapi_document(intake: Intake) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a sidecar whose intake is `intake`."""
    protected = intake.protected
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "market-data-sidecar",
            "version": __version__,
            "summary": "Health probes and backpressure feedback relay beside a "
            "market-data-store pod.",
        },
        "paths": {
            "/": {"get": _status_page()},
            "/livez": {"get": _livez()},
            "/readyz": {"get": _health("readyz", "Readiness", _NOT_READY)},
            "/healthz": {"get": _health("healthz", "Full health", "Unhealthy.")},
            "/metrics": {"get": _metrics()},
            "/feedback": {"get": _get_feedback(), "post": _post_feedback(intake)},
            "/history": {"get": _get_history()},
            PATH: {"get": _openapi()},
        },
        "components": {"schemas": component_schemas()},
    }
    if protected:
        document["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "`SIDECAR_TOKEN`; only `POST /feedback` asks for it.",
            }
        }
    return document


def component_schemas() -> dict[str, Any]:
    """Every named schema: Core's models as Core defines them, and the sidecar's."""
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (HealthStatus, "serialization"),
        (FeedbackEvent, "validation"),
        (RelayState, "serialization"),
        (HistoryState, "serialization"),
        (Accepted, "serialization"),
        (ErrorBody, "serialization"),
    ]
    _, top = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    schemas["FeedbackIntakeEvent"] = _intake_event(schemas["FeedbackEvent"])
    return dict(sorted(schemas.items()))


def _intake_event(core: dict[str, Any]) -> dict[str, Any]:
    """Core's `FeedbackEvent` as the intake takes it: what the store's broadcaster sends
    (no `ts`, no `source`, with `reason` and `utilization`) is accepted too."""
    schema = copy.deepcopy(core)
    schema["title"] = "FeedbackIntakeEvent"
    schema["description"] = (
        "A Core `FeedbackEvent`, or the store broadcaster's payload: a missing `ts` is the "
        "time received, a missing `source` is `store`, `reason` is relayed beside the event. "
        "Validated strictly: a queue size or capacity is a JSON integer written without a "
        'fraction (`"850"` and `850.0` are refused). A `queue_size` above '
        f"{MAX_UTILIZATION:g} x `capacity` is refused too. Other fields are ignored."
    )
    schema["required"] = [name for name in schema["required"] if name != "ts"]
    properties = schema["properties"]
    for name in ("coordinator_id", "source"):
        properties[name] = {
            **properties[name],
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": ID_PATTERN,
        }
    # The intake's ranges: what every target and view can carry (intake.py says why).
    properties["queue_size"] = {**properties["queue_size"], "maximum": MAX_COUNT}
    properties["capacity"] = {**properties["capacity"], "maximum": MAX_COUNT}
    properties["ts"] = {
        **properties["ts"],
        "minimum": 0,
        "exclusiveMaximum": MAX_TS,
        "description": "Unix epoch seconds; default: now.",
    }
    properties["reason"] = {
        "anyOf": [{"type": "string", "maxLength": MAX_REASON_LENGTH}, {"type": "null"}],
        "description": "Why the level changed (the store sends `queue_recovered`, ...).",
    }
    properties["utilization"] = {
        "anyOf": [
            {"type": "number", "minimum": 0, "maximum": MAX_UTILIZATION},
            {"type": "null"},
        ],
        "description": "Queue size over capacity, as the store's broadcaster sends it.",
    }
    return schema


# -- operations ------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, **headers: Any) -> dict[str, Any]:
    response = _json(description, _ref("ErrorBody"))
    if headers:
        response["headers"] = headers
    return response


def _status_page() -> dict[str, Any]:
    return {
        "summary": "Status page",
        "description": "A self-contained HTML page of the cached health and relay state.",
        "operationId": "statusPage",
        "parameters": [
            {
                "name": "refresh",
                "in": "query",
                "description": "Seconds between reloads (0: off, at most 3600); a value that "
                "is not an integer means the default, 5.",
                "schema": {"type": "string"},
            }
        ],
        "responses": {
            "200": {
                "description": "The page.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    }


def _livez() -> dict[str, Any]:
    return {
        "summary": "Liveness",
        "description": "200 while the check scheduler makes progress; never depends on the "
        "database, disk or queues.",
        "operationId": "livez",
        "responses": {
            "200": _text("Alive."),
            "503": _text("The check scheduler has stalled: restart the sidecar."),
        },
    }


_NOT_READY = "Unhealthy, not checked yet, or shutting down (and degraded, when so configured)."


def _health(operation_id: str, summary: str, unhealthy: str) -> dict[str, Any]:
    status = {
        "application/json": {"schema": _ref("HealthStatus")},
        # kube-apiserver's format: `[+]disk ok`, `[-]database failed: reason`.
        "text/plain": {"schema": {"type": "string"}},
    }
    return {
        "summary": summary,
        "description": "Core `HealthStatus` from the cached snapshot; no request waits on "
        "a check. With `verbose`, lines like kube-apiserver's instead.",
        "operationId": operation_id,
        "parameters": [
            {
                "name": "exclude",
                "in": "query",
                "description": "Leave a component out of the aggregate (repeatable).",
                "style": "form",
                "explode": True,
                "schema": {"type": "array", "items": {"type": "string"}},
            },
            {
                "name": "verbose",
                "in": "query",
                "description": "Present (any value): answer in text lines.",
                "allowEmptyValue": True,
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": {"description": "Healthy enough.", "content": status},
            "503": {"description": unhealthy, "content": status},
        },
    }


def _metrics() -> dict[str, Any]:
    return {
        "summary": "Prometheus metrics",
        "description": "The sidecar's own registry, in the Prometheus text format.",
        "operationId": "metrics",
        "responses": {"200": _text("The exposition.")},
    }


def _get_feedback() -> dict[str, Any]:
    return {
        "summary": "Relay state",
        "description": "Latest event per coordinator, and per target: buffer depth, "
        "last success, last error, circuit state.",
        "operationId": "getFeedback",
        "responses": {"200": _json("The relay's state.", _ref("RelayState"))},
    }


def _get_history() -> dict[str, Any]:
    return {
        "summary": "History",
        "description": "What changed within the last hour: each component's state, each "
        "coordinator's level and each composite's level, as sampled every few seconds.",
        "operationId": "getHistory",
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "description": f"The most recent changes to answer (default {DEFAULT_CHANGES}).",
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CHANGES},
            }
        ],
        "responses": {
            "200": _json("The changes, most recent last.", _ref("HistoryState")),
            "400": _error("`limit` is not an integer within bounds."),
        },
    }


def _post_feedback(intake: Intake) -> dict[str, Any]:
    limit = intake.max_events
    operation: dict[str, Any] = {
        "summary": "Feedback intake",
        "description": "One event or an array of events, validated and answered 202 before "
        "delivery; every target then receives each event. An array with any invalid "
        f"element is rejected whole. Bodies over {intake.max_body_bytes} bytes are refused.",
        "operationId": "postFeedback",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            _ref("FeedbackIntakeEvent"),
                            {
                                "type": "array",
                                "items": _ref("FeedbackIntakeEvent"),
                                "maxItems": limit,
                            },
                        ]
                    }
                }
            },
        },
        "responses": {
            "202": _json("Accepted for delivery.", _ref("Accepted")),
            "400": _error("Malformed JSON."),
            "413": _error(f"Body over the size limit, or more than {limit} events."),
            "415": _error("Not JSON (Content-Type `application/json` or `+json`)."),
            "422": _error("An invalid event; `index` and `field` say where."),
            "508": _error(
                "An event this sidecar itself sent (its `webhook-id`): a target points "
                "back at the intake."
            ),
        },
    }
    if intake.protected:
        operation["security"] = [{"bearer": []}]
        operation["responses"]["401"] = _error(
            "Missing or wrong bearer token.",
            **{"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
        )
    else:
        operation["responses"]["403"] = _error(
            "Not from loopback: without SIDECAR_TOKEN only processes in the pod may post."
        )
    operation["responses"] = dict(sorted(operation["responses"].items()))
    return operation


def _openapi() -> dict[str, Any]:
    return {
        "summary": "This document",
        "operationId": "openapi",
        "responses": {"200": _json("OpenAPI 3.1.", {"type": "object"})},
    }
