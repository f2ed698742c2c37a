"""Adapters made as ``omnirelay check-config --online`` makes them: parsed from a
``[[channels]]`` table, given a context, never started (``ChannelAdapter.probe``)."""

from __future__ import annotations

import aiohttp

from adapters.base import AdapterContext, ChannelAdapter
from adapters.registry import ADAPTERS
from adapters.testing import MemoryStore
from gateway.config import parse_config
from tests.adapters.conftest import refuse_ingest, refuse_token


def unstarted(channel_toml: str, http: aiohttp.ClientSession, *,
              public_url: str = "https://gateway.example") -> ChannelAdapter:
    """The account of one ``[[channels]]`` table (with its ``type`` and ``name``), made but
    not started."""
    channel = parse_config(channel_toml, environ={}).channels[0]
    ctx = AdapterContext(ingest=refuse_ingest, http=http, public_url=public_url,
                         authorize=refuse_token, store=MemoryStore())
    return ADAPTERS[channel.type](channel.name, channel.options, ctx)
