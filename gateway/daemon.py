"""The daemon: start in order, serve, reload on SIGHUP, drain on SIGTERM.

Start: store (migrations) → feed → outbox → adapters → webhooks → HTTP → READY=1.
Stop runs in reverse: STOPPING=1, stop intake (HTTP listener, adapters), let in-flight
ingest and sends finish within ``shutdown_timeout``, then close the store, which commits
everything queued before it returns.

While it runs the daemon holds :class:`StoreLock` on its store, pings the systemd watchdog
from the event loop, and answers SIGHUP with RELOADING=1 … READY=1 around the reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import Counter

from adapters.base import (
    AdapterContext,
    AdapterHealth,
    AdapterState,
    ChannelAdapter,
    Hook,
    SendLimits,
)
from adapters.registry import ADAPTERS
from gateway.api.app import create_app
from gateway.api.auth import check_token
from gateway.automation.hours import BusinessHours
from gateway.automation.jobs import Automation
from gateway.automation.worker import AutomationWorker
from gateway.broadcast import ERASED_TOPIC, Broadcasting, erased_ids
from gateway.config import ChannelConfig, Config
from gateway.errors import (
    AdapterConfigError,
    ConfigErrors,
    NotFound,
    OmnirelayError,
    StoreError,
)
from gateway.feed import FeedNotifier
from gateway.fetcher import MediaFetcher
from gateway.ingest import IngestService
from gateway.logging import configure_logging
from gateway.media import MediaSources, source_name
from gateway.metrics import Metrics
from gateway.permissions import make_store_private, restrict_umask
from gateway.receipts import ReceiptSink
from gateway.store.base import Route, Store
from gateway.store.jobs.stats import HoursOf
from gateway.store.select import make_store
from gateway.supervisor import LoopGroup, LoopHealth
from gateway.systemd import Notifier
from gateway.webhooks import WebhookDispatcher
from outbox.worker import OutboxWorker

log = structlog.get_logger(__name__)
TEST_HOOKS_ENV = "OMNIRELAY_TEST_HOOKS"


class StoreLock:
    """An exclusive ``flock`` beside the SQLite file, held by the daemon while it runs.

    Event seqs are numbered in the daemon's memory, so a second writer on the same file
    (another daemon, or ``omnirelay erase-customer`` from a shell) would collide with its
    next event. The lock turns that into a clear refusal. The kernel drops it when the
    process dies, so a crash never leaves a stale lock behind.
    """

    def __init__(self, db_path: Path, *, shared: bool = False) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None
        self.shared = shared  # a PostgreSQL store: nothing to lock here


    def acquire(self) -> None:
        """Take the lock or raise StoreError naming the pid that holds it."""
        if self._fd is not None or self.shared:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(f"the store {self.path.with_suffix('')} is in use by omnirelay "
                             f"pid {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays; its content is only informative)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Gateway:
    """Owns every long-lived part of a running omnirelay."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.feed = FeedNotifier()
        # make_store: SQLite, or PostgreSQL for several instances (docs/postgresql.md).
        self.sqlite = make_store(config.store, on_commit=self._committed,
                                 on_batch=self.metrics.store_batch.observe,
                                 on_fatal=self._store_failed,
                                 on_samples=self.metrics.observe_support)
        if self.sqlite.blob_cache is not None:
            self.metrics.watch_blob_cache(self.sqlite.blob_cache)
        self.metrics.watch_channels(self.channel_states)
        self.store: Store = self.sqlite
        # Routing rules, CSAT answers (in the ingest job) and automatic sends (docs/automation.md).
        self.sqlite.automation = self.automation = automation_for(config)
        self.sqlite.business_hours = business_hours_for(config)  # the metrics' business clock
        self.automation_worker: AutomationWorker | None = None
        self.automatic_sent = Counter(
            "omnirelay_automatic_messages_total",
            "Messages omnirelay queued on its own (acknowledgement, rule, survey)", ["kind"],
            registry=self.metrics.registry)
        # Set when the store stopped for good (a failed fsync): run() exits 75 so that
        # systemd restarts the service and SQLite recovers what reached the disk.
        self.store_stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ingest = IngestService(self.store, self.metrics,
                                    default_region=config.store.default_region,
                                    max_attachment_bytes=config.store.max_attachment_bytes)
        self.media = MediaSources()
        self.fetcher = MediaFetcher(self.store, self.media, self.metrics,
                                    max_bytes=config.store.max_attachment_bytes)
        self.ingest.on_remote_attachments = self.fetcher.wake
        self.outbox = OutboxWorker(self.store, self.adapters_get, config.outbox, self.metrics)
        self.adapters: dict[tuple[str, str], ChannelAdapter] = {}
        self.adapter_errors: dict[tuple[str, str], str] = {}
        self.webhooks: dict[str, WebhookDispatcher] = {}
        self.notifier = notifier or Notifier()
        self.stopping = asyncio.Event()
        self.streams = 0
        self.http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._retries: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Paths adapters serve outside /hooks (route families), and the account serving each.
        self.route_owners: dict[str, tuple[str, str]] = {}
        self._reload_lock = asyncio.Lock()
        self.started_at = time.time()
        self.bound_port: int | None = None
        # SQLite has one writer; on PostgreSQL several instances share the database.
        self.lock = StoreLock(config.store.sqlite_path, shared=config.store.backend != "sqlite")
        self.reload_note = ""

    # ------------------------------------------------------------------ wiring

    def _committed(self, seq: int) -> None:
        self.feed.notify(seq)

    def _store_failed(self, _error: str) -> None:
        """From a store thread: wake run() to exit with a restartable code."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.store_stopped.set)

    def adapters_get(self, channel: str, account: str) -> ChannelAdapter | None:
        """The running adapter sending on ``channel`` as ``account`` (the outbox asks)."""
        for adapter in self.adapters.values():
            if adapter.name == account and channel in adapter.channels:
                if adapter.state in (AdapterState.RUNNING, AdapterState.DEGRADED):
                    return adapter
                return None
        return None

    def customers_erased(self, customer_ids: Iterable[str]) -> None:
        """Customers were erased (here, or on another instance: ``ERASED_TOPIC``): every
        adapter drops what it holds of them in memory."""
        ids = frozenset(customer_ids)
        if not ids:
            return
        for adapter in list(self.adapters.values()):
            try:
                adapter.customers_erased(ids)
            except Exception:
                log.exception("daemon.erasure_failed", account=adapter.name)

    def _heard_erasure(self, payload: str) -> None:
        self.customers_erased(erased_ids(payload))

    def adapter_for_hook(self, channel_type: str, account: str) -> ChannelAdapter | None:
        """The adapter serving ``/hooks/{type}/{account}``."""
        return self.adapters.get((channel_type, account))

    def routes(self) -> list[Route]:
        """Where replies can go: every configured account and its channels."""
        return [adapter.route(channel)
                for adapter in self.adapters.values() for channel in sorted(adapter.channels)]

    def family_hook(self, path: str, method: str) -> Hook:
        """The handler of an adapter's route outside ``/hooks`` (404 / 405 otherwise)."""
        owner = self.route_owners.get(path)
        adapter = self.adapters.get(owner) if owner is not None else None
        if adapter is None or adapter.state not in (AdapterState.RUNNING,
                                                    AdapterState.DEGRADED):
            raise NotFound(f"no route for {path}")
        methods = adapter.family_route_table()[path]
        handler = methods.get(method) or methods.get("*")
        if handler is None:
            raise web.HTTPMethodNotAllowed(method, sorted(methods))
        return handler

    def _claim_routes(self, key: tuple[str, str], adapter: ChannelAdapter) -> None:
        """Reserve the adapter's family routes; a path another account serves is refused."""
        try:
            paths = list(adapter.family_route_table())
        except ValueError as exc:
            raise AdapterConfigError(str(exc), channel_type=key[0], account=key[1]) from exc
        for path in paths:
            owner = self.route_owners.get(path)
            if owner is not None and owner != key:
                raise AdapterConfigError(
                    f"{path} is already served by {owner[0]} account {owner[1]!r}",
                    channel_type=key[0], account=key[1])
        for path in paths:
            self.route_owners[path] = key

    def _release_routes(self, key: tuple[str, str]) -> None:
        for path in [p for p, owner in self.route_owners.items() if owner == key]:
            del self.route_owners[path]

    def _context(self, account: ChannelConfig) -> AdapterContext:
        """Each adapter its own context: its own supervised loops, the daemon's stop signal,
        the receipt sink, the account's ``groups`` and, on a store several instances share,
        its pushes to the other instances."""
        assert self.http is not None
        store = self.store
        broadcast = (store.broadcast(f"{account.type}:{account.name}")
                     if isinstance(store, Broadcasting) else None)
        return AdapterContext(
            ingest=self.ingest, http=self.http, public_url=self.config.server.public_url,
            authorize=check_token, store=self.store, stopping=self.stopping,
            media=self.media, receipts=ReceiptSink(self.store), groups=account.groups,
            ingest_all=self.ingest.ingest_all,
            # Several instances on PostgreSQL: an adapter's loops (IMAP mailboxes, polling)
            # run on the one instance that owns them (advisory locks, docs/postgresql.md).
            loops=LoopGroup(getattr(self.store, "run_owned", None)),
            broadcast=broadcast,
        )

    def _make_adapter(self, account: ChannelConfig) -> ChannelAdapter:
        cls = ADAPTERS[account.type]
        return cls(account.name, account.options, self._context(account),
                   limits=SendLimits(account.send_concurrency, account.send_rate))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bring everything up; READY=1 only when the store is open and adapters started.

        The watchdog pings from the first moment: systemd arms it at start, and migrations
        run on the writer thread, so a long migration does not stall the loop.
        """
        self._loop = asyncio.get_running_loop()
        log_config_warnings(self.config)
        self._spawn(self.notifier.watchdog(), "systemd-watchdog")
        self.lock.acquire()
        await self.store.open()
        self.feed.notify(await self.store.head_seq())
        if isinstance(self.store, Broadcasting):  # customers erased through other instances
            self.store.broadcast(ERASED_TOPIC).subscribe(self._heard_erasure)
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), headers={"User-Agent": "omnirelay"})
        await self.outbox.start()
        await self._start_automation()
        for account in self.config.channels:
            adapter = self._make_adapter(account)
            self.adapters[account.key] = adapter
            await self._start_adapter(adapter, account)
        self.fetcher.start(self.http)  # after the adapters registered their media sources
        for hook in self.config.webhooks:
            dispatcher = WebhookDispatcher(hook, self.store, self.feed, self.http, self.metrics)
            await dispatcher.start()
            self.webhooks[hook.name] = dispatcher
        app = create_app(self)
        self._runner = web.AppRunner(app, access_log=None,
                                     shutdown_timeout=self.config.server.shutdown_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.server.host, self.config.server.port,
                           reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.bound_port = server.sockets[0].getsockname()[1]
        self._spawn(self._status_loop(), "systemd-status")
        if self.config.store.retention_days:
            self._spawn(self._retention_loop(self.config.store.retention_days), "retention")
        # Everything built at start lives for the whole run: keep it out of the cyclic
        # collector's scans, which otherwise walk it on every full collection.
        gc.freeze()
        # Each request allocates a few hundred container objects that die with it; a larger
        # first generation collects the same garbage in fewer, not longer, passes
        # (docs/benchmarks.md, third round).
        gc.set_threshold(20_000, 20, 20)
        self.notifier.ready(self.status_line())
        log.info("daemon.ready", listen=f"{self.config.server.host}:{self.bound_port}",
                 channels=[c.name for c in self.config.channels], config=self.config.source)

    async def _start_adapter(self, adapter: ChannelAdapter, account: ChannelConfig) -> None:
        try:
            self._claim_routes(account.key, adapter)
            await adapter.start()
            self.adapter_errors.pop(account.key, None)
            log.info("adapter.started", account=adapter.name, channel_type=adapter.type)
        except AdapterConfigError as exc:
            if adapter.state is AdapterState.NEW:  # refused before it started (its routes)
                adapter.state = AdapterState.FAILED
                adapter.last_error = exc.message
            self.adapter_errors[account.key] = exc.message
            log.error("adapter.misconfigured", account=adapter.name, error=exc.message)
        except Exception as exc:
            self.adapter_errors[account.key] = str(exc) or type(exc).__name__
            log.error("adapter.start_failed", account=adapter.name, error=str(exc),
                      exc_info=not isinstance(exc, OmnirelayError | OSError))
            self._retries[account.key] = asyncio.create_task(
                self._retry_adapter(account), name=f"adapter-retry:{adapter.name}")

    async def _retry_adapter(self, account: ChannelConfig) -> None:
        """Restart a failed adapter with capped backoff until it runs or is replaced."""
        delay = 1.0
        while not self.stopping.is_set():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
            if self.adapters.get(account.key) is None:
                return
            adapter = self._make_adapter(account)
            try:
                await adapter.start()
            except Exception as exc:
                self.adapter_errors[account.key] = str(exc) or type(exc).__name__
                continue
            self.adapters[account.key] = adapter
            self.adapter_errors.pop(account.key, None)
            log.info("adapter.recovered", account=account.name)
            return

    async def _start_automation(self) -> None:
        """Follow the feed for automatic sends when any are configured."""
        if self.automation is None or not self.automation.config.sends:
            return
        self.automation_worker = AutomationWorker(self.sqlite, self.feed, self.automation,
                                                  self.routes, self.outbox,
                                                  counter=self.automatic_sent)
        await self.automation_worker.start()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Drain and stop, in reverse start order; errors are logged and unwinding goes on."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.notifier.stopping()
        timeout = self.config.server.shutdown_timeout
        log.info("daemon.draining", timeout=timeout)
        for task in self._retries.values():
            task.cancel()
        steps: list[tuple[str, Awaitable[None]]] = []
        if self._runner is not None:
            steps.append(("http", self._runner.cleanup()))
        for adapter in list(self.adapters.values()):
            steps.append((f"adapter:{adapter.name}", adapter.stop()))
        steps.append(("media-fetch", self.fetcher.stop()))
        steps.append(("outbox", self.outbox.stop(timeout)))
        if self.automation_worker is not None:
            steps.append(("automation", self.automation_worker.stop()))
        for dispatcher in self.webhooks.values():
            steps.append((f"webhook:{dispatcher.config.name}", dispatcher.stop(timeout)))
        for name, step in steps:
            try:
                await asyncio.wait_for(step, timeout + 5)
            except Exception:
                log.exception("daemon.stop_step_failed", step=name)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        await self.store.close()
        self.lock.release()
        self.notifier.close()
        log.info("daemon.stopped")

    async def reload(self, new: Config) -> None:
        """Apply a new config: changed adapters restart, unchanged ones keep running."""
        async with self._reload_lock:
            old = {c.key: c for c in self.config.channels}
            wanted = {c.key: c for c in new.channels}
            for key, account in old.items():
                if key not in wanted or wanted[key] != account:
                    adapter = self.adapters.pop(key, None)
                    self.adapter_errors.pop(key, None)
                    self._release_routes(key)
                    if (task := self._retries.pop(key, None)) is not None:
                        task.cancel()
                    if adapter is not None:
                        await adapter.stop()
                        log.info("adapter.stopped_for_reload", account=key[1],
                                 channel_type=key[0])
            self.config = _replace_config(self.config, new)
            self.sqlite.automation = self.automation = automation_for(self.config)
            self.sqlite.business_hours = business_hours_for(self.config)  # new samples only
            if self.automation_worker is not None:  # the new settings, or none at all
                if self.automation is not None and self.automation.config.sends:
                    self.automation_worker.automation = self.automation
                else:
                    await self.automation_worker.stop()
                    self.automation_worker = None
            else:
                await self._start_automation()
            for key, account in wanted.items():
                if key not in self.adapters:
                    adapter = self._make_adapter(account)
                    self.adapters[key] = adapter
                    await self._start_adapter(adapter, account)
            for name, dispatcher in list(self.webhooks.items()):
                if dispatcher.config not in new.webhooks:
                    await dispatcher.stop(5)
                    self.webhooks.pop(name)
            assert self.http is not None
            for hook in new.webhooks:
                if hook.name not in self.webhooks:
                    dispatcher = WebhookDispatcher(hook, self.store, self.feed, self.http,
                                                   self.metrics)
                    await dispatcher.start()
                    self.webhooks[hook.name] = dispatcher
            log.info("daemon.reloaded", channels=[f"{t}:{n}" for t, n in sorted(wanted)])

    async def handle_reload(self, loader: Callable[[], Config]) -> bool:
        """SIGHUP: RELOADING=1, read the file, apply it or keep the running one; READY=1.

        A file with errors is refused as a whole: one log line per error (key, line,
        hint; never a value) and the running configuration stays.
        """
        self.notifier.reloading()
        try:
            try:
                new = loader()
            except ConfigErrors as exc:
                for error in exc.errors:
                    log.error("daemon.reload_refused", key=error.key, line=error.line,
                              error=error.message, hint=error.hint)
                log.error("daemon.reload_refused", errors=len(exc.errors),
                          config=self.config.source,
                          hint="the running configuration stays; fix the file and reload "
                               "(omnirelay check-config shows every error)")
                self.reload_note = f"; last reload refused ({len(exc.errors)} errors)"
                return False
            await self.reload(new)
            configure_logging(new.logging.level, new.logging.format)
            log_config_warnings(new)
            self.reload_note = ""
            return True
        except Exception:
            log.exception("daemon.reload_failed")
            self.reload_note = "; last reload failed"
            return False
        finally:
            self.notifier.ready(self.status_line())

    # ------------------------------------------------------------------ status

    def _account_health(self) -> list[tuple[ChannelConfig, ChannelAdapter | None,
                                            AdapterHealth | None]]:
        """Each configured account with its adapter and that adapter's health (None: not
        running)."""
        found = []
        for account in self.config.channels:
            adapter = self.adapters.get(account.key)
            found.append((account, adapter, adapter.health() if adapter is not None else None))
        return found

    def channel_states(self) -> list[tuple[str, str, str, list[LoopHealth]]]:
        """Each configured account's type, name, state and loops (for the metrics)."""
        return [(account.type, account.name, health.state.value if health else "stopped",
                 health.loops if health else [])
                for account, _adapter, health in self._account_health()]

    def channel_report(self) -> list[dict[str, Any]]:
        """Each configured account: type, state, last error, counters."""
        return [{
            "name": account.name, "type": account.type,
            "channels": sorted(adapter.channels) if adapter else [],
            "required": account.required,
            "state": health.state.value if health else "stopped",
            "last_error": self.adapter_errors.get(account.key)
            or (health.last_error if health else None),
            "counters": health.counters if health else {},
            "loops": [loop.to_json() for loop in health.loops] if health else [],
            "media": self.fetcher.health(source_name(account.type, account.name)),
        } for account, adapter, health in self._account_health()]

    async def readiness_problems(self) -> list[str]:
        """Why the daemon is not ready (empty when it is): what, never an error text, as
        unauthenticated ``/readyz`` shows it (``/v1/channels`` has the text)."""
        problems = []
        if self.stopping.is_set():
            problems.append("draining")
        try:
            await asyncio.wait_for(self.store.ping(), 5)
        except StoreError:
            # The last commit failed. Probe with a one-row write: otherwise a store that has
            # recovered (disk space freed) stays "unready", and with traffic routed away on
            # our 503 nothing else would ever write to prove it.
            try:
                await asyncio.wait_for(
                    self.store.set_checkpoint("readyz.probe", str(time.time())), 5)
                await asyncio.wait_for(self.store.ping(), 5)
            except (StoreError, TimeoutError) as exc:
                log.warning("daemon.store_not_ready", error=str(exc))
                problems.append("store: cannot write")
        except TimeoutError:
            problems.append("store: no answer within 5 s")
        for entry in self.channel_report():
            if entry["required"] and entry["state"] not in ("running", "degraded"):
                problems.append(f"channel {entry['type']}:{entry['name']}: {entry['state']}")
        return problems

    def status_line(self) -> str:
        """The systemd STATUS= line: live counts an operator can read at a glance."""
        received = sum(a.counters.get("received", 0) for a in self.adapters.values())
        sent = sum(a.counters.get("sent", 0) for a in self.adapters.values())
        running = sum(1 for a in self.adapters.values() if a.state is AdapterState.RUNNING)
        down = "".join(f"; {t}:{n} down" for t, n in sorted(self.adapter_errors))
        return (f"{running}/{len(self.config.channels)} channels running, "
                f"{received} received, {sent} sent, {self.streams} feed streams"
                f"{down}{self.reload_note}")

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(10)
            self.notifier.status(self.status_line())

    async def _retention_loop(self, days: int) -> None:
        while True:
            try:
                result = await self.store.purge_older_than(days)
                if any(result.values()):
                    log.info("retention.purged", days=days, **result)
            except StoreError as exc:
                log.warning("retention.failed", error=exc.message)
            await asyncio.sleep(3600)


def log_config_warnings(config: Config) -> None:
    """One ``config.warning`` line per warning of the file (those ``check-config`` prints),
    at each start and reload: under systemd nobody runs ``check-config``, and a certificate
    about to end or a secret written into the file must reach the journal. Key, line and
    message only; warnings never hold a secret's value."""
    for warning in config.warnings:
        log.warning("config.warning", key=warning.key, line=warning.line,
                    message=warning.message, config=config.source)


def automation_for(config: Config) -> Automation | None:
    """The ingest job's automation (None when nothing is configured), with each account's
    ``type`` by the channels it receives on."""
    automation = config.automation
    if not (automation.classifies or automation.sends):
        return None
    return Automation(automation, _account_types(config))


def _account_types(config: Config) -> dict[tuple[str, str], str]:
    """(channel, account name) → the account's ``type``, by the channels it receives on."""
    return {(channel, account.name): account.type for account in config.channels
            if account.type in ADAPTERS for channel in ADAPTERS[account.type].channels}


def business_hours_for(config: Config) -> HoursOf | None:
    """Each account's business hours for the metrics' business clock (docs/stats.md):
    the schedule of its ``[[automation.accounts]]`` entry (``type:name``, ``name``, ``*``,
    as the acknowledgements pick it), None without one. None when no entry names hours."""
    automation = config.automation
    if not any(entry.hours is not None for entry in automation.accounts):
        return None
    automatic = Automation(automation, _account_types(config))
    found: dict[tuple[str, str], BusinessHours | None] = {}

    def hours_of(channel: str, account: str) -> BusinessHours | None:
        key = (channel, account)
        if key not in found:  # a few accounts: looked up once each
            entry = automation.for_account(automatic.account_type(channel, account), account)
            found[key] = entry.hours if entry is not None else None
        return found[key]
    return hours_of


def _replace_config(old: Config, new: Config) -> Config:
    """Settings that need a restart (listener, store) keep their running values."""
    if (new.server.host, new.server.port) != (old.server.host, old.server.port) or \
            new.store != old.store:
        log.warning("daemon.reload_needs_restart",
                    hint="server.listen and [store] take effect after a restart")
    return Config(old.server, old.store, new.outbox, new.logging, new.tokens, new.webhooks,
                  new.channels, new.source, new.warnings, stats=new.stats,
                  automation=new.automation)


async def run(config: Config, *,
              config_loader: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads via ``config_loader()``. Returns exit code."""
    restrict_umask()  # files private whatever the service manager's umask
    make_store_private(config.store)
    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    _install_test_hooks(loop)
    try:
        await gateway.start()
    except OmnirelayError as exc:
        log.error("daemon.start_failed", error=exc.message)
        with contextlib.suppress(Exception):
            await gateway.stop()
        return 75 if isinstance(exc, StoreError) else 1
    except OSError as exc:
        log.error("daemon.start_failed", error=str(exc))
        with contextlib.suppress(Exception):
            await gateway.stop()
        return 71

    async def reload_loop() -> None:
        while True:
            await reloads.get()
            if config_loader is None:
                log.warning("daemon.reload_ignored", reason="running the embedded default")
                continue
            await gateway.handle_reload(config_loader)

    reloader = asyncio.create_task(reload_loop(), name="reload")
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(gateway.store_stopped.wait())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    for task in (stopped, failed):
        task.cancel()
    reloader.cancel()
    await gateway.stop()
    if gateway.store_stopped.is_set():
        log.critical("daemon.exit_store_failed", exit_code=75,
                     hint="systemd restarts the service (Restart=on-failure)")
        return 75
    return 0


def _install_test_hooks(loop: asyncio.AbstractEventLoop) -> None:
    """Only with ``OMNIRELAY_TEST_HOOKS=1``: SIGUSR1 blocks the event loop for a while.

    The tests use it to show that a stalled loop stops the WATCHDOG=1 pings. Without the
    variable nothing is installed, so production behaviour is untouched.
    """
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        return
    seconds = float(os.environ.get("OMNIRELAY_TEST_BLOCK_SECONDS", "1.0"))

    def block_loop() -> None:
        log.warning("daemon.test_loop_blocked", seconds=seconds)
        time.sleep(seconds)  # deliberately on the loop: that is the point
        log.warning("daemon.test_loop_released")

    loop.add_signal_handler(signal.SIGUSR1, block_loop)
    log.warning("daemon.test_hooks_enabled", hint=f"never set {TEST_HOOKS_ENV} in production")
