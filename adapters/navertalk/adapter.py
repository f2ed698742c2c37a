"""Naver TalkTalk adapter: unsigned webhooks from Naver's addresses in, the send API out.

TalkTalk signs nothing, so the hook accepts a request only from the account's
``allowed_ips`` (Naver's published ranges by default), judged on the client address the
core works out (``gateway.http.client_address``: ``X-Forwarded-For`` counts only when
the direct peer is in ``[server] trusted_proxies``). Everything else is 403 before the
body is read. TalkTalk waits 5 seconds for an answer: the hook commits and answers 200
with an EMPTY body (a JSON body would be sent to the customer as a reply) and never
waits on anything remote; images are fetched after the commit.

``open`` carries where the customer came from (a Smart Store product page): it is kept
(a checkpoint per user) and becomes the ``context`` of the conversation their next
message lands in. ``echo`` events are the partner's own sends: ours are matched by
recipient, text and time and add nothing; an agent's typed in the partner center are
stored as outbound messages without an agent.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from adapters.base import ChannelAdapter, OutboundMessage, SendResult
from adapters.navertalk.config import NaverTalkConfig
from gateway.errors import (
    Forbidden,
    MalformedPayload,
    NotFound,
    PermanentSendError,
    RetryableSendError,
    SendError,
    from_invalid_input,
)
from gateway.http import client_address, read_body, remote_error_excerpt, retry_after_seconds
from gateway.media import MediaSource
from gateway.media_links import MediaLinks
from normalizer.errors import InvalidInput
from normalizer.identity import InvalidIdentity, normalize_phone
from normalizer.model import InboundMessage, Party
from normalizer.navertalk import (
    KIND,
    Ignored,
    Opened,
    PaymentEvent,
    ProfileWithdrawn,
    is_product_context,
    parse_event,
)
from normalizer.textsplit import split_text

TEXT_LIMIT = 10_000  # characters a textContent ("영문/한글 구분 없이 1만자")
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})
# How long a reply's image link stays valid. TalkTalk downloads the image when the message
# is sent, but its clients may ask for it again later (the full-size image when a customer
# opens a message read from the preview, a device synced afterwards), when no send is in
# progress to hand out a new link: a week covers that, while a leaked link stops opening
# the file. (A retried send builds fresh links, so it never hands out an expired one.)
MEDIA_LINK_TTL = 7 * 86400.0
EMPTY_OK = b""  # 200 with no body: a JSON body would be sent to the customer
CONTEXT_MAX_AGE = 7 * 86400.0  # an open older than this no longer explains a message


class NaverTalkAdapter(ChannelAdapter):
    """``POST /hooks/navertalk/{account}`` in; ``{api_base_url}/chatbot/v1/event`` out."""

    type = "navertalk"
    channels = frozenset({"navertalk"})
    identity_kinds = frozenset({"navertalk", "phone"})
    channel_identity_kinds = {"navertalk": ("navertalk",)}
    config_class = NaverTalkConfig
    config: NaverTalkConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters.update({"refused_addresses": 0, "ignored_events": 0, "opens": 0,
                              "payments_refused": 0, "echoes": 0, "invalid_events": 0})
        self.media = MediaLinks(self.ctx.store, secret=self.config.authorization.reveal(),
                                purpose=f"navertalk images {self.name}",
                                base_url=f"{self.ctx.public_url}/hooks/navertalk/{self.name}",
                                ttl=MEDIA_LINK_TTL)
        # (user, text) → until when an echo of that piece of a split send is ours.
        self._pieces: dict[tuple[str, str], float] = {}
        # message id → pieces already accepted (a retry does not send them again).
        self._progress: dict[str, int] = {}

    async def on_start(self) -> None:
        """Customers' images are public URLs on Naver's image hosts: no credentials."""
        self.ctx.media.register(self.media_source, MediaSource(self.config.media_hosts))

    async def probe(self) -> str | None:
        """Nothing to check without sending: TalkTalk's Chat Bot API has no read-only call.

        Its one endpoint, ``POST /chatbot/v1/event``, delivers events to a user (``send``,
        ``action`` typing, ``persistentMenu`` changes the menu), ``imageUpload`` stores an
        image and the Profile API asks a user for consent; none tells who the token belongs
        to without doing something. The token shows at the first reply
        (``navertalk_auth_failed``), the hook at TalkTalk's first event."""
        return None

    async def on_stop(self) -> None:
        """Pending image fetches wait for the next start."""
        self.ctx.media.unregister(self.media_source)

    def routes(self) -> Sequence[web.RouteDef]:
        """The webhook, and the signed URLs TalkTalk downloads a reply's images from."""
        return [web.post("", self.handle_webhook),
                self.media.route()]

    def sender(self, channel: str) -> Party:
        """Replies come from the partner account."""
        return Party("navertalk", f"partner:{self.name}", None)

    # ------------------------------------------------------------ inbound

    def _check_source(self, request: web.Request) -> None:
        """403 unless the client address is in ``allowed_ips`` (TalkTalk signs nothing)."""
        address = client_address(request)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is None or not any(ip in network for network in self.config.allowed_ips):
            self.counters["refused_addresses"] += 1
            raise Forbidden(f"source address {address or 'unknown'} is not in this account's "
                            "allowed_ips (TalkTalk requests come from Naver's ranges; behind "
                            "a proxy, list it in [server] trusted_proxies)")

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """Check the source, commit what the event means, answer 200 with an empty body."""
        self._check_source(request)
        body = await read_body(request)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc
        now = datetime.now(UTC)
        try:
            outcome = parse_event(payload, self.name, message_id=_new_id(),
                                  received_at=now, media_source=self.media_source,
                                  partner=self.sender("navertalk"),
                                  echo_window=self.config.echo_match_seconds,
                                  allowed_media=self.config.media_hosts)
        except InvalidInput as exc:
            self.counters["invalid_events"] += 1
            raise from_invalid_input(exc) from exc
        if isinstance(outcome, PaymentEvent):
            # Only a 200 approves a Naver Pay payment: the gateway approves none.
            self.counters["payments_refused"] += 1
            self.log.info("navertalk.payment_not_approved", talk_event=outcome.event)
            return web.Response(status=403, body=EMPTY_OK)
        if isinstance(outcome, Ignored):
            self.counters["ignored_events"] += 1
            self.log.debug("navertalk.event_ignored", talk_event=outcome.event,
                           reason=outcome.reason)
        elif isinstance(outcome, Opened):
            await self._remember_open(outcome)
        elif isinstance(outcome, ProfileWithdrawn):
            await self._withdraw_profile(outcome)
        else:
            await self._store(outcome, body)
        return web.Response(status=200, body=EMPTY_OK)

    async def _remember_open(self, opened: Opened) -> None:
        """Keep where the customer came from for their next message's conversation."""
        self.counters["opens"] += 1
        if is_product_context(opened.context):
            await self.ctx.store.set_checkpoint(self._key("open", opened.user),
                                                orjson.dumps(opened.context).decode())

    async def _store(self, inbound: InboundMessage, body: bytes) -> None:
        inbound.raw = body
        inbound.raw_content_type = "application/json"
        if inbound.direction == "outbound":
            self.counters["echoes"] += 1
            assert inbound.recipient is not None
            if self._own_piece(inbound.recipient.address, inbound.text):
                return  # a piece of one of our split sends: the whole is stored already
        else:
            inbound.context = await self._open_context(inbound.sender.address)
            if inbound.content and inbound.content.get("type") == "profile":
                await self._remember_profile(inbound)
        await self.ingest(inbound)

    async def _open_context(self, user: str) -> dict[str, Any] | None:
        stored = await self.ctx.store.get_checkpoint(self._key("open", user))
        if not stored:
            return None
        context: dict[str, Any] = orjson.loads(stored)
        opened = str(context.get("opened_at", ""))
        try:
            age = time.time() - datetime.fromisoformat(opened.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
        return context if age <= CONTEXT_MAX_AGE else None

    async def _remember_profile(self, inbound: InboundMessage) -> None:
        """What a shared profile gave, so that its withdrawal can take it back."""
        assert inbound.content is not None
        phone = inbound.content.get("cellphone")
        given: dict[str, str] = {}
        if isinstance(phone, str):
            try:
                # Korean numbers (01012341234) in E.164 whatever the store's default region.
                given["phone"] = normalize_phone(phone, self.config.default_region)
                inbound.linked_identities = [Party("phone", given["phone"])]
            except InvalidIdentity:
                inbound.linked_identities = []  # not a number: content only
        await self.ctx.store.set_checkpoint(self._key("profile", inbound.sender.address),
                                            orjson.dumps(given).decode())

    async def _withdraw_profile(self, withdrawn: ProfileWithdrawn) -> None:
        """The customer withdrew consent: what those fields gave leaves the customer, in
        one change: the nickname's name (not a name another channel gave) and the phone
        the profile linked. A repeated withdrawal finds nothing left and changes nothing."""
        key = self._key("profile", withdrawn.user)
        stored = await self.ctx.store.get_checkpoint(key)
        given: dict[str, str] = orjson.loads(stored) if stored else {}
        phone = given.pop("phone", None) if "cellphone" in withdrawn.fields else None
        try:
            await self.ctx.store.take_back(
                KIND, withdrawn.user, name="nickname" in withdrawn.fields,
                identities=[("phone", phone)] if phone else [])
        except NotFound:
            pass  # no customer has this user (erased): nothing of theirs is left
        if phone:  # forgotten: a repeat must not take the number if an agent links it again
            await self.ctx.store.set_checkpoint(key, orjson.dumps(given).decode())
        self.log.info("navertalk.profile_withdrawn", fields=list(withdrawn.fields))

    def _own_piece(self, user: str, text: str) -> bool:
        now = time.monotonic()
        until = self._pieces.get((user, text))
        return until is not None and until >= now

    def _key(self, what: str, user: str) -> str:
        return f"navertalk:{self.name}:{what}:{user}"

    # ------------------------------------------------------------ outbound

    def _events(self, message: OutboundMessage) -> list[dict[str, Any]]:
        """The reply as send events: text pieces of at most 10,000 characters, then images."""
        if message.template:
            raise PermanentSendError(f"TalkTalk has no template {message.template!r}",
                                     error_code="invalid_template")
        user = message.to.address
        events: list[dict[str, Any]] = [
            {"event": "send", "user": user, "textContent": {"text": piece}}
            for piece in (split_text(message.text, TEXT_LIMIT) if message.text else [])]
        for attachment in message.attachments:
            if attachment.content_type not in IMAGE_TYPES:
                raise PermanentSendError(
                    f"TalkTalk cannot send {attachment.content_type} "
                    f"({attachment.filename!r}): only JPEG, PNG and GIF images",
                    error_code="attachment_not_supported")
            events.append({"event": "send", "user": user,
                           "imageContent": {"imageUrl": self.media.link(
                               attachment.sha256, attachment.content_type)}})
        if not events:
            raise PermanentSendError("nothing to send", error_code="empty_message")
        return events

    async def send(self, message: OutboundMessage) -> SendResult:
        """POST each event with the Authorization token; ``resultCode`` "00" is success."""
        events = self._events(message)
        # The echo of each piece of a split reply, and of an image (echoed as "(image)",
        # which no stored text matches), is ours too: known here, not by the store.
        until = time.monotonic() + self.config.echo_match_seconds
        self._forget_expired()
        for event in events:
            if "imageContent" in event:
                self._pieces[(message.to.address, "(image)")] = until
            elif len(events) > 1:
                self._pieces[(message.to.address, event["textContent"]["text"])] = until
        done = self._progress.get(message.id, 0)
        for index in range(done, len(events)):
            await self._post(events[index])
            self._progress[message.id] = index + 1
        self._progress.pop(message.id, None)
        return SendResult(None, "sent")

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for key in [k for k, until in self._pieces.items() if until < now]:
            del self._pieces[key]

    async def _post(self, event: dict[str, Any]) -> None:
        url = f"{self.config.api_base_url}/chatbot/v1/event"
        headers = {"Content-Type": "application/json;charset=UTF-8",
                   "Authorization": self.config.authorization.reveal(),
                   "User-Agent": "omnirelay"}
        try:
            async with self.ctx.http.post(
                    url, data=orjson.dumps(event), headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout)) as response:
                raw = await response.content.read(4096)
                if response.status != 200:
                    raise _http_error(response.status, response.headers.get("Retry-After"),
                                      raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableSendError(f"TalkTalk unreachable: {type(exc).__name__}",
                                     error_code="navertalk_unreachable") from exc
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RetryableSendError("TalkTalk answered 200 without its JSON result",
                                     provider_message=remote_error_excerpt(200, raw),
                                     error_code="navertalk_unavailable") from None
        if not isinstance(answer, dict) or answer.get("success") is not True:
            raise _result_error(answer if isinstance(answer, dict) else {})


def _new_id() -> str:
    """TalkTalk gives no message id: every event gets a fresh one."""
    return f"nt-{uuid.uuid4().hex}"


def _http_error(status: int, retry_after: str | None, raw: bytes) -> SendError:
    excerpt = remote_error_excerpt(status, raw)
    if status in (408, 429) or status >= 500:
        return RetryableSendError(f"TalkTalk answered {status}", provider_code=str(status),
                                  provider_message=excerpt,
                                  retry_after=retry_after_seconds(retry_after),
                                  error_code="navertalk_unavailable")
    return PermanentSendError(f"TalkTalk answered {status}", provider_code=str(status),
                              provider_message=excerpt, error_code="navertalk_rejected")


def _result_error(answer: dict[str, Any]) -> SendError:
    """``resultCode`` → what to do: 01 auth and 02 request errors and image format/size are
    for good; 99 (a failure Naver describes, such as a customer still in a profile consent
    step) and IMG-02 (Naver's download timed out) are tried again."""
    code = str(answer.get("resultCode", ""))
    text = str(answer.get("resultMessage") or "")[:300]
    message = f"TalkTalk resultCode {code or '?'}: {text}".rstrip(": ")
    if code == "01":
        return PermanentSendError(message + " (check authorization)", provider_code=code,
                                  provider_message=text, error_code="navertalk_auth_failed")
    if code == "02":
        return PermanentSendError(message, provider_code=code, provider_message=text,
                                  error_code="invalid_request")
    if code in ("IMG-01", "IMG-03"):
        return PermanentSendError(message, provider_code=code, provider_message=text,
                                  error_code="image_rejected")
    return RetryableSendError(message, provider_code=code, provider_message=text,
                              error_code="navertalk_failed")
