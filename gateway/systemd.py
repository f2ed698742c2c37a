"""sd_notify without python-systemd: READY, STATUS, WATCHDOG, STOPPING, RELOADING.

Without ``NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same outside
systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends datagrams to ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_interval: float | None = None
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return bool(self.address)

    def notify(self, *lines: str) -> None:
        """Send ``KEY=value`` lines in one datagram; never raises."""
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        """Tell systemd the daemon is ready."""
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        """Tell systemd a reload started (systemd ≥ 253 wants MONOTONIC_USEC)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Tell systemd the daemon is draining."""
        self.notify("STOPPING=1", "STATUS=draining")

    def status(self, text: str) -> None:
        """Update the status line of ``systemctl status``."""
        self.notify(f"STATUS={text}")

    async def watchdog(self) -> None:
        """Ping from the event loop itself: a stalled loop stops the pings."""
        if self.watchdog_interval is None or not self.address:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
