"""Hostile mail: every parser of sender-controlled text runs in linear time and on a budget.

Each shape below stalled the daemon before (issue 17): it is fed at two sizes, the larger
ten times the smaller and at least ten times what stalled it, and the time may grow about
tenfold (linear), far from the hundredfold of a quadratic parse. Sizes show growth without
waiting for it: the whole file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import aiosmtplib
import pytest

from adapters.email.outbound import reply_subject
from normalizer.email import _addresses, html_to_text, parse_email, strip_reply
from tests.email.conftest import Feed, MakeDaemon
from tests.helpers import unique

# Ten times the input: about 10 when linear, about 100 when quadratic. The margin takes a
# shared, noisy machine (two cores for many test runs).
LINEAR_GROWTH = 35


def growth(run: Callable[[int], object], n: int, repeat: int = 1) -> float:
    """time(10 n) / time(n), each the best of three runs of ``repeat`` calls.

    The time is this thread's CPU time, not the wall clock: the parsers are pure and run
    here, and on a busy machine the wall clock also counts the time other work had the core.
    """
    def best(size: int) -> float:
        times = []
        for _ in range(3):
            start = time.thread_time()
            for _ in range(repeat):
                run(size)
            times.append(time.thread_time() - start)
        return min(times)

    run(n)  # warm caches (compiled patterns, codecs) outside the measurement
    return best(10 * n) / best(n)


def test_address_header_of_blanks_is_linear() -> None:
    # Was cubic: _addresses(" " * 8000 + "x") took 139 s. 15,000 is under the 16 KiB
    # budget of an address header, so the scan itself is timed.
    assert growth(lambda n: _addresses(" " * n + "x", None), 1500, repeat=20) < LINEAR_GROWTH
    assert growth(lambda n: _addresses(" " * n + "Kim <kim@mail.example>", None), 1500,
                  repeat=20) < LINEAR_GROWTH


def test_folded_from_of_blanks_is_linear_and_still_names_the_sender() -> None:
    # A folded From of a few thousand blank lines stalled /healthz for 33 s at 5 KB.
    def parse(n: int) -> object:
        raw = (b"From:" + b"\r\n " * n + b"Kim <kim@mail.example> (desk)\r\nSubject: s"
               b"\r\n\r\nhi\r\n")
        message = parse_email(raw, "s")
        assert (message.sender.address, message.sender.name) == ("kim@mail.example", "Kim")
        return message

    assert growth(parse, 500, repeat=5) < LINEAR_GROWTH


def test_address_lists_the_stdlib_parsed_quadratically_are_linear() -> None:
    # email.utils.getaddresses (Python 3.11.7) is quadratic on a group of many members
    # ("a:" + "b," * n: 20 s at 80 KB) and on runs of quotes or backslashes.
    for shape in (lambda n: "a:" + "b," * n, lambda n: '"' * n, lambda n: "\\" * n,
                  lambda n: "<a@" * n):
        assert growth(lambda n, shape=shape: _addresses(shape(n), None), 500,
                      repeat=5) < LINEAR_GROWTH


def test_signature_pattern_is_linear() -> None:
    # "Sent from my [\w ]+[ \t]*$" backtracked over a line of blanks (55 KB: 3.3 s).
    text = "Thanks\nSent from my {}!"
    assert growth(lambda n: strip_reply(text.format(" " * n)), 5000, repeat=5) < LINEAR_GROWTH
    assert strip_reply("Thanks\n\nSent from my iPhone  ") == "Thanks"


def test_unfinished_tags_in_html_only_mail_are_linear() -> None:
    # The stdlib HTMLParser rescans to the end of the input from every unfinished "<a"
    # (36 KB of "<a <a …": 9.2 s). 40,000 of them is 120 KB.
    assert growth(lambda n: html_to_text("<p>hi</p>" + "<a " * n), 4000) < LINEAR_GROWTH
    assert html_to_text("<p>hi</p>" + "<a " * 100) == "hi"


def test_link_text_is_joined_once_per_link() -> None:
    # Every </a> joined the whole line so far (80,000 links: 12.9 s). 1,000 links of long
    # lines is 1 MB, all of it read (the markup budget is 1 MiB). Below that budget the old
    # join shows only mildly here (a ratio of about 35); the count keeps the result exact.
    def run(n: int) -> None:
        text = html_to_text(("x" * 1000 + "<a href='https://shop.example/p'>p</a>") * n)
        assert text.count("(https://shop.example/p)") == n

    assert growth(run, 100) < LINEAR_GROWTH


def test_reply_subject_of_ideographic_blanks_is_linear() -> None:
    # The Re:-prefix pattern on "Re" and 20,000 ideographic spaces took 2.1 s.
    assert growth(lambda n: reply_subject("Re" + "\u3000" * n + "x"), 20000,
                  repeat=5) < LINEAR_GROWTH
    assert reply_subject("Re: RE: AW:  답장: 배송 문의") == "Re: 배송 문의"


def test_content_type_parameters_are_parsed_on_a_budget() -> None:
    # The stdlib's parameter parser is quadratic in the ";" of a quoted value; a field
    # with more parameters than any mailer writes reads as absent (text/plain).
    def parse(n: int) -> object:
        raw = (f'From: a@b.example\r\nContent-Type: multipart/mixed; boundary="{";" * n}'
               '\r\n\r\nbody\r\n').encode()
        return parse_email(raw, "s")

    assert growth(parse, 1000, repeat=5) < LINEAR_GROWTH


# ---------------------------------------------------------------- budgets and limits


def test_header_line_over_998_characters_reads_as_absent() -> None:
    long_name = "K" * 1000
    raw = (f"From: {long_name} <kim@mail.example>\r\nSender: desk@mail.example\r\n"
           f"Subject: {'s' * 1000}\r\nMessage-ID: <m1@mail.example>\r\n\r\nhi\r\n").encode()
    message = parse_email(raw, "s")
    assert message.sender.address == "desk@mail.example"  # From unusable: Sender
    assert message.subject is None
    assert message.provider_message_id == "m1@mail.example"
    raw = f"From: {long_name} <kim@mail.example>\r\n\r\nhi\r\n".encode()
    assert parse_email(raw, "s").sender.address == "unknown@invalid"
    # Folded into lines of RFC 5322's length, the same name is fine.
    folded = "From: " + " ".join(["K" * 90] * 10) + "\r\n <kim@mail.example>\r\n\r\nhi\r\n"
    message = parse_email(folded.encode(), "s")
    assert message.sender.address == "kim@mail.example"


def test_quotes_and_signatures_are_looked_for_at_the_top_only() -> None:
    reply = "Yes, please.\n\nOn Mon, 1 Dec 2026 at 10:00, Shop <s@shop.example> wrote:\n> old"
    assert strip_reply(reply) == "Yes, please."
    # A quote header past the first 64 KB is not looked for: the text stays whole.
    long = "a line of a long report\n" * 3000 + reply
    assert len(long) > 64 * 1024
    assert strip_reply(long) == long.strip()
    # One inside the first 64 KB still cuts what follows, however long.
    assert strip_reply(reply + "\n> more" * 20000) == "Yes, please."


def _multipart(parts: int) -> bytes:
    body = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i
                    for i in range(parts))
    return (b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + body
            + b"--b--\r\n")


def _nested(depth: int) -> bytes:
    raw = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for level in range(depth):
        boundary = b"b%d" % level
        raw = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--"
               + boundary + b"\r\n" + raw + b"--" + boundary + b"--\r\n")
    return b"From: a@b.example\r\n" + raw


def test_mime_structure_beyond_the_limits_is_refused_whole() -> None:
    from normalizer.email import MessageTooComplex, ParseLimits

    assert issubclass(MessageTooComplex, ValueError)
    assert ParseLimits() == ParseLimits(max_parts=200, max_depth=20)
    assert len(parse_email(_multipart(200), "s").text.split("\n\n")) == 200
    with pytest.raises(MessageTooComplex, match="more than 200 MIME parts"):
        parse_email(_multipart(201), "s")
    assert parse_email(_nested(20), "s").text == "innermost"  # a text part at depth 20
    with pytest.raises(MessageTooComplex, match="nested deeper than 20"):
        parse_email(_nested(21), "s")
    limits = ParseLimits(max_parts=2, max_depth=2)
    assert parse_email(_multipart(2), "s", limits=limits).text == "part 0\n\npart 1"
    with pytest.raises(MessageTooComplex):
        parse_email(_multipart(3), "s", limits=limits)
    with pytest.raises(ValueError, match="at least one"):
        ParseLimits(max_parts=0)


def test_twenty_thousand_parts_are_refused_before_they_are_parsed() -> None:
    from normalizer.email import MessageTooComplex

    raw = _multipart(20000)
    start = time.thread_time()
    with pytest.raises(MessageTooComplex):
        parse_email(raw, "s")
    small = time.thread_time() - start
    with pytest.raises(MessageTooComplex):
        parse_email(_multipart(201), "s")
    # The parse stops at part 201, whatever follows: nowhere near 100 times as long.
    assert small < 0.5, small
    with pytest.raises(MessageTooComplex):
        parse_email(_nested(5000), "s")


def test_parts_found_by_a_wrong_boundary_count_too() -> None:
    from normalizer.email import MessageTooComplex, ParseLimits

    # The boundary parameter names no delimiter in the body: the parts are found by their
    # delimiter lines instead, under the same limits.
    raw = _multipart(10).replace(b"boundary=b", b"boundary=wrong")
    assert parse_email(raw, "s").text.count("part ") == 10
    with pytest.raises(MessageTooComplex):
        parse_email(raw, "s", limits=ParseLimits(max_parts=5))


# ---------------------------------------------------------------- RFC 5322 comments


@pytest.mark.parametrize(("header", "name"), [
    ("=?UTF-8?B?6rmA66+87KeA?= (home) <minji@mail.example>", "김민지"),
    ("Kim (work) Lee <minji@mail.example>", "Kim Lee"),
    ('"Kim, Minji" (mobile) <minji@mail.example>', "Kim, Minji"),
    ("minji@mail.example (Kim Minji)", "Kim Minji"),  # no display name: the comment names it
    ("Kim <minji@mail.example> (sent by the shop's form)", "Kim"),
    ("(just a comment) <minji@mail.example>", None),
    ("minji@mail.example", None),
])
def test_comments_are_not_part_of_a_display_name(header: str, name: str | None) -> None:
    raw = f"From: {header}\r\n\r\nhi\r\n".encode()
    sender = parse_email(raw, "s").sender
    assert (sender.address, sender.name) == ("minji@mail.example", name)


# ---------------------------------------------------------------- the daemon


async def test_healthz_answers_while_the_daemon_takes_hostile_mail(
        make_daemon: MakeDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await make_daemon()
    feed = await Feed(http, daemon).skip()
    ids = [f"{unique('hostile')}@mail.example" for _ in range(2)]
    hostile = [
        # A folded From of 5,000 blank lines (15 KB; 5 KB stalled the loop for 33 s).
        b"From:" + b"\r\n " * 5000 + b"Kim <kim@mail.example> (desk)\r\n"
        b"To: support@shop.example"
        b"\r\nMessage-ID: <" + ids[0].encode() + b">\r\nSubject: one\r\n\r\nhello\r\n",
        # HTML-only mail of 36 KB of unfinished tags (before: 9 s on the loop).
        b"From: lee@mail.example\r\nTo: support@shop.example\r\nMessage-ID: <"
        + ids[1].encode() + b">\r\nSubject: two\r\nContent-Type: text/html\r\n\r\n"
        b"<p>hello</p>" + b"\r\n".join([b"<a " * 300] * 40) + b"\r\n",
    ]

    async def deliver() -> None:
        for raw in hostile:
            await aiosmtplib.send(raw, sender="kim@mail.example",
                                  recipients=["support@shop.example"], hostname="127.0.0.1",
                                  port=daemon.smtp_port, timeout=60)  # type: ignore[attr-defined]

    delivery = asyncio.create_task(deliver())
    slowest = 0.0
    probes = 0
    while not delivery.done() or probes < 3:
        start = time.perf_counter()
        async with asyncio.timeout(1):
            async with http.get(f"{daemon.url}/healthz") as resp:
                assert resp.status == 200
        slowest = max(slowest, time.perf_counter() - start)
        probes += 1
    await delivery
    assert slowest < 1.0
    received = await feed.wait_for(
        lambda f: len([m for m in f.received() if m["provider"]["message_id"] in ids]) == 2
        and f.received())
    by_id = {m["provider"]["message_id"]: m for m in received}
    assert by_id[ids[0]]["from"] == {"kind": "email", "address": "kim@mail.example",
                                     "name": "Kim"}
    assert by_id[ids[1]]["text"] == "hello"
