"""The daemon's configuration: TOML → frozen dataclasses, secrets resolved, errors located.

The generic toolkit (:class:`Section`, :class:`Secret`, :class:`ParseContext`) lives in
``gateway/configkit.py``; this module declares the daemon's own tables and the keys every
``[[channels]]`` account shares, and hands the rest of each account to its adapter's
config class, found in the registry.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from adapters.base import AdapterConfig
from adapters.registry import ADAPTERS
from gateway.automation.config import AutomationConfig, parse_automation
from gateway.configkit import (
    CREDENTIAL_PREFIX,
    LineIndex,
    ParseContext,
    Secret,
    Section,
    check_host,
    parse_hostport,
)
from gateway.errors import ConfigError, ConfigErrors

__all__ = [
    "COMMON_CHANNEL_KEYS", "CREDENTIAL_PREFIX", "ChannelConfig", "Config", "LineIndex",
    "LoggingConfig", "OutboxConfig", "ParseContext", "Secret", "Section", "ServerConfig",
    "StatsConfig", "StoreConfig", "TokenConfig", "WebhookConfig", "embedded_default",
    "load_config",
    "parse_config",
]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The HTTP listener and request limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body_bytes: int = 10 * 1024 * 1024
    shutdown_timeout: float = 20.0
    max_streams_per_token: int = 8

# PostgreSQL: how much of <data_dir>/blobs this instance's copies of attachment bytes may
# take (docs/postgresql.md, "Cache size"): ~80 attachments at the 25 MiB maximum, thousands
# of typical photos and PDFs; a file read again after it went costs one fetch.
BLOB_CACHE_MAX_BYTES = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where and how messages are stored."""

    url: str = "sqlite:///omnirelay-data/omnirelay.db"
    data_dir: Path = Path("omnirelay-data")
    synchronous: str = "FULL"
    reopen_window_days: float = 7.0
    retention_days: int | None = None
    max_attachment_bytes: int = 25 * 1024 * 1024
    default_region: str = "US"
    batch_max: int = 256
    claim_lease_seconds: float = 45.0  # PostgreSQL: how long a claimed row is an instance's
    blob_cache_max_bytes: int = BLOB_CACHE_MAX_BYTES  # PostgreSQL: the local cache's budget

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``, by the URL's scheme."""
        return "postgresql" if self.url.startswith("postgresql://") else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database file of a ``sqlite:`` URL (a PostgreSQL store has none: a
        path in the data dir that is never created, so file helpers stay harmless)."""
        if self.backend == "postgresql":
            return self.data_dir / "omnirelay.db"
        path = self.url.removeprefix("sqlite://")
        # sqlite:////abs → "//abs" → "/abs"; sqlite:///rel → "/rel" → "rel"
        return Path(path[1:]) if path.startswith("/") else Path(path)


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """An API bearer token and the scopes it grants."""

    name: str
    token: Secret
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """An outbound webhook subscription."""

    name: str
    url: str
    secret: Secret
    events: tuple[str, ...] = ("*",)
    timeout: float = 10.0
    max_age_seconds: float = 24 * 3600.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 3600.0

    def wants(self, event_type: str) -> bool:
        """Whether this subscription takes events of ``event_type`` (``message.*`` globs)."""
        for pattern in self.events:
            if pattern in ("*", event_type):
                return True
            if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
                return True
        return False


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """Outbound delivery knobs."""

    workers: int = 8
    max_attempts: int = 12
    max_age_seconds: float = 24 * 3600.0
    base_delay: float = 1.0
    max_delay: float = 600.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Log level and rendering."""

    level: str = "info"
    format: str = "auto"  # json | console | auto (console on a TTY)


@dataclass(frozen=True, slots=True)
class StatsConfig:
    """The support metrics (docs/stats.md): the time zone their days are counted in."""

    time_zone: str = "UTC"


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One ``[[channels]]`` table; ``options`` is parsed by the adapter's own config class.

    The keys every account has (``type``, ``name``, ``required`` and the send limits) are
    read here once, so no adapter parses them again.
    """

    type: str
    name: str
    options: AdapterConfig
    required: bool = True
    send_concurrency: int = 4
    send_rate: float | None = None
    groups: bool = False  # store group posts (the group is the conversation); else ignore

    @property
    def key(self) -> tuple[str, str]:
        """Accounts are unique per type: ``("email", "default")``."""
        return (self.type, self.name)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    tokens: tuple[TokenConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    channels: tuple[ChannelConfig, ...] = ()
    source: str = "<embedded default>"
    warnings: tuple[ConfigError, ...] = ()  # key, line, message: check-config and the log
    stats: StatsConfig = field(default_factory=StatsConfig)
    automation: AutomationConfig = field(default_factory=AutomationConfig)  # + [templates]

    def channel(self, channel_type: str, name: str) -> ChannelConfig | None:
        """Return the ``channel_type`` account called ``name``."""
        return next((c for c in self.channels if (c.type, c.name) == (channel_type, name)), None)


SCOPES = frozenset({"read", "write", "admin"})
SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


def _parse_server(section: Section | None) -> ServerConfig:
    if section is None:
        return ServerConfig()
    listen = section.get("listen", str, "127.0.0.1:8080")
    try:
        host, port = parse_hostport(listen)
        check_host(host)
    except ValueError as exc:
        section.error("listen", str(exc), 'e.g. listen = "127.0.0.1:8080" or "[::1]:8080"')
        host, port = "127.0.0.1", 8080
    public_url = section.get("public_url", str, f"http://{host}:{port}").rstrip("/")
    if not re.match(r"https?://", public_url):
        section.error("public_url", "must start with http:// or https://",
                      'how providers reach us, e.g. "https://support.shop.example"')
    proxies = []
    for item in section.str_list("trusted_proxies"):
        try:
            proxies.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            section.error("trusted_proxies", f"{item!r} is not an address or network")
    max_body = section.get("max_body_bytes", int, 10 * 1024 * 1024)
    if max_body < 1024:
        section.error("max_body_bytes", "must be at least 1024")
    shutdown = float(section.get("shutdown_timeout", (int, float), 20.0))
    max_streams = section.get("max_streams_per_token", int, 8)
    if max_streams < 1:
        section.error("max_streams_per_token", "must be at least 1")
    section.finish()
    return ServerConfig(host, port, public_url, tuple(proxies), max_body, shutdown,
                        max_streams)


def _parse_store(section: Section | None, environ: Mapping[str, str]) -> StoreConfig:
    data_dir = Path(environ.get("OMNIRELAY_DATA_DIR", "omnirelay-data"))
    if section is None:
        return StoreConfig(url=f"sqlite:///{data_dir}/omnirelay.db", data_dir=data_dir)
    url = section.get("url", str, "")
    data_dir = Path(section.get("data_dir", str, str(data_dir)))
    if not url:
        url = f"sqlite:///{data_dir}/omnirelay.db"
    if not url.startswith(("sqlite:///", "postgresql://")):
        # The scheme only: a database URL may carry a password.
        scheme = url.split(":", 1)[0] if ":" in url else url[:20]
        section.error("url", f"unsupported store URL scheme {scheme!r}",
                      "sqlite:////abs/path.db, sqlite:///relative.db or "
                      "postgresql://user@host/db (docs/postgresql.md)")
    sync = section.get("synchronous", str, "FULL").upper()
    if sync not in SYNC_MODES:
        section.error("synchronous", f"must be one of {', '.join(SYNC_MODES)}")
        sync = "FULL"
    window = float(section.get("reopen_window_days", (int, float), 7.0))
    retention = section.get("retention_days", int, None)
    if retention is not None and retention < 1:
        section.error("retention_days", "must be at least 1")
    max_att = section.get("max_attachment_bytes", int, 25 * 1024 * 1024)
    region = section.get("default_region", str, "US").upper()
    batch = section.get("batch_max", int, 256)
    lease = float(section.get("claim_lease_seconds", (int, float), 45.0))
    if lease < 1:
        section.error("claim_lease_seconds", "must be at least 1")
    cache = section.get("blob_cache_max_bytes", int, BLOB_CACHE_MAX_BYTES)
    if cache < 0:
        section.error("blob_cache_max_bytes", "must be 0 (no limit) or more",
                      "bytes, e.g. 2147483648 for 2 GiB (docs/postgresql.md, \"Cache size\")")
        cache = BLOB_CACHE_MAX_BYTES
    section.finish()
    return StoreConfig(url, data_dir, sync, window, retention, max_att, region, batch, lease,
                       cache)


def _parse_stats(section: Section | None) -> StatsConfig:
    if section is None:
        return StatsConfig()
    zone = section.get("time_zone", str, "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        section.error("time_zone", f"{zone!r} is not a known time zone",
                      'an IANA name: time_zone = "Asia/Seoul"')
        zone = "UTC"
    section.finish()
    return StatsConfig(zone)


def _parse_outbox(section: Section | None) -> OutboxConfig:
    if section is None:
        return OutboxConfig()
    cfg = OutboxConfig(
        workers=section.get("workers", int, 8),
        max_attempts=section.get("max_attempts", int, 12),
        max_age_seconds=float(section.get("max_age_seconds", (int, float), 86400.0)),
        base_delay=float(section.get("base_delay", (int, float), 1.0)),
        max_delay=float(section.get("max_delay", (int, float), 600.0)),
    )
    section.finish()
    return cfg


def _parse_logging(section: Section | None) -> LoggingConfig:
    if section is None:
        return LoggingConfig()
    level = section.get("level", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        section.error("level", "must be debug, info, warning or error")
        level = "info"
    fmt = section.get("format", str, "auto")
    if fmt not in ("json", "console", "auto"):
        section.error("format", "must be json, console or auto")
        fmt = "auto"
    section.finish()
    return LoggingConfig(level, fmt)


def _parse_tokens(items: list[Any], ctx: ParseContext) -> tuple[TokenConfig, ...]:
    tokens: list[TokenConfig] = []
    for index, item in enumerate(items):
        section = Section(item, f"tokens[{index}]", ctx)
        name = section.get("name", str, f"token-{index}", required=True)
        token = section.secret("token", required=True)
        scopes = section.str_list("scopes", ["read"])
        bad = set(scopes) - SCOPES
        if bad:
            section.error("scopes", f"unknown scope(s) {sorted(bad)}", "read, write, admin")
        if name in {t.name for t in tokens}:
            section.error("name", f"token name {name!r} is used twice",
                          "token names must be unique; rename one")
        section.finish()
        if token is not None:
            if ctx.resolve_secrets and len(token.reveal()) < 16:
                section.error("token", "token is shorter than 16 characters",
                              "generate one: openssl rand -base64 32")
            tokens.append(TokenConfig(name, token, frozenset(scopes) & SCOPES))
    return tuple(tokens)


def default_webhook_name(url: str, items: list[Any]) -> str:
    """An unnamed subscription is named by its URL's host, never by the URL (which may
    carry a user, password or query key and becomes a metric label and a log field);
    plus a short hash of the URL when another entry has the same host."""
    from gateway.http import redact_url  # late: gateway.http imports aiohttp

    def host(value: Any) -> str:
        if not isinstance(value, str):
            return ""
        redacted = redact_url(value)
        return redacted.split("://", 1)[-1].split("/", 1)[0]

    own = host(url)
    sharing = sum(1 for item in items if isinstance(item, dict) and host(item.get("url")) == own)
    if sharing > 1:
        return f"{own}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"
    return own or "webhook"


def _parse_webhooks(items: list[Any], ctx: ParseContext) -> tuple[WebhookConfig, ...]:
    hooks: list[WebhookConfig] = []
    for index, item in enumerate(items):
        section = Section(item, f"webhooks[{index}]", ctx)
        url = section.get("url", str, "", required=True)
        if url and not re.match(r"https?://", url):
            section.error("url", "must be an http(s) URL")
        name = section.get("name", str, "") or default_webhook_name(url, items)
        if name in {h.name for h in hooks}:
            section.error("name", f"webhook name {name!r} is used twice",
                          "give each [[webhooks]] its own name (it keys the delivery cursor)")
        secret = section.secret("secret", required=True)
        events = section.str_list("events", ["*"])
        timeout = float(section.get("timeout", (int, float), 10.0))
        max_age = float(section.get("max_age_seconds", (int, float), 86400.0))
        base = float(section.get("retry_base_seconds", (int, float), 2.0))
        cap = float(section.get("retry_max_seconds", (int, float), 3600.0))
        if base <= 0 or cap < base:
            section.error("retry_base_seconds", "must be > 0 and <= retry_max_seconds")
        section.finish()
        if secret is not None and url:
            hooks.append(WebhookConfig(name, url, secret, tuple(events), timeout, max_age,
                                       base, cap))
    return tuple(hooks)


COMMON_CHANNEL_KEYS = ("type", "name", "required", "send_concurrency", "send_rate", "groups")
"""Keys every ``[[channels]]`` account takes, whatever its type (read here, not by adapters)."""


def _parse_channels(items: list[Any], ctx: ParseContext) -> tuple[ChannelConfig, ...]:
    channels = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(items):
        section = Section(item, f"channels[{index}]", ctx)
        kind = section.get("type", str, "", required=True,
                           hint=f"one of {', '.join(sorted(ADAPTERS))}")
        name = section.get("name", str, "", required=True)
        required = section.get("required", bool, True)
        groups = section.get("groups", bool, False)
        concurrency = section.get("send_concurrency", int, 4)
        if concurrency < 1:
            section.error("send_concurrency", "must be at least 1",
                          "how many replies of this account may be sent at once")
            concurrency = 4
        rate = section.get("send_rate", (int, float), None)
        if rate is not None and rate <= 0:
            section.error("send_rate", "must be more than 0 messages per second",
                          "leave it out for no rate limit")
            rate = None
        if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", name):
            section.error("name", "must be letters, digits, '-', '_' or '.'",
                          "it appears in URLs: /hooks/<type>/<name>")
        if (kind, name) in seen:
            section.error("name", f"{kind} account name {name!r} is used twice",
                          "each [[channels]] name must be unique per type: it appears in "
                          f"/hooks/{kind}/<name>; rename one")
        seen.add((kind, name))
        adapter = ADAPTERS.get(kind)
        if kind and adapter is None:
            section.error("type", f"unknown channel type {kind!r}",
                          f"one of {', '.join(sorted(ADAPTERS))}")
            continue
        if adapter is None:
            continue
        options = adapter.config_class.parse(section)
        section.finish()
        channels.append(ChannelConfig(kind, name, options, required, concurrency,
                                      None if rate is None else float(rate), groups))
    return tuple(channels)


def parse_config(text: str, *, source: str = "<string>",
                 environ: Mapping[str, str] | None = None,
                 resolve_secrets: bool = True) -> Config:
    """Parse TOML text into a :class:`Config`; raise :class:`ConfigErrors` with all errors.

    ``resolve_secrets=False`` checks where secrets come from without reading them, for
    commands that only need the store (backup, purge) run outside the unit.
    """
    env = os.environ if environ is None else environ
    ctx = ParseContext(text, env, resolve_secrets=resolve_secrets)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        match = re.search(r"line (\d+)", str(exc))
        if line is None and match:
            line = int(match.group(1))
        key = ctx.index.key_at(line) if line else None
        # tomllib's message names the position, never the text, so no secret is echoed.
        raise ConfigErrors([ConfigError(
            f"invalid TOML: {exc}", key=key, line=line,
            hint='strings need double quotes (listen = "127.0.0.1:8080"), each key once per '
                 "table, [table] and [[array.of.tables]] headers on their own line")]) from exc
    root = Section(data, "", ctx)
    server = _parse_server(root.sub("server"))
    store = _parse_store(root.sub("store"), env)
    outbox = _parse_outbox(root.sub("outbox"))
    logging_cfg = _parse_logging(root.sub("logging"))
    tokens = _parse_tokens(root.get("tokens", list, []), ctx)
    webhooks = _parse_webhooks(root.get("webhooks", list, []), ctx)
    channels = _parse_channels(root.get("channels", list, []), ctx)
    stats = _parse_stats(root.sub("stats"))
    automation = parse_automation(root.sub("automation"), root.sub("templates"))
    root.finish()
    if ctx.errors:
        raise ConfigErrors(ctx.errors)
    return Config(server, store, outbox, logging_cfg, tokens, webhooks, channels, source,
                  tuple(ctx.warnings), stats=stats, automation=automation)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None, *,
                resolve_secrets: bool = True) -> Config:
    """Read and parse a config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors([ConfigError(
            f"cannot read {path}: {exc.strerror}",
            hint="check the path; the service reads /etc/omnirelay/omnirelay.toml")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigErrors([ConfigError(f"{path} is not UTF-8",
                                        hint="save the file as UTF-8")]) from exc
    return parse_config(text, source=str(path), environ=environ,
                        resolve_secrets=resolve_secrets)


def embedded_default(environ: Mapping[str, str] | None = None) -> Config:
    """The configuration ``omnirelay run`` uses without ``--config`` (see CONTRACT.md).

    SQLite under ``$OMNIRELAY_DATA_DIR``, HTTP on ``$OMNIRELAY_LISTEN``, an e-mail account
    ``default`` with an SMTP listener on ``$OMNIRELAY_SMTP_LISTEN`` taking any recipient,
    an API account ``default`` and a web chat account ``default`` serving its demo page at
    ``/chat/default/``. The API token is ``$OMNIRELAY_API_TOKEN``, else one
    generated into the data dir on first start.
    """
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("OMNIRELAY_DATA_DIR", "omnirelay-data"))
    listen = env.get("OMNIRELAY_LISTEN", "127.0.0.1:8080")
    smtp_listen = env.get("OMNIRELAY_SMTP_LISTEN", "127.0.0.1:2525")
    token = env.get("OMNIRELAY_API_TOKEN") or _generated_token(data_dir)
    if len(token.strip()) < 16:  # as [[tokens]]: a short admin token is guessable
        raise ConfigErrors([ConfigError(
            "the embedded default's API token is shorter than 16 characters",
            key="OMNIRELAY_API_TOKEN", hint="generate one: openssl rand -base64 32")])
    text = f"""
[server]
listen = {listen!r}
[store]
data_dir = {str(data_dir)!r}
url = {"sqlite:///" + str(data_dir / "omnirelay.db")!r}
[[channels]]
type = "email"
name = "default"
address = "support@localhost"
smtp_listen = {smtp_listen!r}
accept_any_recipient = true
[[channels]]
type = "api"
name = "default"
[[channels]]
type = "webchat"
name = "default"
demo_page = true
"""
    config = parse_config(text, source="<embedded default>", environ=env)
    default_token = TokenConfig("default", Secret(token), frozenset({"admin"}))
    return Config(config.server, config.store, config.outbox, config.logging, (default_token,),
                  (), config.channels, "<embedded default>", ())


def _generated_token(data_dir: Path) -> str:
    """Return the token stored in the data dir, creating it (mode 0600) the first time."""
    path = data_dir / "api-token"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    # Printed once, on the run that created it, so a person trying it out can use it.
    print(f"omnirelay: generated API token (saved in {path}): {token}", flush=True)
    return token
