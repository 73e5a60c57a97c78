"""The sidecar's one Prometheus registry and every metric it exports, defined together.

One `Metrics` per application (not module globals) so several sidecars can live in one
test process. Names follow Prometheus conventions: `sidecar_<thing>_<unit>`, base
units, `_total` only on counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from market_data_sidecar import __version__

HEALTH_STATES = ("healthy", "degraded", "unhealthy")
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Owns the registry; attributes are the metric families the sidecar updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("sidecar_build", "Version of the running sidecar.", registry=r).info(
            {"version": __version__}
        )

        # Health engine
        self.component_state = Gauge(
            "sidecar_component_state",
            "1 for the component's current (damped) state, 0 for the others.",
            ["component", "state"],
            registry=r,
        )
        self.check_duration = Histogram(
            "sidecar_check_duration_seconds",
            "How long each check run took.",
            ["component"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.check_failures = Counter(
            "sidecar_check_errors_total",
            "Check runs that raised or timed out.",
            ["component", "reason"],
            registry=r,
        )
        self.scheduler_heartbeat = Gauge(
            "sidecar_scheduler_heartbeat_timestamp_seconds",
            "Unix time the check scheduler last made progress.",
            registry=r,
        )
        self.ready = Gauge("sidecar_ready", "1 while /readyz answers 200.", registry=r)

        # database check
        self.database_latency = Gauge(
            "sidecar_database_latency_seconds", "Round trip of a trivial query.", registry=r
        )
        self.database_connections_ratio = Gauge(
            "sidecar_database_connections_ratio",
            "Connections in use over max_connections.",
            registry=r,
        )
        self.database_replication_lag = Gauge(
            "sidecar_database_replication_lag_seconds",
            "Replay lag on a replica (0 on a primary).",
            registry=r,
        )
        self.database_oldest_transaction = Gauge(
            "sidecar_database_oldest_transaction_seconds",
            "Age of the oldest open transaction.",
            registry=r,
        )
        self.database_size = Gauge(
            "sidecar_database_size_bytes", "Size of the store's database.", registry=r
        )

        # disk check
        self.disk_free_bytes = Gauge(
            "sidecar_disk_free_bytes", "Free bytes on a watched path.", ["path"], registry=r
        )
        self.disk_free_ratio = Gauge(
            "sidecar_disk_free_ratio", "Free fraction of a watched path.", ["path"], registry=r
        )
        self.disk_inodes_free_ratio = Gauge(
            "sidecar_disk_inodes_free_ratio",
            "Free fraction of inodes on a watched path.",
            ["path"],
            registry=r,
        )

        # queue check
        self.queue_depth = Gauge(
            "sidecar_queue_depth", "Queue depth per coordinator.", ["coordinator"], registry=r
        )
        self.queue_utilization = Gauge(
            "sidecar_queue_utilization_ratio",
            "Queue depth over capacity per coordinator.",
            ["coordinator"],
            registry=r,
        )
        self.queue_workers_alive = Gauge(
            "sidecar_queue_workers_alive",
            "Live workers per coordinator.",
            ["coordinator"],
            registry=r,
        )
        self.queue_circuit_state = Gauge(
            "sidecar_queue_circuit_state",
            "Coordinator circuit: 0 closed, 1 open, 2 half-open.",
            ["coordinator"],
            registry=r,
        )

        # feedback intake and relay
        self.feedback_received = Counter(
            "sidecar_feedback_received_total",
            "Feedback events received, by outcome (accepted, or why rejected).",
            ["outcome"],
            registry=r,
        )
        self.feedback_synthesized = Counter(
            "sidecar_feedback_synthesized_total",
            "Events derived from polled queue depths crossing watermarks.",
            ["level"],
            registry=r,
        )
        self.feedback_delivered = Counter(
            "sidecar_feedback_delivered_total", "Events delivered.", ["target"], registry=r
        )
        self.feedback_retried = Counter(
            "sidecar_feedback_retried_total", "Delivery attempts retried.", ["target"], registry=r
        )
        self.feedback_dropped = Counter(
            "sidecar_feedback_dropped_total",
            "Events a target will never receive, by reason.",
            ["target", "reason"],
            registry=r,
        )
        self.feedback_conflated = Counter(
            "sidecar_feedback_conflated_total",
            "Undelivered events replaced by a newer one for the same coordinator.",
            ["target"],
            registry=r,
        )
        self.feedback_resynced = Counter(
            "sidecar_feedback_resynced_total",
            "Coordinators' current states delivered again (periodically and after an outage).",
            ["target"],
            registry=r,
        )
        self.feedback_delivery_latency = Histogram(
            "sidecar_feedback_delivery_latency_seconds",
            "From intake to delivery, per target.",
            ["target"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.feedback_buffer_depth = Gauge(
            "sidecar_feedback_buffer_depth",
            "Undelivered events per target.",
            ["target"],
            registry=r,
        )
        self.feedback_circuit_state = Gauge(
            "sidecar_feedback_circuit_state",
            "Target circuit: 0 closed, 1 open, 2 half-open.",
            ["target"],
            registry=r,
        )
        self.redis_ping_latency = Gauge(
            "sidecar_redis_ping_latency_seconds",
            "PING round trip per Redis target.",
            ["target"],
            registry=r,
        )
        self.redis_up = Gauge(
            "sidecar_redis_up", "1 when the Redis target answers PING.", ["target"], registry=r
        )

        # scope: composites and the fleet
        self.feedback_composite_level = Gauge(
            "sidecar_feedback_composite_level",
            "A pod or fleet target's composite level: 0 ok, 1 soft, 2 hard.",
            ["target", "scope"],
            registry=r,
        )
        self.fleet_members = Gauge(
            "sidecar_fleet_members",
            "Live members of a fleet target's stream, as last seen.",
            ["target"],
            registry=r,
        )
        self.fleet_member_level = Gauge(
            "sidecar_fleet_member_level",
            "Each live member's worst level as last seen: 0 ok, 1 soft, 2 hard.",
            ["target", "instance"],
            registry=r,
        )
        self.fleet_member_lease_age = Gauge(
            "sidecar_fleet_member_lease_age_seconds",
            "Seconds since each live member renewed, as last seen.",
            ["target", "instance"],
            registry=r,
        )
        self.fleet_published = Counter(
            "sidecar_fleet_composites_published_total",
            "Fleet composites this member appended to the stream (changes and resyncs).",
            ["target"],
            registry=r,
        )
        self.fleet_unparsable_members = Counter(
            "sidecar_fleet_unparsable_members_total",
            "Members whose state in Redis this version cannot read (ignored), once per name.",
            ["target"],
            registry=r,
        )

        # hostile peers: what clients hold, and what they got wrong
        self.connections = Gauge("sidecar_connections", "Open client connections.", registry=r)
        self.body_bytes_in_flight = Gauge(
            "sidecar_body_bytes_in_flight",
            "Request body bytes reserved by requests being served.",
            registry=r,
        )
        self.client_faults = Counter(
            "sidecar_client_faults_total",
            "Client faults: bad framing, deadlines missed, aborts, refusals, 4xx answers.",
            ["kind"],
            registry=r,
        )
        self.accept_errors = Counter(
            "sidecar_accept_errors_total",
            "Connections the listening socket could not accept (out of file descriptors).",
            registry=r,
        )
        self.queue_coordinators_omitted = Gauge(
            "sidecar_queue_coordinators_omitted",
            "Coordinators in the store's metrics beyond what the queue check keeps.",
            registry=r,
        )

    def set_component_state(self, component: str, state: str) -> None:
        for candidate in HEALTH_STATES:
            self.component_state.labels(component, candidate).set(candidate == state)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
