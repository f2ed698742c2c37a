"""Twilio's ``X-Twilio-Signature``, checked with the twilio library's RequestValidator.

Twilio signs the URL it called plus the sorted form fields (HMAC-SHA1 with the Auth
Token, or the algorithm ``X-Twilio-Webhooks-Signature-Settings`` names). Behind a proxy
the daemon sees another host and maybe another path prefix, so the URL is rebuilt from the
configured public URL (prefix included) + the hook path + the query string, exactly as
Twilio requested it. Never a hand-written HMAC: Twilio adds fields without notice and the
library is what it tests against.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl

from multidict import MultiDict
from twilio.request_validator import RequestValidator, get_signature_algorithm

from gateway.errors import Forbidden

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


class InvalidTwilioSignature(Forbidden):
    """X-Twilio-Signature is missing or does not match."""

    code = "invalid_signature"


def form_fields(body: bytes) -> MultiDict[str]:
    """The form body's fields, repeated ones kept (the validator signs every value)."""
    return MultiDict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


class TwilioSignature:
    """Checks one account's hooks against its Auth Token."""

    def __init__(self, auth_token: str, account_sid: str) -> None:
        self._validator = RequestValidator(auth_token)
        self._account_sid = account_sid

    def require_header(self, headers: Mapping[str, str]) -> None:
        """Refuse a request without the header before its body is read."""
        if not headers.get(SIGNATURE_HEADER):
            raise InvalidTwilioSignature(f"{SIGNATURE_HEADER} is missing")

    def check(self, url: str, fields: MultiDict[str], headers: Mapping[str, str]) -> None:
        """Raise :class:`InvalidTwilioSignature` unless Twilio signed ``url`` + ``fields``
        for this account."""
        self.require_header(headers)
        signature = headers[SIGNATURE_HEADER]
        algorithm = get_signature_algorithm(headers.get(SETTINGS_HEADER))
        # The URL as configured first (one HMAC); validate() then tries it with and without
        # the default port (Twilio is not consistent there), which costs two more.
        try:
            expected = self._validator.compute_signature(url, fields, algorithm)
        except ValueError:  # an algorithm this version of the library does not know
            expected = ""
        if not hmac.compare_digest(expected.encode(), signature.encode()) and \
                not self._validator.validate(url, fields, signature, algorithm):
            raise InvalidTwilioSignature(
                f"{SIGNATURE_HEADER} does not match: check the account's auth_token and "
                "that public_url is the URL Twilio calls (scheme, host, path prefix)")
        account = fields.get("AccountSid")
        if account and account != self._account_sid:
            raise InvalidTwilioSignature("the request is for another Twilio account")
