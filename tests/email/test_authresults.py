"""The spoofed-sender verdict from Authentication-Results headers (pure, no daemon)."""

from __future__ import annotations

import pytest

from normalizer.authresults import check_sender
from normalizer.email import parse_email
from normalizer.model import SenderAuthentication

GMAIL_PASS = (
    "mx.google.com;\r\n       dkim=pass header.i=@customer.example header.s=s1 "
    'header.b="AbC/dEf+12";\r\n       spf=pass (google.com: domain of bounce@customer.example '
    "designates 192.0.2.1 as permitted sender) smtp.mailfrom=bounce@customer.example;\r\n"
    "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=customer.example")
GMAIL_FORGED = (
    "mx.google.com; spf=pass (google.com: domain of x@evil.example designates 198.51.100.7 "
    "as permitted sender) smtp.mailfrom=x@evil.example; dmarc=fail (p=NONE sp=NONE "
    "dis=NONE) header.from=customer.example")
EXCHANGE = ("spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=customer.example; dkim=pass "
            "(signature was verified) header.d=customer.example;dmarc=pass action=none "
            "header.from=customer.example;compauth=pass reason=100")
TRUSTED = ("mx.shop.example",)


def auth(*headers: str, from_domain: str = "customer.example",
         trusted: tuple[str, ...] = TRUSTED) -> SenderAuthentication:
    return check_sender(headers, from_domain, trusted)


@pytest.mark.parametrize(("headers", "expected"), [
    pytest.param([GMAIL_PASS], ("pass", "pass", "pass", "pass", "mx.google.com"),
                 id="gmail-dmarc-pass"),
    pytest.param([GMAIL_FORGED], ("fail", "fail", "pass", None, "mx.google.com"),
                 id="forged-from-dmarc-fail"),
    pytest.param(["mx.shop.example; dkim=pass header.d=customer.example"],
                 ("pass", None, None, "pass", "mx.shop.example"), id="dkim-aligned"),
    pytest.param(["mx.shop.example; dkim=pass header.d=mailer.example; spf=none"],
                 ("none", None, "none", "pass", "mx.shop.example"), id="dkim-not-aligned"),
    pytest.param(["mx.shop.example; spf=pass smtp.mailfrom=bounce@customer.example"],
                 ("pass", None, "pass", None, "mx.shop.example"), id="spf-aligned"),
    pytest.param(["mx.shop.example; spf=softfail smtp.mailfrom=customer.example; dkim=none"],
                 ("fail", None, "softfail", "none", "mx.shop.example"), id="spf-softfail"),
    pytest.param(["mx.shop.example; dkim=fail header.d=mailer.example; "
                  "dkim=pass header.d=customer.example"],
                 ("pass", None, None, "pass", "mx.shop.example"), id="one-good-signature"),
    pytest.param(["mx.shop.example; dmarc=temperror header.from=customer.example; "
                  "spf=pass smtp.mailfrom=customer.example"],
                 ("none", "temperror", "pass", None, "mx.shop.example"),
                 id="dmarc-could-not-decide"),
    pytest.param(["mx.shop.example; dmarc=none header.from=customer.example; "
                  "spf=fail smtp.mailfrom=customer.example"],
                 ("fail", "none", "fail", None, "mx.shop.example"), id="no-policy-spf-fail"),
    pytest.param(["mx.shop.example 1; none"], ("none", None, None, None, "mx.shop.example"),
                 id="nothing-checked"),
])
def test_verdict(headers: list[str], expected: tuple[str | None, ...]) -> None:
    result = auth(*headers, trusted=("mx.google.com", "mx.shop.example"))
    assert (result.verdict, result.dmarc, result.spf, result.dkim, result.by) == expected


def test_alignment_takes_a_parent_domain_never_a_sibling() -> None:
    header = "mx.shop.example; dkim=pass header.i=@customer.example"
    assert auth(header, from_domain="news.customer.example").verdict == "pass"
    assert auth(header, from_domain="evilcustomer.example").verdict == "none"
    assert auth(header, from_domain="example").verdict == "none"


def test_a_header_the_sender_put_on_top_is_ignored() -> None:
    forged_on_top = "mx.evil.example; dmarc=pass header.from=customer.example"
    trusted = "mx.shop.example; dmarc=fail header.from=customer.example"
    assert auth(forged_on_top, trusted).to_json() == {
        "verdict": "fail", "dmarc": "fail", "spf": None, "dkim": None,
        "by": "mx.shop.example"}
    assert auth(forged_on_top).to_json() == {
        "verdict": "none", "dmarc": None, "spf": None, "dkim": None, "by": None}


def test_of_two_trusted_headers_the_topmost_counts() -> None:
    result = auth("MX.Shop.Example; dmarc=fail", "mx.shop.example; dmarc=pass")
    assert (result.verdict, result.by) == ("fail", "mx.shop.example")


def test_exchange_online_names_no_server_so_it_cannot_be_trusted() -> None:
    """Its header looks exactly like one the sender wrote (docs/email.md)."""
    assert auth(EXCHANGE, trusted=("mx.microsoft.com",)).verdict == "none"


@pytest.mark.parametrize("value", [
    "", ";;;", "mx.shop.example", "mx.shop.example; dmarc", "mx.shop.example; dmarc=",
    "mx.shop.example; =pass", "mx.shop.example (open comment; dmarc=pass",
    'mx.shop.example; dkim=pass header.d="unterminated', "mx.shop.example; dmarc=maybe",
    "mx.shop.example; dkim=pass header.d=", "mx.shop.example; spf=pass smtp.mailfrom=@",
    "mx shop example; dmarc=pass", "(" * 5000 + "mx.shop.example; dmarc=pass",
    "mx.shop.example; dmarc=pass\udcff header.from=\udcfe",
])
def test_malformed_header_is_none_never_an_exception(value: str) -> None:
    assert auth(value).verdict == "none"


def test_parse_email_carries_it_only_when_the_account_trusts_a_server() -> None:
    raw = (b"Authentication-Results: mx.evil.example; dmarc=pass\r\n"
           b"Authentication-Results: mx.shop.example;\r\n"
           b"  dmarc=fail (p=reject) header.from=customer.example\r\n"
           b"From: VIP <vip@Customer.Example>\r\nTo: support@shop.example\r\n"
           b"Subject: new address\r\nMessage-ID: <a@evil.example>\r\n\r\nplease\r\n")
    assert parse_email(raw, "support").authentication is None
    flagged = parse_email(raw, "support", trusted_authserv_ids=TRUSTED)
    assert flagged.authentication == SenderAuthentication(
        "fail", dmarc="fail", by="mx.shop.example")
    assert flagged.sender.address == "vip@customer.example"  # still the customer's
