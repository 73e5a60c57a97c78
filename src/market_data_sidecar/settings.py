"""Every `SIDECAR_` setting, validated once at start-up into an immutable object.

Precedence, highest first: CLI flags, environment, the `--config` file (JSON or TOML),
defaults. The rest of the code receives these values; nothing else reads the environment.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import psutil
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from market_data_sidecar.checks.database import Role
from market_data_sidecar.feedback.intake import is_loopback
from market_data_sidecar.feedback.model import Scope

ENV_PREFIX = "SIDECAR_"

PositiveSeconds = Annotated[float, Field(gt=0)]
#: Bounds of the fleet's lease and grace, in seconds: also what a step trusts of any
#: member entry, whoever wrote it.
FLEET_LEASE_MAX = 120.0
FLEET_GRACE_MAX = 600.0
Ratio = Annotated[float, Field(ge=0, le=1)]


class _Target(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = ""
    #: Events a target may hold undelivered; in `latest` mode one per coordinator
    #: is kept anyway, so this bounds the number of coordinators tracked.
    buffer: int = Field(default=10_000, gt=0)
    #: `fleet` needs the members' shared state beside a Redis stream.
    scope: Scope = "coordinator"

    @model_validator(mode="after")
    def _fleet_needs_a_stream(self) -> _Target:
        kind = getattr(self, "kind", "")
        if self.scope == "fleet" and kind != "redis-stream":
            raise ValueError(f"scope 'fleet' needs a redis-stream target, not {kind}")
        return self

    @property
    def label(self) -> str:
        """The name used in metrics, logs and `GET /feedback`."""
        return self.name or f"{self.kind}:{_host_of(self.endpoint)}"  # type: ignore[attr-defined]

    @property
    def endpoint(self) -> str:
        return str(self.url)  # type: ignore[attr-defined]


class HttpTargetSettings(_Target):
    """An orchestrator or pipeline that receives feedback as Standard Webhooks."""

    kind: Literal["http"]
    # repr=False: a URL may carry credentials; what is shown is `redact_url(endpoint)`.
    url: AnyHttpUrl = Field(repr=False)
    #: Standard Webhooks signing secret: `whsec_<base64>` (the key is the decoded part)
    #: or any other string (the key is its UTF-8 bytes).
    secret: SecretStr | None = None
    timeout: PositiveSeconds = 2.5

    @field_validator("secret")
    @classmethod
    def _decodable_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            signing_key(value.get_secret_value())
        return value


WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a secret


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_` + base64, else raw UTF-8)."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    if not key:
        raise ValueError("a whsec_ secret must not be empty")
    return key


class RedisPubSubTargetSettings(_Target):
    """A Redis channel that receives each event as JSON."""

    kind: Literal["redis-pubsub"]
    url: str = Field(repr=False)
    channel: str = "feedback"
    timeout: PositiveSeconds = 2.5

    _check_url = field_validator("url")(lambda v: _redis_url(v))


class RedisStreamTargetSettings(_Target):
    """A Redis Stream in Core's event-bus wire format."""

    kind: Literal["redis-stream"]
    url: str = Field(repr=False)
    #: Core's bus prefix; the key is `{namespace}:{stream}`.
    namespace: str = "mdp"
    #: Default `{namespace}.telemetry.feedback`: the stream the pipeline's
    #: `FeedbackConsumer` and the orchestrator's `PulseObserver` read.
    stream: str = ""
    mode: Literal["latest", "all"] = "latest"
    #: A single-rate consumer (the pipeline) needs the fleet's worst level.
    scope: Scope = "fleet"
    #: Bounds the stream and, since the sidecar acknowledges references to trimmed
    #: entries, each consumer group's pending list. Feedback is state: a reader needs the
    #: newest entries only. 10,000 holds days of a fleet composite (written on change and
    #: at each resync) and one whole resync round of 10,000 coordinators per coordinator;
    #: at most ~6 MB of entries plus ~1.7 MB of references per group.
    maxlen: int = Field(default=10_000, gt=0)
    batch: int = Field(default=100, gt=0)
    timeout: PositiveSeconds = 2.5
    #: Entries per change at most (the original and its copies): every reader sharing a
    #: consumer name hears each change (see publishers/stream_copies.py); 1: no copies.
    max_copies: int = Field(default=16, ge=1, le=1000)
    #: Readers behind the busiest group, when the estimate read from Redis is not wanted.
    readers: int | None = Field(default=None, ge=1, le=1000)
    #: Seconds between re-announcements of a state that is not `ok`, for a replica that
    #: joined under a shared consumer name (Redis cannot show it); 0: only after a change.
    reannounce: float = Field(default=2.0, ge=0, le=3600, allow_inf_nan=False)

    _check_url = field_validator("url")(lambda v: _redis_url(v))

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        return _stream_part(value, "namespace", _NAMESPACE)

    @field_validator("stream")
    @classmethod
    def _check_stream(cls, value: str) -> str:
        if value.endswith(".dlq"):
            raise ValueError("stream must not end in .dlq: that is the dead-letter stream")
        return value and _stream_part(value, "stream", _STREAM)

    @model_validator(mode="after")
    def _fleet_is_state(self) -> RedisStreamTargetSettings:
        if self.scope == "fleet" and self.mode == "all":
            raise ValueError(
                "mode 'all' keeps every event, but a fleet composite is state: "
                "set scope 'coordinator' (or 'pod') for a log of events"
            )
        return self

    @property
    def key(self) -> str:
        """The Redis key written, as Core's `RedisStreamsBus` names it."""
        return f"{self.namespace}:{self.stream or consumers_stream(self.namespace)}"


#: A fleet member's name: what a pod name may hold (DNS labels, dots), printable and
#: short, so it fits every view and the member's entry in Redis.
_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")


def default_instance() -> str:
    """The pod name: Kubernetes sets `HOSTNAME` to it (and it is the host name anyway)."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def consumers_stream(namespace: str) -> str:
    """The stream the pipeline's `FeedbackConsumer` and the orchestrator's `PulseObserver`
    read in `namespace` (Core's bus prefixes the key with its own namespace)."""
    return f"{namespace}.telemetry.feedback"


# What Core's bus and both consumers build keys from (`{namespace}:{stream}`): the
# namespace may not hold the `:` separator, neither may hold spaces or control bytes.
# Each rule is its pattern and the words that describe it in the error.
_NAMESPACE = (re.compile(r"[A-Za-z0-9_.-]{1,64}"), "1-64 of letters, digits, '_', '.', '-'")
_STREAM = (re.compile(r"[A-Za-z0-9_.:-]{1,200}"), "1-200 of letters, digits, '_', '.', '-', ':'")


def _stream_part(value: str, what: str, rule: tuple[re.Pattern[str], str]) -> str:
    pattern, allowed = rule
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} must be {allowed}")
    return value


TargetSettings = Annotated[
    HttpTargetSettings | RedisPubSubTargetSettings | RedisStreamTargetSettings,
    Field(discriminator="kind"),
]


#: Files a `rediss://` URL names for redis-py's TLS context: read at the first connection,
#: so one that is missing is said at start-up instead of at the first delivery.
_TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    for name, path in parse_qsl(parts.query):
        if name in _TLS_FILES and not os.path.exists(path):
            # The path only: the rest of the URL may hold a password.
            raise ValueError(f"{name}: no such file or directory: {path}")
    return value


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.hostname or parts.path or url


_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)


#: The checks with a schedule of their own (`feedback` reads the relay's memory: it keeps
#: the global one).
ScheduledCheck = Literal["database", "disk", "queue"]
SCHEDULED_CHECKS: tuple[ScheduledCheck, ...] = ("database", "disk", "queue")


class CheckSchedule(BaseModel):
    """When a check runs, how long it may take, and how many results change its state."""

    model_config = ConfigDict(frozen=True)

    interval: float
    timeout: float
    rise: int
    fall: int


def _setting(name: str) -> str:
    return ENV_PREFIX + name.upper()


class Settings(BaseSettings):
    """The sidecar's configuration; docs/configuration.md says what each setting does."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True
    )

    # Where it listens, and what it calls itself.
    host: str = "0.0.0.0"
    port: int = Field(default=8090, ge=1, le=65535)
    service_name: str = "market-data-store"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # What one client may make the sidecar hold (server/): the port is on the pod network.
    max_connections: int = Field(default=256, ge=1)
    #: Seconds from a request's first byte to the end of its headers.
    header_timeout: PositiveSeconds = 5.0
    #: Seconds from the end of a request's headers to the end of its body.
    body_timeout: PositiveSeconds = 10.0
    #: Seconds a connection may sit idle before (or between) requests.
    idle_timeout: PositiveSeconds = 30.0
    #: Seconds an answer may wait on a client that does not read it; then it is closed.
    write_timeout: PositiveSeconds = 5.0
    #: Request body bytes in flight across all requests; beyond, the heaviest peer's oldest
    #: body gives way (server.bodies.BodyBudget).
    body_bytes_in_flight: int = Field(default=8 * 1024 * 1024, gt=0)
    #: Seconds between two log lines about one kind of client fault (each is counted).
    fault_log_interval: PositiveSeconds = 10.0

    # Check scheduling and flap damping.
    check_interval: PositiveSeconds = 5.0
    check_timeout: PositiveSeconds = 2.0
    #: Consecutive healthy results before a failing component reports healthy again.
    rise: int = Field(default=1, ge=1)
    #: Consecutive failing results before a healthy component reports failing.
    fall: int = Field(default=1, ge=1)
    #: `/livez` fails when the scheduler has made no progress for this many intervals.
    liveness_intervals: float = Field(default=3.0, gt=1)
    ready_when_degraded: bool = True

    # Each check's own schedule: `<check>_check_interval`, `<check>_check_timeout`,
    # `<check>_rise`, `<check>_fall` for the database, disk and queue checks; unset takes
    # the setting of the same name without the check's prefix. Beside a check's own
    # interval, an unset timeout is capped at it, so `SIDECAR_QUEUE_CHECK_INTERVAL=1` alone
    # works with the global timeout of 2.
    database_check_interval: PositiveSeconds | None = None
    database_check_timeout: PositiveSeconds | None = None
    database_rise: Annotated[int, Field(ge=1)] | None = None
    database_fall: Annotated[int, Field(ge=1)] | None = None
    disk_check_interval: PositiveSeconds | None = None
    disk_check_timeout: PositiveSeconds | None = None
    disk_rise: Annotated[int, Field(ge=1)] | None = None
    disk_fall: Annotated[int, Field(ge=1)] | None = None
    queue_check_interval: PositiveSeconds | None = None
    queue_check_timeout: PositiveSeconds | None = None
    queue_rise: Annotated[int, Field(ge=1)] | None = None
    queue_fall: Annotated[int, Field(ge=1)] | None = None
    #: What the store needs of its database: `primary` (it writes, so a replica or a
    #: read-only server is unhealthy), `replica` (a read-only store) or `any`.
    database_role: Role = "primary"

    def schedule(self, check: ScheduledCheck) -> CheckSchedule:
        """`check`'s interval, timeout, rise and fall: its own settings, else the global."""

        def own(name: str) -> Any:
            return getattr(self, f"{check}_{name}")

        interval = own("check_interval") or self.check_interval
        timeout = own("check_timeout") or (
            min(self.check_timeout, interval) if own("check_interval") else self.check_timeout
        )
        return CheckSchedule(
            interval=interval,
            timeout=timeout,
            rise=own("rise") or self.rise,
            fall=own("fall") or self.fall,
        )

    @model_validator(mode="after")
    def _schedules(self) -> Settings:
        for check in SCHEDULED_CHECKS:
            own_interval = getattr(self, f"{check}_check_interval") is not None
            own_timeout = getattr(self, f"{check}_check_timeout") is not None
            schedule = self.schedule(check)
            if (own_interval or own_timeout) and schedule.interval < schedule.timeout:
                interval = _setting(f"{check}_check_interval" if own_interval else "check_interval")
                timeout = _setting(f"{check}_check_timeout" if own_timeout else "check_timeout")
                raise ValueError(
                    f"{interval} ({schedule.interval:g}) must not be below the {check} "
                    f"check's timeout {timeout} ({schedule.timeout:g})"
                )
        return self

    # Shutdown: readiness turns 503 for `shutdown_grace` before intake stops,
    # then buffers drain for up to `drain_timeout`.
    shutdown_grace: Annotated[float, Field(ge=0)] = 2.0
    drain_timeout: Annotated[float, Field(ge=0)] = 5.0

    # database check
    database_url: SecretStr | None = None
    database_connect_timeout: PositiveSeconds = 3.0
    database_connections_degraded: Ratio = 0.80
    database_connections_unhealthy: Ratio = 0.95
    database_replication_lag_degraded: PositiveSeconds = 30.0
    database_replication_lag_unhealthy: PositiveSeconds = 300.0
    database_transaction_age_degraded: PositiveSeconds = 300.0
    database_latency_degraded: PositiveSeconds = 0.5
    #: Server-side bound on every query the check sends; keep it below `check_timeout`.
    database_statement_timeout: PositiveSeconds = 1.0
    #: The query whose round trip is the reported latency; point it at the store's
    #: hottest table to notice a lock held on it (the session is read-only).
    database_probe_query: str = Field(default="SELECT 1", min_length=1)

    # disk check
    disk_paths: list[str] = Field(default_factory=lambda: ["."])
    disk_free_degraded: Ratio = 0.10
    disk_free_unhealthy: Ratio = 0.05
    disk_inodes_free_degraded: Ratio = 0.10
    disk_inodes_free_unhealthy: Ratio = 0.05

    # queue check (the store's write coordinators)
    store_metrics_url: AnyHttpUrl | None = Field(
        default=AnyHttpUrl("http://127.0.0.1:8082/metrics")
    )
    queue_capacity: int = Field(default=10_000, gt=0)
    queue_capacities: dict[str, Annotated[int, Field(gt=0)]] = Field(default_factory=dict)
    queue_low_watermark: Ratio = 0.50
    queue_high_watermark: Ratio = 0.80

    # feedback intake and relay
    token: SecretStr | None = None
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_events_per_request: int = Field(default=1000, gt=0)
    targets: list[TargetSettings] = Field(default_factory=list)
    retry_initial: PositiveSeconds = 0.1
    retry_max: PositiveSeconds = 10.0
    #: Longest `Retry-After` honoured; a target asking for more is retried after this.
    retry_after_max: PositiveSeconds = 60.0
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooldown: PositiveSeconds = 10.0
    #: Seconds between re-publications of every coordinator's current state to every
    #: target (0: off, arrivals included); a target also gets one as soon as it recovers
    #: from an outage, and a stream as soon as a reader arrives (a new or reset consumer
    #: group, a consumer back after an absence). Those are seen, so the periodic round is
    #: only the net for what is not (an entry a live consumer lost): 300 s costs a tenth
    #: of 30 s in CPU and stream writes at 10,000 coordinators.
    resync_interval: Annotated[float, Field(ge=0)] = 300.0
    #: A target that has delivered nothing for this long while its attempts fail or are
    #: refused (404, wrong password) makes the `feedback` component degraded.
    target_failing_after: PositiveSeconds = 30.0
    #: Degrade the `feedback` component when the store has been silent this long (0: never).
    feedback_ttl: Annotated[float, Field(ge=0)] = 0.0
    #: Derive events from polled queue depths when the store has not pushed any
    #: for `synthesize_after` seconds.
    synthesize_feedback: bool = True
    synthesize_after: Annotated[float, Field(ge=0)] = 30.0

    # the fleet (targets with `scope: fleet`)
    #: This sidecar's member name among the replicas writing one stream.
    instance: str = Field(default_factory=default_instance)
    #: Seconds a member's state counts without renewal (a SIGKILLed replica's ends then).
    #: Bounded: a member is judged by its last renewal and this lease, and a lease of a
    #: day would let one dead replica pin the fleet's level for a day.
    fleet_lease: Annotated[float, Field(gt=0, le=FLEET_LEASE_MAX)] = 15.0
    #: Seconds between renewals of this member's state; at most half the lease.
    fleet_renewal: PositiveSeconds = 5.0
    #: Seconds a member whose lease ended without leaving stays suspect, counting at its
    #: last level (it may be partitioned or paused with a full store); 0: dropped at the
    #: lease's end. 30 s outlasts a Sentinel failover (30 s to notice one), so an outage
    #: of Redis does not drop anyone, and bounds what a dead replica costs the fleet.
    fleet_grace: Annotated[float, Field(ge=0, le=FLEET_GRACE_MAX, allow_inf_nan=False)] = 30.0

    @field_validator("instance")
    @classmethod
    def _printable_instance(cls, value: str) -> str:
        if not _INSTANCE.fullmatch(value):
            raise ValueError(
                "must be 1-253 of letters, digits, '_', '.', ':', '-', starting with a "
                "letter or digit (the pod name)"
            )
        return value

    @field_validator("database_url", "token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("token")
    @classmethod
    def _sendable_token(cls, value: SecretStr | None) -> SecretStr | None:
        # An error, not a silent strip: a Secret written with `echo` ends in a newline,
        # and a token the store cannot send in a header would reject every request.
        text = value.get_secret_value() if value is not None else ""
        if text != text.strip():
            raise ValueError(
                "must not begin or end with whitespace (write the Secret with printf or echo -n)"
            )
        if not all("!" <= char <= "~" for char in text):
            raise ValueError("must be printable ASCII without spaces")
        return value

    @field_validator("store_metrics_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.disk_free_unhealthy > self.disk_free_degraded:
            raise ValueError("disk_free_unhealthy must not exceed disk_free_degraded")
        if self.queue_low_watermark >= self.queue_high_watermark:
            raise ValueError("queue_low_watermark must be below queue_high_watermark")
        if self.body_bytes_in_flight < self.max_body_bytes:
            raise ValueError("body_bytes_in_flight must be at least max_body_bytes")
        if self.fleet_lease < 2 * self.fleet_renewal:
            raise ValueError(
                f"SIDECAR_FLEET_LEASE ({self.fleet_lease:g}) must be at least twice "
                f"SIDECAR_FLEET_RENEWAL ({self.fleet_renewal:g})"
            )
        return self

    # -- targets: what one typo in SIDECAR_TARGETS can do -----------------------------------
    # Checked here, not per target: each rule is about the list, or about where the sidecar
    # itself listens (validated first: `host` and `port` come before `targets`).

    @field_validator("targets")
    @classmethod
    def _targets_are_sound(
        cls, targets: list[TargetSettings], info: ValidationInfo
    ) -> list[TargetSettings]:
        labels = [target.label for target in targets]
        if len(labels) != len(set(labels)):
            raise ValueError("names must be unique (set `name` on each target)")
        host, port = info.data.get("host"), info.data.get("port")
        for target in targets:
            own = isinstance(port, int) and _is_own_address(str(target.url), str(host or ""), port)
            if isinstance(target, HttpTargetSettings) and own:
                raise ValueError(
                    f"target {target.label!r} points at this sidecar's own address "
                    f"(port {port}): its events would come back to the intake for ever"
                )
        writers: dict[tuple[str, str, str], str] = {}
        for target in targets:
            if isinstance(target, RedisStreamTargetSettings):
                where = (*_redis_server(target.url), target.key)
                if (other := writers.setdefault(where, target.label)) != target.label:
                    raise ValueError(
                        f"targets {other!r} and {target.label!r} both write stream "
                        f"{target.key} on {where[0]} db {where[1]}: one writer of a key per "
                        "sidecar (give one of them another namespace or stream)"
                    )
        return targets

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        if path is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, InitSettingsSource(settings_cls, _read_config(path)))


#: Names every process calls itself by.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_own_address(url: str, host: str, port: int) -> bool:
    """Whether an `http` URL reaches this sidecar's listener: its port, and a host that is
    the one listened on, or (listening on every address) any address of this machine."""
    parts = urlsplit(url)
    if parts.scheme != "http" or (parts.port or 80) != port:
        return False
    target = (parts.hostname or "").lower()
    if host in ("", "0.0.0.0", "::"):
        return _is_local(target)
    return target == host.lower() or (_is_local(host.lower()) and _is_loopback(target))


def _is_local(name: str) -> bool:
    """A name or address of this machine: loopback, unspecified, its host names, or an
    address one of its interfaces holds."""
    if _is_loopback(name) or name in {socket.gethostname().lower(), default_instance().lower()}:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if address.is_unspecified:
        return True
    local = {
        entry.address.split("%")[0]
        for entries in psutil.net_if_addrs().values()
        for entry in entries
        if entry.family in (socket.AF_INET, socket.AF_INET6)
    }
    return str(address) in local


def _is_loopback(name: str) -> bool:
    return name in _LOCAL_NAMES or name.endswith(".localhost") or is_loopback(name)


def _redis_server(url: str) -> tuple[str, str]:
    """`(server, db)` a Redis URL writes to, alike however it is spelt: a socket path, or
    host and port (loopback names as one), and the database (path, `?db=`, default 0)."""
    parts = urlsplit(url)
    query = dict(pair.partition("=")[::2] for pair in parts.query.split("&") if pair)
    if parts.scheme == "unix":
        return f"unix:{parts.path}", query.get("db", "0") or "0"
    host = (parts.hostname or "localhost").lower()
    host = "loopback" if _is_loopback(host) else host
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    db = parts.path.strip("/") or query.get("db", "0") or "0"
    return f"{host}:{port}", db


class ConfigError(Exception):
    """Invalid configuration, phrased as one line that names the setting."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build `Settings` from flags (`overrides`), environment and the config file."""
    token = _config_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None
    except SettingsError as exc:
        # pydantic-settings' own error when a list or map setting is not JSON.
        field = re.search(r'field "(\w+)"', str(exc))
        setting = ENV_PREFIX + field.group(1).upper() if field else "a setting"
        raise ConfigError(f"invalid configuration: {setting}: not valid JSON") from None
    finally:
        _config_file.reset(token)


#: SIDECAR_ variables read by something other than `Settings`.
OTHER_VARIABLES = frozenset({"SIDECAR_DEMO_REDIS_URL"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each `SIDECAR_` variable no setting reads, naming the nearest one."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    warnings = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in known:
            continue
        nearest = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]}?" if nearest else ""
        warnings.append(f"unknown setting {name} is ignored{hint}")
    return warnings


def describe_errors(exc: ValidationError) -> str:
    """One line naming each bad setting; never the input, which may be a secret."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        location = [str(part) for part in error["loc"]]
        setting = ENV_PREFIX + location[0].upper() if location else "configuration"
        where = "".join(f"[{part}]" for part in location[1:2])
        parts.append(f"{setting}{where}: {error['msg']}")
    return "invalid configuration: " + "; ".join(parts)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"invalid configuration: --config {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: --config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration: --config {path}: expected an object")
    return data
