"""Telegram account settings: clear errors; a refused token shows in health, not a crash."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adapters.telegram import TelegramConfig
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.errors import ConfigErrors
from tests.helpers import wait_until
from tests.telegram.conftest import gateway_config
from tests.telegram.fake import TOKEN, FakeBotApi


def channel(options: str) -> str:
    return f'[[channels]]\ntype = "telegram"\nname = "shop"\n{options}\n'


def errors(options: str) -> dict[str, str]:
    with pytest.raises(ConfigErrors) as caught:
        parse_config(channel(options), environ={})
    return {e.key: e.message for e in caught.value.errors}


def test_a_good_account_parses_with_its_defaults() -> None:
    config = parse_config(channel(f'token = "{TOKEN}"'), environ={}).channels[0].options
    assert isinstance(config, TelegramConfig)
    assert config.api_base_url == "https://api.telegram.org"
    assert (config.mode, config.parse_mode, config.poll_timeout) == ("polling", "plain", 30)
    assert config.bot_id == TOKEN.split(":")[0]


@pytest.mark.parametrize(("options", "key", "message"), [
    ("", "channels[0].token", "is required"),
    ('token = "not-a-token"', "channels[0].token", "is not a bot token"),
    (f'token = "{TOKEN}"\nmode = "webhook"', "channels[0].webhook_secret",
     'is required with mode = "webhook"'),
    (f'token = "{TOKEN}"\nmode = "push"', "channels[0].mode", "must be one of"),
    (f'token = "{TOKEN}"\napi_base_url = "https://api.telegram.org/bot"',
     "channels[0].api_base_url", "without a path"),
    (f'token = "{TOKEN}"\nwebhook_secret = "has spaces"', "channels[0].webhook_secret",
     "must be 1-256 characters"),
    (f'token = "{TOKEN}"\nparse_mode = "rich"', "channels[0].parse_mode", "must be one of"),
])
def test_bad_settings_are_errors_naming_the_key(options: str, key: str, message: str) -> None:
    found = errors(options)
    assert key in found and message in found[key], found
    assert "not-a-token" not in str(found)  # a secret's value is never echoed


async def test_a_refused_token_shows_in_health_and_the_daemon_keeps_running(
        tmp_path: Path) -> None:
    fake = FakeBotApi(token="999:other-bot-token")
    await fake.start()
    gateway = Gateway(parse_config(gateway_config(tmp_path, fake)))
    try:
        await gateway.start()
        adapter = gateway.adapters[("telegram", "shop")]

        async def refused() -> str | None:
            return adapter.health().last_error

        await wait_until(refused, timeout=10)
        assert "refused the bot token" in (adapter.health().last_error or "")
        assert TOKEN not in str(adapter.health())
    finally:
        await gateway.stop()
        await fake.stop()


async def test_a_long_poll_in_progress_does_not_hold_shutdown(tmp_path: Path) -> None:
    fake = FakeBotApi()
    fake.max_hold = 30.0  # as Telegram holds it: the whole poll_timeout
    await fake.start()
    config = gateway_config(tmp_path, fake).replace("poll_timeout = 1", "poll_timeout = 30")
    gateway = Gateway(parse_config(config))
    try:
        await gateway.start()
        await fake.wait_for(lambda: fake.calls_of("getUpdates"))
        started = time.monotonic()
        await gateway.stop()
        # Stopping cancels the poll at once instead of waiting out its 30 s (or the 5 s
        # shutdown_timeout); the unconfirmed updates would simply come again.
        assert time.monotonic() - started < 4.0
    finally:
        await fake.stop()
