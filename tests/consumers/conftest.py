"""The real consumers as processes: the venv `.ci/consumers.sh` builds, the drivers that run
market-data-pipeline's `FeedbackConsumer`, market-data-orchestrator's `PulseObserver` and
market-data-store's `HttpFeedbackBroadcaster` in it, and a `redis-server` of the module's own.

The consumers cannot be imported here (their pins clash with the sidecar's), so each runs
in a subprocess and reports in JSON lines; `Driver.wait_for` waits on those lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tests.support.helpers import SidecarProcess
from tests.support.installers import run_installer
from tests.support.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).resolve().parent
#: The key both consumers read with their defaults, and the sidecar's stream target writes.
FEEDBACK_KEY = "mdp:mdp.telemetry.feedback"
#: The pipeline driver's provider rate: `RateCoordinator.register_provider`'s default, 60/s.
BASE_RATE = 60
#: A cold install downloads the three packages and their dependencies.
INSTALL_TIMEOUT = 900.0

Line = dict[str, Any]


@pytest.fixture(scope="session")
def consumers_python() -> Path:
    """The consumers venv's python, built by `.ci/consumers.sh` if needed.

    A failure fails the tests: skipping would let a fresh machine pass without ever
    running the consumers.
    """
    run_installer("consumers.sh", timeout=INSTALL_TIMEOUT, what="the consumers' venv")
    python = ROOT / ".cache" / "consumers" / "venv" / "bin" / "python"
    if not python.exists():
        pytest.fail(f".ci/consumers.sh succeeded but {python} is missing", pytrace=False)
    return python


class Driver:
    """One driver script in the consumers venv: its JSON lines, collected as they come.

    `wait_for` waits until a line matches, with a deadline; it fails at once, with the
    driver's stderr, when the driver has exited.
    """

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.lines: list[Line] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name=f"driver-{name}")

    @classmethod
    async def start(
        cls,
        python: Path,
        script: str,
        *args: str,
        env: Mapping[str, str],
        log_dir: Path,
    ) -> Driver:
        """Start `script` (a file beside this one) with the consumers venv's python."""
        name = script.removesuffix(".py")
        log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                str(python),
                str(DRIVERS / script),
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, **env},
            )
        return cls(name, proc, log_path)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "unparsed", "text": raw.decode(errors="replace")}
            async with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        await self.proc.wait()
        async with self._changed:
            self._changed.notify_all()

    def stderr(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def matching(self, predicate: Callable[[Line], bool], since: int = 0) -> list[Line]:
        return [line for line in self.lines[since:] if predicate(line)]

    async def wait_for(
        self,
        predicate: Callable[[Line], bool],
        timeout: float = 10.0,
        *,
        since: int = 0,
        message: str = "a matching line",
    ) -> Line:
        """The first line from index `since` on that satisfies `predicate`."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._changed:
            while True:
                found = self.matching(predicate, since)
                if found:
                    return found[0]
                if self._reader.done():
                    raise AssertionError(
                        f"{self.name} exited {self.proc.returncode} before {message};\n"
                        f"lines: {self.lines}\nstderr:\n{self.stderr()}"
                    )
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.name}: {message} not within {timeout}s;\n"
                        f"lines: {self.lines}\nstderr:\n{self.stderr()}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def send(self, command: str) -> None:
        """One command line on the driver's stdin (the store driver reads them)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader


@pytest.fixture
async def start_driver(consumers_python: Path, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await start_driver("pipeline_driver.py", *args, env={...})`; all stopped at the end."""
    started: list[Driver] = []

    async def start(script: str, *args: str, env: Mapping[str, str] | None = None) -> Driver:
        driver = await Driver.start(
            consumers_python, script, *args, env=env or {}, log_dir=tmp_path
        )
        started.append(driver)
        return driver

    yield start
    await asyncio.gather(*(driver.stop() for driver in started))


def consumer_env(redis_url: str, namespace: str | None = None) -> dict[str, str]:
    """How both consumers are configured in production: by environment, defaults else."""
    env = {"EVENT_BUS_BACKEND": "redis", "REDIS_URL": redis_url}
    if namespace is not None:
        env["MD_NAMESPACE"] = namespace
    return env


def is_event(name: str) -> Callable[[Line], bool]:
    return lambda line: line.get("event") == name


# -- a redis-server of the module's own ------------------------------------------------------


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private server: the consumers' key is fixed by their namespace, so tests sharing
    a server would read each other's events; restarts here touch no one else."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


_databases = itertools.cycle(range(16))


@pytest.fixture
def redis_url(module_redis: RedisServer) -> str:
    """A database of this test's own on the module's server, emptied first."""
    url = f"redis://127.0.0.1:{module_redis.port}/{next(_databases)}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


# -- the whole path ---------------------------------------------------------------------------

#: Queue depths of a 1000-slot queue at each level, with the store's 50%/80% watermarks.
DEPTHS = {"ok": 100, "soft": 600, "hard": 850}

StartDriver = Callable[..., Any]


def stream_target(redis_url: str) -> dict[str, str]:
    """A stream target as an operator writes it (kind, name, url), relaying each
    coordinator's events (these tests are about the relay, not the fleet's composite),
    one entry per event: each group has one reader here, and the observer counts every
    entry (copies for readers sharing a name: test_replicas.py)."""
    return {
        "kind": "redis-stream",
        "name": "pulse",
        "url": redis_url,
        "scope": "coordinator",
        "max_copies": "1",
    }


async def start_sidecar(
    sidecar_process: Callable[..., SidecarProcess], *targets: Mapping[str, str], **env: str
) -> SidecarProcess:
    """`market-data-sidecar run` with these targets (SIDECAR_* overrides in `env`)."""
    sidecar = sidecar_process({"SIDECAR_TARGETS": json.dumps(list(targets)), **env})
    await sidecar.wait_listening()
    return sidecar


async def start_consumers(
    start_driver: StartDriver, redis_url: str, namespace: str | None = None
) -> tuple[Driver, Driver]:
    """The pipeline's consumer and the orchestrator's observer, once their groups exist
    (both start at `$`: anything written before is not theirs)."""
    env = consumer_env(redis_url, namespace)
    pipeline, observer = await asyncio.gather(
        start_driver("pipeline_driver.py", env=env), start_driver("observer_driver.py", env=env)
    )
    await asyncio.gather(
        pipeline.wait_for(is_event("ready"), 30, message="pipeline consumer group"),
        observer.wait_for(is_event("ready"), 30, message="observer consumer group"),
    )
    if namespace is None:
        for driver in (pipeline, observer):
            assert driver.matching(is_event("ready"))[0]["key"] == FEEDBACK_KEY
    return pipeline, observer


async def start_store(start_driver: StartDriver, sidecar: SidecarProcess) -> Driver:
    store: Driver = await start_driver("store_driver.py", f"{sidecar.url}/feedback")
    await store.wait_for(is_event("ready"), 30, message="store broadcaster")
    return store


async def store_sends(store: Driver, command: str) -> Line:
    """One event through the store's own bus and broadcaster; fails unless it got a 2xx."""
    since = len(store.lines)
    await store.send(command)
    line = await store.wait_for(
        lambda line: line.get("event") in {"sent", "failed"}, since=since, message=command
    )
    assert line["event"] == "sent", line
    return line


def rate_is(level: str, scale: float, rate: int) -> Callable[[Line], bool]:
    return lambda line: (
        line.get("event") == "rate"
        and line["level"] == level
        and line["scale"] == scale
        and line["rate"] == rate
    )


def observed(coordinator: str, counts: dict[str, int]) -> Callable[[Line], bool]:
    return lambda line: (
        line.get("event") == "observed" and line["counts"].get(coordinator) == counts
    )


async def dead_letters(redis_url: str) -> int:
    """What the consumers' bus could not decode: it goes to `<key>.dlq`, silently."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return int(await client.xlen(f"{FEEDBACK_KEY}.dlq"))
    finally:
        await client.aclose()
