"""A local fake of Twilio: the Messages REST API, the account, its numbers and messaging
services (read-only, as ``probe`` reads them), its media host and the storage host the
media URLs redirect to, plus a webhook sender signing with the real algorithm.

Speaks Twilio's documented JSON (a Message resource with ``sid``, ``status``, …; errors as
``{"code", "message", "more_info", "status"}``), checks Basic auth, records every request
and can be scripted to answer 429, 5xx, a hang or a Twilio error code.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from tests.conftest import free_port

SID = "AC" + "1" * 32
TOKEN = "fake-auth-token-0123456789abcdef"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@dataclass
class Scripted:
    """One scripted answer: a status and Twilio error code, or a hang (``hang=True``)."""

    status: int = 500
    code: int | None = None
    message: str = "scripted failure"
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class Created:
    """A message the fake accepted: its SID and the form fields sent."""

    sid: str
    form: MultiDict[str]
    authorization: str


class _App:
    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class StorageHost(_App):
    """Where Twilio's media URLs redirect: answers files by name, records headers."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self._get)
        await self._serve(app)

    async def _get(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers)))
        name = request.match_info["name"]
        if name not in self.files:
            return web.Response(status=404)
        data, content_type = self.files[name]
        return web.Response(body=data, content_type=content_type)


class FakeTwilio(_App):
    """Twilio's REST API (Messages) and media host on 127.0.0.1."""

    def __init__(self, storage: StorageHost) -> None:
        super().__init__()
        self.storage = storage
        self.created: list[Created] = []
        self.attempts = 0
        self.script: list[Scripted] = []  # answers for the next creates, in order
        self.media_script: dict[str, list[int]] = {}  # media SID -> statuses first
        self.media_requests: list[tuple[str, dict[str, str]]] = []
        self.arrived = asyncio.Event()
        # Called with the new SID before the 201 goes out: a status callback that beats
        # the caller's own record of the send.
        self.before_answer: Callable[[str, MultiDict[str]], Awaitable[None]] | None = None
        # What the read-only calls (``probe``) find: the account, its numbers, its services.
        self.account_name = "Shop support"
        self.account_status = "active"
        self.numbers: set[str] = {"+15550001111"}
        self.services: dict[str, str] = {}  # MG… → friendly name
        self.read_script: list[Scripted] = []  # answers for the next reads, in order
        self.reads: list[str] = []  # paths read, with their query

    def fail_next(self, *answers: Scripted) -> None:
        """Answer the next creates with these, then normally again."""
        self.script.extend(answers)

    def add_media(self, media_sid: str, data: bytes = IMAGE,
                  content_type: str = "image/png") -> str:
        """A media resource of an inbound message; returns its URL (on the API host)."""
        self.storage.files[media_sid] = (data, content_type)
        return f"{self.url}/2010-04-01/Accounts/{SID}/Messages/MM{uuid.uuid4().hex}/Media/" \
               f"{media_sid}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages/{msid}/Media/{media}",
                           self._media)
        app.router.add_get("/2010-04-01/Accounts/{sid}.json", self._account)
        app.router.add_get("/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json",
                           self._numbers)
        # messaging.twilio.com's Services, served here: the adapter points the Messaging
        # domain at a non-default api_base_url too.
        app.router.add_get("/v1/Services/{service}", self._service)
        await self._serve(app)

    def _authorized(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
        return request.headers.get("Authorization") == expected and \
            request.match_info["sid"] == SID

    async def _create(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.arrived.set()
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        form = MultiDict(await request.post())
        if self.script:
            answer = self.script.pop(0)
            if answer.hang:
                await asyncio.sleep(30)
            return _error(answer.status, answer.code, answer.message, answer.headers)
        to = str(form.get("To", ""))
        if not to.removeprefix("whatsapp:").startswith("+"):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if "From" not in form and "MessagingServiceSid" not in form:
            return _error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required")
        sid = "SM" + uuid.uuid4().hex
        if self.before_answer is not None:
            await self.before_answer(sid, form)
        self.created.append(Created(sid, MultiDict((k, str(v)) for k, v in form.items()),
                                    request.headers.get("Authorization", "")))
        return web.json_response(_resource(sid, form), status=201)

    async def _read(self, request: web.Request) -> web.Response | None:
        """The refusal or scripted failure a read gets, if any."""
        self.reads.append(request.path_qs)
        expected = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return _error(401, 20003, "Authenticate")
        if self.read_script:
            answer = self.read_script.pop(0)
            if answer.hang:
                await asyncio.sleep(30)
            return _error(answer.status, answer.code, answer.message, answer.headers)
        return None

    async def _account(self, request: web.Request) -> web.Response:
        """``GET /2010-04-01/Accounts/{Sid}.json``: the Account resource."""
        refused = await self._read(request)
        if refused is not None:
            return refused
        if request.match_info["sid"] != SID:  # another account's SID, right credentials
            return _error(404, 20404, "The requested resource was not found")
        now = formatdate(usegmt=True)
        uri = f"/2010-04-01/Accounts/{SID}"
        return web.json_response({
            "auth_token": TOKEN, "date_created": now, "date_updated": now,
            "friendly_name": self.account_name, "owner_account_sid": SID, "sid": SID,
            "status": self.account_status, "type": "Full", "uri": f"{uri}.json",
            "subresource_uris": {"incoming_phone_numbers": f"{uri}/IncomingPhoneNumbers.json",
                                 "messages": f"{uri}/Messages.json"}})

    async def _numbers(self, request: web.Request) -> web.Response:
        """IncomingPhoneNumbers, filtered by ``PhoneNumber`` as Twilio filters it."""
        refused = await self._read(request)
        if refused is not None:
            return refused
        wanted = request.query.get("PhoneNumber")
        found = [n for n in sorted(self.numbers) if wanted is None or n == wanted]
        uri = f"/2010-04-01/Accounts/{SID}/IncomingPhoneNumbers.json"
        page_size = int(request.query.get("PageSize", "50"))
        return web.json_response({
            "incoming_phone_numbers": [
                {"account_sid": SID, "sid": "PN" + uuid.uuid5(uuid.NAMESPACE_URL, n).hex,
                 "phone_number": n, "friendly_name": n, "status": "in-use",
                 "capabilities": {"sms": True, "mms": True, "voice": True, "fax": False},
                 "uri": f"/2010-04-01/Accounts/{SID}/IncomingPhoneNumbers/PN.json"}
                for n in found[:page_size]],
            "end": max(len(found) - 1, 0), "first_page_uri": uri, "next_page_uri": None,
            "page": 0, "page_size": page_size, "previous_page_uri": None, "start": 0,
            "uri": uri})

    async def _service(self, request: web.Request) -> web.Response:
        """Messaging's ``GET /v1/Services/{Sid}``."""
        refused = await self._read(request)
        if refused is not None:
            return refused
        sid = request.match_info["service"]
        if sid not in self.services:
            return _error(404, 20404, f"The requested resource /Services/{sid} was not found")
        return web.json_response({
            "account_sid": SID, "sid": sid, "friendly_name": self.services[sid],
            "inbound_request_url": None, "status_callback": None, "sticky_sender": True,
            "use_inbound_webhook_on_number": False,
            "url": f"https://messaging.twilio.com/v1/Services/{sid}"})

    async def _media(self, request: web.Request) -> web.Response:
        self.media_requests.append((request.path, dict(request.headers)))
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        media = request.match_info["media"]
        script = self.media_script.get(media)
        if script:
            return web.Response(status=script.pop(0), headers={"Retry-After": "0"})
        # Twilio answers a media URL with a redirect to the file's storage location.
        raise web.HTTPTemporaryRedirect(f"{self.storage.url}/{media}")


def _error(status: int, code: int | None, message: str,
           headers: Mapping[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "status": status,
                            "more_info": f"https://www.twilio.com/docs/errors/{code}"}
    return web.json_response(body, status=status, headers=dict(headers or {}))


def _resource(sid: str, form: Mapping[str, Any]) -> dict[str, Any]:
    now = formatdate(usegmt=True)
    uri = f"/2010-04-01/Accounts/{SID}/Messages/{sid}"
    media = form.getall("MediaUrl", []) if isinstance(form, MultiDict) else []
    return {"account_sid": SID, "api_version": "2010-04-01", "body": form.get("Body"),
            "date_created": now, "date_sent": None, "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": str(len(media)), "num_segments": "1", "price": None,
            "price_unit": "USD", "sid": sid, "status": "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"}, "to": form.get("To"),
            "uri": f"{uri}.json"}


class Webhooks:
    """Posts Twilio's webhooks to a daemon, signed as Twilio signs them."""

    def __init__(self, http: aiohttp.ClientSession, local_base: str, public_url: str,
                 token: str = TOKEN) -> None:
        self.http = http
        self.local_base = local_base
        self.public_url = public_url
        self.validator = RequestValidator(token)

    def sign(self, path: str, fields: Sequence[tuple[str, str]]) -> str:
        """X-Twilio-Signature over the public URL of ``path`` and the fields."""
        return str(self.validator.compute_signature(self.public_url + path,
                                                    MultiDict(fields)))

    async def post(self, path: str, fields: Mapping[str, str] | Sequence[tuple[str, str]], *,
                   signature: str | None = None, sign: bool = True
                   ) -> tuple[int, bytes, str]:
        """POST the form; returns (status, body, content type)."""
        items = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        elif sign:
            headers["X-Twilio-Signature"] = self.sign(path, items)
        async with self.http.post(self.local_base + path, data=urlencode(items),
                                  headers=headers) as response:
            return response.status, await response.read(), response.content_type


def inbound_fields(sid: str, sender: str, body: str = "Hello", *, to: str = "+15550001111",
                   **extra: str) -> dict[str, str]:
    """An incoming message webhook's fields as Twilio sends them."""
    whatsapp = sender.startswith("whatsapp:")
    fields = {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0",
              "ToCity": "", "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus":
              "received", "FromCity": "", "Body": body, "FromCountry": "US",
              "To": f"whatsapp:{to}" if whatsapp else to, "MessagingServiceSid": "",
              "ToZip": "", "NumSegments": "1", "MessageSid": sid, "AccountSid": SID,
              "From": sender, "ApiVersion": "2010-04-01"}
    if whatsapp:
        fields.update({"ProfileName": "Kim", "WaId": sender.removeprefix("whatsapp:+"),
                       "MessageType": "text"})
    fields.update(extra)
    return fields


def status_fields(sid: str, status: str, *, to: str = "+15557770000",
                  error_code: str | None = None) -> dict[str, str]:
    """A status callback's fields."""
    fields = {"SmsSid": sid, "SmsStatus": status, "MessageStatus": status, "To": to,
              "MessageSid": sid, "AccountSid": SID, "From": "+15550001111",
              "ApiVersion": "2010-04-01"}
    if error_code is not None:
        fields["ErrorCode"] = error_code
    return fields
