"""Settings of a Twilio account: SMS, MMS and WhatsApp through one Twilio project."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from adapters.base import AdapterConfig
from gateway.configkit import Secret
from gateway.media import InvalidOrigin, parse_origin
from normalizer.identity import InvalidIdentity, normalize_phone

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.configkit import Section

API_BASE_URL = "https://api.twilio.com"
# Where Twilio's media URLs (on the API host) redirect to: the secured CDN when "Enforce
# HTTP Auth on Media URLs" is on, the public S3 bucket otherwise (Twilio's support article
# "Protect Media Access with HTTP Basic Authentication for Programmable Messaging").
MEDIA_REDIRECT_HOSTS = ("https://mms.twiliocdn.com", "https://s3-external-1.amazonaws.com")
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")


@dataclass(frozen=True, slots=True)
class TwilioConfig(AdapterConfig):
    """``account_sid`` + ``auth_token`` authenticate both ways (REST calls, and Twilio's
    ``X-Twilio-Signature`` on our hooks); replies go from ``from`` or the messaging service."""

    account_sid: str
    auth_token: Secret
    from_number: str | None = None  # E.164, the SMS sender
    messaging_service_sid: str | None = None
    whatsapp_from: str | None = None  # "whatsapp:+1…"; default "whatsapp:" + from
    api_base_url: str = API_BASE_URL
    public_url: str | None = None  # how Twilio reaches this account; default [server]
    media_redirect_hosts: frozenset[str] = frozenset(MEDIA_REDIRECT_HOSTS)
    sender_rate: float | None = None  # messages per second per sender; None: no pacing
    timeout: float = 15.0
    media_link_ttl: float = 3600.0  # seconds an MMS attachment link stays valid

    example: ClassVar[Mapping[str, object]] = {
        "account_sid": "AC" + "0" * 32, "auth_token": "0123456789abcdef0123456789abcdef",
        "from": "+15550001111"}

    @classmethod
    def parse(cls, section: Section) -> TwilioConfig:
        """Read the account's keys; ``from`` or ``messaging_service_sid`` is required."""
        sid = section.get("account_sid", str, "", required=True,
                          hint='the Account SID from the Twilio console, "AC" + 32 hex digits')
        if sid and not _ACCOUNT_SID.fullmatch(sid):
            section.error("account_sid", 'must be "AC" followed by 32 hex digits',
                          "copy the Account SID from the Twilio console's Account Info")
        token = section.secret("auth_token")
        if token is None and not any(k.startswith("auth_token") for k in section.data):
            section.error("auth_token", "is required (auth_token_file, auth_token_env or "
                          "auth_token_credential)",
                          'e.g. auth_token_credential = "twilio-us-sms": the Auth Token '
                          "also checks Twilio's signatures on the hooks")
        from_number = _from_number(section)
        service = section.get("messaging_service_sid", str, None)
        if service is not None and not _SERVICE_SID.fullmatch(service):
            section.error("messaging_service_sid", 'must be "MG" followed by 32 hex digits')
            service = None
        if from_number is None and service is None and "from" not in section.data:
            section.error("from", "is required (or messaging_service_sid)",
                          'the number replies come from, e.g. from = "+15550001111"')
        whatsapp_from = _whatsapp_from(section)
        base = section.get("api_base_url", str, API_BASE_URL).rstrip("/")
        try:
            if parse_origin(base) != base:
                raise InvalidOrigin("must be an origin (scheme://host[:port])")
        except InvalidOrigin as exc:
            section.error("api_base_url", str(exc), 'e.g. "https://api.twilio.com"')
            base = API_BASE_URL
        public_url = section.get("public_url", str, None)
        if public_url is not None:
            public_url = public_url.rstrip("/")
            if not re.match(r"https?://[^/]", public_url):
                section.error("public_url", "must start with http:// or https://",
                              "the URL Twilio calls this account's hooks on, proxy prefix "
                              "included")
        redirect_hosts = _origins(section, "media_redirect_hosts", MEDIA_REDIRECT_HOSTS)
        rate = section.get("sender_rate", (int, float), None)
        if rate is not None and rate <= 0:
            section.error("sender_rate", "must be more than 0 messages per second",
                          "leave it out for no pacing")
            rate = None
        timeout = float(section.get("timeout", (int, float), 15.0))
        if timeout <= 0:
            section.error("timeout", "must be more than 0 seconds")
            timeout = 15.0
        ttl = float(section.get("media_link_ttl", (int, float), 3600.0))
        if not 60 <= ttl <= 7 * 86400:
            section.error("media_link_ttl", "must be between 60 and 604800 seconds",
                          "Twilio fetches an MMS attachment when it sends the message")
            ttl = 3600.0
        return cls(sid or "", token or Secret(""), from_number, service, whatsapp_from, base,
                   public_url, redirect_hosts, None if rate is None else float(rate), timeout,
                   ttl)


def _from_number(section: Section) -> str | None:
    value = section.get("from", str, None)
    if value is None:
        return None
    try:
        return normalize_phone(value)
    except InvalidIdentity:
        section.error("from", "must be a phone number in E.164 form",
                      'e.g. from = "+15550001111"')
        return None


def _whatsapp_from(section: Section) -> str | None:
    value = section.get("whatsapp_from", str, None)
    if value is None:
        return None
    if not value.startswith("whatsapp:"):
        section.error("whatsapp_from", 'must start with "whatsapp:"',
                      'e.g. whatsapp_from = "whatsapp:+15550001111"')
        return None
    try:
        return "whatsapp:" + normalize_phone(value.removeprefix("whatsapp:"))
    except InvalidIdentity:
        section.error("whatsapp_from", "must be whatsapp: and a number in E.164 form")
        return None


def _origins(section: Section, key: str, default: tuple[str, ...]) -> frozenset[str]:
    origins = set()
    for value in section.str_list(key, default):
        try:
            origins.add(parse_origin(value))
        except InvalidOrigin as exc:
            section.error(key, f"{value!r} {exc}", 'e.g. ["https://mms.twiliocdn.com"]')
    return frozenset(origins)
