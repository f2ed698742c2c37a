"""MIME normalization against real-world-shaped mail (tests/corpus/email/*.eml)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest

from normalizer.email import (
    classify_automatic,
    decode_bytes,
    decode_header,
    html_to_text,
    parse_email,
    strip_reply,
    unflow,
)
from tests.email.corpus import as_expected, samples

MOJIBAKE = ("Ã", "Â", "\ufffd", "ì•", "ê°", "í™", "¼", "½", "ÈÆ", "±æ")


@pytest.mark.parametrize("path", samples(), ids=lambda p: p.name)
def test_sample_normalizes_as_expected(path: Path) -> None:
    expected = json.loads(path.with_name(path.stem + ".expected.json").read_text())
    message = parse_email(path.read_bytes(), "support")
    actual = as_expected(message)
    for key, value in expected.items():
        if key == "content":
            assert message.content is not None
            for inner, inner_value in value.items():
                assert message.content.get(inner) == inner_value, inner
        else:
            assert actual[key] == value, key
    # Contract invariants for every sample.
    assert message.text.strip(), "text is always present"
    assert message.raw == path.read_bytes(), "the raw message is kept as received"
    assert message.channel == "email" and message.sender.kind == "email"
    assert "<" not in message.provider_message_id
    if path.name != "malformed-mime.eml":
        for marker in MOJIBAKE:
            assert marker not in message.text + (message.subject or "") + \
                (message.sender.name or ""), f"mojibake {marker!r}"


def test_corpus_covers_the_issue_list() -> None:
    names = {p.stem for p in samples()}
    assert {"korean-euc-kr", "korean-iso-2022-kr", "japanese-iso-2022-jp",
            "japanese-shift-jis", "chinese-gb2312", "windows-1252",
            "outlook-html-inline-image", "gmail-reply-quoted", "apple-mail-attachments",
            "dsn-bounce", "out-of-office", "mislabeled-charset",
            "malformed-mime"} <= names
    for name in names:
        assert (samples()[0].parent / f"{name}.expected.json").exists(), name


def test_automatic_mail_is_flagged() -> None:
    flags = {p.stem: parse_email(p.read_bytes(), "s").automatic for p in samples()}
    assert flags["dsn-bounce"] == "bounce"
    assert flags["out-of-office"] == "auto_reply"
    assert flags["bulk-newsletter"] == "bulk"
    people = [n for n, f in flags.items() if f is None]
    assert "gmail-reply-quoted" in people and "korean-euc-kr" in people


@pytest.mark.parametrize(("headers", "kind"), [
    ("Auto-Submitted: auto-replied", "auto_reply"),
    ("Auto-Submitted: auto-generated", "bulk"),
    ("Auto-Submitted: no", None),
    ("X-Autoreply: yes", "auto_reply"),
    ("Precedence: junk", "bulk"),
    ("Precedence: auto_reply", "auto_reply"),
    ("List-Id: <offers.deals.example>", "bulk"),
    ("X-Failed-Recipients: a@b.example", "bounce"),
    ("Return-Path: <>", "auto_reply"),
    ("X-Auto-Response-Suppress: All\r\nSubject: Automatic reply: hello", "auto_reply"),
    ("X-Auto-Response-Suppress: All\r\nSubject: a question", None),
    ("Content-Type: multipart/report; report-type=disposition-notification; boundary=x",
     "auto_reply"),
])
def test_classify_automatic(headers: str, kind: str | None) -> None:
    raw = f"From: someone@example.com\r\n{headers}\r\n\r\nbody\r\n".encode()
    message = parse_email(raw, "s")
    assert message.automatic == kind
    from normalizer.email import _PARSER

    assert classify_automatic(_PARSER.parsebytes(raw)) == kind


def test_encoded_word_split_inside_a_multibyte_character() -> None:
    # Some Korean webmail splits one UTF-8 syllable across two encoded words.
    data = "배송 문의".encode()
    first, second = data[:4], data[4:]
    import base64

    value = (f"=?UTF-8?B?{base64.b64encode(first).decode()}?=\r\n "
             f"=?UTF-8?B?{base64.b64encode(second).decode()}?=")
    assert decode_header(value) == "배송 문의"


def test_unknown_charset_label_in_encoded_word_is_detected() -> None:
    assert decode_header("=?x-unheard-of?B?7ZmN6ri464+Z?=") == "홍길동"
    assert decode_header("=?ks_c_5601-1987?B?yKux5rW/?=") == "홍길동"


@pytest.mark.parametrize(("data", "label", "text"), [
    ("naïve café".encode(), "iso-8859-1", "naïve café"),       # UTF-8 labeled Latin-1
    ("naïve café".encode("cp1252"), "iso-8859-1", "naïve café"),
    ("주문 확인 부탁드립니다".encode("cp949"), "us-ascii", "주문 확인 부탁드립니다"),
    ("주문 확인 부탁드립니다".encode("cp949"), None, "주문 확인 부탁드립니다"),
    ("주문 확인 부탁드립니다".encode("cp949"), "euc-kr", "주문 확인 부탁드립니다"),
    ("こんにちは".encode("iso2022_jp"), None, "こんにちは"),       # undeclared ISO-2022-JP
    ("안녕하세요".encode("iso2022_kr"), "us-ascii", "안녕하세요"),
    (b"plain", "utf-16", "plain"),                       # not UTF-16 at all
    (b"caf\xc3\xa9 \xff ok", "utf-8", "café \ufffd ok"),         # declared UTF-8, one bad byte
    ("Grüße".encode("cp1252"), "x-bogus", "Grüße"),
    (b"", "utf-8", ""),
])
def test_decode_bytes(data: bytes, label: str | None, text: str) -> None:
    assert decode_bytes(data, label) == text


def test_dangerous_codecs_are_not_charsets() -> None:
    # base64/zlib/rot13 are Python codecs but not text charsets: decode as if undeclared.
    assert decode_bytes(b"aGVsbG8=", "base64") == "aGVsbG8="
    assert decode_bytes(b"uryyb", "rot13") == "uryyb"


@pytest.mark.parametrize(("text", "new"), [
    ("Thanks!\n\nOn Mon, 1 Dec 2026 at 10:00, Shop <s@shop.example> wrote:\n> old", "Thanks!"),
    ("Danke\n\nAm 01.12.2026 um 10:00 schrieb Shop <s@shop.example>:\n> alt", "Danke"),
    ("Merci\n\nLe lun. 1 déc. 2026 à 10:00, Shop <s@shop.example> a écrit :\n> x", "Merci"),
    ("네\n\n2026년 12월 1일 (월) 오전 10:00, Shop <s@shop.example>님이 작성:\n> 이전", "네"),
    ("OK\n\n-----Original Message-----\nFrom: Shop\nSent: Monday\n\nold", "OK"),
    ("확인\n\n-----원본 메시지-----\n보낸 사람: Shop\n받는 사람: me", "확인"),
    ("Yes\n\nFrom: Shop Support <s@shop.example>\nSent: Monday, December 1, 2026\nTo: me\n"
     "Subject: Re: x\n\nold text", "Yes"),
    ("Answer one\n> q1\nAnswer two\n> q2\n> q3", "Answer one\n> q1\nAnswer two"),
    ("Short note\n\n-- \nJane Doe\nACME Corp", "Short note"),
    ("Short note\n\nSent from my iPhone", "Short note"),
    ("> only a quote", "> only a quote"),
    ("On the other hand, I wrote: nothing", "On the other hand, I wrote: nothing"),
])
def test_strip_reply(text: str, new: str) -> None:
    assert strip_reply(text) == new


def test_unflow_joins_soft_breaks_and_keeps_signature_separator() -> None:
    assert unflow("one \ntwo\n-- \nsig", delsp=False) == "one two\n-- \nsig"
    assert unflow("요청드 \n립니다", delsp=True) == "요청드립니다"
    assert unflow(">> quoted \n>> more", delsp=False) == ">> quoted more"


def test_html_to_text_keeps_structure_and_links() -> None:
    html = ("<html><head><style>p{color:red}</style><title>t</title></head><body>"
            "<p>Hello&nbsp;there</p><ul><li>one</li><li>two</li></ul>"
            "<p><a href='https://x.example/a'>see here</a> and "
            "<a href='https://x.example/b'>https://x.example/b</a></p>"
            "<blockquote>older<br>text</blockquote><script>alert(1)</script></body></html>")
    assert html_to_text(html) == ("Hello there\n\n- one\n- two\n\nsee here (https://x.example/a)"
                                  " and https://x.example/b\n\n> older\n> text")


def test_sender_falls_back_and_never_raises_on_garbage() -> None:
    message = parse_email(b"Sender: Bob <bob@example.com>\r\n\r\nhi", "s")
    assert message.sender.address == "bob@example.com" and message.text == "hi"
    message = parse_email(b"\xff\xfe\x00garbage without headers", "s")
    assert message.sender.address == "unknown@invalid"
    assert message.provider_message_id.startswith("sha256:")


def test_same_raw_bytes_give_the_same_dedupe_key_without_message_id() -> None:
    raw = b"From: a@b.example\r\nSubject: x\r\n\r\nhello"
    assert parse_email(raw, "s").provider_message_id == \
        parse_email(raw, "s").provider_message_id
    assert parse_email(raw + b"!", "s").provider_message_id != \
        parse_email(raw, "s").provider_message_id


def test_message_id_without_brackets_is_accepted() -> None:
    raw = b"From: a@b.example\r\nMessage-ID: abc.123@b.example\r\n\r\nhello"
    assert parse_email(raw, "s").provider_message_id == "abc.123@b.example"


def test_reply_token_from_envelope_recipient_or_header() -> None:
    token = "01jdx6k8s7m2q4v9w3e5r8t1y0"
    raw = b"From: a@b.example\r\nTo: support@shop.example\r\n\r\nhello"
    assert parse_email(raw, "s", recipient=f"support+c-{token}@shop.example"
                       ).reply_token == token
    raw = f"From: a@b.example\r\nX-Omnirelay-Conversation: {token.upper()}\r\n\r\nx".encode()
    assert parse_email(raw, "s").reply_token == token
    # Not a token: wrong length, or someone else's plus-address tag.
    raw = b"From: a@b.example\r\nTo: bob+c-short@example.com\r\n\r\nhello"
    assert parse_email(raw, "s").reply_token is None


def test_rfc2231_filename_in_legacy_korean_charset() -> None:
    raw = (b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
           b"--b\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename*=ks_c_5601-1987''%B0%DF%C0%FB%BC%AD.xlsx"
           b"\r\n\r\ndata\r\n--b--\r\n")
    message = parse_email(raw, "s")
    assert [a.filename for a in message.attachments] == ["견적서.xlsx"]
    assert message.text == "see attached"


def test_path_characters_in_filenames_are_neutralized() -> None:
    raw = (b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
           b"--b\r\nContent-Type: application/pdf; name=\"../../etc/passwd\"\r\n\r\ndata\r\n"
           b"--b--\r\n")
    (attachment,) = parse_email(raw, "s").attachments
    assert "/" not in attachment.filename and attachment.filename.endswith("passwd")


def test_forwarded_message_is_an_attachment_not_the_body() -> None:
    raw = (b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nplease see below\r\n"
           b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
           b"From: c@d.example\r\nSubject: original\r\nMessage-ID: <o@d.example>\r\n\r\n"
           b"the original\r\n--b--\r\n")
    message = parse_email(raw, "s")
    assert message.text == "please see below"
    assert [(a.filename, a.content_type) for a in message.attachments] == [
        ("original.eml", "message/rfc822")]
    assert b"the original" in message.attachments[0].data


def test_mutated_corpus_never_raises() -> None:
    """Truncated and bit-flipped mail still parses (a cheap fuzz; seeded, so repeatable)."""
    rng = random.Random(20261122)
    for path in samples():
        raw = path.read_bytes()
        for _ in range(15):
            data = bytearray(raw[: rng.randrange(1, len(raw) + 1)])
            for _ in range(rng.randrange(0, 8)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            message = parse_email(bytes(data), "s")
            assert message.provider_message_id
            # Everything must serialize (no lone surrogates from raw 8-bit bytes).
            orjson.dumps({
                "text": message.text, "html": message.html, "subject": message.subject,
                "from": message.sender.to_json(), "refs": message.reply_refs,
                "id": message.provider_message_id, "content": message.content,
                "files": [(a.filename, a.content_type, a.content_id)
                          for a in message.attachments]})


def _single_part_cases() -> list[bytes]:
    """Corpus mail, its mutations, and header/body boundaries the fast path must get right."""
    rng = random.Random(20261129)
    cases = []
    for path in samples():
        raw = path.read_bytes()
        cases.append(raw)
        cases.append(raw.replace(b"\r\n", b"\n"))
        for _ in range(20):
            data = bytearray(raw[: rng.randrange(1, len(raw) + 1)])
            for _ in range(rng.randrange(0, 8)):
                if data:
                    data[rng.randrange(len(data))] = rng.choice(b"\r\n :\t-=\xc3\xa9xX")
            cases.append(bytes(data))
    cases += [
        b"Subject: only headers\r\n",
        b"Subject: no blank line\r\nthis line is not a header\r\nand more\r\n",
        b"Subject: s\r\n\r\n",
        b"Subject: s\r\n\r\n\r\nbody after an empty line\r\n",
        b"Subject: s\n\nlf only\n",
        b"Subject: s\r\n folded\r\nFrom: a@b.c\r\n\r\nbody \xea\xb0\x80 8-bit\r\n",
        b"From a@b.c Sun Nov 22 10:00:00 2026\r\nSubject: mbox line\r\n\r\nbody\r\n",
        b" leading continuation\r\nSubject: s\r\n\r\nbody\r\n",
        b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n",
        b"X-Empty:\r\nX-Tab:\tvalue\r\nSubject: folded at the end\r\n\tsecond line\r\n\r\nb",
        b"Bad Name: x\r\nSubject: s\r\n\r\nb\r\n",
        b": no name\r\nSubject: s\r\n\r\nb\r\n",
        b"Subject: bare\rcr\r\n\r\nb\r\n",
        b"Subject: =?utf-8?b?7ZWc6riA?= \xed\x95\x9c\r\nFrom: \xea\xb9\x80 <k@x.kr>\r\n\r\nb",
        b"Subject: s\r\nFrom me: not a header\r\n\r\nb\r\n",
        b"Subject: s\r\nFrom x@y Mon Jan  1 00:00:00 2026\r\n\r\nb\r\n",
        b"subject: lower\r\nSUBJECT: upper\r\nContent-Type: TEXT/PLAIN; charset=utf-8\r\n\r\nb",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
    ]
    return cases


def test_the_single_part_fast_path_gives_exactly_what_the_feed_parser_gives() -> None:
    from normalizer.email import _PARSER, _parse_single_part

    taken = 0
    for raw in _single_part_cases():
        fast = _parse_single_part(raw)
        if fast is None:
            continue  # the full parse takes it
        taken += 1
        full = _PARSER.parsebytes(raw)
        assert list(fast.raw_items()) == list(full.raw_items()), raw[:80]
        assert fast.get_payload() == full.get_payload(), raw[:80]
        assert fast.defects == full.defects == [], raw[:80]
        assert fast.get_unixfrom() == full.get_unixfrom(), raw[:80]
    assert taken > 50  # most single-part mail goes the fast way
