"""Canonical identity addresses: E.164 phone numbers, lower-cased e-mail addresses."""

from __future__ import annotations

import functools
import re

import phonenumbers

from normalizer.model import Party

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class InvalidIdentity(ValueError):
    """An address that cannot be a valid identity of its kind."""


@functools.lru_cache(maxsize=16384)  # a customer's number recurs; parsing it is ~10 µs
def normalize_phone(value: str, default_region: str = "US") -> str:
    """Return ``value`` as E.164 (``+821012345678``); raise InvalidIdentity if impossible."""
    raw = value.strip()
    if raw.lower().startswith(("whatsapp:", "tel:", "sms:")):
        raw = raw.split(":", 1)[1]
    try:
        number = phonenumbers.parse(raw, None if raw.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentity(f"not a phone number: {value!r}") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentity(f"not a possible phone number: {value!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    """Return the address lower-cased and stripped; raise InvalidIdentity if malformed."""
    address = value.strip().strip("<>").lower()
    if not _EMAIL.match(address):
        raise InvalidIdentity(f"not an e-mail address: {value!r}")
    return address


def normalize_party(party: Party, default_region: str = "US") -> Party:
    """Return ``party`` with its address in canonical form for its kind."""
    if party.kind == "phone":
        address = normalize_phone(party.address, default_region)
    elif party.kind == "email":
        address = normalize_email(party.address)
    else:
        address = party.address.strip()
        if not address:
            raise InvalidIdentity(f"empty {party.kind} identity")
    # Already canonical (the usual case): the same object, so callers can tell by identity.
    return party if address == party.address else Party(party.kind, address, party.name)
