"""Threads whose name the operating system shows too (``top -H``, ``ps -L``, /proc).

Python names its threads only for itself: every thread of the daemon shows as ``python``
in ``top -H``, so an operator (or a benchmark reading /proc) cannot tell the store's
writer from the log writer. :class:`NamedThread` gives the OS thread the Python name
(Linux keeps the first 15 bytes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15


def _load_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def set_os_thread_name(name: str) -> None:
    """Name the calling OS thread (best effort: nothing happens where it cannot)."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)  # type: ignore[operator]


class NamedThread(threading.Thread):
    """A :class:`threading.Thread` that names its OS thread after itself when it starts."""

    def run(self) -> None:
        set_os_thread_name(self.name)
        super().run()
