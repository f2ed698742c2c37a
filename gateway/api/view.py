"""What the HTTP layer needs of the running daemon, as a ``Protocol``.

The handlers type against :class:`GatewayView`, not ``gateway.daemon.Gateway``: the daemon
imports the API to serve it, so the API importing the daemon back would be a cycle, and a
test can serve the API over a small fake that has only these members.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiohttp import web

from adapters.base import ChannelAdapter, Hook
from gateway.config import Config
from gateway.feed import FeedNotifier
from gateway.metrics import Metrics
from gateway.store.base import Route, Store


class Wakeable(Protocol):
    """A worker that sleeps until told there is work (the outbox, a webhook dispatcher)."""

    def wake(self) -> None:
        """Look for work now instead of at the next poll."""


class GatewayView(Protocol):
    """The daemon's members the handlers, the middleware and the hook dispatch use."""

    # Open SSE streams, shown in the systemd status line; the stream handler counts them.
    streams: int

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def feed(self) -> FeedNotifier: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def stopping(self) -> asyncio.Event: ...

    @property
    def outbox(self) -> Wakeable: ...

    @property
    def webhooks(self) -> Mapping[str, Wakeable]: ...

    @property
    def adapters(self) -> Mapping[tuple[str, str], ChannelAdapter]: ...

    def routes(self) -> list[Route]:
        """Where replies can go: every configured account and its channels."""

    def adapter_for_hook(self, channel_type: str, account: str) -> ChannelAdapter | None:
        """The adapter serving ``/hooks/{type}/{account}``, if one is configured."""

    def family_hook(self, path: str, method: str) -> Hook:
        """The handler of an adapter's route outside ``/hooks`` (404 / 405 otherwise)."""

    def customers_erased(self, customer_ids: Iterable[str]) -> None:
        """Tell the adapters here that these customers were erased."""

    def channel_report(self) -> list[dict[str, Any]]:
        """Each configured account: type, state, last error, counters."""

    async def readiness_problems(self) -> list[str]:
        """Why the daemon is not ready (empty when it is)."""


# No type argument: a Protocol is not a class aiohttp could check against.
GATEWAY_KEY: web.AppKey[GatewayView] = web.AppKey("gateway")


def gw(request: web.Request) -> GatewayView:
    """The daemon behind this request."""
    return request.app[GATEWAY_KEY]
