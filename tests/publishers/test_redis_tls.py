"""Redis behind TLS with the default user off and an ACL user limited to the feedback keys:
every target kind (delivery, fleet, readers, resync, the pending-list sweep) through
`rediss://user:pass@...?ssl_ca_certs=...`, and what a wrong CA, an expired certificate or a
wrong password look like. A redis-server of the tests' own, certificates made by openssl."""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from loguru import logger

from market_data_sidecar.feedback.delivery import DeliveryError
from market_data_sidecar.feedback.scope import composite_of
from market_data_sidecar.metrics import Metrics
from market_data_sidecar.publishers.fleet import Fleet, FleetStreamPublisher
from market_data_sidecar.publishers.redis import RedisPubSubPublisher, RedisStreamPublisher
from market_data_sidecar.settings import (
    RedisPubSubTargetSettings,
    RedisStreamTargetSettings,
    Settings,
)
from tests.support.helpers import eventually, feedback, free_port, run_cli
from tests.support.redis_servers import (
    CoreConsumer,
    RedisServer,
    feedback_key,
    feedback_stream,
    stream_fields,
)

pytestmark = pytest.mark.timeout(60, func_only=True)

#: The stream the plain stream target writes, and the one the fleet writes.
NAMESPACE, FLEET_NAMESPACE = "mdp", "pods"
CHANNEL = "feedback"
MAXLEN = 10
#: Approximate trimming keeps up to one radix-tree node beyond MAXLEN.
NODE_ENTRIES = 100


def minimal_acl(password: str) -> list[str]:
    """docs/security.md's minimal ACL for the sidecar's user: two stream keys, a channel."""
    return [
        "on",
        f">{password}",
        "resetchannels",
        f"~{feedback_key(NAMESPACE)}*",
        f"~{feedback_key(FLEET_NAMESPACE)}*",
        f"~{{{feedback_key(FLEET_NAMESPACE)}}}:fleet:*",
        f"&{CHANNEL}",
        "-@all",
        *(f"+{command}" for command in SIDECAR_COMMANDS),
    ]


#: The commands docs/security.md lists, for every target kind and its scripts.
SIDECAR_COMMANDS = [
    *("ping", "info", "time", "evalsha", "script|load", "xadd", "xlen", "xrange"),
    *("xrevrange", "xinfo|groups", "xinfo|consumers", "xpending", "xack", "type", "get"),
    *("set", "publish", "hget", "hmget", "hset", "hdel", "hlen", "hscan", "zadd", "zrem"),
    *("zcard", "zcount", "zscore", "zrevrange", "zrangebyscore", "zrangebylex"),
    *("zremrangebyscore", "sadd", "srem", "scard", "del", "unlink", "exists", "pexpire"),
    "persist",
]


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate it signed for 127.0.0.1, an expired one, another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    expired_cert: Path
    other_ca: Path


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, capture_output=True, check=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-subj", f"/CN={ca}")  # fmt: skip
    openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, days in (("server", "2"), ("expired", "-1")):
        openssl(directory, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem",
                "-CAkey", "ca.key", "-CAcreateserial", "-days", days, "-extfile", "san.ext",
                "-out", f"{name}.pem")  # fmt: skip
    return Certificates(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        expired_cert=directory / "expired.pem",
        other_ca=directory / "other-ca.pem",
    )


class TlsRedis(RedisServer):
    """A redis-server that speaks TLS only, with the default user off."""

    def __init__(self, directory: Path, certificates: Certificates, cert: Path, *acl: str) -> None:
        tls_port = free_port()
        super().__init__(
            directory,
            "--port", "0", "--tls-port", str(tls_port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(certificates.server_key),
            "--tls-ca-cert-file", str(certificates.ca), "--tls-auth-clients", "no",
            *acl,
            port=tls_port,
        )  # fmt: skip
        self.context = ssl.create_default_context(cafile=certificates.ca)
        self.context.check_hostname = False  # the expired one must answer too
        self.context.verify_mode = ssl.CERT_NONE

    def answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return super().answers()  # says why it is not running
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                self.context.wrap_socket(raw) as sock,
            ):
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"-NOAUTH")
        except OSError:
            return False

    def tls_url(self, user: str, password: str, ca: Path) -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"


@dataclass(frozen=True)
class Server:
    """The TLS Redis, its sidecar user's password, and an admin to look with."""

    redis: TlsRedis
    password: str
    admin_password: str
    ca: Path

    def sidecar_url(self, ca: Path | None = None, password: str | None = None) -> str:
        return self.redis.tls_url("sidecar", password or self.password, ca or self.ca)

    def admin_url(self) -> str:
        return self.redis.tls_url("admin", self.admin_password, self.ca)

    def admin(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.admin_url(), decode_responses=True)


def start_server(directory: Path, certificates: Certificates, cert: Path) -> Server:
    password, admin_password = secrets.token_hex(12), secrets.token_hex(12)
    acl = ["--user", "default", "off", "--user", "sidecar", *minimal_acl(password)]
    acl += ["--user", "admin", "on", f">{admin_password}", "~*", "&*", "+@all"]
    server = TlsRedis(directory, certificates, cert, *acl)
    server.start()
    return Server(server, password, admin_password, certificates.ca)


@pytest.fixture
def tls_redis(tmp_path: Path, certificates: Certificates) -> Iterator[Server]:
    server = start_server(tmp_path, certificates, certificates.server_cert)
    yield server
    server.redis.stop()


@pytest.fixture
def expired_redis(tmp_path: Path, certificates: Certificates) -> Iterator[Server]:
    server = start_server(tmp_path, certificates, certificates.expired_cert)
    yield server
    server.redis.stop()


@pytest.fixture
async def closing() -> AsyncIterator[list[RedisStreamPublisher | RedisPubSubPublisher]]:
    made: list[RedisStreamPublisher | RedisPubSubPublisher] = []
    yield made
    for publisher in made:
        await publisher.close()


def stream_target(url: str, namespace: str = NAMESPACE) -> RedisStreamTargetSettings:
    return RedisStreamTargetSettings.model_validate(
        {"kind": "redis-stream", "url": url, "namespace": namespace, "maxlen": MAXLEN,
         "scope": "coordinator", "timeout": 2.0}
    )  # fmt: skip


# -- every target kind ---------------------------------------------------------------------


async def test_delivery_readers_resync_and_sweep_over_tls_with_the_minimal_acl(
    tls_redis: Server, closing: list[RedisStreamPublisher | RedisPubSubPublisher]
) -> None:
    metrics = Metrics()
    publisher = RedisStreamPublisher(stream_target(tls_redis.sidecar_url()), metrics=metrics)
    closing.append(publisher)
    resyncs: list[str] = []
    publisher.on_recovered = lambda: resyncs.append("resync")
    await publisher.start()
    await publisher.deliver([feedback(f"coord-{i}") for i in range(20)])  # delivery

    key = feedback_key(NAMESPACE)
    admin = tls_redis.admin()
    try:
        # Core's own consumer, over TLS as the pipeline reads: a reader arrives.
        async with CoreConsumer(tls_redis.admin_url(), NAMESPACE, "pipeline") as pipeline:
            await eventually(lambda: resyncs, message="a resync for the new reader")
            await eventually(
                lambda: [r for r in publisher.readers() or [] if r.group == "pipeline"],
                message="the reader seen by XINFO",
            )
            for _ in range(6):  # each round read before the next trims it
                await publisher.deliver([feedback(f"coord-{i}", level="hard") for i in range(50)])
                await eventually(lambda: _read_to_the_end(admin, key, "pipeline"))
            assert await pipeline.take(1)  # decoded by Core, over TLS
            # The sweep acknowledges what MAXLEN trimmed: Core never does.
            await eventually(lambda: _acked(metrics, publisher.name), message="a sweep")
            await eventually(
                lambda: _pending_at_most(admin, key, "pipeline", MAXLEN + NODE_ENTRIES),
                message="pending list within MAXLEN",
            )
        details = await publisher.health_details()
    finally:
        await admin.aclose()
    assert details["reachable"] == "true"
    assert "readers_error" not in details, details
    assert "pending_error" not in details, details
    assert publisher.problem() is None


async def test_pubsub_and_the_fleet_over_tls_with_the_minimal_acl(tls_redis: Server) -> None:
    url = tls_redis.sidecar_url()
    admin = tls_redis.admin()
    subscription = admin.pubsub()
    await subscription.subscribe(CHANNEL)
    pubsub = RedisPubSubPublisher(
        RedisPubSubTargetSettings.model_validate(
            {"kind": "redis-pubsub", "url": url, "channel": CHANNEL}
        )
    )
    target = RedisStreamTargetSettings.model_validate(
        {"kind": "redis-stream", "url": url, "namespace": FLEET_NAMESPACE, "timeout": 2.0}
    )
    fleet = Fleet("pod-a", 3.0, 0.5, grace=Settings().fleet_grace, token="t1")
    member = FleetStreamPublisher(target, fleet, metrics=Metrics())
    try:
        await pubsub.start()
        await pubsub.deliver([feedback("bars-coord", level="hard")])
        message = await eventually(
            lambda: subscription.get_message(ignore_subscribe_messages=True, timeout=0.1)
        )
        assert '"coordinator_id": "bars-coord"' in message["data"]

        await member.start()
        source = feedback("bars-coord", level="hard")
        await member.deliver([composite_of(source, coordinators=1, member="pod-a")])
        entries = stream_fields(await admin.xrange(feedback_key(FLEET_NAMESPACE)))
        assert entries
        assert '"level":"hard"' in entries[-1]["data"].replace(" ", "")
        assert await admin.hgetall(f"{{{feedback_key(FLEET_NAMESPACE)}}}:fleet:members")
        assert feedback_stream(FLEET_NAMESPACE) in feedback_key(FLEET_NAMESPACE)
    finally:
        await member.close()
        await pubsub.close()
        await subscription.aclose()
        await admin.aclose()


# -- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason", "says"),
    [
        ("wrong CA", "connection", "certificate verify failed"),
        ("wrong password", "auth", "invalid username-password pair"),
    ],
)
async def test_a_wrong_ca_or_password_is_a_target_failure_that_says_so(
    tls_redis: Server, certificates: Certificates, fault: str, reason: str, says: str
) -> None:
    wrong = secrets.token_hex(12)
    url = (
        tls_redis.sidecar_url(ca=certificates.other_ca)
        if fault == "wrong CA"
        else tls_redis.sidecar_url(password=wrong)
    )
    await _fails_saying(url, reason, says, secrets_kept=[tls_redis.password, wrong])


async def test_an_expired_certificate_is_a_target_failure_that_says_so(
    expired_redis: Server,
) -> None:
    url = expired_redis.sidecar_url()
    await _fails_saying(url, "connection", "certificate has expired", [expired_redis.password])


async def _fails_saying(url: str, reason: str, says: str, secrets_kept: list[str]) -> None:
    lines: list[str] = []
    sink = logger.add(lambda line: lines.append(str(line)), level="DEBUG", format="{message}")
    publisher = RedisStreamPublisher(stream_target(url), metrics=Metrics())
    try:
        await publisher.start()
        with pytest.raises(DeliveryError) as failure:
            await publisher.deliver([feedback("bars-coord")])
        details = await publisher.health_details()
    finally:
        await publisher.close()
        logger.remove(sink)
    assert failure.value.reason == reason
    assert says in str(failure.value), failure.value
    assert says in details["last_redis_error"], details
    assert details["reachable"] == ("true" if reason == "auth" else "false")
    shown = str(failure.value) + str(details) + "".join(lines)
    for secret in secrets_kept:
        assert secret not in shown


def test_a_ca_path_that_does_not_exist_is_an_error_at_start_up(tmp_path: Path) -> None:
    password = secrets.token_hex(12)
    missing = tmp_path / "no-such" / "ca.pem"
    url = f"rediss://sidecar:{password}@127.0.0.1:6380/0?ssl_ca_certs={missing}"
    targets = f'[{{"kind": "redis-stream", "url": "{url}"}}]'
    result = run_cli("check", env={"SIDECAR_TARGETS": targets})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "SIDECAR_TARGETS[0]" in result.stderr
    assert f"ssl_ca_certs: no such file or directory: {missing}" in result.stderr
    assert password not in result.stderr + result.stdout


def _acked(metrics: Metrics, target: str) -> float:
    name = "sidecar_stream_trimmed_references_acked_total"
    return metrics.registry.get_sample_value(name, {"target": target}) or 0.0


async def _read_to_the_end(admin: aioredis.Redis, key: str, group: str) -> bool:
    """The group was delivered the stream's newest entry (trimmed ones it may never see)."""
    newest = [entry_id for entry_id, _ in await admin.xrevrange(key, count=1) or []]
    groups = await admin.xinfo_groups(key)
    return any(g["name"] == group and [g["last-delivered-id"]] == newest for g in groups)


async def _pending_at_most(admin: aioredis.Redis, key: str, group: str, bound: int) -> bool:
    groups = await admin.xinfo_groups(key)
    pending = next(g["pending"] for g in groups if g["name"] == group)
    if pending > bound:
        await asyncio.sleep(0.1)  # the sweep runs with each reading, every 0.5 s
    return bool(pending <= bound)


def test_the_docs_give_the_acl_these_tests_run_with() -> None:
    readme = (Path(__file__).parents[2] / "docs" / "security.md").read_text(encoding="utf-8")
    block = readme.split("ACL SETUSER sidecar", 1)[1].split("```", 1)[0]
    granted = [word.removeprefix("+") for word in block.split() if word.startswith("+")]
    assert granted == SIDECAR_COMMANDS
    assert "-@all" in block.split()
    assert f"~{feedback_key(NAMESPACE)}*" in block.split()
    assert f"~{{{feedback_key(NAMESPACE)}}}:fleet:*" in block.split()
