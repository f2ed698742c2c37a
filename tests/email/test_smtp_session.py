"""The listener's fast address path gives exactly what aiosmtpd's own parser gives."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from adapters.email.inbound import SmtpSession

CASES = [
    "<a@b.example>", "<a@b.example> SIZE=100 BODY=8BITMIME", "<A.B+c-x@Sub.Example.COM>",
    " <x@y.z>", "<>", '<"quoted local"@b.example>', "<@route:a@b.example>",
    "<a@[127.0.0.1]>", "<a..b@c.example>", "<.a@c.example>", "a@b.example",
    "<a@b.example>  SMTPUTF8", "<a@-b.example>", "<" + "x" * 70 + "@b.example>", "<a@b>",
    "<a@b.example", "", "<a b@c.example>", "<a@b.example>x", "<üser@b.example>",
    "<a@b.example.>", "<a@b.example> SIZE=10\r\n", "<<a@b.example>>",
]


class _Handler:
    pass


@pytest.mark.parametrize("arg", CASES)
async def test_fast_path_matches_aiosmtpd(arg: str) -> None:
    assert SmtpSession(_Handler())._getaddr(arg) == SMTP(_Handler())._getaddr(arg)


async def test_local_part_limit_still_applies() -> None:
    long_local = "<" + "x" * 70 + "@b.example>"
    stock, fast = SMTP(_Handler()), SmtpSession(_Handler())
    stock.local_part_limit = fast.local_part_limit = 64
    assert fast._getaddr(long_local) == stock._getaddr(long_local) == (None, None)
