"""The role the store needs of its database, judged against a real primary of the tests'
own, its streaming replica (pg_basebackup) and a primary made read-only by ALTER SYSTEM."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from market_data_core.telemetry import HealthComponent

from market_data_sidecar.checks.database import DatabaseCheck, Role
from tests.checks.test_database import _ready_is, component, database_check, sidecar_settings
from tests.support.helpers import eventually
from tests.support.postgres import PostgresInstance
from tests.support.sidecar import StartSidecar

pytestmark = pytest.mark.slow

CANNOT_WRITE = "a replica (in recovery): the store cannot write to it"
READ_ONLY = "read-only (default_transaction_read_only is on): the store's writes fail"
NOT_A_REPLICA = "a primary, not a replica"


async def judged(dsn: str, role: Role) -> HealthComponent:
    check = database_check(dsn, database_role=role)
    try:
        return await check.run()
    finally:
        await check.close()


@pytest.fixture
def read_only_primary(pg: PostgresInstance) -> Iterator[PostgresInstance]:
    """The primary with default_transaction_read_only on, as a provider sets it when a
    disk fills; reset afterwards whatever happened."""
    pg.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    pg.execute("SELECT pg_reload_conf()")
    try:
        yield pg
    finally:
        pg.execute("ALTER SYSTEM RESET default_transaction_read_only")
        pg.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize(
    ("role", "state", "reason"),
    [
        ("primary", "healthy", None),
        ("any", "healthy", None),
        ("replica", "unhealthy", NOT_A_REPLICA),
    ],
)
async def test_the_primary_judged_by_the_role_the_store_needs(
    pg: PostgresInstance, role: Role, state: str, reason: str | None
) -> None:
    result = await judged(pg.dsn(), role)
    assert result.state == state, result.details
    assert result.details["role"] == "primary"
    assert result.details["required_role"] == role
    assert result.details["read_only"] == "false"
    if reason is None:
        assert "reason" not in result.details
    else:
        assert result.details["reason"].startswith(reason)


@pytest.mark.parametrize(
    ("role", "state"), [("primary", "unhealthy"), ("any", "healthy"), ("replica", "healthy")]
)
async def test_the_replica_judged_by_the_role_the_store_needs(
    replica: PostgresInstance, role: Role, state: str
) -> None:
    result = await judged(replica.dsn(), role)
    assert result.state == state, result.details
    assert result.details["role"] == "replica"
    if role == "primary":
        assert result.details["reason"] == CANNOT_WRITE


async def test_a_primary_turned_read_only_is_unhealthy_on_the_kept_connection(
    pg: PostgresInstance,
) -> None:
    check = database_check(pg.dsn())
    try:
        assert (await check.run()).state == "healthy"
        pg.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        pg.execute("SELECT pg_reload_conf()")
        try:
            result = await eventually(lambda: _unhealthy(check), message="read-only seen")
            assert result.details["reason"] == READ_ONLY
            assert result.details["read_only"] == "true"
            assert result.details["role"] == "primary"
        finally:
            pg.execute("ALTER SYSTEM RESET default_transaction_read_only")
            pg.execute("SELECT pg_reload_conf()")
        await eventually(lambda: _healthy(check), message="writable again")
        assert pg.sidecar_connections() == 1  # judged on the one kept connection
    finally:
        await check.close()


async def test_a_read_only_primary_is_fine_for_a_store_that_only_reads(
    read_only_primary: PostgresInstance,
) -> None:
    result = await judged(read_only_primary.dsn(), "any")
    assert result.state == "healthy", result.details
    assert result.details["read_only"] == "true"


async def test_a_stale_dsn_on_a_replica_makes_the_store_unready(
    replica: PostgresInstance, sidecar_client: StartSidecar
) -> None:
    """The default role is primary: a store that writes is not Ready on a replica."""
    client = await sidecar_client(sidecar_settings(replica.dsn()))
    found: dict[str, Any] = await eventually(
        lambda: _reported(client), message="the database reported"
    )
    assert found["state"] == "unhealthy"
    assert await _ready_is(client, 503)
    assert found["details"]["reason"] == CANNOT_WRITE
    verbose = await (await client.get("/readyz?verbose")).text()
    assert f"[-]database failed: {CANNOT_WRITE}" in verbose, verbose


async def _reported(client: Any) -> dict[str, Any]:
    return await component(client)


async def _unhealthy(check: DatabaseCheck) -> HealthComponent | None:
    result = await check.run()
    return result if result.state == "unhealthy" else None


async def _healthy(check: DatabaseCheck) -> HealthComponent | None:
    result = await check.run()
    return result if result.state == "healthy" else None
