"""omnirelay's daemon: store, HTTP API, feed, webhooks, CLI."""
from __future__ import annotations

__version__ = "0.1.0"
