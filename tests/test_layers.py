"""The arrows between packages run one way (issue 16): held by reading the imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def offending_imports(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """``file: module`` for each import of a forbidden package inside ``package``."""
    offences = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if module.split(".")[0] in forbidden or module in forbidden:
                offences.append(f"{path.relative_to(ROOT)}: {module}")
    return offences


def test_the_normalizer_imports_nothing_of_the_gateway_adapters_or_outbox() -> None:
    assert offending_imports("normalizer", ("gateway", "adapters", "outbox")) == []


def test_the_http_layer_does_not_import_the_daemon() -> None:
    # The daemon serves the API; the API sees it only as gateway.api.view.GatewayView.
    assert offending_imports("gateway/api", ("gateway.daemon", "gateway.cli")) == []


def test_the_rule_sees_an_offending_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gateway.errors import NotFound\n", encoding="utf-8")
    assert "gateway.errors" in imported_modules(module)
