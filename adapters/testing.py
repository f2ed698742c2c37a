"""A scriptable in-memory adapter for tests of the outbox and the daemon's supervision."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.base import AdapterConfig, ChannelAdapter, SendLimits, SendResult
from gateway.errors import SendError
from gateway.store.base import OutboxItem
from normalizer.model import Party


@dataclass(frozen=True, slots=True)
class RecordingConfig(AdapterConfig):
    """Nothing to set: the recording adapter is scripted from the test."""

    @classmethod
    def parse(cls, section: Any) -> RecordingConfig:
        """Not configurable from TOML."""
        return cls()


@dataclass
class Script:
    """What the next sends do: raise these errors in turn, then succeed."""

    errors: list[SendError] = field(default_factory=list)
    delay: float = 0.0


class RecordingAdapter(ChannelAdapter):
    """Records every send; ``script`` injects errors and delays."""

    type = "recording"
    channels = frozenset({"api"})
    config_class = RecordingConfig

    def __init__(self, name: str = "rec", config: RecordingConfig | None = None,
                 ctx: Any = None, *, limits: SendLimits | None = None) -> None:
        super().__init__(name, config or RecordingConfig(), ctx, limits=limits)
        self.sent: list[OutboxItem] = []
        self.attempts: list[tuple[str, float]] = []
        self.script = Script()
        self.active = 0
        self.max_active = 0
        self.on_send: Callable[[OutboxItem], None] | None = None

    def sender(self, channel: str) -> Party:
        """The account's own identity."""
        return Party("external", f"omnirelay:{self.name}")

    async def send(self, item: OutboxItem) -> SendResult:
        """Record, maybe wait, maybe fail as scripted."""
        loop = asyncio.get_running_loop()
        self.attempts.append((item.message["id"], loop.time()))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.script.delay:
                await asyncio.sleep(self.script.delay)
            if self.script.errors:
                raise self.script.errors.pop(0)
            self.sent.append(item)
            if self.on_send:
                self.on_send(item)
            return SendResult(f"prov-{item.message['id']}")
        finally:
            self.active -= 1
