"""Prometheus metrics, one registry per daemon (so tests can run several daemons)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.logging import lines_dropped
from gateway.store.base import BlobCacheStats
from gateway.store.jobs.stats import BUSINESS, Sample

if TYPE_CHECKING:
    from gateway.supervisor import LoopHealth

# (adapter type, account, state, its supervised loops), one per configured account.
ChannelStates = Callable[[], Iterable[tuple[str, str, str, Sequence["LoopHealth"]]]]


class Metrics:
    """The daemon's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("omnirelay_messages_received_total",
                                   "Inbound messages stored (new, not repeats)",
                                   ["channel", "account"], registry=r)
        self.duplicates = Counter("omnirelay_messages_duplicate_total",
                                  "Inbound repeat deliveries acknowledged without a new message",
                                  ["channel", "account"], registry=r)
        self.messages_out = Counter("omnirelay_messages_sent_total",
                                    "Outbound messages by final outcome",
                                    ["channel", "account", "status"], registry=r)
        self.send_retries = Counter("omnirelay_send_retries_total",
                                    "Outbound send attempts that will be retried",
                                    ["channel", "account"], registry=r)
        self.outbox_depth = Gauge("omnirelay_outbox_depth",
                                  "Outbound messages not yet sent or failed", ["state"],
                                  registry=r)
        self.webhook_deliveries = Counter("omnirelay_webhook_deliveries_total",
                                          "Webhook deliveries acknowledged by the receiver",
                                          ["subscription"], registry=r)
        self.webhook_failures = Counter("omnirelay_webhook_failures_total",
                                        "Webhook delivery attempts that failed",
                                        ["subscription"], registry=r)
        self.webhook_dead = Counter("omnirelay_webhook_dead_letters_total",
                                    "Webhook deliveries given up and dead-lettered",
                                    ["subscription"], registry=r)
        self.ingest_latency = Histogram(
            "omnirelay_ingest_latency_seconds",
            "Time from receiving an inbound message to its commit",
            ["channel"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.rejected = Counter("omnirelay_inbound_rejected_total",
                                "Inbound requests refused (bad signature, malformed, too large)",
                                ["channel", "reason"], registry=r)
        self.store_batch = Histogram("omnirelay_store_batch_size",
                                     "Write jobs committed together (group commit)",
                                     registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        # The support metrics' durations (docs/stats.md), as they are committed. Unlike
        # /v1/stats, a conversation closed twice observes a resolution at each close. The
        # business clock's (accounts with business hours only) are histograms of their own,
        # not a ``clock`` label on these: a query summing over the labels would mix both
        # clocks' seconds, and these series stay as they were.
        support_buckets = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800,
                           604800)
        self.support: dict[str, Histogram] = {}  # by sample name (frt, frt_business …)
        for sample, name, text in (
                ("frt", "first_response", "Customer's first message to the first human reply"),
                ("response", "response", "A run of customer messages to the next human reply"),
                ("resolution", "resolution", "Customer's first message to a close")):
            self.support[sample] = Histogram(
                f"omnirelay_{name}_seconds", text, ["channel", "account"], registry=r,
                buckets=support_buckets)
            self.support[BUSINESS[sample]] = Histogram(
                f"omnirelay_{name}_business_seconds",
                f"{text}, counting only the account's business hours", ["channel", "account"],
                registry=r, buckets=support_buckets)
        r.register(_LogLinesDropped())

    def watch_channels(self, states: ChannelStates) -> None:
        """Export every account's state and supervised loops, read when scraped (what
        ``/v1/channels`` shows, without error texts), so alerts need no API token."""
        self.registry.register(_Channels(states))

    def watch_blob_cache(self, cache: BlobCacheStats) -> None:
        """Export the local attachment cache's size and evictions (PostgreSQL's store)."""
        self.registry.register(_BlobCache(cache))

    def observe_support(self, samples: list[Sample]) -> None:
        """Durations a committed batch measured: (frt | response | resolution, or its
        business twin, channel, account, seconds). Called on the store's writer thread."""
        for name, channel, account, seconds in samples:
            self.support[name].labels(channel, account).observe(seconds)


class _LogLinesDropped(Collector):
    """Log lines dropped because stdout did not keep up (the logging module counts them)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("omnirelay_log_lines_dropped",
                                  "Log lines dropped because stdout did not keep up",
                                  value=lines_dropped())


class _BlobCache(Collector):
    """The local cache of attachment bytes, read when scraped (docs/postgresql.md)."""

    def __init__(self, cache: BlobCacheStats) -> None:
        self.cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("omnirelay_blob_cache_bytes",
                                "Bytes of attachment copies in this instance's cache",
                                value=self.cache.size_bytes)
        yield CounterMetricFamily("omnirelay_blob_cache_evicted_files",
                                  "Cached attachment files removed to keep to the budget",
                                  value=self.cache.evicted_files)


CHANNEL_STATES = ("starting", "running", "degraded", "failed", "stopped")


class _Channels(Collector):
    """The accounts as ``/v1/channels`` shows them: one 0/1 series per state (the one
    the account is in is 1), and each supervised loop's liveness, restarts and last
    success. An alert on ``omnirelay_channel_state{state="running"} == 0`` or on
    ``time() - omnirelay_channel_loop_last_success_timestamp_seconds`` needs no token, so
    a loop is labelled by its ``label`` (``imap:support:0:INBOX``), not by its name, which
    names the mailbox's user and host (gateway/supervisor.py)."""

    def __init__(self, states: ChannelStates) -> None:
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily("omnirelay_channel_state",
                                  "1 for the state each configured account is in",
                                  labels=["type", "account", "state"])
        up = GaugeMetricFamily("omnirelay_channel_loop_up",
                               "1 while an account's supervised loop runs (not in backoff)",
                               labels=["type", "account", "loop"])
        restarts = CounterMetricFamily("omnirelay_channel_loop_restarts",
                                       "Restarts of an account's supervised loop after a "
                                       "failure", labels=["type", "account", "loop"])
        success = GaugeMetricFamily("omnirelay_channel_loop_last_success_timestamp_seconds",
                                    "When an account's supervised loop last succeeded "
                                    "(Unix time)", labels=["type", "account", "loop"])
        for channel_type, account, current, loops in self.states():
            labels = [channel_type, account]
            if current not in CHANNEL_STATES:  # "new": configured, not started yet
                current = "starting"
            for name in CHANNEL_STATES:
                state.add_metric([*labels, name], 1.0 if name == current else 0.0)
            for loop in loops:
                keys = [*labels, loop.label]  # not its name: no mailbox user or host here
                up.add_metric(keys, 1.0 if loop.alive else 0.0)
                restarts.add_metric(keys, loop.restarts)
                if loop.last_success is not None:
                    success.add_metric(keys, loop.last_success)
        yield state
        yield up
        yield restarts
        yield success
