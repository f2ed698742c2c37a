"""The log writer: structlog's lines, in order, all written by exit, none lost silently."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading

import orjson
import pytest

import gateway.logging
from gateway.logging import LineWriter, mask_text
from gateway.metrics import Metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``code`` in a fresh interpreter with stdout on a pipe, as under journald."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, timeout=60, check=False)


def test_fast_line_is_the_structlog_line_and_every_line_is_written_in_order_by_exit() -> None:
    result = run_python("""
        import logging, sys
        import structlog
        from gateway.logging import configure_logging, info_event
        configure_logging("info", "json")
        log = structlog.get_logger("gateway.ingest")
        fields = dict(message_id="msg_1", conversation_id="cnv_1", channel="api",
                      account="default", api_token="t0k3n-value")
        info_event("ingest.stored", **fields)
        log.info("ingest.stored", **fields)
        for n in range(30_000):
            if n % 3 == 0:
                info_event("seq", n=n)
            elif n % 3 == 1:
                log.warning("seq", n=n)
            else:
                logging.getLogger("aiohttp.server").warning("seq %d", n)
        sys.exit(3)  # a non-zero exit still writes out what is queued
        """)
    assert result.returncode == 3, result.stderr
    assert result.stderr == b""
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    fast, slow = records[0], records[1]
    assert list(fast) == list(slow)  # same keys in the same order
    assert {k: v for k, v in fast.items() if k != "timestamp"} == \
        {k: v for k, v in slow.items() if k != "timestamp"}
    assert fast["api_token"] == "********"
    assert fast["timestamp"].endswith("Z") and len(fast["timestamp"]) == len(slow["timestamp"])
    numbers = [r["n"] if "n" in r else int(r["event"].removeprefix("seq "))
               for r in records[2:]]
    assert numbers == list(range(30_000))


def test_an_uncaught_exception_still_writes_the_queued_lines() -> None:
    result = run_python("""
        import structlog
        from gateway.logging import configure_logging, info_event
        configure_logging("info", "json")
        for n in range(5_000):
            info_event("before.crash", n=n)
        raise RuntimeError("crash")
        """)
    assert result.returncode == 1
    assert b"RuntimeError: crash" in result.stderr
    assert len(result.stdout.splitlines()) == 5_000


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: a blocking write to it waits for a reader."""
    read_fd, write_fd = os.pipe()
    flags = fcntl.fcntl(write_fd, fcntl.F_GETFL)
    fcntl.fcntl(write_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(write_fd, b"\n" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(write_fd, fcntl.F_SETFL, flags)
    return read_fd, write_fd


def test_a_full_queue_drops_lines_and_says_how_many(monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = full_pipe()
    writer = LineWriter(write_fd, max_lines=10)
    sent = 1000
    for n in range(sent):
        writer.put(orjson.dumps({"event": "seq", "n": n}) + b"\n")
    assert writer.dropped > 0
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 65536),
                                                                b"")))
    reader.start()
    assert writer.flush(10)
    os.close(write_fd)
    reader.join(10)
    os.close(read_fd)
    records = [orjson.loads(line) for line in b"".join(chunks).splitlines() if line.strip()]
    written = [r["n"] for r in records if r["event"] == "seq"]
    assert written == sorted(written) and len(written) + writer.dropped == sent
    report = records[-1]
    assert report["event"] == "log.lines_dropped" and report["level"] == "warning"
    assert report["dropped"] == writer.dropped
    monkeypatch.setattr(gateway.logging, "_writer", writer)
    assert Metrics().registry.get_sample_value("omnirelay_log_lines_dropped_total") \
        == writer.dropped


def test_credentials_in_free_text_are_masked() -> None:
    cases = {
        "b'Authorization: Bearer abc.DEF-123\\x01'": "abc.DEF-123",
        "b'Authorization Bearer abc1234567'": "abc1234567",
        "b'X\\x01 bearer abc123456'": "abc123456",
        "b'Authorization Basic dXNlcjpwYXNz'": "dXNlcjpwYXNz",
        "proxy-authorization=Basic dXNlcjpwYXNz": "dXNlcjpwYXNz",
        "GET https://hooks.example/x?access_token=abc123&page=2": "abc123",
        '{"client_secret": "abc123"}': "abc123",
        "https://user:pa55word@hooks.example/x": "pa55word",
    }
    for text, secret in cases.items():
        masked = mask_text(text)
        assert secret not in masked and "********" in masked, masked
    prose = ["message msg_01 stored in cnv_01", "missing or invalid bearer token",
             "tokens are accepted only in the Authorization header"]
    for text in prose:
        assert mask_text(text) == text
