"""Schemathesis hooks: keep long-polls short so the conformance run stays bounded."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_query(ctx: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """``wait`` may be up to 60 s by contract; a fuzz run needs no minute-long polls."""
    if query and isinstance(query.get("wait"), int) and query["wait"] > 1:
        query["wait"] = 1
    return query
