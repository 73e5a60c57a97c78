"""The store's PostgreSQL/TimescaleDB: latency, connections, replication, transactions, jobs.

One persistent connection (a probe must not need a free connection slot to report that
there are none), reconnected after loss. Every query runs under `statement_timeout`; a
server that stops answering altogether is bounded by the monitor's timeout, after which
the connection is thrown away without waiting on the network.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import psycopg
from loguru import logger
from market_data_core.telemetry import HealthComponent, HealthState
from psycopg import errors
from psycopg.rows import dict_row
from pydantic import SecretStr

from market_data_sidecar.checks import Check, Damping, worst
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.redaction import DsnRedactor, describe_dsn

APPLICATION_NAME = "market-data-sidecar"

# postgres_exporter's signals in one round trip. Replication lag is 0 when the replica
# has replayed all it received (an idle primary writes nothing to replay), else the age
# of the last replayed transaction. Connections count what `max_connections` limits:
# client backends (background workers and WAL senders have slots of their own). A role
# without pg_read_all_stats sees other roles' sessions without their type: those with a
# user and a database are counted too, which may include a few background workers.
_STATISTICS = """
SELECT
    current_setting('server_version') AS server_version,
    current_setting('max_connections')::int AS max_connections,
    current_setting('superuser_reserved_connections')::int
        + coalesce(current_setting('reserved_connections', true)::int, 0)
        AS reserved_connections,
    (SELECT count(*) FROM pg_stat_activity
      WHERE backend_type = 'client backend'
         OR (backend_type IS NULL AND usesysid IS NOT NULL AND datid IS NOT NULL))::int
        AS connections,
    pg_is_in_recovery() AS in_recovery,
    (SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only') = 'on'
        AS read_only,
    CASE
        WHEN NOT pg_is_in_recovery() THEN 0
        WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
        ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))
    END::float8 AS replication_lag,
    (SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8
       FROM pg_stat_activity
      WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()) AS oldest_transaction,
    (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb_version,
    pg_has_role('pg_read_all_stats', 'USAGE') AS sees_all_sessions
"""

# `read_only` is the server's (or the role's) default_transaction_read_only, not this
# session's: the check's own session is read-only by choice, and `reset_val` is what a new
# session of the store's role starts with (reloaded with the configuration).

#: What the store needs of its database (SIDECAR_DATABASE_ROLE).
Role = Literal["primary", "replica", "any"]

# pg_database_size stats every file of the database: on a TimescaleDB with many chunks
# that is real work, so it is asked rarely, and its failure only hides the size.
_SIZE = "SELECT pg_database_size(current_database()) AS size_bytes"
SIZE_REFRESH_SECONDS = 60.0

# TimescaleDB 2.x: compression, retention and continuous-aggregate policies run as jobs.
_TIMESCALEDB_JOBS = """
SELECT count(*) FILTER (WHERE last_run_status = 'Failed') AS failed, count(*) AS total
  FROM timescaledb_information.job_stats
"""


@dataclass(frozen=True)
class DatabaseThresholds:
    """Where the database stops being healthy. No defaults: each is the setting
    `SIDECAR_DATABASE_<NAME>` (`wiring.thresholds_from`), whose default is the only one."""

    latency_degraded: float
    connections_degraded: float
    connections_unhealthy: float
    replication_lag_degraded: float
    replication_lag_unhealthy: float
    transaction_age_degraded: float


@dataclass(frozen=True)
class DatabaseObservation:
    """What one run saw on the server."""

    latency: float
    server_version: str
    max_connections: int
    reserved_connections: int
    connections: int
    in_recovery: bool
    replication_lag: float | None
    oldest_transaction: float
    #: New sessions start read-only (default_transaction_read_only): writes fail.
    read_only: bool = False
    #: Without pg_read_all_stats (pg_monitor), other roles' transactions are hidden.
    sees_all_sessions: bool = True
    size_bytes: int | None = None
    timescaledb_version: str | None = None
    timescaledb_jobs: int | None = None
    timescaledb_failed_jobs: int | None = None
    timescaledb_error: str | None = None

    @property
    def connections_ratio(self) -> float:
        return self.connections / self.max_connections if self.max_connections else 1.0


class _Unanswered(Exception):
    """A query failed; `phase` says which one, the message is already redacted."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(f"{phase}: {message}")


class DatabaseCheck(Check):
    """Observes the store's database over one persistent, read-only connection."""

    def __init__(
        self,
        dsn: SecretStr,
        *,
        thresholds: DatabaseThresholds,
        metrics: Metrics,
        interval: float,
        timeout: float,
        damping: Damping | None = None,
        connect_timeout: float,
        statement_timeout: float,
        probe_query: str,
        role: Role,
    ) -> None:
        super().__init__("database", interval=interval, timeout=timeout, damping=damping)
        self._dsn = dsn
        self._redactor = DsnRedactor(dsn.get_secret_value())
        self.target = describe_dsn(dsn.get_secret_value())
        self.thresholds = thresholds
        self.metrics = metrics
        # libpq accepts whole seconds, and no less than 2.
        self.connect_timeout = max(2, math.ceil(connect_timeout))
        self.statement_timeout_ms = max(1, round(statement_timeout * 1000))
        self.probe_query = probe_query
        self.role = role
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._stragglers: set[asyncio.Task[HealthComponent]] = set()
        self._last_error: str | None = None
        self._size_bytes: int | None = None
        self._size_measured: float | None = None

    # -- scheduling ------------------------------------------------------------------------

    async def run(self) -> HealthComponent:
        # The work runs in a task of its own so that, when the monitor's timeout cancels
        # this coroutine, the abandoning is ours to do (see `_abandon`), not psycopg's.
        observation = asyncio.create_task(self._observe(), name=f"check:{self.name}:observe")
        try:
            return await asyncio.shield(observation)
        except asyncio.CancelledError:
            await self._abandon(observation)
            raise

    async def _abandon(self, observation: asyncio.Task[HealthComponent]) -> None:
        """Stop a run that did not finish in time and discard its connection.

        Cancelled once in a query, psycopg asks the server to cancel it and waits for
        the answer: on a frozen server that takes its two 5 s grace periods. Cancelled
        again while it waits, it closes the connection at once instead (psycopg 3.3,
        verified against a SIGSTOPped server: 10 s versus a few milliseconds).
        """
        self._conn, conn = None, self._conn
        for _ in range(5):
            if observation.done():
                break
            observation.cancel()
            await asyncio.wait({observation}, timeout=0.01)
        self._failed_gauges()
        if observation.done():
            _finish(conn)  # PQfinish: a buffered Terminate message, no wait on the peer
            _consume(observation)
        else:  # not seen in practice; keep a reference until it ends
            self._stragglers.add(observation)
            observation.add_done_callback(self._stragglers.discard)

            def settle(task: asyncio.Task[HealthComponent]) -> None:
                _finish(conn)
                _consume(task)

            observation.add_done_callback(settle)
        logger.debug("database check abandoned a run; the next one reconnects")

    async def close(self) -> None:
        for task in list(self._stragglers):
            task.cancel()
        self._conn, conn = None, self._conn
        _finish(conn)

    # -- observing -------------------------------------------------------------------------

    async def _observe(self) -> HealthComponent:
        reused = self._conn is not None and not (self._conn.closed or self._conn.broken)
        try:
            observation = await self._observe_once()
        except _Unanswered as exc:
            if reused and self._conn is None:
                # The kept connection had died (a restart, a failover, an idle
                # timeout): that says nothing about the server now, so ask once more.
                logger.info("database connection lost; reconnecting")
                try:
                    observation = await self._observe_once()
                except _Unanswered as again:
                    return self._failed(str(again))
            else:
                return self._failed(str(exc))
        return self._judge(observation)

    async def _observe_once(self) -> DatabaseObservation:
        conn = await self._connection()
        try:
            started = time.perf_counter()
            await self._query(conn, "probe query", self.probe_query)
            latency = time.perf_counter() - started
            statistics = await self._query(conn, "statistics", _STATISTICS)
            observation = DatabaseObservation(
                latency=latency, size_bytes=await self._size(conn), **statistics
            )
            if observation.timescaledb_version is not None:
                observation = await self._timescaledb_jobs(conn, observation)
        finally:
            if conn.broken or conn.closed:
                self._discard(conn)
        return observation

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        self._discard(self._conn)
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn.get_secret_value(),
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name=APPLICATION_NAME,
                # Statements are never prepared: a transaction-mode pooler in front of
                # the database would hand them to another server connection.
                prepare_threshold=None,
            )
        except psycopg.Error as exc:  # also a DSN libpq cannot parse: it echoes the DSN
            raise _Unanswered("cannot connect", self._redactor.message(exc)) from None
        self._conn = conn  # from here on, an abandoned run closes it
        # Session settings, once per connection: a bound on every statement, and a
        # promise that the check never writes (whatever the probe query says).
        try:
            await self._query(
                conn,
                "session setup",
                "SELECT set_config('statement_timeout', %s, false),"
                " set_config('default_transaction_read_only', 'on', false)",
                (f"{self.statement_timeout_ms}ms",),
            )
        except _Unanswered:
            self._discard(conn)  # never keep a connection without its statement_timeout
            raise
        return conn

    async def _query(
        self,
        conn: psycopg.AsyncConnection[Any],
        phase: str,
        query: str,
        params: tuple[object, ...] | None = None,
    ) -> dict[str, Any]:
        """The first row of `query`, by column name."""
        cursor = conn.cursor(row_factory=dict_row)
        try:
            await cursor.execute(query, params)
            row = await cursor.fetchone() if cursor.description else None
        except errors.QueryCanceled as exc:
            # statement_timeout (or an operator's pg_cancel_backend): the connection
            # is still good, the server is too slow.
            raise _Unanswered(
                phase,
                f"no answer within statement_timeout ({self.statement_timeout_ms} ms): "
                + self._redactor.message(exc),
            ) from None
        except psycopg.Error as exc:
            raise _Unanswered(phase, self._redactor.message(exc)) from None
        return row or {}

    async def _size(self, conn: psycopg.AsyncConnection[Any]) -> int | None:
        now = time.monotonic()
        if self._size_measured is not None and now - self._size_measured < SIZE_REFRESH_SECONDS:
            return self._size_bytes
        try:
            size = (await self._query(conn, "database size", _SIZE))["size_bytes"]
        except _Unanswered:
            if conn.broken or conn.closed:
                raise
            self._size_measured = now  # a slow size is not asked again every interval
            return self._size_bytes  # the last one known, if any
        self._size_bytes, self._size_measured = int(size), now
        return self._size_bytes

    async def _timescaledb_jobs(
        self, conn: psycopg.AsyncConnection[Any], observation: DatabaseObservation
    ) -> DatabaseObservation:
        try:
            jobs = await self._query(conn, "timescaledb jobs", _TIMESCALEDB_JOBS)
        except _Unanswered as exc:
            if conn.broken or conn.closed:
                raise
            # An old TimescaleDB, or a role without access to its views: the rest of
            # the observation still stands.
            return replace(observation, timescaledb_error=str(exc))
        return replace(
            observation, timescaledb_jobs=jobs["total"], timescaledb_failed_jobs=jobs["failed"]
        )

    def _discard(self, conn: psycopg.AsyncConnection[Any] | None) -> None:
        if conn is None:
            return
        if self._conn is conn:
            self._conn = None
        _finish(conn)

    # -- judging ---------------------------------------------------------------------------

    def _failed(self, error: str) -> HealthComponent:
        if error != self._last_error:  # once per distinct failure, not every interval
            logger.warning("database check failed: {}", error)
        self._last_error = error
        self._failed_gauges()
        return self.component("unhealthy", target=self.target, error=error)

    def _failed_gauges(self) -> None:
        m = self.metrics
        for gauge in (
            m.database_latency,
            m.database_connections_ratio,
            m.database_replication_lag,
            m.database_oldest_transaction,
            m.database_size,
        ):
            gauge.set(math.nan)  # no stale numbers while the database does not answer

    def _judge(self, o: DatabaseObservation) -> HealthComponent:
        self._last_error = None
        t = self.thresholds
        verdicts: list[tuple[HealthState, str]] = list(self._role_verdicts(o))
        if o.connections_ratio >= t.connections_unhealthy:
            verdicts.append(("unhealthy", f"connections at {o.connections_ratio:.0%}"))
        elif o.connections_ratio >= t.connections_degraded:
            verdicts.append(("degraded", f"connections at {o.connections_ratio:.0%}"))
        if o.replication_lag is not None:
            if o.replication_lag >= t.replication_lag_unhealthy:
                verdicts.append(("unhealthy", f"replication lag {o.replication_lag:.1f}s"))
            elif o.replication_lag >= t.replication_lag_degraded:
                verdicts.append(("degraded", f"replication lag {o.replication_lag:.1f}s"))
        if o.oldest_transaction >= t.transaction_age_degraded:
            verdicts.append(("degraded", f"transaction open for {o.oldest_transaction:.0f}s"))
        if o.latency >= t.latency_degraded:
            verdicts.append(("degraded", f"probe query took {o.latency * 1000:.0f} ms"))
        if o.timescaledb_failed_jobs:
            verdicts.append(("degraded", f"{o.timescaledb_failed_jobs} timescaledb jobs failed"))

        m = self.metrics
        m.database_latency.set(o.latency)
        m.database_connections_ratio.set(o.connections_ratio)
        m.database_replication_lag.set(o.replication_lag or 0.0)
        m.database_oldest_transaction.set(o.oldest_transaction)
        m.database_size.set(math.nan if o.size_bytes is None else o.size_bytes)

        details: dict[str, object] = {
            "target": self.target,
            "server_version": o.server_version,
            "latency_ms": round(o.latency * 1000, 2),
            "connections": o.connections,
            "max_connections": o.max_connections,
            "reserved_connections": o.reserved_connections,
            "connections_ratio": round(o.connections_ratio, 4),
            "role": "replica" if o.in_recovery else "primary",
            "required_role": self.role,
            "read_only": o.read_only,
            "oldest_transaction_seconds": round(o.oldest_transaction, 1),
            **(
                {}
                if o.sees_all_sessions
                else {"sessions_visible": "own role only: grant pg_monitor to see all"}
            ),
            "size_bytes": "unknown" if o.size_bytes is None else o.size_bytes,
        }
        if o.in_recovery:
            lag = o.replication_lag
            details["replication_lag_seconds"] = "unknown" if lag is None else round(lag, 3)
        details["timescaledb"] = o.timescaledb_version or "not installed"
        if o.timescaledb_jobs is not None:
            details["timescaledb_jobs"] = o.timescaledb_jobs
            details["timescaledb_failed_jobs"] = o.timescaledb_failed_jobs
        if o.timescaledb_error is not None:
            details["timescaledb_jobs_error"] = o.timescaledb_error
        if verdicts:
            details["reason"] = "; ".join(reason for _, reason in verdicts)
        return self.component(worst([state for state, _ in verdicts]), **details)

    def _role_verdicts(self, o: DatabaseObservation) -> list[tuple[HealthState, str]]:
        """What the store cannot do on this server, given the role it needs.

        As Patroni's `/primary` and `/replica`: after a failover behind a stale DSN or
        pooler the old primary answers every query as a replica, and a store that writes
        stays Ready while every write fails; a primary that starts sessions read-only is
        no better.
        """
        if self.role == "primary" and o.in_recovery:
            return [("unhealthy", "a replica (in recovery): the store cannot write to it")]
        if self.role == "primary" and o.read_only:
            return [
                (
                    "unhealthy",
                    "read-only (default_transaction_read_only is on): the store's writes fail",
                )
            ]
        if self.role == "replica" and not o.in_recovery:
            return [
                (
                    "unhealthy",
                    "a primary, not a replica: the store would put its reads on the "
                    "primary (SIDECAR_DATABASE_ROLE is replica)",
                )
            ]
        return []


def _finish(conn: psycopg.AsyncConnection[Any] | None) -> None:
    """Close without a round trip; `AsyncConnection.close` does no more than this."""
    if conn is not None and not conn.closed:
        conn.pgconn.finish()


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve an abandoned task's outcome so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()
