"""The wheel carries what the daemon needs at run time; the docs cover every config key."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.registry import ADAPTERS
from gateway.config import COMMON_CHANNEL_KEYS, Section, parse_config
from gateway.errors import ConfigErrors
from tests.ops.conftest import ROOT

PACKAGES = ("gateway", "adapters", "normalizer", "outbox")


def source_tree(target: Path) -> Path:
    """What a clean checkout holds for the build, copied so the build writes nothing here."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel . --no-deps`` of the project, built once for this module."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = source_tree(tmp / "src")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(tmp / "out"),
         "-q", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    [built] = (tmp / "out").glob("omnirelay-*.whl")
    return built


def test_wheel_contains_the_migrations_and_the_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"gateway/store/{folder}/{p.name}" for folder in ("migrations", "migrations_pg")
               for p in (ROOT / "gateway" / "store" / folder).glob("*.sql")}
    assert shipped and shipped <= names
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names
    for kind in ADAPTERS:
        assert f"adapters/{kind}/__init__.py" in names
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert re.search(r"^omnirelay = gateway\.cli:main$", text, re.M)


def test_installed_wheel_finds_its_migrations(wheel: Path, tmp_path: Path) -> None:
    """Run from the unpacked wheel (as site-packages would hold it), not from the checkout."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import gateway, sys; from gateway.store.sqlite import migration_scripts; "
            "print(gateway.__file__); print([v for v, _ in migration_scripts()])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    location, versions = result.stdout.splitlines()
    assert location.startswith(str(site))
    assert versions == str(sorted(int(p.name.split("_")[0]) for p in
                                  (ROOT / "gateway" / "store" / "migrations").glob("*.sql")))


# ---------------------------------------------------------------- docs/configuration.md


def config_keys() -> set[str]:
    """Every key the parser reads, as ``table.key`` (channels as ``channels.<type>.key``).

    The parser is run on tables of every kind, recording each key it asks for; nested
    tables it asks for are added and parsed again until nothing new turns up. Secrets are
    listed as ``<name>_file`` (``_env`` and ``_credential`` are documented with it).
    """
    kinds = sorted(ADAPTERS)
    seen: set[tuple[str, str, str]] = set()  # (table path, key, how it was read)
    originals = {method: getattr(Section, method) for method in ("get", "secret", "sub")}

    def recording(method: str) -> Any:
        original = originals[method]

        def wrapper(self: Section, name: str, *args: Any, **kwargs: Any) -> Any:
            kinds = args[0] if method == "get" and args else ()
            table = dict in (kinds if isinstance(kinds, tuple) else (kinds,))
            seen.add((self.path, name, "sub" if table else method))
            return original(self, name, *args, **kwargs)
        return wrapper

    for method in originals:
        setattr(Section, method, recording(method))
    try:
        while True:
            nested = {(path, name) for path, name, how in seen
                      if how == "sub" and path.startswith("channels[")}
            text = "[server]\n[store]\n[outbox]\n[logging]\n[[tokens]]\n[[webhooks]]\n"
            for index, kind in enumerate(kinds):
                inner = "".join(f"{name} = {{}}\n" for path, name in sorted(nested)
                                if path == f"channels[{index}]")
                text += f'[[channels]]\ntype = "{kind}"\nname = "x"\n{inner}'
            before = len(seen)
            try:
                parse_config(text, environ={})
            except ConfigErrors:
                pass
            if len(seen) == before:
                break
    finally:
        for method, original in originals.items():
            setattr(Section, method, original)

    keys = set()
    for path, name, how in seen:
        if not path:
            continue  # [server], [[tokens]]…: the tables themselves
        leaf = f"{name}_file" if how == "secret" else name
        if re.fullmatch(r"channels\[\d+\]", path) and name in COMMON_CHANNEL_KEYS:
            keys.add(f"channels.{leaf}")  # common to every account
            continue
        table = re.sub(r"^channels\[(\d+)\]", lambda m: f"channels.{kinds[int(m[1])]}", path)
        table = re.sub(r"\[\d+\]", "", table)
        keys.add(f"{table}.{leaf}")
    return keys


def doc_sections(text: str) -> Iterator[tuple[str, str]]:
    """(heading, body) of each ``##``-``####`` section, its subsections included."""
    parts = re.split(r"^(#{2,4} .*)$", text, flags=re.M)
    headings = parts[1::2]
    bodies = parts[2::2]
    for index, heading in enumerate(headings):
        level = len(heading) - len(heading.lstrip("#"))
        body = bodies[index]
        for later, sub in zip(headings[index + 1:], bodies[index + 1:], strict=True):
            if len(later) - len(later.lstrip("#")) <= level:
                break
            body += later + sub
        yield heading, body


def heading_for(key: str) -> str:
    """The heading a key is documented under (see docs/configuration.md)."""
    table = key.rpartition(".")[0]
    if table.startswith("channels."):
        kind = table.split(".")[1]
        return f'type = "{kind}"'
    if table == "channels":
        return "[[channels]]"
    if table in ("tokens", "webhooks"):
        return f"[[{table}]]"
    return f"[{table}]"


def test_configuration_doc_lists_every_key() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    sections = list(doc_sections(doc))
    missing = []
    keys = config_keys()
    assert {"server.listen", "store.retention_days", "tokens.token_file",
            "channels.type", "channels.email.smtp_listen"} <= keys, sorted(keys)
    for key in sorted(keys):
        marker = heading_for(key)
        leaf = key.rsplit(".", 1)[-1]
        bodies = [body for heading, body in sections if marker in heading]
        if not any(f"`{leaf}`" in body for body in bodies):
            missing.append(f"{key} (under a heading with {marker})")
    assert not missing, "docs/configuration.md lacks:\n" + "\n".join(missing)
