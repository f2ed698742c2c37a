"""The automatic sends: acknowledgements, rules' replies and CSAT surveys, from the feed.

The worker follows the event feed like a webhook subscription (its cursor is a stored
checkpoint, so a restart neither skips nor repeats) and answers two kinds of event:

- ``message.received`` of a person's first message in a new conversation: a matching
  rule's template (``automatic: "rule"``), else the account's acknowledgement saying when a
  human will answer (``automatic: "acknowledgement"``); a message reopening a conversation
  gets the acknowledgement too; at most once per conversation and once per customer and
  account within ``acknowledgement_window``;
- ``conversation.closed``: the account's 1-5 survey (``automatic: "survey"``) when a human
  answered the conversation; the ingest job records the answer (gateway/automation/jobs.py).

Each send is queued with its dedupe keys in one transaction; the provider acknowledgement
of the customer's message never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson
import structlog
from prometheus_client import Counter

from gateway.automation.config import AccountAutomation, AutomationConfig
from gateway.automation.hours import estimate
from gateway.automation.jobs import Automation, _send_automatic
from gateway.automation.rules import MessageFacts, classify, detect_language
from gateway.automation.templates import TemplateError, render
from gateway.errors import OmnirelayError
from gateway.feed import FeedNotifier
from gateway.ids import iso
from gateway.store.base import JSON, OutboundRequest, Page, Route
from normalizer.timestamps import parse_iso

log = structlog.get_logger(__name__)

T = TypeVar("T")
CURSOR_KEY = "automation:cursor"


class AutomationStore(Protocol):
    """What the worker needs of the store (the SQLite store has it all)."""

    async def events_after(self, after: int, limit: int) -> Page: ...

    async def head_seq(self) -> int: ...

    async def get_checkpoint(self, key: str) -> str | None: ...

    async def set_checkpoint(self, key: str, value: str) -> None: ...

    async def list_messages(self, conversation_id: str, after: str | None,
                            limit: int) -> list[JSON]: ...

    async def write(self, fn: Callable[..., T], *args: Any) -> T: ...


class Wakeable(Protocol):
    """The outbox: told there is a message to send."""

    def wake(self) -> None: ...


class AutomationWorker:
    """Follows the feed and queues automatic messages; see the module docstring."""

    def __init__(self, store: AutomationStore, feed: FeedNotifier, automation: Automation,
                 routes: Callable[[], list[Route]], outbox: Wakeable, *,
                 counter: Counter | None = None) -> None:
        self.store = store
        self.feed = feed
        self.automation = automation
        self.routes = routes
        self.outbox = outbox
        self.counter = counter  # omnirelay_automatic_messages_total{kind}
        self._task: asyncio.Task[None] | None = None
        self._new_customers: dict[str, None] = {}  # customers created just before, in order
        # A conversation a customer's message just reopened (its message.received follows).
        self._reopened: str | None = None
        self.sent = 0
        self.last_error: str | None = None

    @property
    def config(self) -> AutomationConfig:
        """The automation settings in force."""
        return self.automation.config

    async def start(self) -> None:
        """Resume after the stored cursor (the feed's head on the very first start)."""
        stored = await self.store.get_checkpoint(CURSOR_KEY)
        cursor = int(stored) if stored else await self.store.head_seq()
        if not stored:
            await self.store.set_checkpoint(CURSOR_KEY, str(cursor))
        self._task = asyncio.create_task(self._run(cursor), name="automation")

    async def stop(self) -> None:
        """Stop following the feed (a send already queued stays queued)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, cursor: int) -> None:
        while True:
            try:
                page = await self.store.events_after(cursor, 200)
            except OmnirelayError as exc:
                self.last_error = str(exc)
                log.warning("automation.feed_failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if not page.bodies:
                await self.feed.wait_beyond(cursor, 30.0)
                continue
            for body in page.bodies:
                event = orjson.loads(body)
                try:
                    await self.handle(event)
                except Exception as exc:  # one event's failure must not stop the others
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("automation.event_failed", event_id=event.get("id"),
                                  type=event.get("type"))
            cursor = page.next
            await self.store.set_checkpoint(CURSOR_KEY, str(cursor))

    async def handle(self, event: JSON) -> None:
        """React to one feed event."""
        kind, data = event.get("type"), event.get("data") or {}
        reopened, self._reopened = self._reopened, None
        if kind == "conversation.reopened" and data.get("agent") is None:
            self._reopened = data["conversation"]["id"]
        elif kind == "conversation.updated" and data["conversation"]["id"] == reopened:
            self._reopened = reopened  # a rule's change comes between the two
        elif kind == "customer.created":
            self._new_customers[data["customer"]["id"]] = None
            while len(self._new_customers) > 1000:
                self._new_customers.pop(next(iter(self._new_customers)))
        elif kind == "message.received":
            await self._first_message(data["message"], data.get("conversation") or {},
                                      reopening=reopened is not None and reopened == (
                                          data.get("conversation") or {}).get("id"))
        elif kind == "conversation.closed":
            await self._closed(data["conversation"], data.get("agent"))

    def _account(self, channel: str, account: str) -> AccountAutomation | None:
        return self.config.for_account(self.automation.account_type(channel, account), account)

    async def _first_message(self, message: JSON, conversation: JSON, *,
                             reopening: bool = False) -> None:
        """A person's message opening (or reopening) a conversation: a rule's reply (only
        when it opens it) or the acknowledgement."""
        first = conversation.get("opened_at") == message.get("received_at")
        if (message.get("direction") != "inbound" or message.get("automatic") is not None
                or conversation.get("group") is not None or not (first or reopening)
                or conversation.get("id") != message.get("conversation_id")):
            return
        channel, account = message["channel"], message["account"]
        settings = self._account(channel, account)
        language_default = (settings.language if settings and settings.language
                            else self.config.language)
        language = detect_language(f"{message.get('subject') or ''} {message['text']}",
                                   language_default)
        at = parse_iso(message["received_at"])
        variables = {"customer_name": (message.get("from") or {}).get("name") or "",
                     "channel": channel, "eta": "", "opens_at": "", "in_hours": ""}
        if settings is not None and settings.hours is not None:
            variables.update(estimate(settings.hours, at, language).variables)
        reply = self._rule_reply(message, conversation, at) if first else None
        keys: list[tuple[str, float | None]] = [(f"first:{conversation['id']}", None)] \
            if first else []
        if reply is not None:
            await self._send(conversation["id"], reply, variables, channel, language,
                             settings, "rule", keys)
            return
        if settings is None or not settings.acknowledge or settings.hours is None:
            return
        in_hours = variables.get("in_hours") == "yes"
        template = settings.acknowledgement if in_hours else settings.acknowledgement_closed
        window = settings.acknowledgement_window.total_seconds()
        keys.append((f"ack:{message['customer_id']}:{channel}:{account}", window))
        keys.append((f"ack-conversation:{conversation['id']}", window))
        await self._send(conversation["id"], template, variables, channel, language, settings,
                         "acknowledgement", keys)

    def _rule_reply(self, message: JSON, conversation: JSON, at: datetime) -> str | None:
        if not any(rule.reply for rule in self.config.rules):
            return None
        sender = message.get("from") or {}
        facts = MessageFacts(
            channel=message["channel"], account=message["account"],
            account_type=self.automation.account_type(message["channel"], message["account"]),
            text=message.get("text") or "", subject=message.get("subject"),
            sender=f"{sender.get('kind')}:{sender.get('address')}",
            sender_name=sender.get("name"), context=conversation.get("context") or {},
            at=at, new_customer=message["customer_id"] in self._new_customers,
            first_message=True)
        return classify(facts, self.config.rules, self.config.urgency).reply

    async def _closed(self, conversation: JSON, agent: JSON | None) -> None:
        if conversation.get("group") is not None or conversation.get("csat") is not None:
            return
        messages = await self.store.list_messages(conversation["id"], None, 1000)
        humans = [m for m in messages if m["direction"] == "outbound"
                  and m.get("automatic") is None and m.get("status") != "failed"]
        inbound = [m for m in messages if m["direction"] == "inbound"
                   and m.get("automatic") is None]
        if not humans or not inbound:
            return  # nobody to rate: closed without a human reply, or agent-started only
        last = inbound[-1]
        settings = self._account(last["channel"], last["account"])
        if settings is None or not settings.csat:
            return
        language = detect_language(last.get("text") or "", settings.language
                                   or self.config.language)
        now = datetime.now(UTC)
        survey = {"agent": agent, "sent_at": iso(now),
                  "expires_at": iso(now + settings.survey_answer_window)}
        variables = {"customer_name": (last.get("from") or {}).get("name") or "",
                     "channel": last["channel"],
                     "agent_name": (agent or {}).get("name") or ""}
        await self._send(conversation["id"], settings.survey, variables, last["channel"],
                         language, settings, "survey",
                         [(f"survey:{conversation['id']}:{conversation.get('closed_at')}",
                           None)], survey=survey)

    async def _send(self, conversation_id: str, template_name: str,
                    variables: dict[str, str], channel: str, language: str,
                    settings: AccountAutomation | None, kind: str,
                    keys: list[tuple[str, float | None]], survey: JSON | None = None) -> None:
        template = self.config.templates.get(template_name)
        if template is None:
            log.error("automation.unknown_template", template=template_name, kind=kind)
            return
        try:
            rendered = render(template, variables, channel=channel, language=language,
                              default_language=(settings.language if settings else None)
                              or self.config.language)
        except TemplateError as exc:
            self.last_error = str(exc)
            log.error("automation.render_failed", template=template_name, kind=kind,
                      error=str(exc))
            return
        request = OutboundRequest(text=rendered.text, html=rendered.html,
                                  subject=rendered.subject, template=template_name,
                                  variables=dict(variables), automatic=kind)
        try:
            message = await self.store.write(_send_automatic, conversation_id, request,
                                             self.routes(), keys, survey)
        except OmnirelayError as exc:  # no route, no reachable identity: nothing to send on
            self.last_error = str(exc)
            log.warning("automation.not_sent", conversation_id=conversation_id, kind=kind,
                        error=str(exc))
            return
        if message is None:
            return
        self.sent += 1
        if self.counter is not None:
            self.counter.labels(kind).inc()
        self.outbox.wake()
        log.info("automation.queued", message_id=message["id"], kind=kind,
                 conversation_id=conversation_id, template=template_name)
