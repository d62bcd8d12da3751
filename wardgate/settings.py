"""Settings, read and validated once at start-up.

Every setting has an environment variable (``WARDGATE_<NAME>``, except ``REDIS_URL``), a key of
the same lower-case name in the optional ``--config FILE`` (YAML), and a default. The
environment wins over the file. ``docs/CONFIGURATION.md`` lists them all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from wardgate.domain.doc_base import NAME_RE
from wardgate.domain.durations import parse_duration
from wardgate.errors import SettingsError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "wardgate:"
    bind_host: str = "127.0.0.1"
    grpc_port: int = 18000
    http_port: int = 18080
    # Where Envoy reaches wardgate's HTTP side (the /auth/* endpoints).
    http_advertise_host: str = "127.0.0.1"
    http_advertise_port: int = 0  # 0: same as http_port
    # The listener Envoy opens when its bootstrap does not say (node metadata listen_port).
    listen_port: int = 10000
    # Envoy's admin port: no registry instance may name it (it can stop Envoy).
    envoy_admin_port: int = 9901
    workers: int = 1
    redis_timeout: float = 0.25
    resync_interval: float = 5.0
    session_ttl: float = 12 * 3600.0  # absolute lifetime of a session
    session_idle_ttl: float = 1800.0  # a session unused this long ends
    login_failures_per_user: int = 10  # failed logins per user name per 15 min, then 429
    session_cookie: str = "wg_session"
    cookie_secure: bool = False
    authz_failure_mode: str = "closed"  # closed: 503 when Redis cannot answer; open: allow
    ratelimit_failure_mode: str = "open"  # open: allow when Redis cannot answer; closed: 429
    ext_authz_timeout: float = 0.25
    ratelimit_timeout: float = 0.1
    # Redis commands of ShouldRateLimit give up after this (then the failure mode applies).
    ratelimit_redis_timeout: float = 0.05
    # The local guard in Envoy behind every exact limit (xds/local_guard.py): a client's bucket
    # holds this many times what the exact check can allow at once (0: no guard) ...
    ratelimit_guard_burst: float = 1.0
    # ... and each route keeps at most this many clients' buckets per Envoy.
    ratelimit_guard_clients: int = 10_000
    # Distinct client-chosen values (headers, addresses) one process counts apart per rule
    # and window; past that, new values share one overflow counter (0: no bound).
    ratelimit_max_clients: int = 100_000
    # Rate-limit counters in a Redis of their own (empty: the one of redis_url). Counters may
    # be evicted; wardgate's other data may not (docs/OPERATIONS.md, "Redis").
    ratelimit_redis_url: str = ""
    # Accept a Redis of redis_url that may evict keys (otherwise: not ready, and an error).
    redis_allow_eviction: bool = False
    # Automatic bans (domain/bans.py): a client address refused by rate limits this many
    # times within ban_window is refused by every Envoy for ban_duration (0: no bans).
    ban_after: int = 300
    ban_window: float = 60.0
    ban_duration: float = 600.0
    # Proxies in front of Envoy whose X-Forwarded-For entries are trusted (0: the client is
    # the peer of the connection). Decides the address that `by: ip` counts and RBAC sees.
    trusted_proxy_hops: int = 0
    # External processing (transform, cache, compose; docs/TRANSFORMS.md): how long Envoy waits
    # for each ext_proc answer before the route's failure mode applies ...
    extproc_timeout: float = 0.2
    # ... the largest body buffered and processed (JSON filtered, cached, composed), bytes.
    extproc_max_body_bytes: int = 1 << 20
    # The response cache's Redis (empty: the one of redis_url), and its commands' deadline.
    cache_redis_url: str = ""
    cache_redis_timeout: float = 0.05
    # How long a cache miss waits for another request fetching the same answer.
    cache_lock_wait: float = 2.0
    # Cached answers each process also keeps in memory (bytes; 0: none), dropped on a purge.
    cache_memory_bytes: int = 64 << 20
    log_level: str = "INFO"
    # Bearer token required by POST /registry/* (empty: heartbeats over HTTP are off).
    registry_token: str = ""
    # --- statistics, usage, tracing (wardgate/stats/, docs/STATISTICS.md) ---
    # Every Envoy streams its access log to wardgate; the per-route metrics and usage need it.
    access_log: bool = True
    access_log_flush_interval: float = 1.0  # Envoy sends its buffered entries this often
    access_log_buffer_bytes: int = 16384  # ... or when this many bytes are buffered
    usage_flush_interval: float = 5.0  # each worker writes its usage figures this often
    usage_retention: float = 90 * 86400.0  # hourly usage buckets are kept this long
    usage_max_keys: int = 10_000  # distinct users/keys/routes per worker between flushes
    stats_max_routes: int = 1000  # distinct route labels per worker; the rest are (other)
    top_clients: int = 10  # the most rate-limited clients exported by name
    decision_logs_per_second: float = 20.0  # refusal log lines per second per worker
    log_format: str = "text"  # text | json (one JSON object per line)
    # host:port of an OTLP/gRPC receiver: Envoy and wardgate export spans there (empty: off).
    otlp_endpoint: str = ""
    trace_sampling: float = 100.0  # percent of requests Envoy traces
    # TLS on Envoy's listener: PEM files that wardgate reads (re-read every resync_interval)
    # and serves to Envoy over SDS. Both or neither. With TLS the session cookie is Secure
    # and takes the __Host- prefix.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # ... or the name of a Secret document (wardgate secrets put), served the same way.
    tls_secret: str = ""
    # Plain-text HTTP on the listener's port answers 301 to https (else such connections close).
    tls_redirect_http: bool = False

    @property
    def listener_tls(self) -> bool:
        """Whether Envoy's listener speaks TLS (from files or a Secret document)."""
        return bool(self.tls_cert_file or self.tls_secret)

    # Session tickets (domain/tickets.py): a signed-in request carrying a valid ticket is
    # decided by Envoy alone. Off: every protected request goes to ext_authz.
    tickets: bool = True
    ticket_ttl: float = 60.0  # a ticket's lifetime, at most 60 s
    ticket_clock_skew: float = 5.0  # what Envoy allows between its clock and wardgate's
    ticket_key_rotation: float = 3600.0  # how long one signing key signs
    ticket_key_lead: float = 5.0  # a key reaches every Envoy this long before it signs
    ticket_cookie: str = "wg_ticket"
    # Issuer JWTs (with a JWKS) verified by Envoy itself; off: by ext_authz only.
    native_jwt: bool = True

    @property
    def advertised_http_port(self) -> int:
        return self.http_advertise_port or self.http_port

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_DURATIONS = {
    "redis_timeout",
    "resync_interval",
    "session_ttl",
    "session_idle_ttl",
    "ext_authz_timeout",
    "ratelimit_timeout",
    "ratelimit_redis_timeout",
    "ban_window",
    "ban_duration",
    "access_log_flush_interval",
    "usage_flush_interval",
    "extproc_timeout",
    "cache_redis_timeout",
    "cache_lock_wait",
    "ticket_ttl",
    "ticket_clock_skew",
    "ticket_key_rotation",
    "ticket_key_lead",
}
# Durations longer than a day, with their bounds in seconds.
_LONG_DURATIONS: dict[str, tuple[float, float]] = {"usage_retention": (3600.0, 400 * 86400.0)}
_RANGES: dict[str, tuple[float, float]] = {
    "ratelimit_guard_burst": (0.0, 100.0),
    "ratelimit_guard_clients": (1, 1_000_000),
    "ratelimit_max_clients": (0, 100_000_000),
    "ban_after": (0, 1_000_000_000),
    "access_log_buffer_bytes": (1024, 4 << 20),
    "usage_max_keys": (100, 1_000_000),
    "stats_max_routes": (1, 100_000),
    "top_clients": (0, 100),
    "decision_logs_per_second": (0.0, 100_000.0),
    "trace_sampling": (0.0, 100.0),
    "extproc_max_body_bytes": (1024, 2 << 20),
    "cache_memory_bytes": (0, 1 << 34),
}
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
_CHOICES = {
    "authz_failure_mode": {"closed", "open"},
    "ratelimit_failure_mode": {"open", "closed"},
    "log_level": {"DEBUG", "INFO", "WARNING", "ERROR"},
    "log_format": {"text", "json"},
}
# host:port (an IPv6 address in brackets), optionally after http:// (OTLP/gRPC, no TLS).
_OTLP_ENDPOINT = re.compile(r"(?:http://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):(\d{1,5})/?")


def env_name(field: str) -> str:
    return "REDIS_URL" if field == "redis_url" else f"WARDGATE_{field.upper()}"


def _coerce(field: dataclasses.Field[Any], raw: Any) -> Any:
    name = field.name
    try:
        if name in _LONG_DURATIONS:
            seconds = parse_duration(raw) if isinstance(raw, str) else float(raw)
            low, high = _LONG_DURATIONS[name]
            if not math.isfinite(seconds) or not low <= seconds <= high:
                raise ValueError(f"must be from {low:g}s to {high:g}s")
            return seconds
        if name == "otlp_endpoint":
            return _otlp_endpoint(str(raw))
        if name in _DURATIONS:
            value: Any = parse_duration(raw) if isinstance(raw, str) else float(raw)
            if name == "session_idle_ttl" and value == 0:
                return 0.0  # no idle expiry
            if not math.isfinite(value) or value <= 0 or value > 86400:
                raise ValueError("must be more than 0 and at most 1d")
            return value
        if field.type in ("float", float):
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ValueError("must be a number")
            value = float(raw)
            low, high = _RANGES[name]
            if not math.isfinite(value) or not low <= value <= high:
                raise ValueError(f"must be from {low:g} to {high:g}")
            return value
        if field.type in ("int", int):
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise ValueError("must be a whole number")
            value = int(raw)
            if value < 0:
                raise ValueError("must not be negative")
            if name in _RANGES and not _RANGES[name][0] <= value <= _RANGES[name][1]:
                low, high = _RANGES[name]
                raise ValueError(f"must be from {low:g} to {high:g}")
            if name.endswith("_port") and value > 65535:
                raise ValueError("a port is at most 65535")
            if name.endswith("_port") and value == 0 and name != "http_advertise_port":
                raise ValueError("a port is at least 1")
            return value
        if field.type in ("bool", bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError("must be true or false")
        value = str(raw)
        if name == "log_level":
            value = value.upper()
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"must be one of {', '.join(sorted(_CHOICES[name]))}")
        return value
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name} ({env_name(name)}): {raw!r}: {exc}") from None


def _otlp_endpoint(raw: str) -> str:
    """``host:port`` of an OTLP/gRPC receiver (``http://`` allowed and dropped); empty: off."""
    text = raw.strip()
    if not text:
        return ""
    found = _OTLP_ENDPOINT.fullmatch(text)
    if found is None or not 0 < int(found.group(2)) <= 65535:
        raise ValueError("use host:port (or http://host:port) of an OTLP/gRPC receiver")
    return f"{found.group(1)}:{int(found.group(2))}"


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults, then the config file, then the environment, then explicit overrides."""
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from None
        except RecursionError:
            raise SettingsError(f"cannot read config file {path}: nested too deeply") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"config file {path} must hold a mapping of settings")
        for key, raw in loaded.items():
            if key not in fields:
                raise SettingsError(f"config file {path}: unknown setting {key!r}")
            values[key] = _coerce(fields[key], raw)
    for name, field in fields.items():
        raw = environ.get(env_name(name))
        if raw is not None and raw != "":
            values[name] = _coerce(field, raw)
    for name, raw in overrides.items():
        if raw is not None:
            values[name] = _coerce(fields[name], raw)
    settings = _with_tls(Settings(**values))
    if settings.session_cookie.startswith("__Host-") and not settings.cookie_secure:
        raise SettingsError(
            "setting session_cookie: a __Host- cookie needs WARDGATE_COOKIE_SECURE=true"
        )
    if settings.redis_url.startswith(("redis+cluster://", "rediss+cluster://")) and not re.search(
        r"\{[^{}]+\}", settings.key_prefix
    ):
        raise SettingsError(
            "under Redis Cluster the key prefix needs a hash tag so that the documents share a "
            "slot: set WARDGATE_KEY_PREFIX={wardgate}:"
        )
    if settings.extproc_timeout > 10 or settings.cache_lock_wait > 30:
        raise SettingsError(
            "setting extproc_timeout is at most 10s and cache_lock_wait at most 30s "
            f"(got {settings.extproc_timeout:g}s, {settings.cache_lock_wait:g}s)"
        )
    for name in ("redis_url", "ratelimit_redis_url", "cache_redis_url"):
        url = getattr(settings, name)
        if url and not url.startswith(_REDIS_SCHEMES):
            raise SettingsError(
                f"setting {name} ({env_name(name)}): {url!r}: use redis://host:port/db, "
                "rediss://..., unix://... or redis+cluster://host:port"
            )
    if not settings.key_prefix:
        raise SettingsError("setting key_prefix (WARDGATE_KEY_PREFIX) must not be empty")
    _check_tickets(settings)
    return settings


def _with_tls(settings: Settings) -> Settings:
    """TLS settings checked together; with TLS, the session cookie and the ticket are Secure
    and named with the __Host- prefix (host-only, Path=/, never set over plain text by anyone)."""
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise SettingsError(
            "TLS on the listener needs both WARDGATE_TLS_CERT_FILE and WARDGATE_TLS_KEY_FILE"
        )
    if settings.tls_secret and settings.tls_cert_file:
        raise SettingsError("WARDGATE_TLS_SECRET or WARDGATE_TLS_CERT_FILE/KEY_FILE, not both")
    if settings.tls_secret and not re.fullmatch(NAME_RE, settings.tls_secret):
        raise SettingsError(f"WARDGATE_TLS_SECRET: {settings.tls_secret!r} is not a document name")
    if not settings.listener_tls:
        if settings.tls_redirect_http:
            raise SettingsError("WARDGATE_TLS_REDIRECT_HTTP needs TLS on the listener")
        return settings

    def host_only(name: str) -> str:
        return name if name.startswith(("__Host-", "__Secure-")) else "__Host-" + name

    return dataclasses.replace(
        settings,
        session_cookie=host_only(settings.session_cookie),
        ticket_cookie=host_only(settings.ticket_cookie),
        cookie_secure=True,
    )


_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,64}")


def _check_tickets(settings: Settings) -> None:
    """The ticket settings fit together (domain/tickets.py)."""
    limits = {
        "ticket_ttl": (2.0, 60.0),
        "ticket_clock_skew": (1.0, 30.0),
        "ticket_key_lead": (1.0, 60.0),
    }
    for name, (low, high) in limits.items():
        value = getattr(settings, name)
        if not low <= value <= high:
            raise SettingsError(
                f"setting {name} ({env_name(name)}): {value:g}s: must be from {low:g}s to {high:g}s"
            )
    if settings.ticket_key_rotation < 4 * settings.ticket_key_lead:
        raise SettingsError(
            "setting ticket_key_rotation (WARDGATE_TICKET_KEY_ROTATION) must be at least 4 times "
            "ticket_key_lead: the next key is published 2 leads before the current one stops"
        )
    for name in ("session_cookie", "ticket_cookie"):
        if not _COOKIE_NAME.fullmatch(getattr(settings, name)):
            raise SettingsError(
                f"setting {name} ({env_name(name)}): 1-64 characters of an HTTP token"
            )
    if settings.ticket_cookie == settings.session_cookie:
        raise SettingsError("setting ticket_cookie must differ from session_cookie")
    if settings.ticket_cookie.startswith("__Host-") and not settings.cookie_secure:
        raise SettingsError(
            "setting ticket_cookie: a __Host- cookie needs WARDGATE_COOKIE_SECURE=true"
        )
