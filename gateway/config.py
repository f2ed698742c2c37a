"""TOML configuration → frozen dataclasses, with secrets resolved and errors located.

Every problem is collected (not just the first) as a :class:`ConfigError` naming the key,
its line in the file and a hint, so ``omnirelay check-config`` can show all of them.
Secrets are read from ``<key>_file``, ``<key>_env`` or ``<key>_credential`` (a systemd
credential under ``$CREDENTIALS_DIRECTORY``) and are wrapped in :class:`Secret`, whose
``repr`` never shows the value.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, ConfigErrors


class Secret:
    """A secret value that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value, for the one place that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


def check_host(host: str) -> None:
    """Raise ValueError unless ``host`` is an IP address or a plausible host name."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62})"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}))*\.?", host):
        raise ValueError(f"{host!r} is not an IP address or host name")


def parse_hostport(value: str, default_port: int = 0) -> tuple[str, int]:
    """Parse ``host:port`` (``[::1]:25`` too)."""
    match = re.fullmatch(r"\[(?P<h6>[^\]]+)\]:(?P<p6>\d+)|(?P<h>[^:]+):(?P<p>\d+)", value)
    if not match:
        if default_port and value and ":" not in value:
            return value, default_port
        raise ValueError(f"expected host:port, got {value!r}")
    host = match.group("h6") or match.group("h")
    port = int(match.group("p6") or match.group("p"))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


class LineIndex:
    """Maps dotted config keys (``channels[1].imap.host``) to their line in the TOML text.

    tomllib keeps no positions, so the file is scanned for table headers and assignments;
    good enough to point a person at the right line.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        self.keys: dict[int, str] = {}
        counters: dict[str, int] = {}
        prefix = ""
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("[["):
                name = stripped.strip("[]").strip()
                index = counters.get(name, -1) + 1
                counters[name] = index
                prefix = f"{name}[{index}]"
                self.lines.setdefault(prefix, number)
                self.keys[number] = prefix
            elif stripped.startswith("["):
                prefix = stripped.strip("[]").strip()
                self.lines.setdefault(prefix, number)
                self.keys[number] = prefix
            else:
                key = re.match(r"([A-Za-z0-9_\-\"'.]+)\s*=", stripped)
                if key:
                    name = key.group(1).strip("\"'")
                    full = f"{prefix}.{name}" if prefix else name
                    self.lines.setdefault(full, number)
                    self.keys[number] = full
                    for inner in re.finditer(r"([A-Za-z0-9_\-]+)\s*=", stripped[key.end():]):
                        self.lines.setdefault(f"{full}.{inner.group(1)}", number)

    def key_at(self, line: int) -> str | None:
        """The key assigned (or table opened) on ``line``, if any."""
        return self.keys.get(line)

    def find(self, key: str) -> int | None:
        """Return the line of ``key`` or of its nearest enclosing table."""
        while key:
            if key in self.lines:
                return self.lines[key]
            if "." not in key and "[" not in key:
                return None
            key = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", key)
        return None


class Section:
    """A view of one TOML table that records which keys were read and any errors."""

    def __init__(self, data: Mapping[str, Any], path: str, ctx: ParseContext) -> None:
        self.data = data
        self.path = path
        self.ctx = ctx
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        """Return the dotted path of ``name`` within this table."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str, hint: str = "") -> None:
        """Record an error about key ``name``."""
        self.ctx.error(self.key(name), message, hint)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None,
            *, required: bool = False, hint: str = "") -> Any:
        """Read a key of the given type, recording an error and returning ``default``."""
        self.used.add(name)
        if name not in self.data:
            if required:
                self.error(name, "is required", hint)
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if bool not in kinds and isinstance(value, bool) and int in kinds:
            self.error(name, f"must be {_kind_names(kinds)}, got a boolean",
                       hint or _kind_hint(name, kinds))
            return default
        if not isinstance(value, kinds):
            self.error(name, f"must be {_kind_names(kinds)}, got {_kind_name(type(value))}",
                       hint or _kind_hint(name, kinds))
            return default
        return value

    def str_list(self, name: str, default: Iterable[str] = ()) -> list[str]:
        """Read a list of strings."""
        value = self.get(name, list, list(default))
        if not all(isinstance(item, str) for item in value):
            self.error(name, "must be a list of strings", f'{name} = ["…", "…"]')
            return list(default)
        return value

    def sub(self, name: str, *, required: bool = False) -> Section | None:
        """Return a nested table as a section."""
        value = self.get(name, dict, None, required=required)
        return None if value is None else Section(value, self.key(name), self.ctx)

    def secret(self, name: str, *, required: bool = False, hint: str = "") -> Secret | None:
        """Read secret ``name`` from ``name_file``, ``name_env`` or ``name_credential``.

        A literal ``name = "…"`` is accepted too (for tests and throwaway setups) but
        ``check-config`` warns about it.
        """
        names = (name, f"{name}_file", f"{name}_env", f"{name}_credential")
        sources = [s for s in names if s in self.data]
        self.used.update(names)  # known keys, so a typo gets "did you mean …?"
        if not sources:
            if required:
                self.error(f"{name}_file", "is required (or "
                           f"{name}_env / {name}_credential)",
                           hint or f'e.g. {name}_credential = "…" with the file in '
                           "/etc/omnirelay/credentials/ (the unit's LoadCredential=)")
            return None
        if len(sources) > 1:
            self.error(sources[1], f"give only one of {', '.join(sources)}",
                       f"keep {sources[0]} and delete the others")
            return None
        source = sources[0]
        value = self.data[source]
        if not isinstance(value, str) or not value:
            # Never echo the value: it may be the secret itself.
            self.error(source, "must be a non-empty string",
                       f'e.g. {name}_file = "/etc/omnirelay/credentials/…"')
            return None
        if source == name:
            self.ctx.warn(self.key(name), "secret written in the config file; prefer "
                          f"{name}_file, {name}_env or {name}_credential")
            return Secret(value)
        if not self.ctx.resolve_secrets:
            return Secret("")
        if source.endswith("_env"):
            env = self.ctx.environ.get(value)
            if env is None:
                self.error(source, f"environment variable {value} is not set",
                           "set it in the unit (Environment=/EnvironmentFile=) or use "
                           f"{name}_credential / {name}_file")
                return None
            return Secret(env.strip())
        if source.endswith("_credential"):
            directory = self.ctx.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                self.error(source, "CREDENTIALS_DIRECTORY is not set",
                           "run under the systemd unit (LoadCredential=), or set "
                           "CREDENTIALS_DIRECTORY=/etc/omnirelay/credentials to check by hand")
                return None
            path = Path(directory) / value
            if not path.exists() and (Path(directory) / f"{CREDENTIAL_PREFIX}{value}").exists():
                # The unit loads /etc/omnirelay/credentials/<file> as omnirelay_<file>.
                path = Path(directory) / f"{CREDENTIAL_PREFIX}{value}"
        else:
            path = Path(value)
        try:
            return Secret(path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            hint = ("put the file in /etc/omnirelay/credentials/ (the unit's LoadCredential=)"
                    if source.endswith("_credential") else
                    "check the path and that the service user can read it; under systemd "
                    f"prefer {name}_credential")
            self.error(source, f"cannot read secret file {path}: {exc.strerror}", hint)
            return None

    def finish(self, extra_known: Iterable[str] = ()) -> None:
        """Record an error for each key nobody read: unknown keys are errors."""
        known = self.used | set(extra_known)
        for name in self.data:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
                if close:
                    hint = f"did you mean {close[0]!r}?"
                else:
                    keys = sorted(k for k in known if not k.endswith(("_env", "_credential")))
                    hint = f"this table takes: {', '.join(keys)}" if keys else \
                        "this table takes no keys"
                self.error(name, "unknown key", hint)


class ParseContext:
    """Collects errors and warnings while a config is parsed."""

    def __init__(self, text: str, environ: Mapping[str, str], *,
                 resolve_secrets: bool = True) -> None:
        self.index = LineIndex(text)
        self.environ = environ
        self.resolve_secrets = resolve_secrets
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigError] = []

    def error(self, key: str, message: str, hint: str = "") -> None:
        """Record an error at ``key``; one without a hint points at the reference."""
        if not hint:
            section = re.sub(r"\[\d+\]", "", key).split(".")[0] or "top level"
            hint = f"see docs/configuration.md, [{section}]"
        self.errors.append(ConfigError(message, key=key, line=self.index.find(key), hint=hint))

    def warn(self, key: str, message: str) -> None:
        """Record a warning at ``key``."""
        self.warnings.append(ConfigError(message, key=key, line=self.index.find(key)))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The HTTP listener and request limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body_bytes: int = 10 * 1024 * 1024
    shutdown_timeout: float = 20.0


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

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database file of a ``sqlite:`` URL."""
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
class ChannelConfig:
    """One ``[[channels]]`` table; ``options`` is parsed by the adapter's own config class."""

    type: str
    name: str
    options: Any
    required: bool = True
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
    warnings: tuple[str, ...] = ()

    def channel(self, type_: str, name: str) -> ChannelConfig | None:
        """Return the ``type_`` account called ``name``."""
        return next((c for c in self.channels if (c.type, c.name) == (type_, name)), None)


SCOPES = frozenset({"read", "write", "admin"})
CREDENTIAL_PREFIX = "omnirelay_"
"""``LoadCredential=omnirelay:/etc/omnirelay/credentials`` names each file ``omnirelay_<file>``."""


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list", dict: "a table"}.get(kind, kind.__name__)


def _kind_names(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(_kind_name(k) for k in kinds)


def _kind_hint(name: str, kinds: tuple[type, ...]) -> str:
    """Show the TOML spelling of the expected type (never the value given)."""
    if str in kinds:
        return f'quote it: {name} = "…"'
    if bool in kinds:
        return f"{name} = true or {name} = false, without quotes"
    if int in kinds or float in kinds:
        return f"a bare number without quotes, e.g. {name} = 30"
    if list in kinds:
        return f'{name} = ["…", "…"]'
    if dict in kinds:
        return f"a table: [{name}] or {name} = {{ key = … }}"
    return ""
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
    section.finish()
    return ServerConfig(host, port, public_url, tuple(proxies), max_body, shutdown)


def _parse_store(section: Section | None, environ: Mapping[str, str]) -> StoreConfig:
    data_dir = Path(environ.get("OMNIRELAY_DATA_DIR", "omnirelay-data"))
    if section is None:
        return StoreConfig(url=f"sqlite:///{data_dir}/omnirelay.db", data_dir=data_dir)
    url = section.get("url", str, "")
    data_dir = Path(section.get("data_dir", str, str(data_dir)))
    if not url:
        url = f"sqlite:///{data_dir}/omnirelay.db"
    if not url.startswith("sqlite:///"):
        if url.startswith("postgresql://"):
            section.error("url", "the PostgreSQL store is not available in this build",
                          "use a sqlite:/// URL")
        else:
            # The scheme only: a database URL may carry a password.
            scheme = url.split(":", 1)[0] if ":" in url else url[:20]
            section.error("url", f"unsupported store URL scheme {scheme!r}",
                          "sqlite:////abs/path.db or sqlite:///relative.db")
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
    section.finish()
    return StoreConfig(url, data_dir, sync, window, retention, max_att, region, batch)


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
    tokens = []
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


def _parse_webhooks(items: list[Any], ctx: ParseContext) -> tuple[WebhookConfig, ...]:
    hooks = []
    for index, item in enumerate(items):
        section = Section(item, f"webhooks[{index}]", ctx)
        url = section.get("url", str, "", required=True)
        if url and not re.match(r"https?://", url):
            section.error("url", "must be an http(s) URL")
        name = section.get("name", str, url)
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


def _parse_channels(items: list[Any], ctx: ParseContext) -> tuple[ChannelConfig, ...]:
    from adapters.registry import ADAPTERS  # late: adapters import gateway modules

    channels = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(items):
        section = Section(item, f"channels[{index}]", ctx)
        kind = section.get("type", str, "", required=True,
                           hint=f"one of {', '.join(sorted(ADAPTERS))}")
        name = section.get("name", str, "", required=True)
        required = section.get("required", bool, True)
        groups = section.get("groups", bool, False)
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
        channels.append(ChannelConfig(kind, name, options, required, groups))
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
    root.finish()
    if ctx.errors:
        raise ConfigErrors(ctx.errors)
    return Config(server, store, outbox, logging_cfg, tokens, webhooks, channels, source,
                  tuple(str(w) for w in ctx.warnings))


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
    and an API account ``default``. The API token is ``$OMNIRELAY_API_TOKEN``, else one
    generated into the data dir on first start.
    """
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("OMNIRELAY_DATA_DIR", "omnirelay-data"))
    listen = env.get("OMNIRELAY_LISTEN", "127.0.0.1:8080")
    smtp_listen = env.get("OMNIRELAY_SMTP_LISTEN", "127.0.0.1:2525")
    token = env.get("OMNIRELAY_API_TOKEN") or _generated_token(data_dir)
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
