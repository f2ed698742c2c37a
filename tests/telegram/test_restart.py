"""kill -9 mid-stream and restart: every update stored, none twice (a daemon subprocess)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import aiohttp

from tests.conftest import Daemon, base_config, free_port
from tests.helpers import all_events, wait_until
from tests.telegram.fake import TOKEN, FakeBotApi
from tests.telegram.updates import text

UPDATES = 24


async def test_kill_9_mid_stream_then_restart_loses_nothing_and_repeats_nothing(
        tmp_path: Path) -> None:
    fake = FakeBotApi()
    fake.batch = 1  # one update per getUpdates: the kill lands between confirmations
    await fake.start()
    queued = [fake.queue(text(f"message {n}")) for n in range(UPDATES)]
    first_id = queued[0]["update_id"]
    port = free_port()
    config = base_config(tmp_path / "data", port, free_port(), extra=f"""
        [[channels]]
        type = "telegram"
        name = "shop"
        token = "{TOKEN}"
        api_base_url = "{fake.url}"
        poll_timeout = 1
        timeout = 2
        """)
    daemon = Daemon(tmp_path, config, port)
    try:
        daemon.start()
        await daemon.wait_ready()

        def confirmed() -> int:
            offsets = [int(c.params.get("offset") or 0) for c in fake.calls_of("getUpdates")]
            return max(offsets, default=0)

        await fake.wait_for(lambda: confirmed() >= first_id + 6, timeout=20)
        daemon.kill()
        confirmed_before_kill = confirmed()
        assert confirmed_before_kill < first_id + UPDATES, "the kill came too late"
        calls_before_restart = len(fake.calls_of("getUpdates"))

        daemon.start()
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            async def all_stored() -> list[str] | None:
                events = await all_events(http, daemon.url)
                ids = [e["data"]["message"]["provider"]["message_id"] for e in events
                       if e["type"] == "message.received"]
                return ids if len(set(ids)) >= UPDATES else None

            await wait_until(all_stored, timeout=30)
            ids = await all_stored()
        assert ids is not None
        expected = {f"{u['message']['chat']['id']}:{u['message']['message_id']}"
                    for u in queued}
        assert set(ids) == expected  # nothing lost
        assert Counter(ids).most_common(1)[0][1] == 1  # nothing announced twice
        # The restart resumed from the stored offset, never before what was confirmed.
        resumed = int(fake.calls_of("getUpdates")[calls_before_restart].params.get("offset")
                      or 0)
        assert resumed >= confirmed_before_kill
        assert await daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        await fake.stop()
