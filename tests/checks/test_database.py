"""The database check against real PostgreSQL servers: the shared one and the tests' own."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import psycopg
import pytest
from loguru import logger

from market_data_sidecar.checks.database import DatabaseCheck
from market_data_sidecar.metrics import Metrics
from tests.support import parts
from tests.support.helpers import eventually
from tests.support.postgres import MAX_CONNECTIONS, PostgresInstance
from tests.support.probes import probing
from tests.support.sidecar import StartSidecar, make_settings

pytestmark = pytest.mark.slow

SHARED_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

INTERVAL = 0.2
TIMEOUT = 1.0
#: A fault must show on /readyz within one interval plus one timeout (fall = 1), and
#: the harness needs a moment to notice.
FAULT_DEADLINE = INTERVAL + TIMEOUT + 1.0
#: Every probe answer while a fault holds: from the cache, never waiting on a check.
PROBE_BUDGET = 0.1


def database_check(dsn: str, metrics: Metrics | None = None, **overrides: Any) -> DatabaseCheck:
    """The check as the sidecar builds it, on this module's schedule; `overrides` are
    settings."""
    options: dict[str, Any] = {
        "check_interval": INTERVAL,
        "check_timeout": TIMEOUT,
        "database_statement_timeout": 0.5,
        **overrides,
    }
    return parts.database_check(dsn, metrics, **options)


def sidecar_settings(dsn: str, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "database_url": dsn,
        "check_interval": INTERVAL,
        "check_timeout": TIMEOUT,
        "database_statement_timeout": 0.5,
        **overrides,
    }
    return make_settings(**options)


async def component(client: Any, name: str = "database") -> dict[str, Any]:
    async with client.get("/healthz") as response:
        body = await response.json()
    found = [c for c in body["components"] if c["name"] == name]
    return found[0] if found else {}


async def readiness(client: Any) -> int:
    async with client.get("/readyz") as response:
        return int(response.status)


# -- the shared server: what a healthy database reports ----------------------------------------


async def test_reports_postgres_signals_and_skips_absent_timescaledb() -> None:
    metrics = Metrics()
    check = database_check(SHARED_DSN, metrics)
    try:
        result = await check.run()
    finally:
        await check.close()

    assert result.state == "healthy", result.details
    details = result.details
    assert details["target"] == "postgres@127.0.0.1:5432/postgres"
    assert float(details["latency_ms"]) < 500
    assert int(details["connections"]) >= 1
    assert int(details["max_connections"]) >= int(details["connections"])
    assert 0 < float(details["connections_ratio"]) < 1
    assert details["role"] == "primary"
    assert "replication_lag_seconds" not in details
    assert float(details["oldest_transaction_seconds"]) >= 0
    assert int(details["size_bytes"]) > 0
    # The shared server has no TimescaleDB: the job query is not even attempted.
    assert details["timescaledb"] == "not installed"
    assert not any(key.startswith("timescaledb_jobs") for key in details)
    assert metrics.registry.get_sample_value("sidecar_database_latency_seconds")
    assert metrics.registry.get_sample_value("sidecar_database_size_bytes")


async def test_keeps_one_connection_across_runs() -> None:
    check = database_check(SHARED_DSN)
    try:
        await check.run()
        first = check._conn
        for _ in range(3):
            assert (await check.run()).state == "healthy"
        assert check._conn is first
    finally:
        await check.close()
    assert first is not None
    assert first.closed


async def test_check_command_prints_database_details() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_data_sidecar", "check",
        env={
            **os.environ,
            "SIDECAR_DATABASE_URL": SHARED_DSN,
            "SIDECAR_STORE_METRICS_URL": "",
            "SIDECAR_DISK_PATHS": '["/"]',
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    table = stdout.decode()
    assert process.returncode in (0, 1), stderr.decode()  # the disk may be degraded
    lines = table.splitlines()
    assert any(line.split()[:2] == ["database", "healthy"] for line in lines if line), table
    for detail in (
        "latency_ms = ",
        "connections = ",
        "max_connections = ",
        "role = primary",
        "timescaledb = not installed",
        "target = postgres@127.0.0.1:5432/postgres",
    ):
        assert detail in table, table


# -- verdicts on the tests' own server ---------------------------------------------------------


@pytest.mark.exclusive
async def test_connections_near_the_limit_degrade_then_fail(
    pg: PostgresInstance, sidecar_client: StartSidecar
) -> None:
    client = await sidecar_client(sidecar_settings(pg.dsn()))
    await eventually(lambda: _state_is(client, "healthy"), message="healthy first")
    in_use = int((await component(client))["details"]["connections"])  # the sidecar's own

    def open_connections(count: int) -> list[psycopg.Connection[Any]]:
        return [pg.connect() for _ in range(count)]

    held: list[psycopg.Connection[Any]] = []
    try:
        # 16 of 20 is the 80% degraded threshold.
        held += await asyncio.to_thread(open_connections, 16 - in_use)
        await eventually(lambda: _state_is(client, "degraded"), message="degraded at 80%")
        assert (await component(client))["details"]["connections"] == "16"
        assert await readiness(client) == 200  # degraded is ready by default

        async with probing(client) as probes:
            held += await asyncio.to_thread(open_connections, MAX_CONNECTIONS - 16)
            await eventually(lambda: _state_is(client, "unhealthy"), timeout=FAULT_DEADLINE)
            assert await readiness(client) == 503
            details = (await component(client))["details"]
            assert details["connections"] == str(MAX_CONNECTIONS)
            assert "connections at 100%" in details["reason"]
            # Every slot is taken: only a connection kept open can still tell.
            with pytest.raises(psycopg.OperationalError, match="too many clients"):
                await asyncio.to_thread(open_connections, 1)
        assert probes.statuses("/livez") == {200}
        assert probes.slowest() < PROBE_BUDGET
    finally:
        for conn in held:
            conn.close()
    await eventually(lambda: _state_is(client, "healthy"), message="recovered")
    assert await readiness(client) == 200


async def test_old_transaction_degrades(pg: PostgresInstance) -> None:
    check = database_check(pg.dsn(), database_transaction_age_degraded=0.3)
    try:
        assert (await check.run()).state == "healthy"
        with pg.connect(autocommit=False) as idle:
            idle.execute("SELECT txid_current()")  # and then idle in transaction
            result = await eventually(lambda: _run_until(check, "degraded"), timeout=5)
            assert "transaction open for" in result.details["reason"]
            assert float(result.details["oldest_transaction_seconds"]) >= 0.3
        assert (await check.run()).state == "healthy"
    finally:
        await check.close()


@pytest.mark.exclusive
async def test_probe_query_blocked_past_statement_timeout(
    pg: PostgresInstance, sidecar_client: StartSidecar
) -> None:
    """A migration holding ACCESS EXCLUSIVE on the store's hot table stalls its writes."""
    pg.execute("CREATE TABLE IF NOT EXISTS bars (symbol text, ts timestamptz, close float8)")
    settings = sidecar_settings(
        pg.dsn(), database_probe_query="SELECT count(*) FROM bars", database_statement_timeout=0.3
    )
    client = await sidecar_client(settings)
    await eventually(lambda: _state_is(client, "healthy"), message="healthy first")

    with pg.connect(autocommit=False) as migration:
        migration.execute("LOCK TABLE bars IN ACCESS EXCLUSIVE MODE")
        async with probing(client) as probes:
            started = time.monotonic()
            await eventually(lambda: _ready_is(client, 503), timeout=FAULT_DEADLINE)
            assert time.monotonic() - started < FAULT_DEADLINE
            details = (await component(client))["details"]
            # The server gave up on the statement, not the monitor on the check.
            assert details["error"].startswith(
                "probe query: no answer within statement_timeout (300 ms)"
            ), details
            assert float(details["duration_ms"]) < TIMEOUT * 1000
        migration.rollback()
    assert probes.statuses("/livez") == {200}
    assert probes.slowest() < PROBE_BUDGET
    await eventually(lambda: _ready_is(client, 200), message="recovered")
    assert pg.sidecar_connections() == 1  # the connection survived the timeouts


@pytest.mark.exclusive
async def test_server_stopped_then_started(
    pg: PostgresInstance, sidecar_client: StartSidecar
) -> None:
    """With flap damping: two failing results to leave healthy, two passing to return."""
    client = await sidecar_client(sidecar_settings(pg.dsn(), fall=2, rise=2))
    await eventually(lambda: _ready_is(client, 200), message="ready first")
    deadline = 2 * (INTERVAL + TIMEOUT) + 1.0

    async with probing(client) as probes:
        started = time.monotonic()
        await asyncio.to_thread(pg.stop, "immediate")
        await eventually(lambda: _ready_is(client, 503), timeout=deadline)
        assert time.monotonic() - started < deadline
        error = (await component(client))["details"]["error"]
        assert error.startswith("cannot connect: "), error
        assert "Connection refused" in error
        await asyncio.to_thread(pg.start)
        await eventually(lambda: _ready_is(client, 200), message="recovered after restart")
    assert probes.statuses("/livez") == {200}
    assert probes.slowest() < PROBE_BUDGET
    assert pg.sidecar_connections() == 1


async def test_reconnects_at_once_after_a_restart_between_runs(pg: PostgresInstance) -> None:
    """The kept connection died with the old server; the run asks the new one instead."""
    check = database_check(pg.dsn())
    try:
        assert (await check.run()).state == "healthy"
        before = check._conn
        await asyncio.to_thread(pg.stop, "immediate")
        await asyncio.to_thread(pg.start)
        assert (await check.run()).state == "healthy"
        assert check._conn is not before
    finally:
        await check.close()


@pytest.mark.exclusive
async def test_frozen_server_then_resumed(
    pg: PostgresInstance, sidecar_client: StartSidecar
) -> None:
    """SIGSTOP: TCP still accepts, nothing ever answers; only the timeout bounds a run."""
    client = await sidecar_client(sidecar_settings(pg.dsn()))
    await eventually(lambda: _ready_is(client, 200), message="ready first")
    run_durations: list[float] = []

    async with probing(client) as probes:
        started = time.monotonic()
        with pg.frozen():
            await eventually(lambda: _ready_is(client, 503), timeout=FAULT_DEADLINE)
            assert time.monotonic() - started < FAULT_DEADLINE
            # Later runs try to reconnect, and each is abandoned at the timeout in turn.
            for _ in range(2):
                seen = (await component(client))["details"]["checked_at"]
                result = await eventually(
                    lambda seen=seen: _newer_than(client, seen), timeout=FAULT_DEADLINE
                )
                assert result["details"]["error"] == f"timed out after {TIMEOUT:g}s"
                run_durations.append(float(result["details"]["duration_ms"]) / 1000)
        await eventually(lambda: _ready_is(client, 200), message="recovered after SIGCONT")
    assert probes.statuses("/livez") == {200}
    assert probes.slowest() < PROBE_BUDGET
    # Abandoning a run costs milliseconds, not psycopg's 10 s cancellation grace.
    assert max(run_durations) < TIMEOUT + 0.25, run_durations
    # Connections abandoned while frozen are gone; the sidecar holds exactly one.
    await eventually(lambda: pg.sidecar_connections() == 1, message="one sidecar connection")


async def test_replica_lag_degrades_then_fails_then_recovers(
    pg: PostgresInstance, replica: PostgresInstance
) -> None:
    pg.execute("CREATE TABLE IF NOT EXISTS ticks (n int)")
    pg.execute("INSERT INTO ticks VALUES (1)")
    await eventually(
        lambda: replica.execute("SELECT count(*) FROM pg_class WHERE relname = 'ticks'")[0][0],
        message="replica caught up",
    )
    check = database_check(
        replica.dsn(),
        database_replication_lag_degraded=0.5,
        database_replication_lag_unhealthy=1.5,
        database_role="replica",
    )
    try:
        # Caught up: what the replica received is replayed (the catalog row of `ticks`
        # may be replayed before the INSERT after it).
        result = await eventually(lambda: _caught_up(check), timeout=5)
        assert result.state == "healthy", result.details
        assert result.details["role"] == "replica"

        replica.execute("SELECT pg_wal_replay_pause()")
        pg.execute("INSERT INTO ticks VALUES (2)")
        result = await eventually(lambda: _run_until(check, "degraded"), timeout=5)
        assert "replication lag" in result.details["reason"]
        result = await eventually(lambda: _run_until(check, "unhealthy"), timeout=5)
        assert float(result.details["replication_lag_seconds"]) >= 1.5

        replica.execute("SELECT pg_wal_replay_resume()")
        result = await eventually(lambda: _run_until(check, "healthy"), timeout=5)
        assert float(result.details["replication_lag_seconds"]) == 0
    finally:
        await check.close()


async def test_timescaledb_jobs_are_read_when_the_extension_is_present(
    pg: PostgresInstance,
) -> None:
    """TimescaleDB is not installed here. A database with a stand-in catalog row and a view
    of `timescaledb_information.job_stats`'s documented shape exercises the installed path."""
    pg.execute("DROP DATABASE IF EXISTS timescale_standin")
    pg.execute("CREATE DATABASE timescale_standin")
    pg.execute(
        """
        SET allow_system_table_mods = on;
        INSERT INTO pg_extension (oid, extname, extowner, extnamespace, extrelocatable,
                                  extversion)
        VALUES (987654, 'timescaledb', 10, 2200, false, '2.17.2');
        CREATE SCHEMA timescaledb_information;
        CREATE VIEW timescaledb_information.job_stats AS
            SELECT * FROM (VALUES (1000, 'Success'), (1001, 'Failed'), (1002, 'Success'))
                AS jobs (job_id, last_run_status);
        """,
        dbname="timescale_standin",
    )
    check = database_check(pg.dsn(db="timescale_standin"))
    try:
        result = await check.run()
    finally:
        await check.close()
    assert result.details["timescaledb"] == "2.17.2"
    assert result.details["timescaledb_jobs"] == "3"
    assert result.details["timescaledb_failed_jobs"] == "1"
    assert result.state == "degraded"
    assert "1 timescaledb jobs failed" in result.details["reason"]


async def test_an_ordinary_role_says_what_it_cannot_see(
    pg: PostgresInstance, store_role: str
) -> None:
    check = database_check(pg.dsn(store_role, PASSWORD))
    try:
        with pg.connect(autocommit=False) as other:
            other.execute("SELECT txid_current()")  # a superuser's open transaction
            result = await check.run()
            assert result.state == "healthy", result.details
            assert int(result.details["connections"]) >= 2  # counts every role's
            assert result.details["sessions_visible"].startswith("own role only")
            pg.execute(f"GRANT pg_monitor TO {store_role}")
            await check.close()  # role membership is read at connection time
            result = await eventually(
                lambda: _run_until_seen(check, "oldest_transaction_seconds", 0.2), timeout=5
            )
            assert "sessions_visible" not in result.details
    finally:
        await check.close()


# -- the password never leaves the sidecar ---------------------------------------------------


PASSWORD = "Pw-7vQ_x9Lr2sK"


@pytest.fixture
def store_role(pg: PostgresInstance) -> str:
    pg.execute("DROP ROLE IF EXISTS store_reader")
    pg.execute(f"CREATE ROLE store_reader LOGIN PASSWORD '{PASSWORD}'")
    return "store_reader"


@pytest.mark.parametrize(
    ("dsn", "expected_error"),
    [
        ("postgresql://store_reader:{pw}-wrong@127.0.0.1:{port}/postgres", "password authentic"),
        ("postgresql://store_reader:{pw}@127.0.0.1:1/postgres", "Connection refused"),
        ("postgresql://store_reader:{pw}@127.0.0.1:notaport/postgres", "invalid integer value"),
        ("postgresql://store_reader:{pw}@[::1/postgres", "IPv6 host address"),
        ("host=127.0.0.1 port={port} user=store_reader password={pw} bogus", 'missing "="'),
    ],
    ids=["wrong-password", "closed-port", "bad-port", "bad-host", "bad-keyword-dsn"],
)
async def test_password_is_redacted_from_errors(
    pg: PostgresInstance, store_role: str, dsn: str, expected_error: str
) -> None:
    metrics = Metrics()
    messages: list[str] = []
    sink = logger.add(messages.append, level="TRACE")
    check = database_check(dsn.format(pw=PASSWORD, port=pg.port), metrics)
    try:
        result = await check.run()
    finally:
        await check.close()
        logger.remove(sink)
    assert result.state == "unhealthy"
    assert expected_error in result.details["error"], result.details
    rendered = result.model_dump_json() + metrics.exposition().decode() + "".join(messages)
    assert PASSWORD not in rendered
    assert PASSWORD.lower() not in rendered.lower()


async def test_password_never_appears_in_a_running_sidecar(
    pg: PostgresInstance, store_role: str, sidecar_process: Any
) -> None:
    """Real processes, every output: probes, metrics and the logs, healthy and failing."""
    common = {"SIDECAR_LOG_LEVEL": "DEBUG", "SIDECAR_CHECK_TIMEOUT": "1"}
    healthy = sidecar_process({**common, "SIDECAR_DATABASE_URL": pg.dsn(store_role, PASSWORD)})
    failing = sidecar_process(
        {
            **common,
            "SIDECAR_LOG_FORMAT": "json",
            "SIDECAR_DATABASE_URL": pg.dsn(store_role, PASSWORD + "-wrong"),
        }
    )
    await asyncio.gather(healthy.wait_listening(), failing.wait_listening())
    await eventually(lambda: _process_ready(healthy, 200), message="healthy sidecar ready")
    await eventually(lambda: _process_ready(failing, 503), message="failing sidecar unready")

    # A restart of the database puts the healthy one through loss and reconnection too.
    await asyncio.to_thread(pg.stop, "immediate")
    await eventually(lambda: _process_ready(healthy, 503), message="unready while down")
    await asyncio.to_thread(pg.start)
    await eventually(lambda: _process_ready(healthy, 200), message="ready again")

    outputs = []
    for process in (healthy, failing):
        for path in ("/healthz", "/healthz?verbose", "/readyz", "/metrics", "/livez"):
            _, body = await process.get(path)
            outputs.append(body)
    await eventually(
        lambda: _verbose_mentions(failing, "password authentication failed"),
        message="the failing sidecar names the cause",
    )
    healthy.stop()
    failing.stop()
    logs = [process.log_path.read_text(errors="replace") for process in (healthy, failing)]
    # The logs did cover the loss and the failures, where a DSN would show if it leaked.
    assert "database connection lost" in logs[0]
    assert "database check failed: cannot connect" in logs[0]
    assert "password authentication failed" in logs[1]
    outputs += logs
    for text in outputs:
        assert PASSWORD not in text


# -- helpers ---------------------------------------------------------------------------------


async def _state_is(client: Any, state: str) -> bool:
    return bool((await component(client)).get("state") == state)


async def _ready_is(client: Any, status: int) -> bool:
    return await readiness(client) == status


async def _newer_than(client: Any, checked_at: str) -> dict[str, Any] | None:
    found = await component(client)
    return found if found["details"]["checked_at"] > checked_at else None


async def _run_until(check: DatabaseCheck, state: str) -> Any:
    result = await check.run()
    if result.state == state:
        return result
    await asyncio.sleep(0.1)  # pacing the polls of a check run by hand, as its interval
    return None


async def _verbose_mentions(process: Any, text: str) -> bool:
    _, body = await process.get("/healthz?verbose")
    return text in body


async def _caught_up(check: DatabaseCheck) -> Any:
    result = await check.run()
    if float(result.details.get("replication_lag_seconds", "nan")) == 0:
        return result
    await asyncio.sleep(0.1)  # pacing the polls of a check run by hand, as its interval
    return None


async def _run_until_seen(check: DatabaseCheck, key: str, at_least: float) -> Any:
    result = await check.run()
    if float(result.details[key]) >= at_least:
        return result
    await asyncio.sleep(0.1)  # pacing the polls of a check run by hand, as its interval
    return None


async def _process_ready(process: Any, status: int) -> bool:
    try:
        code, _ = await process.get("/readyz")
    except OSError:
        return False
    return bool(code == status)
