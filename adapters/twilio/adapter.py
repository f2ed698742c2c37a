"""Twilio adapter: SMS, MMS and WhatsApp in through signed hooks, out through the SDK."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import MultiDict
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from adapters.base import (
    AdapterConfig,
    AdapterContext,
    ChannelAdapter,
    OutboundMessage,
    SendLimits,
    SendResult,
)
from adapters.twilio.config import API_BASE_URL, TwilioConfig
from adapters.twilio.outbound import AUTH_CODES, SenderPacer, TwilioHttpClient, send_error
from adapters.twilio.signature import TwilioSignature, form_fields
from gateway.errors import (
    AdapterAuthError,
    AdapterConfigError,
    AdapterError,
    AdapterNotReady,
    OmnirelayError,
    PermanentSendError,
    RetryableSendError,
    from_invalid_input,
)
from gateway.http import read_body, unreachable_reason
from gateway.media import MediaSource
from gateway.media_links import MediaLinks
from gateway.receipts import DeliveryError, Receipt, Receipts
from normalizer.errors import InvalidInput
from normalizer.model import Party
from normalizer.twilio import (
    STATUSES,
    OptOut,
    address_channel,
    opt_out_of,
    parse_twilio_inbound,
    parse_twilio_status,
)

EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
TWIML_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
MAX_MEDIA = 10  # Twilio's limit per message (WhatsApp: one)
# A status callback can beat the outbox's commit of the provider id it names (Twilio may
# call back before its answer to the send reaches us): a receipt that finds no message is
# applied again after these delays (seconds), at most MAX_PARKED at a time.
RECEIPT_RETRY_DELAYS = (0.2, 1.0, 5.0, 20.0)
MAX_PARKED = 1000


class TwilioAdapter(ChannelAdapter):
    """``/hooks/twilio/{account}/messages`` and ``/status`` in; Twilio's Messages API out."""

    type = "twilio"
    channels = frozenset({"sms", "whatsapp"})
    identity_kinds = frozenset({"phone"})
    # One number, two channels: SMS and WhatsApp both reach the customer's phone identity.
    channel_identity_kinds = {"sms": ("phone",), "whatsapp": ("phone",)}
    config_class = TwilioConfig
    config: TwilioConfig

    def __init__(self, name: str, config: AdapterConfig, ctx: AdapterContext, *,
                 limits: SendLimits | None = None) -> None:
        super().__init__(name, config, ctx, limits=limits)
        self.counters.update({"status_callbacks": 0, "opt_outs": 0, "opt_ins": 0})
        self.public_url = (self.config.public_url or self.ctx.public_url).rstrip("/")
        self.hook_base = f"{self.public_url}/hooks/{self.type}/{self.name}"
        token = self.config.auth_token.reveal()
        self.signature = TwilioSignature(token, self.config.account_sid)
        # Twilio fetches an MMS's media when it sends: a short life (``media_link_ttl``).
        self.links = MediaLinks(self.ctx.store, secret=token, purpose=f"twilio mms {self.name}",
                                base_url=self.hook_base, ttl=self.config.media_link_ttl)
        self.pacer = SenderPacer(self.config.sender_rate) if self.config.sender_rate else None
        self._http: TwilioHttpClient | None = None
        self._client: Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        """Make the SDK client (its aiohttp session needs the running loop) and register
        Twilio's media host, with the account's credentials for it alone."""
        self._http, self._client = self._new_client()
        basic = base64.b64encode(
            f"{self.config.account_sid}:{self.config.auth_token.reveal()}".encode()).decode()

        async def credentials() -> Mapping[str, str]:
            return {"Authorization": f"Basic {basic}"}

        self.ctx.media.register(self.media_source, MediaSource(
            frozenset({self.config.api_base_url}), self.config.media_redirect_hosts,
            credentials))

    def _new_client(self) -> tuple[TwilioHttpClient, Client]:
        """The SDK client on ``api_base_url`` (its aiohttp session needs the running loop)."""
        http = TwilioHttpClient(timeout=self.config.timeout)
        # A non-empty environment: the SDK would read TWILIO_EDGE / TWILIO_REGION from
        # os.environ, and either one rewrites api_base_url's host.
        client = Client(self.config.account_sid, self.config.auth_token.reveal(),
                        http_client=http, environment={"OMNIRELAY": "1"})
        client.api.base_url = self.config.api_base_url
        if self.config.api_base_url != API_BASE_URL:  # a proxy or a test's fake serves both
            client.messaging.base_url = self.config.api_base_url
        return http, client

    async def probe(self) -> str | None:
        """Fetch the account (its name; ``suspended`` or ``closed`` fails), then the sender:
        ``from`` must be one of the account's numbers (IncomingPhoneNumbers filtered by
        PhoneNumber), a ``messaging_service_sid`` a service of the account. Reads only."""
        http, client = self._new_client()
        sid = self.config.account_sid
        try:
            async with asyncio.timeout(self.config.timeout):
                account = await client.api.v2010.accounts(sid).fetch_async()
                status = str(account.status or "")
                if status in ("suspended", "closed"):
                    raise AdapterConfigError(
                        f"Twilio account {sid} ({account.friendly_name}) is {status}: it "
                        "cannot send; reactivate it in the Twilio console or use another "
                        "account", channel_type=self.type, account=self.name)
                summary = f"Twilio account {account.friendly_name} ({status or 'active'})"
                if self.config.from_number:
                    numbers = await client.api.v2010.accounts(sid).incoming_phone_numbers \
                        .list_async(phone_number=self.config.from_number, limit=1)
                    if not numbers:
                        raise AdapterConfigError(
                            f"from = {self.config.from_number} is not a phone number of "
                            f"Twilio account {sid}: replies from it would be refused (21606);"
                            " buy or port the number into this account, or fix from",
                            channel_type=self.type, account=self.name)
                    summary += f", sends from {self.config.from_number}"
                elif self.config.messaging_service_sid:
                    service = await client.messaging.v1.services(
                        self.config.messaging_service_sid).fetch_async()
                    summary += (f", sends through messaging service "
                                f"{service.friendly_name} ({service.sid})")
                return summary
        except TwilioRestException as exc:
            raise self._probe_error(exc) from None
        except (TimeoutError, aiohttp.ClientError, TwilioException) as exc:
            raise AdapterNotReady(f"Twilio at {self.config.api_base_url} did not answer: "
                                  f"{unreachable_reason(exc)}", channel_type=self.type,
                                  account=self.name) from None
        finally:
            await http.close()

    def _probe_error(self, exc: TwilioRestException) -> AdapterError:
        """What a probe's refused read means; the SDK's message (it quotes the URI) is
        left out."""
        status: int = exc.status
        code = f"{status}/{exc.code}" if exc.code else str(status)
        if status in (401, 403) or exc.code in AUTH_CODES:
            return AdapterAuthError(f"Twilio refused the credentials ({code}): check "
                                    "account_sid and auth_token (the Auth Token, not an API "
                                    "key secret)", channel_type=self.type, account=self.name)
        if status == 404 and "/Services/" in str(exc.uri):
            return AdapterConfigError(
                f"messaging_service_sid = {self.config.messaging_service_sid} is not a "
                f"messaging service of Twilio account {self.config.account_sid} ({code})",
                channel_type=self.type, account=self.name)
        if status == 404:
            return AdapterConfigError(f"Twilio has no account {self.config.account_sid} "
                                      f"({code}): check account_sid", channel_type=self.type,
                                      account=self.name)
        return AdapterNotReady(f"Twilio answered {code} to a read", channel_type=self.type,
                               account=self.name)

    async def on_stop(self) -> None:
        """Pending fetches wait for the next start; late receipts are dropped."""
        self.ctx.media.unregister(self.media_source)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def routes(self) -> Sequence[web.RouteDef]:
        """Messages and status callbacks in; MMS attachment links out."""
        return [web.post("/messages", self.handle_inbound),
                web.post("/status", self.handle_status),
                self.links.route()]

    def media_origins(self) -> frozenset[str]:
        """Twilio's API host: the only origin a media URL is fetched from."""
        return frozenset({self.config.api_base_url})

    def sender(self, channel: str) -> Party:
        """The number replies come from (the messaging service's SID without one)."""
        number = self.config.from_number
        if channel == "whatsapp" and self.config.whatsapp_from:
            number = self.config.whatsapp_from.removeprefix("whatsapp:")
        return Party("phone", number or self.config.messaging_service_sid or "", None)

    # ------------------------------------------------------------ inbound

    async def _signed_form(self, request: web.Request) -> tuple[bytes, MultiDict[str]]:
        """The body and its fields, once Twilio's signature over them holds.

        A request without the header is refused before its body is read.
        """
        self.signature.require_header(request.headers)
        body = await read_body(request)
        fields = form_fields(body)
        # public_url (its path prefix included) + the path and query Twilio called.
        self.signature.check(self.public_url + request.raw_path, fields, request.headers)
        return body, fields

    async def handle_inbound(self, request: web.Request) -> web.Response:
        """Store the message, record an opt-out, then answer the empty TwiML."""
        body, fields = await self._signed_form(request)
        try:
            inbound = parse_twilio_inbound(fields, self.name, media_source=self.media_source)
        except InvalidInput as exc:
            raise from_invalid_input(exc) from exc
        inbound.raw = body
        inbound.raw_content_type = "application/x-www-form-urlencoded"
        await self.ingest(inbound)
        opt_out = opt_out_of(fields) if inbound.channel == "sms" else None
        if opt_out is not None:
            # Also on a repeat: the first delivery may have stopped between the two commits.
            await self._record_opt_out(inbound.sender.address, opt_out,
                                       inbound.text.strip().upper())
        return web.Response(body=EMPTY_TWIML, headers=TWIML_HEADERS)

    async def handle_status(self, request: web.Request) -> web.Response:
        """A status callback moves our message's status forwards (never back)."""
        _body, fields = await self._signed_form(request)
        try:
            report = parse_twilio_status(fields)
        except InvalidInput as exc:
            raise from_invalid_input(exc) from exc
        self.counters["status_callbacks"] += 1
        if report.status is None:  # receiving/received: an inbound message's own states
            return web.Response(status=204)
        channel = _callback_channel(fields)
        error = None if report.error is None else DeliveryError(*report.error)
        receipt = Receipt(channel, self.name, report.message_sid, report.status, error)
        if report.error is not None and report.error[0] == "opted_out" and channel == "sms":
            with contextlib.suppress(InvalidInput):  # a To we cannot read: nothing to record
                _, number = address_channel(fields.get("To", ""))
                if number:
                    await self._record_opt_out(number, "stop", "Twilio error 21610")
        result = await self._receipts()(receipt)
        if result is None and len(self._tasks) < MAX_PARKED:
            self._spawn(self._apply_later(receipt))
        return web.Response(status=204)

    def _receipts(self) -> Receipts:
        if self.ctx.receipts is None:
            raise RuntimeError("the daemon gave this adapter no receipt sink")
        return self.ctx.receipts

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply_later(self, receipt: Receipt) -> None:
        """Apply a receipt that arrived before the outbox stored our provider id."""
        for delay in RECEIPT_RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                if await self._receipts()(receipt) is not None:
                    return
            except OmnirelayError as exc:  # the store is busy or down: try again later
                self.log.warning("twilio.receipt_retry", error=exc.message)
        self.log.info("twilio.receipt_unmatched", provider_message_id=receipt.provider_message_id)

    # ------------------------------------------------------------ opt-outs

    async def _record_opt_out(self, phone: str, action: OptOut, keyword: str) -> None:
        """Record on the customer's phone identity that it opted out of (or back into) this
        account's SMS (``customer.updated``)."""
        await self.ctx.store.set_opt_out("phone", phone, "sms", self.name,
                                         (keyword[:32] or "STOP") if action == "stop" else None)
        self.counters["opt_outs" if action == "stop" else "opt_ins"] += 1
        self.log.info("twilio.opt_out" if action == "stop" else "twilio.opt_in")

    async def opted_out(self, phone: str) -> bool:
        """Whether ``phone`` has opted out of this account's SMS (STOP, not yet START)."""
        return await self.ctx.store.opted_out("phone", phone, "sms", self.name)

    # ------------------------------------------------------------ outbound

    def _from(self, channel: str) -> tuple[str | None, str | None]:
        """(From, MessagingServiceSid) for a message on ``channel``."""
        number = self.config.from_number
        if channel == "whatsapp":
            if self.config.whatsapp_from:
                return self.config.whatsapp_from, None
            if number:
                return f"whatsapp:{number}", None
        return number, None if number else self.config.messaging_service_sid

    async def send(self, message: OutboundMessage) -> SendResult:
        """Create the message through Twilio's Messages API (status callbacks to /status)."""
        if message.to.kind != "phone":
            raise PermanentSendError(f"Twilio sends to phone numbers, not {message.to.kind}",
                                     error_code="invalid_number")
        if message.channel == "sms" and await self.opted_out(message.to.address):
            raise PermanentSendError("the customer opted out of SMS from this number (STOP); "
                                     "they must text START first", error_code="opted_out")
        limit = 1 if message.channel == "whatsapp" else MAX_MEDIA
        if len(message.attachments) > limit:
            raise PermanentSendError(f"{message.channel} takes at most {limit} attachment(s) "
                                     "per message", error_code="too_many_attachments")
        sender, service = self._from(message.channel)
        to = message.to.address if message.channel == "sms" else f"whatsapp:{message.to.address}"
        options: dict[str, object] = {"to": to, "status_callback": f"{self.hook_base}/status"}
        if sender:
            options["from_"] = sender
        if service:
            options["messaging_service_sid"] = service
        if message.template:  # a Content API template (WhatsApp outside the 24-hour window)
            options["content_sid"] = message.template
            if message.variables:
                options["content_variables"] = orjson.dumps(dict(message.variables)).decode()
        if message.text:
            options["body"] = message.text
        if message.attachments:
            options["media_url"] = [self.links.link(a.sha256, a.content_type)
                                    for a in message.attachments]
        if self.pacer is not None:
            await self.pacer.wait(sender or service or "")
        assert self._client is not None, "send() before start()"
        try:
            async with asyncio.timeout(self.config.timeout):
                created = await self._client.messages.create_async(**options)
        except TwilioRestException as exc:
            error = send_error(exc)
            if error.code == "opted_out" and message.channel == "sms":
                await self._record_opt_out(message.to.address, "stop", "Twilio error 21610")
            if error.code == "auth_failed":
                self.last_error = error.message
            raise error from exc
        except (TimeoutError, aiohttp.ClientError, TwilioException) as exc:
            raise RetryableSendError(f"Twilio unreachable: {type(exc).__name__}: "
                                     f"{str(exc)[:200]}", error_code="provider_unreachable"
                                     ) from exc
        sid = str(created.sid)
        if self.last_error is not None:  # the credentials work again
            self.last_error = None
        status = STATUSES.get(str(created.status or ""), "queued")
        return SendResult(sid, status if status in ("queued", "sent") else "queued")


def _callback_channel(fields: Mapping[str, str]) -> str:
    """A status callback's channel: WhatsApp addresses (or ChannelPrefix) say whatsapp."""
    if fields.get("ChannelPrefix", "").lower() == "whatsapp" or any(
            fields.get(k, "").lower().startswith("whatsapp:") for k in ("To", "From")):
        return "whatsapp"
    return "sms"
