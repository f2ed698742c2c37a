"""The config toolkit every part of omnirelay parses its TOML tables with.

It imports nothing of the daemon, so adapters declare and parse their own settings with it
while ``gateway/config.py`` (the daemon's tables) builds on it; the arrows run one way.
Every problem is collected (not just the first) as a :class:`ConfigError` naming the key,
its line in the file and a hint. Secrets are read from ``<key>_file``, ``<key>_env`` or
``<key>_credential`` (a systemd credential under ``$CREDENTIALS_DIRECTORY``) and are wrapped
in :class:`Secret`, whose ``repr`` never shows the value.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

from gateway.errors import ConfigError


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


T = TypeVar("T")
U = TypeVar("U")


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

    # The overloads give each caller the type it asked for: ``get("port", int, 25)`` is an
    # int, ``get("url", str)`` a str or None, ``get("timeout", (int, float), 10.0)`` a number.
    @overload
    def get(self, name: str, kind: type[T], default: None = None,
            *, required: bool = False, hint: str = "") -> T | None: ...

    @overload
    def get(self, name: str, kind: type[T], default: T,
            *, required: bool = False, hint: str = "") -> T: ...

    @overload
    def get(self, name: str, kind: tuple[type[T], type[U]], default: None = None,
            *, required: bool = False, hint: str = "") -> T | U | None: ...

    @overload
    def get(self, name: str, kind: tuple[type[T], type[U]], default: T | U,
            *, required: bool = False, hint: str = "") -> T | U: ...

    def get(self, name: str, kind: type | tuple[type, ...], default: object = None,
            *, required: bool = False, hint: str = "") -> object:
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
        value: list[str] = self.get(name, list, list(default))
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
            return self._filled(source, env, f"environment variable {value} is empty",
                                "set it to the secret in the unit (Environment=/"
                                "EnvironmentFile=); an empty variable is never a secret")
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
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            hint = ("put the file in /etc/omnirelay/credentials/ (the unit's LoadCredential=)"
                    if source.endswith("_credential") else
                    "check the path and that the service user can read it; under systemd "
                    f"prefer {name}_credential")
            self.error(source, f"cannot read secret file {path}: {exc.strerror}", hint)
            return None
        except UnicodeDecodeError:
            # Binary (a DER key, a .pfx): never echo a byte of it.
            self.error(source, f"secret file {path} is not UTF-8 text",
                       "secrets are text files; convert a binary key or certificate to PEM "
                       "(openssl pkey / openssl pkcs12 -nodes)")
            return None
        if source.endswith("_credential"):
            empty = (f"credential {path} is empty", "put the secret in the file in "
                     "/etc/omnirelay/credentials/; LoadCredential= copies it when the "
                     "service starts, so restart after filling it")
        else:
            empty = (f"secret file {path} is empty",
                     "write the secret into it (spaces and line breaks around it are "
                     "stripped, so a file of only those is empty too)")
        return self._filled(source, text, *empty)

    def _filled(self, source: str, text: str, message: str, hint: str) -> Secret | None:
        """``text`` stripped as a :class:`Secret`, or an error when nothing is left.

        No secret is legitimately empty: an optional one is left out by giving none of
        its keys, while an empty file or variable is a credential not yet filled in (a
        ``touch``-ed placeholder, a failed copy). Accepted, it would fail only later, as
        a provider's puzzling sign-in refusal or, for a signing key, a key anyone knows.
        """
        value = text.strip()
        if not value:
            self.error(source, message, hint)
            return None
        return Secret(value)

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
