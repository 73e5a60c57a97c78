"""Fixtures of the real servers the checks watch: a PostgreSQL instance (and replica) of
the tests' own, a store metrics endpoint, a small filesystem. Each always cleans up.

The servers themselves are in `tests/support/` (postgres.py, store.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from pytest_aiohttp import AiohttpServer

from tests.support.postgres import PostgresInstance
from tests.support.store import Coordinator, StoreMetrics


@pytest.fixture(scope="session")
def postgres_root() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("starting a PostgreSQL of the tests' own needs root (runuser postgres)")
    root = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
    shutil.chown(root, "postgres", "postgres")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_instance(postgres_root: Path) -> Iterator[PostgresInstance]:
    """The tests' own primary, on a free port; stopped at the end whatever happened."""
    instance = PostgresInstance(postgres_root, "primary")
    instance.initdb()
    try:
        instance.start()
        yield instance
    finally:
        instance.resume()
        with contextlib.suppress(RuntimeError):
            instance.stop()


@pytest.fixture
def pg(postgres_instance: PostgresInstance) -> Iterator[PostgresInstance]:
    """The primary, running and idle, and put back that way after the test."""
    postgres_instance.reset()
    yield postgres_instance
    postgres_instance.reset()


@pytest.fixture(scope="session")
def replica_instance(
    postgres_instance: PostgresInstance, postgres_root: Path
) -> Iterator[PostgresInstance]:
    """A streaming replica of the tests' primary."""
    postgres_instance.reset()
    replica = PostgresInstance(postgres_root, "replica")
    replica.base_backup_of(postgres_instance)
    try:
        replica.start()
        yield replica
    finally:
        with contextlib.suppress(RuntimeError):
            replica.stop()


@pytest.fixture
def replica(replica_instance: PostgresInstance, pg: PostgresInstance) -> Iterator[PostgresInstance]:
    yield replica_instance
    with contextlib.suppress(psycopg.Error):
        replica_instance.execute("SELECT pg_wal_replay_resume()")


# -- the store's metrics endpoint ----------------------------------------------------------


@pytest.fixture
async def store_metrics(aiohttp_server: AiohttpServer) -> AsyncIterator[StoreMetrics]:
    """A store metrics server with two coordinators well below their watermarks."""
    store = StoreMetrics()
    store.coordinators = {"bars-coord": Coordinator(depth=100), "ticks-coord": Coordinator()}
    await store.serve(aiohttp_server)
    yield store
    store.released.set()


# -- a small filesystem ------------------------------------------------------------------------


@pytest.fixture
def small_filesystem() -> Iterator[Path]:
    """A 4 MiB tmpfs with 64 inodes, unmounted afterwards."""
    mountpoint = Path(tempfile.mkdtemp(prefix="sidecar-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.fail(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()
