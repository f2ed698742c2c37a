"""``GET /v1/stats``: the support metrics of a period (docs/stats.md)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from aiohttp import web

from gateway.api.auth import require
from gateway.api.view import gw
from gateway.config import ChannelConfig
from gateway.errors import BadRequest
from gateway.http import json_response
from gateway.ids import iso
from gateway.stats.query import CLOCKS, GROUPINGS, AccountKeys, StatsQuery, period
from normalizer.timestamps import parse_iso


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time with its offset, "
                         "e.g. 2026-11-01T00:00:00+09:00") from None


async def get_stats(request: web.Request) -> web.Response:
    """``GET /v1/stats?from=&to=&group_by=&clock=``."""
    require(request, "read")
    group_by = request.query.get("group_by") or None
    if group_by is not None and group_by not in GROUPINGS:
        raise BadRequest(f"group_by must be one of {', '.join(GROUPINGS)}")
    clock = request.query.get("clock") or "wall"
    if clock not in CLOCKS:
        raise BadRequest("clock must be wall (the default: time as the customer waits) or "
                         "business (only the time inside the account's business hours)")
    try:
        # A to not after from is the empty period at from (nothing in it, open
        # conversations then): every combination the schema allows is answered.
        start, end = period(_time_param(request, "from"), _time_param(request, "to"),
                            empty_ok=True)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    view = gw(request)
    config = view.config
    answer = await view.store.stats(StatsQuery(start, end, group_by, config.stats.time_zone,
                                               account_keys(config.channels), clock))
    return json_response({"from": iso(datetime.fromtimestamp(start, UTC)),
                          "to": iso(datetime.fromtimestamp(end, UTC)), **answer})


def account_keys(channels: Iterable[ChannelConfig]) -> AccountKeys:
    """How an account group is keyed: ``type:name`` where a name is configured for several
    channel types (``api:default`` and ``email:default``), else the name alone."""
    types_of: dict[str, list[str]] = {}
    for channel in channels:
        types_of.setdefault(channel.name, []).append(channel.type)

    def key(channel: str, account: str) -> str:
        types = types_of.get(account, [])
        if len(types) <= 1:
            return account
        # The account's type: the one named like the channel (api, email), else the first.
        return f"{channel if channel in types else sorted(types)[0]}:{account}"
    return key
