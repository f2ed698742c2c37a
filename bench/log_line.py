"""What one per-message info line costs the event loop, over the daemon's real logging setup.

Usage (from the repository root; stdout must be a pipe, as under journald)::

    .venv/bin/python bench/log_line.py | cat > /dev/null

``configure_logging("info", "json")`` as ``omnirelay run`` does, then timeit (min of
``--repeat`` runs of ``--number`` calls) of the ``ingest.stored`` line through structlog
(``log.info``) and through :func:`gateway.logging.info_event`. Both time the calling
thread only; the writer thread's system calls run off it. Results go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import timeit

import structlog

from gateway.logging import configure_logging, flush_logs, info_event

FIELDS = {"message_id": "msg_01KB0000000000000000000000",
          "conversation_id": "cnv_01KB0000000000000000", "channel": "api",
          "account": "default"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if sys.stdout.isatty():
        parser.error("pipe stdout (| cat > /dev/null): a terminal gets console lines")
    configure_logging("info", "json")
    log = structlog.get_logger("gateway.ingest")

    def through_structlog() -> None:
        log.info("ingest.stored", **FIELDS)

    def fast_path() -> None:
        info_event("ingest.stored", **FIELDS)

    for name, call in (("structlog log.info", through_structlog),
                       ("info_event", fast_path)):
        best = min(timeit.repeat(call, number=args.number, repeat=args.repeat))
        flush_logs()  # the writer's backlog must not slow the next measurement
        print(f"{name}: {best / args.number * 1e6:.2f} us per line", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
