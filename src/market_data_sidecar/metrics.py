"""The sidecar's one Prometheus registry and every metric it exports, defined together.

One `Metrics` per application (not module globals) so several sidecars can live in one
test process. Names follow Prometheus conventions: `sidecar_<thing>_<unit>`, base
units, `_total` only on counters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

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

        # queue check: the coordinators of the latest scrape, proxied (`CoordinatorGauges`)
        self.queue_coordinators = CoordinatorGauges()
        r.register(self.queue_coordinators)

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
            "Members of a fleet target's stream counted (live and suspect), as last seen.",
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
            "Entries in the members hash no step wrote, counted as the gauge rises.",
            ["target"],
            registry=r,
        )
        self.fleet_members_by_state = Gauge(
            "sidecar_fleet_members_by_state",
            "Members of a fleet target's stream by state (live, suspect), as last seen.",
            ["target", "state"],
            registry=r,
        )
        self.fleet_unparsable_entries = Gauge(
            "sidecar_fleet_unparsable_entries",
            "Entries in a fleet's members hash that no step wrote (ignored), as last seen.",
            ["target"],
            registry=r,
        )
        self.fleet_renewal_age = Gauge(
            "sidecar_fleet_renewal_age_seconds",
            "Seconds since this sidecar last renewed its member (what the fleet knows of it).",
            ["target"],
            registry=r,
        )
        self.fleet_holding = Gauge(
            "sidecar_fleet_holding",
            "1 while the fleet's state may be incomplete and milder composites wait.",
            ["target"],
            registry=r,
        )
        # a stream target's readers: its consumer groups, as XINFO tells them
        self.stream_group_lag = Gauge(
            "sidecar_stream_group_lag_entries",
            "Entries of a stream target not yet delivered to a consumer group.",
            ["target", "group"],
            registry=r,
        )
        self.stream_group_pending = Gauge(
            "sidecar_stream_group_pending_entries",
            "Entries delivered to a consumer group and never acknowledged.",
            ["target", "group"],
            registry=r,
        )
        self.stream_group_consumers = Gauge(
            "sidecar_stream_group_consumers",
            "Consumers in a consumer group of a stream target.",
            ["target", "group"],
            registry=r,
        )
        self.stream_group_idle = Gauge(
            "sidecar_stream_group_idle_seconds",
            "Since a consumer group's most recently active consumer was seen.",
            ["target", "group"],
            registry=r,
        )
        self.stream_trimmed_acked = Counter(
            "sidecar_stream_trimmed_references_acked_total",
            "Pending references to entries trimming removed, acknowledged by the sidecar.",
            ["target"],
            registry=r,
        )
        self.stream_reader_failures = Counter(
            "sidecar_stream_reader_failures_total",
            "Readings of a stream target's consumer groups that failed, by reason.",
            ["target", "reason"],
            registry=r,
        )
        self.stream_reader_arrivals = Counter(
            "sidecar_stream_reader_arrivals_total",
            "Consumer groups that appeared or were reset, each answered with a resync.",
            ["target"],
            registry=r,
        )

        self.stream_copies = Counter(
            "sidecar_stream_copies_total",
            "Copies of a state appended after it, so every reader sharing a group hears it.",
            ["target"],
            registry=r,
        )
        self.stream_reannounced = Counter(
            "sidecar_stream_reannouncements_total",
            "Rounds of copies of the newest state for readers that were busy or joined late.",
            ["target"],
            registry=r,
        )
        self.stream_group_readers = Gauge(
            "sidecar_stream_group_readers",
            "Readers behind a consumer group, estimated from the copies it took at once.",
            ["target", "group"],
            registry=r,
        )
        self.stream_dead_letters = Gauge(
            "sidecar_stream_dead_letters",
            "Entries in a stream target's dead-letter stream ({key}.dlq).",
            ["target"],
            registry=r,
        )
        self.stream_dead_letter_age = Gauge(
            "sidecar_stream_dead_letter_age_seconds",
            "Age of the newest entry of a stream target's dead-letter stream.",
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
        self.queue_series_rejected = Counter(
            "sidecar_queue_series_rejected_total",
            "Series of the store's metrics the queue check did not keep, by reason "
            "(line_too_long, over_budget, invalid_id, out_of_range).",
            ["reason"],
            registry=r,
        )

    def set_component_state(self, component: str, state: str) -> None:
        for candidate in HEALTH_STATES:
            self.component_state.labels(component, candidate).set(candidate == state)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class CoordinatorRow:
    """One coordinator's figures as the latest scrape of the store saw them (None: not
    exported by the store, or a depth no event can carry)."""

    coordinator: str
    depth: int | None = None
    utilization: float | None = None
    workers_alive: int | None = None
    circuit_state: int | None = None


#: The per-coordinator gauges: (name, help, the row's field).
_COORDINATOR_GAUGES = (
    ("sidecar_queue_depth", "Queue depth per coordinator.", "depth"),
    (
        "sidecar_queue_utilization_ratio",
        "Queue depth over capacity per coordinator.",
        "utilization",
    ),
    ("sidecar_queue_workers_alive", "Live workers per coordinator.", "workers_alive"),
    (
        "sidecar_queue_circuit_state",
        "Coordinator circuit: 0 closed, 1 open, 2 half-open.",
        "circuit_state",
    ),
)


class CoordinatorGauges(Collector):
    """The store's coordinators, proxied: the gauges are made from the latest scrape when
    Prometheus reads them, as client_python advises for metrics of another system.

    The scrape replaces one tuple (from the check's thread, atomically); nothing is kept
    per coordinator between scrapes, so ids that change at every scrape cost no series
    to create and remove."""

    def __init__(self) -> None:
        self._rows: tuple[CoordinatorRow, ...] = ()

    def show(self, rows: Sequence[CoordinatorRow]) -> None:
        """Export `rows` from now on, and only them."""
        self._rows = tuple(rows)

    def collect(self) -> Iterator[Metric]:
        rows = self._rows
        for name, documentation, attribute in _COORDINATOR_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["coordinator"])
            for row in rows:
                value = getattr(row, attribute)
                if value is not None:
                    family.add_metric([row.coordinator], value)
            yield family
