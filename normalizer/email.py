"""Raw RFC 5322 mail → :class:`InboundMessage`: charsets, MIME, quoting, auto-replies.

Never raises on bad input: a malformed message still yields its text (decoded leniently)
and its raw bytes are kept, so nothing a customer sent is lost. Hostile input costs time
linear in its size (no pattern with overlapping quantifiers; heuristics on bounded text;
over-long header fields read as absent); a MIME structure beyond :class:`ParseLimits`
raises :class:`MessageTooComplex` so the caller keeps it raw (docs/email.md).

Why the stdlib ``compat32`` parser with our own header decoding, not ``policy.default``:
the modern header registry costs about half of an SMTP listener's intake (profiled, see
docs/benchmarks.md) and mangles what real mailers send (raw 8-bit EUC-KR subjects, encoded
words split in the middle of a multibyte character, charsets it has no alias for). Here a
header is decoded only when it is used, with the charset aliases and detection below.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.errors
import email.feedparser
import email.parser
import email.utils
import hashlib
import html as html_lib
import io
import quopri
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.policy import Compat32
from html.parser import HTMLParser
from typing import Any

from normalizer.authresults import check_sender
from normalizer.model import AttachmentData, InboundMessage, Party

# ---------------------------------------------------------------- parsing


class _RawHeaderPolicy(Compat32):
    """compat32, but header values come back as the raw (unfolded later) string.

    compat32 turns a header with 8-bit bytes into an ``email.header.Header`` that has lost
    which charset it was in; we keep the bytes (as surrogate escapes) and decode them with
    the same detection the body gets.
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        """The stored value unchanged; a malformed field reads as empty.

        Every lookup goes through here (the parser's own boundary and charset lookups too),
        so the stdlib's parameter parsing, quadratic in the number of ``;``, never sees one.
        """
        return "" if malformed_header(name, value) else value


_POLICY = _RawHeaderPolicy(linesep="\r\n")
_PARSER = email.parser.BytesParser(policy=_POLICY)

# RFC 5322 §2.1.1: a line is at most 998 characters. Past that, and past a field length
# or parameter count no mailer writes, a header field is malformed and reads as absent.
MAX_HEADER_LINE = 998
_MAX_HEADER_FIELD = 16 * 1024
_MAX_HEADER_PARAMS = 64
_PARAMETER_HEADERS = ("content-type", "content-disposition")
_LINE_BREAK = re.compile(r"\r?\n")


def malformed_header(name: str, value: str) -> bool:
    """Whether a header field (name, raw folded value) is too long to be read.

    Linear in the value, so it can guard every lookup.
    """
    if len(value) > _MAX_HEADER_FIELD:
        return True
    lines = _LINE_BREAK.split(value)
    if len(name) + 2 + len(lines[0]) > MAX_HEADER_LINE + 1 or \
            any(len(line) > MAX_HEADER_LINE for line in lines[1:]):
        return True
    return name.lower() in _PARAMETER_HEADERS and value.count(";") > _MAX_HEADER_PARAMS


class MessageTooComplex(ValueError):
    """The message's MIME structure is beyond :class:`ParseLimits`: it is not parsed.

    Raised instead of taking part of a message: the caller keeps the raw message (stored,
    flagged, acknowledged) so nothing a sender wrote is silently dropped.
    """


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Caps on the MIME structure :func:`parse_email` takes apart.

    ``max_parts`` counts every entity below the top level (multiparts, forwarded messages
    and their parts, delivery-status blocks). Real customer mail has 2-30; 200 is a
    newsletter with many inline images and a forwarded thread with attachments, and still
    bounds the attachments one message can create. ``max_depth`` is the nesting level of
    the deepest entity (the top level is 0): mixed → related → alternative → text is 3,
    and each forward-as-attachment adds 2-4, so 20 allows a forward of a forward of a
    forward; it also bounds the parser's per-line boundary checks, which grow with depth.
    """

    max_parts: int = 200
    max_depth: int = 20

    def __post_init__(self) -> None:
        if self.max_parts < 1 or self.max_depth < 1:
            raise ValueError("ParseLimits need at least one part and one level")


DEFAULT_PARSE_LIMITS = ParseLimits()


class _Budget:
    """What one message has used of its :class:`ParseLimits` (shared by every parse of it,
    including the re-parse of a multipart whose boundary is wrong)."""

    __slots__ = ("limits", "parts")

    def __init__(self, limits: ParseLimits) -> None:
        self.limits = limits
        self.parts = 0

    def enter(self, depth: int) -> None:
        """Count one more entity at ``depth``; raise beyond the limits."""
        if depth > 0:
            self.parts += 1
        if self.parts > self.limits.max_parts:
            raise MessageTooComplex(f"more than {self.limits.max_parts} MIME parts")
        if depth > self.limits.max_depth:
            raise MessageTooComplex(f"MIME parts nested deeper than {self.limits.max_depth}")


class _LimitedFeedParser(email.feedparser.FeedParser):
    """The stdlib feed parser, stopped as soon as the message passes its limits.

    Checked while parsing, not after: a message nested thousands deep would otherwise cost
    its boundary checks on every line (and the stdlib's recursion) before any check ran.
    """

    def __init__(self, budget: _Budget, base_depth: int) -> None:
        super().__init__(policy=_POLICY)
        self._budget = budget
        self._base_depth = base_depth

    _msgstack: list[Message]  # the stdlib's stack of open entities (not in typeshed)

    def _new_message(self) -> None:  # the stdlib's hook for every new MIME entity
        super()._new_message()  # type: ignore[misc]  # a private stdlib hook, not in typeshed
        self._budget.enter(self._base_depth + len(self._msgstack) - 1)


def _parse_bytes(raw: bytes, budget: _Budget, base_depth: int = 0) -> Message:
    """``BytesParser(policy=_POLICY).parsebytes(raw)``, under ``budget``.

    Each chunk is decoded as it is fed (ASCII with surrogate escapes maps one byte to one
    character, so the chunks are BytesParser's): no copy of the whole message as ``str``
    lives beside the parse.
    """
    parser = _LimitedFeedParser(budget, base_depth)
    view = memoryview(raw)
    for start in range(0, len(raw), 8192):  # the chunks BytesParser feeds
        parser.feed(codecs.ascii_decode(view[start:start + 8192], "surrogateescape")[0])
    message = parser.close()
    assert isinstance(message, Message)
    return message

# Runs of base64 lines this long, in a message this large, skip the feed parser (_Runs).
_RUN_BYTES = 64 * 1024
_RUN_MESSAGE_BYTES = 1024 * 1024
# Whole CRLF lines of base64 characters, from the start of a line (a line of 999 or more
# ends the run: RFC 5322 lines are at most 998). Possessive: no two quantifiers overlap,
# and the engine keeps no backtracking state per line (greedy, it held 1.5 times the run).
_BASE64_RUN = re.compile(rb"(?<![^\n])(?:[A-Za-z0-9+/=]{1,998}+\r\n)++")


class _Runs:
    """Long runs of base64 lines, lifted out of a large message before the feed parser.

    The feed parser holds a body as one str per line, joins them, then strips the last
    line break: for a 20 MB attachment almost four times its size at once. A run of at
    least :data:`_RUN_BYTES` of lines of nothing but base64 characters (each CRLF-ended,
    the first at the start of a line) is replaced by one line: a token of the same
    characters, so the parser treats it exactly as each line of the run (not a header,
    not a boundary, not a continuation) and the structure it finds is the same. A base64
    part then decodes its runs straight from the raw bytes (:func:`_base64_payload`);
    every other payload gets its runs back before anything reads it.
    """

    __slots__ = ("pattern", "prefix", "raw", "spans")

    def __init__(self, raw: bytes, prefix: str) -> None:
        self.raw = memoryview(raw)
        self.spans: list[tuple[int, int]] = []
        self.prefix = prefix
        self.pattern = re.compile(re.escape(prefix) + r"(\d+)")

    @classmethod
    def lift(cls, raw: bytes) -> tuple[bytes, _Runs] | None:
        """``raw`` with its long base64 runs replaced by tokens, and the runs; or None."""
        if len(raw) < _RUN_MESSAGE_BYTES:
            return None
        prefix = "OmniRelayRun" + secrets.token_hex(8) + "n"  # digits of the index follow
        if prefix.encode() in raw:
            return None
        runs = cls(raw, prefix)
        pieces: list[bytes | memoryview] = []
        position = 0
        for match in _BASE64_RUN.finditer(raw):
            start, end = match.start(), match.end() - 2  # the last line break stays
            if end - start < _RUN_BYTES:
                continue
            pieces += (runs.raw[position:start], f"{prefix}{len(runs.spans)}".encode())
            runs.spans.append((start, end))
            position = end
        if not runs.spans:
            return None
        pieces.append(runs.raw[position:])
        return b"".join(pieces), runs

    def segments(self, text: str) -> list[str | memoryview]:
        """``text`` as pieces: its own, and the runs its tokens stand for (raw bytes)."""
        found: list[str | memoryview] = []
        position = 0
        for match in self.pattern.finditer(text):
            start, end = self.spans[int(match.group(1))]
            found += (text[position:match.start()], self.raw[start:end])
            position = match.end()
        found.append(text[position:])
        return found

    def restore(self, text: str) -> str:
        """``text`` with its runs put back."""
        return "".join(piece if isinstance(piece, str) else codecs.ascii_decode(piece)[0]
                       for piece in self.segments(text))

    def attach(self, msg: Message) -> None:
        """Leave the runs of base64 parts for :func:`_base64_payload`; put back the rest."""
        for part in msg.walk():
            for name in ("preamble", "epilogue"):
                value = getattr(part, name, None)
                if isinstance(value, str) and self.prefix in value:
                    setattr(part, name, self.restore(value))
            payload = _stored_payload(part)
            if not isinstance(payload, str) or self.prefix not in payload:
                continue
            if str(part.get("content-transfer-encoding", "")).lower() == "base64":
                vars(part)["_omnirelay_runs"] = self
            else:
                vars(part)["_payload"] = self.restore(payload)

    @staticmethod
    def of(part: Message) -> _Runs | None:
        """The runs a part's payload still refers to."""
        runs = vars(part).get("_omnirelay_runs")
        return runs if isinstance(runs, _Runs) else None

    @staticmethod
    def restore_tree(part: Message) -> None:
        """Put back every run below ``part`` (before it is read as text or serialized)."""
        for inner in part.walk():
            runs = _Runs.of(inner)
            payload = _stored_payload(inner)
            if runs is not None and isinstance(payload, str):
                vars(inner)["_payload"] = runs.restore(payload)
                del vars(inner)["_omnirelay_runs"]


def _parse_large(raw: bytes, budget: _Budget) -> Message:
    """:func:`_parse_bytes`, with long base64 runs kept out of the feed parser (_Runs)."""
    lifted = _Runs.lift(raw)
    if lifted is None:
        return _parse_bytes(raw, budget)
    text, runs = lifted
    msg = _parse_bytes(text, budget)
    del text
    runs.attach(msg)
    return msg

# ---------------------------------------------------------------- charsets

# Labels Python lacks or gets wrong in the wild. Supersets win: Korean mail labeled EUC-KR
# routinely contains CP949 (UHC) syllables, Japanese Shift_JIS means Windows-31J, GB2312
# means GBK/GB18030, and ISO-8859-1 means windows-1252 (as every browser decides).
_CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "ks_c_5601-1989": "cp949",
    "ksc5601": "cp949", "ksc_5601": "cp949", "euc-kr": "cp949", "euc_kr": "cp949",
    "euckr": "cp949", "x-windows-949": "cp949", "windows-949": "cp949", "uhc": "cp949",
    "iso-2022-jp": "iso2022_jp_ext", "csiso2022jp": "iso2022_jp_ext",
    "shift_jis": "cp932", "shift-jis": "cp932", "x-sjis": "cp932", "sjis": "cp932",
    "ms_kanji": "cp932", "windows-31j": "cp932", "csshiftjis": "cp932",
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
    "euc-cn": "gb18030", "big5": "cp950", "x-big5": "cp950",
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "l1": "cp1252", "iso_8859-1": "cp1252", "windows-1252": "cp1252",
    "iso-8859-8-i": "iso8859-8", "windows-874": "cp874", "tis-620": "cp874",
    "unicode-1-1-utf-7": "utf-7", "utf8": "utf-8", "x-unicode20utf8": "utf-8",
}
# Labels that say nothing about 8-bit bytes: treated as if no charset were given.
_NO_CHARSET = {"us-ascii", "ascii", "ansi_x3.4-1968", "x-unknown", "unknown-8bit",
               "unknown", "default", "8bit", "none", "binary", "charset", "x-user-defined"}
# When one ISO-2022-JP table fails (NEC or IBM extensions from Windows), try the others.
_FALLBACKS = {"iso2022_jp_ext": ("iso2022_jp_2004", "iso2022_jp_3", "iso2022_jp_2")}
_CJK = ("cp949", "euc_kr", "johab", "iso2022_kr", "cp932", "shift_jis", "euc_jp",
        "iso2022_jp", "gb18030", "gb2312", "gbk", "hz", "big5", "cp950", "big5hkscs")
_SINGLE_BYTE_WESTERN = ("cp1252", "cp1250", "cp1254", "cp1257", "iso8859_1", "iso8859_2",
                        "iso8859_9", "iso8859_15", "latin_1", "mac_roman", "cp850", "cp437")
# What detection may answer: the charsets mail is actually written in. Open-ended detection
# on a short text picks exotic code pages (cp1006, mac_iceland) that no mailer uses.
_DETECT_CANDIDATES = ["utf_8", "cp1252", "cp949", "cp932", "gb18030", "cp1250", "cp1251",
                      "big5", "euc_jp", "koi8_r", "cp1253", "cp1254", "cp1255", "cp1256",
                      "cp1257", "cp1258", "cp874", "iso8859_7"]
_HIGH = re.compile(rb"[\x80-\xff]")
_SURROGATE = re.compile("[\udc80-\udcff]")


def charset_codec(label: str | None) -> str | None:
    """The Python codec for a MIME charset label, or None when unknown or meaningless."""
    if not label:
        return None
    name = re.sub(r"[^a-z0-9_\-:.]", "", label.strip().lower())
    name = name.split("*", 1)[0]  # RFC 2231 language suffix: utf-8*ko
    if not name or name in _NO_CHARSET:
        return None
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None  # base64, zlib, rot13… are not charsets
    return info.name.replace("-", "_")


def decode_bytes(data: bytes, declared: str | None) -> str:
    """Decode ``data`` using the declared charset when it fits the bytes, else by detection.

    A label is trusted only as far as the bytes agree: UTF-8 labeled as Latin-1 (web forms),
    EUC-KR labeled as ISO-8859-1 or US-ASCII (old Korean mailers) and undeclared 8-bit text
    all come out right. Never raises.
    """
    return _decode(data, declared)[0]


def _decode(data: bytes, declared: str | None) -> tuple[str, str | None]:
    """:func:`decode_bytes`, also naming the codec that was used (None for plain ASCII)."""
    if not data:
        return "", None
    codec = charset_codec(declared)
    if codec and codec.startswith(("utf_16", "utf_32")):
        text = _strict(data, codec)
        if text is not None:
            return text, codec
        codec = None
    if not _HIGH.search(data):
        if codec and (codec.startswith("iso2022") or codec == "utf_7"):
            text = _strict(data, codec)
            if text is not None:
                return text, codec
        if b"\x1b" in data:  # undeclared ISO-2022: the escape sequence names it
            guess = "iso2022_kr" if b"\x1b$)C" in data else "iso2022_jp_ext"
            text = _strict(data, guess)
            if text is not None:
                return text, guess
        return data.decode("ascii", "replace"), None
    multibyte = codec is not None and codec.startswith(_CJK)
    if not multibyte:
        text = _strict(data, "utf_8")
        if text is not None:
            return text, "utf_8"
    if codec == "utf_8":
        # Declared UTF-8 with a few bad bytes (a truncated part, a broken gateway) is still
        # UTF-8; only mostly-invalid text is a mislabel worth detecting.
        text = data.decode("utf-8", "replace")
        if text.count("\ufffd") <= max(2, len(_HIGH.findall(data)) // 20):
            return text, codec
    elif codec:
        text = _strict(data, codec)
        if text is not None:
            if codec.startswith(_SINGLE_BYTE_WESTERN) and _looks_legacy_cjk(data):
                detected = _detect(data)
                if detected is not None and detected[0].startswith(_CJK):
                    return detected[1], detected[0]
            return text, codec
    detected = _detect(data)
    if detected is not None:
        return detected[1], detected[0]
    return data.decode(codec or "utf_8", "replace"), codec


def _strict(data: bytes, codec: str) -> str | None:
    for name in (codec, *_FALLBACKS.get(codec, ())):
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            continue
    if codec.startswith("iso2022_jp"):
        return _iso2022jp_windows(data)
    return None


def _iso2022jp_windows(data: bytes) -> str | None:
    """ISO-2022-JP as Windows writes it (CP50220: NEC ①, ㈱, IBM kanji) via Windows-31J.

    Python has no CP5022x codec; the JIS X 0208 pairs map arithmetically onto Shift_JIS
    positions, where cp932 knows the vendor rows that the ISO tables lack.
    """
    out = bytearray()
    mode = "ascii"
    i = 0
    while i < len(data):
        if data[i] == 0x1B:
            seq = data[i + 1:i + 3]
            if seq in (b"$B", b"$@"):
                mode = "jis"
            elif seq == b"(I":
                mode = "kana"
            elif seq in (b"(B", b"(J"):
                mode = "ascii"
            else:
                return None
            i += 3
            continue
        byte = data[i]
        if byte == 0x0E:
            mode, i = "kana", i + 1
            continue
        if byte == 0x0F:
            mode, i = "ascii", i + 1
            continue
        if mode == "jis" and 0x21 <= byte <= 0x7E and i + 1 < len(data):
            j1, j2 = byte, data[i + 1]
            s1 = (j1 + 0xE1) >> 1 if j1 <= 0x5E else (j1 + 0x161) >> 1
            s2 = j2 + (0x1F + (j2 >= 0x60) if j1 % 2 else 0x7E)
            out += bytes((s1, s2))
            i += 2
            continue
        out.append(byte | 0x80 if mode == "kana" and 0x21 <= byte <= 0x5F else byte)
        i += 1
    try:
        return bytes(out).decode("cp932")
    except UnicodeDecodeError:
        return None


def _looks_legacy_cjk(data: bytes) -> bool:
    """Mostly-high bytes in pairs: Hangul/Kanji/Hanzi, not accented Latin."""
    letters = len(re.sub(rb"[\s\x00-\x40\x5b-\x60\x7b-\x7f]", b"", data)) or 1
    return len(_HIGH.findall(data)) / letters > 0.3


def _detect(data: bytes) -> tuple[str, str] | None:
    """charset-normalizer's answer; on short texts, ties go to the commoner mail charset."""
    sample = data[:65536]
    try:
        from charset_normalizer import from_bytes

        matches = list(from_bytes(sample, cp_isolation=_DETECT_CANDIDATES))
    except Exception:
        return None
    if not matches:
        return None
    best = matches[0]
    encoding = best.encoding
    if len(sample) < 256:
        def rank(charset: str) -> int:
            return _DETECT_CANDIDATES.index(charset) if charset in _DETECT_CANDIDATES else 99

        close = [m for m in matches if m.chaos <= best.chaos + 0.05
                 and m.coherence >= best.coherence - 0.05]
        encoding = min((c for m in close for c in m.could_be_from_charset), key=rank,
                       default=encoding)
    return encoding, data.decode(encoding, "replace")


# ---------------------------------------------------------------- headers

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_SPACE = re.compile(r"[ \t\r\n]+")


def decode_header(value: str | None, fallback_charset: str | None = None) -> str | None:
    """A header value as Unicode: unfolded, RFC 2047 words decoded, raw 8-bit detected.

    Adjacent encoded words are joined *before* decoding because some mailers split one
    multibyte character across two words (RFC 2047 forbids it; Korean webmail does it).
    """
    if value is None:
        return None
    text = _FOLD.sub("", value)
    if _SURROGATE.search(text):
        text = _raw_header_text(text, fallback_charset)
    if "=?" in text:
        text = _decode_words(text)
    return _SPACE.sub(" ", text).strip() or None


def _raw_header_text(text: str, fallback_charset: str | None) -> str:
    """Raw 8-bit header bytes: UTF-8 first (RFC 6532), else the message's own charset."""
    data = text.encode("ascii", "surrogateescape")
    return _strict(data, "utf-8") or decode_bytes(data, fallback_charset)


def _decode_words(text: str) -> str:
    out: list[str] = []
    pending: list[tuple[str | None, bytes]] = []  # consecutive words, same charset
    pos = 0

    def flush() -> None:
        if pending:
            out.append(decode_bytes(b"".join(d for _, d in pending), pending[0][0]))
            pending.clear()

    for match in _ENCODED_WORD.finditer(text):
        between = text[pos:match.start()]
        if between and (between.strip() or not pending):
            flush()
            out.append(between)
        charset, encoding, payload = match.groups()
        data = _word_bytes(encoding.lower(), payload)
        if data is None:  # not decodable: keep the word as it was
            flush()
            out.append(match.group(0))
        else:
            if pending and (pending[0][0] or "").lower() != charset.lower():
                flush()
            pending.append((charset, data))
        pos = match.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def _word_bytes(encoding: str, payload: str) -> bytes | None:
    try:
        if encoding == "b":
            raw = payload.encode("ascii")
            return base64.b64decode(raw + b"=" * (-len(raw) % 4))
        return quopri.decodestring(payload.replace("_", " ").encode("ascii"), header=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def _raw_header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return None if value is None else str(value)


def _header_map(msg: Message) -> dict[str, str]:
    """The first value of each header by lower-cased name (one pass, not one per lookup).

    A malformed field (:func:`malformed_header`) is left out, as if it were absent.
    """
    found: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        if key not in found and not malformed_header(name, str(value)):
            found[key] = str(value)
    return found


_ADDRESS_PART = re.compile(r'[^\s<>,;:"()@\\]+')  # one side of a plain a@b
_NAME_FORBIDDEN = re.compile(r'["<>,;:@\\()]')
# One token of an address header (RFC 5322 §3.2.2-3.4.1, leniently). The alternatives
# start with different characters and the quoted ones are possessive, so a scan never
# backtracks: linear in the header, whatever it holds.
_ADDRESS_TOKEN = re.compile(
    r'(?P<ws>[ \t\r\n]+)|(?P<quoted>"(?:[^"\\]|\\[\s\S])*+"?)'
    r'|(?P<atom>[^ \t\r\n()<>\[\]:;@\\,."]+)'
    r'|(?P<literal>\[(?:[^\[\]\\]|\\[\s\S])*+\]?)|(?P<special>[\s\S])')
_COMMENT_PART = re.compile(r"[^()\\]+|\\[\s\S]?|[()]")
_QUOTED_PAIR = re.compile(r"\\([\s\S])")
_MAILBOX = re.compile(r'[^ <>(),;:\\]+@[^ <>(),;:\\"@]+')  # what a reply can go to
# A mailer writes one address header in well under this; anything longer is not a list
# of people to answer but an attempt to make the parse expensive.
_MAX_ADDRESS_HEADER = 16 * 1024


def _simple_address(value: str) -> tuple[str | None, str] | None:
    """``Name <a@b>``, ``"Name" <a@b>`` or ``a@b`` — most mail — without the full scan."""
    value = value.strip()
    local, at, domain = value.partition("@")
    if at and _ADDRESS_PART.fullmatch(local) and _ADDRESS_PART.fullmatch(domain):
        return None, value.lower()
    start = value.rfind("<")
    if start < 0 or not value.endswith(">"):
        return None
    local, at, domain = value[start + 1:-1].partition("@")
    if not at or not _ADDRESS_PART.fullmatch(local) or not _ADDRESS_PART.fullmatch(domain):
        return None
    name = value[:start].strip().removesuffix('"').removeprefix('"')
    if _NAME_FORBIDDEN.search(name):
        return None
    return name.strip() or None, f"{local}@{domain}".lower()


def _comment(text: str, pos: int) -> tuple[str, int]:
    """The text of the comment opening at ``pos`` (nested ones included), and its end."""
    depth = 0
    parts: list[str] = []
    for match in _COMMENT_PART.finditer(text, pos):
        piece = match.group()
        if piece == "(":
            depth += 1
            if depth == 1:
                continue
        elif piece == ")":
            depth -= 1
            if depth == 0:
                return "".join(parts), match.end()
        elif piece[0] == "\\":
            piece = piece[1:]
        parts.append(piece)
    return "".join(parts), len(text)


class _MailboxScanner:
    """(display name, address) of each mailbox of an address list, in one linear pass.

    RFC 5322 §3.4 read as leniently as mail clients read it: groups are flattened, a source
    route (``<@relay:a@b>``) is dropped, an unclosed quote, comment or ``<`` ends with the
    header. Comments are not part of a display name (``Kim (home) <a@b>`` is Kim); a
    comment after a bare address (``a@b (Kim)``) names it, as Thunderbird and Apple Mail
    show such a sender.
    """

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []
        self.phrase: list[str] = []  # the display name, word by word
        self.spec: list[str] = []  # the same tokens read as a bare address
        self.comments: list[str] = []
        self.angle: list[str] | None = None  # what stands between < and >
        self.closed = False  # the > was seen
        self.gap = False
        self.atomic = False  # the last phrase token was an atom or a dot

    def scan(self, text: str) -> list[tuple[str, str]]:
        """Every mailbox of ``text`` (an unfolded header value)."""
        pos = 0
        while pos < len(text):
            if text[pos] == "(":
                comment, pos = _comment(text, pos)
                if comment.strip():
                    self.comments.append(" ".join(comment.split()))
                self.gap = True
                continue
            match = _ADDRESS_TOKEN.match(text, pos)
            assert match is not None  # the last alternative takes any character
            pos = match.end()
            self._token(match.lastgroup or "special", match.group())
        self._finish()
        return self.found

    def _token(self, kind: str, token: str) -> None:
        if kind == "ws":
            self.gap = True
            return
        if self.angle is not None and not self.closed:
            if token == ">":
                self.closed = True
            else:
                self.angle.append(token)
            return
        if self.closed and token not in (",", ";"):
            self._finish()  # "a <b@c> d@e": a second mailbox without a comma
        if token in (",", ";"):
            self._finish()
        elif token == ":":  # a group's name ends; its members follow
            self.phrase.clear()
            self.spec.clear()
            self.comments.clear()
        elif token == "<":
            if "@" in self.spec:  # "a@b <c@d>": the words before are an address too
                self._finish()
            self.angle = []
        else:
            word = token
            if kind == "quoted":
                word = _QUOTED_PAIR.sub(r"\1", token[1:-1] if token.endswith('"')
                                        and len(token) > 1 else token[1:])
            # As the stdlib reads a phrase: words joined by one space, dots glued to atoms.
            atomic = kind == "atom" or token == "."
            if atomic and self.atomic and not self.gap and self.phrase:
                self.phrase[-1] += word
            else:
                self.phrase.append(word)
            self.atomic = atomic
            if self.gap and self.spec and self.spec[-1] not in ".@" and token not in ".@":
                self.spec.append(" ")  # "Kim Lee a@b" is no address
            self.spec.append(token)
        self.gap = False
        if kind == "special" and token != ".":
            self.atomic = False

    def _finish(self) -> None:
        if self.angle is not None:
            address = "".join(self.angle).rpartition(":")[2]
            display = " ".join(self.phrase)
        else:
            address = "".join(self.spec)
            display = " ".join(self.comments)
        if "@" in address:
            self.found.append((display, address))
        self.phrase.clear()
        self.spec.clear()
        self.comments.clear()
        self.angle = None
        self.closed = False
        self.atomic = False


def _addresses(raw: str | None, fallback: str | None) -> list[tuple[str | None, str]]:
    """(display name, lower-cased address) pairs of an address header's raw value.

    Linear in the header's length; a header over ``_MAX_ADDRESS_HEADER`` characters names
    no one (see ``_usable_headers`` for lines over RFC 5322's 998).
    """
    if not raw:
        return []
    unfolded = _FOLD.sub("", raw)
    if len(unfolded) > _MAX_ADDRESS_HEADER:
        return []
    if "=?" not in unfolded and not _SURROGATE.search(unfolded):
        simple = _simple_address(unfolded)
        if simple is not None:
            return [simple]
    if _SURROGATE.search(unfolded):
        unfolded = _raw_header_text(unfolded, fallback)
    pairs = []
    for display, address in _MailboxScanner().scan(unfolded):
        address = address.strip().strip("<>")
        if _MAILBOX.fullmatch(address):
            pairs.append((decode_header(display, fallback), address.lower()))
    if not pairs:  # a header too broken for the scan still names an address
        for token in re.findall(r"[^\s<>,;:\"()\[\]]+", unfolded):
            if "@" in token[1:-1]:
                pairs.append((None, token.lower()))
    return pairs


def _message_ids(value: str | None) -> list[str]:
    if value and _SURROGATE.search(value):  # raw 8-bit in an id: keep it, as valid text
        value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    ids = re.findall(r"<([^<>\s]+)>", value or "")
    if not ids and value and "@" in value:
        ids = [v for v in re.split(r"[\s,]+", value.strip()) if "@" in v]  # brackets dropped
    return ids


# ---------------------------------------------------------------- HTML → text


class _TextExtractor(HTMLParser):
    """Readable text from HTML: blocks become lines, links keep their target, quotes ``>``."""

    _BLOCK = {"p", "div", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5",
              "h6", "pre", "blockquote", "hr", "section", "article", "header", "footer",
              "address", "dd", "dt", "center", "form"}
    _SKIP = {"script", "style", "head", "title", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.skip = 0
        self.quote = 0
        self.pre = 0
        # Each open link: its target and where its text starts in ``current`` (0 once a
        # line break has moved the start to an earlier line).
        self.links: list[tuple[str | None, int]] = []

    def _break(self) -> None:
        line = "".join(self.current)
        if not self.pre:
            line = _SPACE.sub(" ", line).strip()
        self.lines.append(("> " * min(self.quote, _MAX_QUOTE_MARKS)) + line if line else "")
        self.current = []
        self.links = [(href, 0) for href, _start in self.links]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "br":
            self._break()
        elif tag in self._BLOCK:
            if self.current:
                self._break()
            if tag == "blockquote":
                self.quote += 1
            elif tag == "pre":
                self.pre += 1
            elif tag == "li":
                self.current.append("- ")
            elif tag == "hr":
                self.lines.append("")
        elif tag in ("td", "th") and self.current:
            self.current.append("  ")
        elif tag == "a":
            href = dict(attrs).get("href")
            self.current.append("\x00")  # keeps a line with only a link from being empty
            self.links.append((href if href and href.startswith(("http://", "https://"))
                               else None, len(self.current)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.current.append(f"[{alt}]")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "blockquote", "pre") or tag in self._SKIP:
            return
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self._BLOCK:
            if self.current:
                self._break()
            if tag == "blockquote":
                self.quote = max(0, self.quote - 1)
            elif tag == "pre":
                self.pre = max(0, self.pre - 1)
            elif tag in ("p", "table", "ul", "ol"):
                self.lines.append("")
        elif tag == "a" and self.links:
            # Only this link's own text is joined: joining the whole line at every </a>
            # made a line of many links quadratic.
            href, start = self.links.pop()
            label = "".join(self.current[start:])
            if href and href not in label and href.removeprefix("mailto:") not in label:
                label = f"{label} ({href})" if label.strip() else href
            marker = start - 1 if start and self.current[start - 1] == "\x00" else start
            del self.current[marker:]
            self.current.append(label)

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.current.append(data)

    def close(self) -> None:
        """End of input: as ``HTMLParser.close``, with a bounded number of recoveries.

        ``feed`` stops at a construct that never ends (``<a <a <a …``, a quote left open).
        Python's own ``close`` then recovers from each such spot by rescanning all that
        follows it — quadratic on hostile markup (CPython gh-135462). The first few are
        recovered the same way, so ordinary sloppy HTML reads as before; after that, or
        when no ``>`` follows at all, the unfinished tag takes the rest, as an HTML5 parser
        has it at the end of input.
        """
        for _ in range(_HTML_RECOVERIES):
            rest = self.rawdata
            if not rest.startswith("<") or self.cdata_elem or ">" not in rest:
                break
            end = rest.find(">", 1) + 1 or rest.find("<", 1)
            if end <= 0:
                end = 1
            self.handle_data(html_lib.unescape(rest[:end]))
            self.rawdata = rest[end:]
            self.goahead(False)
        if self.rawdata.startswith("<") and len(self.rawdata) > 2 and not self.cdata_elem:
            self.rawdata = ""  # (a bare "<" or "</" at the very end stays text, as before)
        super().close()

    def text(self) -> str:
        """The collected text."""
        if self.current:
            self._break()
        text = "\n".join(self.lines).replace("\x00", "").replace("\xa0", " ")
        return re.sub(r"\n{3,}", "\n\n", text).strip()


# Budgets of the HTML reading, each far beyond what mail holds: the markup read for text
# (a newsletter is 50-500 KB), the quote marks on a line, the ends of input recovered.
_MAX_HTML_CHARS = 1024 * 1024
_MAX_QUOTE_MARKS = 32
_HTML_RECOVERIES = 4


def html_to_text(markup: str) -> str:
    """Readable plain text from HTML: blocks become lines, links keep their target.

    Linear in the markup; only its first ``_MAX_HTML_CHARS`` are read (the HTML itself is
    kept whole).
    """
    markup = markup[:_MAX_HTML_CHARS]
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
        return parser.text()
    except Exception:  # HTMLParser is lenient; this is for the truly broken
        return _SPACE.sub(" ", html_lib.unescape(_without_tags(markup))).strip()


def _without_tags(markup: str) -> str:
    """Each ``<…>`` replaced by a space (``re.sub("<[^>]*>")`` without its quadratic case:
    once no ``>`` follows a ``<``, none follows any later one either)."""
    out: list[str] = []
    pos = 0
    while (start := markup.find("<", pos)) >= 0 and (end := markup.find(">", start)) >= 0:
        out += (markup[pos:start], " ")
        pos = end + 1
    out.append(markup[pos:])
    return "".join(out)


# ---------------------------------------------------------------- quoting and signatures

# (pattern, words one of which must occur for it to match): the cheap substring test
# keeps a long body from being scanned by every pattern.
_QUOTE_HEADERS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    # Gmail/Apple/Thunderbird: "On Mon, 20 Nov 2026 at 10:00, Kim <kim@x> wrote:" (Gmail
    # wraps the line at ~78 characters, so allow one break inside it).
    (re.compile(r"^(On|Am|Le|El|Il|Op|Em|W dniu)\b[^\n]{0,250}(\n[^\n]{0,250})?"
                r"\b(wrote|schrieb|a écrit|escribió|ha scritto|schreef|escreveu|napisał)"
                r"\b[^\n]{0,250}:[ \t]*$", re.MULTILINE),
     ("wrote", "schrieb", "écrit", "escribió", "scritto", "schreef", "escreveu", "napisał")),
    (re.compile(r"^\d{4}년 ?\d{1,2}월 ?\d{1,2}일[^\n]{0,200}(\n[^\n]{0,200})?작성:?[ \t]*$",
                re.MULTILINE), ("작성",)),                                     # Gmail ko
    (re.compile(r"^\d{4}年\d{1,2}月\d{1,2}日[^\n]{0,200}(\n[^\n]{0,200})?"
                r"(:|\uff1a|のメッセージ:?)[ \t]*$", re.MULTILINE), ("年",)),  # Gmail ja/zh
    (re.compile(r"^\d{4}[.\-/] ?\d{1,2}[.\-/] ?\d{1,2}\.?[^\n]{0,200}(wrote|작성|쓴 글):?"
                r"[ \t]*$", re.MULTILINE), ("wrote", "작성", "쓴 글")),
    (re.compile(r"^-{2,}\s*(Original Message|Forwarded message|원본 메시지|전달된 메시지|"
                r"元のメッセージ|原始邮件)\s*-{2,}", re.MULTILINE | re.IGNORECASE),
     ("-----", "--- ")),
    (re.compile(r"^\*?(From|Von|De|보낸 사람|差出人|发件人):\*? [^\n]+\n\*?(Sent|Date|"
                r"Gesendet|Envoyé|보낸 날짜|날짜|送信日時|发送时间):\*? ", re.MULTILINE),
     ("From:", "Von:", "De:", "보낸 사람:", "差出人:", "发件人:")),                # Outlook
    (re.compile(r"^_{20,}[ \t]*\n\*?(From|보낸 사람|差出人):", re.MULTILINE), ("_" * 20,)),
]
_SIGNATURE = re.compile(
    r"^(--|—|Sent from my [\w ]++|Sent from (Mail|Outlook) for \w+|Get Outlook for \w+.*+|"
    r"iPhone에서 보냄|iPad에서 보냄|Galaxy에서 보냄|.{0,30}스마트폰에서 보냈습니다\.?|"
    r"iPhoneから送信|从我的iPhone发送)[ \t]*$", re.MULTILINE)
_SIGNATURE_WORDS = ("--", "—", "Sent from", "Get Outlook", "보냄", "보냈습니다", "送信", "发送")
_TRIGGERS = tuple({w for _, words in _QUOTE_HEADERS for w in words} | set(_SIGNATURE_WORDS))
_ASCII_TRIGGERS = tuple(w for w in _TRIGGERS if w.isascii())


# How much of a text the quote and signature heuristics read: the new part of a reply is
# at its top, and a budget keeps their cost the same for a 20 MB body as for a 64 KB one.
_HEURISTIC_CHARS = 64 * 1024
# The most of ``text``, ``content.full_text`` and ``html`` a message carries (characters);
# beyond, they end with TRUNCATED_NOTE and ``content.truncated`` names them. The raw
# message keeps every byte. A text part's first _TEXT_BYTES are read: 1 Mi characters in
# any charset.
MAX_TEXT_CHARS = 1024 * 1024
_TEXT_BYTES = 4 * MAX_TEXT_CHARS
TRUNCATED_NOTE = ("\n\n[omnirelay: the rest of this text is cut (over 1 MiB); "
                  "the whole message is in its raw payload]")


def strip_reply(text: str) -> str:
    """The new part of a reply: quoted history and signature removed.

    Falls back to the whole text when stripping would leave nothing (a bare forward).
    Quote headers and signatures are looked for in the first ``_HEURISTIC_CHARS``
    characters; a longer text in which none is found there is kept whole.
    """
    if len(text) > _HEURISTIC_CHARS:
        head = strip_reply(text[:_HEURISTIC_CHARS])
        return head if head != text[:_HEURISTIC_CHARS].strip() else text.strip()
    # str.isascii() is O(1): an ASCII text cannot contain the Korean/Japanese words.
    present = {word for word in (_ASCII_TRIGGERS if text.isascii() else _TRIGGERS)
               if word in text}
    if not present and ">" not in text:
        return text.strip()
    cut = len(text)
    for pattern, words in _QUOTE_HEADERS:
        if present.isdisjoint(words):
            continue
        match = pattern.search(text)
        if match and 0 < match.start() < cut:
            cut = match.start()
    lines = text[:cut].splitlines()
    # Trailing ">" quoted blocks go; interleaved quoting keeps its answers.
    while lines and (lines[-1].lstrip().startswith(">") or not lines[-1].strip()):
        lines.pop()
    result = "\n".join(lines)
    signature = _SIGNATURE.search(result) if not present.isdisjoint(_SIGNATURE_WORDS) \
        else None
    if signature and result[:signature.start()].strip():
        result = result[:signature.start()]
    result = result.strip()
    return result or text.strip()


def unflow(text: str, delsp: bool) -> str:
    """Undo RFC 3676 format=flowed: soft line breaks joined, space-stuffing removed."""
    out: list[str] = []
    buffer = ""
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        body = line[depth:]
        if body.startswith(" "):
            body = body[1:]
        flowed = body.endswith(" ") and body != "-- "
        if flowed and delsp:
            body = body[:-1]
        buffer += (">" * depth + " " if depth and not buffer else "") + body
        if not flowed:
            out.append(buffer)
            buffer = ""
    if buffer:
        out.append(buffer)
    return "\n".join(out)


# ---------------------------------------------------------------- automatic mail


def classify_automatic(msg: Message, headers: dict[str, str] | None = None) -> str | None:
    """``bounce``, ``auto_reply`` or ``bulk`` for mail no person wrote (RFC 3834, 3464).

    Replies to these are never sent automatically; that is what keeps mail loops from
    forming between omnirelay and an out-of-office responder.
    """
    h = headers if headers is not None else _header_map(msg)
    content_type = msg.get_content_type()
    report = ""
    if content_type == "multipart/report":
        report = _info(msg).param("report-type")
        if report == "delivery-status":
            return "bounce"
    sender = (h.get("from") or "").lower()
    if "x-failed-recipients" in h or re.search(r"\b(mailer-daemon|postmaster)@", sender):
        return "bounce"
    if report == "disposition-notification":
        return "auto_reply"  # a read receipt
    auto = (decode_header(h.get("auto-submitted")) or "").lower()
    auto = auto.split(";", 1)[0].strip()
    if auto.startswith(("auto-replied", "auto-notified")):
        return "auto_reply"
    if auto and auto != "no":
        return "bulk"  # auto-generated: notifications, robots
    if (h.get("x-autoreply") or "").strip().lower() in ("yes", "true", "1") \
            or "x-autorespond" in h or "x-autoresponder" in h:
        return "auto_reply"
    suppress = (h.get("x-auto-response-suppress") or "").lower()
    if re.search(r"\b(all|oof)\b", suppress) and re.match(
            r"^\s*(automatic reply|auto(matic)?[- ]?reply|out of office|자동 회신|자동회신|"
            r"부재중|自動応答|自动回复)", decode_header(h.get("subject")) or "", re.IGNORECASE):
        return "auto_reply"  # Exchange OOF without Auto-Submitted (old servers)
    precedence = (h.get("precedence") or h.get("x-precedence") or "").strip().lower()
    if precedence == "auto_reply":
        return "auto_reply"
    if precedence in ("bulk", "junk", "list"):
        return "bulk"
    if "list-id" in h or "list-unsubscribe" in h:
        return "bulk"
    if (h.get("return-path") or "").strip() == "<>":
        return "auto_reply"  # null sender: only automatic mail uses it (RFC 3834 §3.3)
    return None


# ---------------------------------------------------------------- MIME walk


@dataclass(slots=True)
class _Body:
    """What walking the MIME tree found."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[AttachmentData] = field(default_factory=list)
    dsn: dict[str, Any] | None = None
    original_ids: list[str] = field(default_factory=list)
    codec: str | None = None  # what the first 8-bit text part turned out to be
    cut: set[str] = field(default_factory=set)  # subtypes of text parts read only in part


@dataclass(slots=True)
class _Info:
    """One part's Content-Type and Content-Disposition, each parsed once."""

    ctype: str
    params: dict[str, Any]
    disposition: str
    dparams: dict[str, Any]

    @property
    def maintype(self) -> str:
        """``text`` of ``text/plain``."""
        return self.ctype.partition("/")[0]

    @property
    def subtype(self) -> str:
        """``plain`` of ``text/plain``."""
        return self.ctype.partition("/")[2]

    def param(self, name: str) -> str:
        """A Content-Type parameter as a lower-cased plain string ('' when absent)."""
        value = self.params.get(name)
        if isinstance(value, tuple):
            value = value[2]
        return str(value).strip().lower() if value else ""


def _info(part: Message) -> _Info:
    ctype = part.get_content_type()
    params: dict[str, Any] = {}
    dparams: dict[str, Any] = {}
    disposition = ""
    try:
        for key, value in (part.get_params(header="content-type") or [])[1:]:
            params.setdefault(key.lower(), value)
        found = part.get_params(header="content-disposition")
        if found:
            disposition = found[0][0].strip().lower()
            for key, value in found[1:]:
                dparams.setdefault(key.lower(), value)
    except Exception:  # a parameter list too broken to parse: keep what we have
        pass
    return _Info(ctype, params, disposition, dparams)


def _filename(info: _Info, fallback_charset: str | None) -> str | None:
    """The part's filename: RFC 2231 (any charset), RFC 2047 words, or raw 8-bit bytes."""
    value: Any = info.dparams.get("filename") or info.params.get("name")
    if not value:
        return None
    if isinstance(value, tuple):  # RFC 2231: (charset, language, percent-decoded text)
        charset, _lang, text = value
        raw = text.encode("latin-1", "surrogateescape") if isinstance(text, str) else b""
        name = decode_bytes(raw, charset or fallback_charset)
    else:
        name = email.utils.unquote(str(value))
        name = decode_header(name, fallback_charset) or ""
    name = re.sub(r"[\x00-\x1f\x7f/\\]", "_", name).strip().strip(".") or ""
    while len(name.encode("utf-8")) > 255:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:-1] + dot + ext) if stem else name[:-1]
    return name or None


# A base64 body at least this long is decoded a chunk at a time (see _base64_payload).
_BASE64_STREAM_CHARS = 64 * 1024
_BASE64_CHUNK_CHARS = 1024 * 1024
_BASE64_ALPHABET = re.compile(r"[A-Za-z0-9+/]*")
_LINE_ENDS = str.maketrans("", "", "\r\n")


def _stored_payload(part: Message) -> object:
    """The payload as the parser stored it (``get_payload()`` re-decodes a str with 8-bit
    bytes in it: a copy, and not the bytes)."""
    return vars(part).get("_payload")


def _base64_payload(part: Message, *, min_chars: int | None = None,
                    chunk_chars: int | None = None) -> bytes | None:
    """``part.get_payload(decode=True)`` of a long, well-formed base64 body, without its copies.

    The stdlib encodes the whole body to bytes, splits it into lines, joins them and pads
    the result before decoding: four copies of a 20 MB attachment beside the decoded bytes.
    Here each chunk (of the payload, or of a run still in the raw message: see _Runs) is
    stripped of its line breaks and decoded into one growing buffer. Anything but plain
    base64 (non-ASCII, a character outside the alphabet, ``=`` before the end, a short
    body, another transfer encoding) answers None: the stdlib decides, with its lenient
    fallbacks, so the result is always the stdlib's.
    """
    payload = _stored_payload(part)
    if not isinstance(payload, str) or \
            str(part.get("content-transfer-encoding", "")).lower() != "base64":
        return None
    runs = _Runs.of(part)
    segments: list[str | memoryview] = runs.segments(payload) if runs is not None \
        else [payload]
    size = sum(len(segment) for segment in segments)
    if size < (_BASE64_STREAM_CHARS if min_chars is None else min_chars):
        return None
    # One buffer of at least the decoded size, made at once: grown step by step, each
    # step's copy leaves a hole in the heap (a 20 MB attachment cost 2.8 times its size).
    out = io.BytesIO()
    out.seek(size * 3 // 4 + 2)
    out.write(b"\0")
    out.seek(0)
    carry = ""  # alphabet characters short of a quantum of four
    padding = ""  # the "=" at the end: nothing but more of them may follow
    for chunk in _chunks(segments, chunk_chars or _BASE64_CHUNK_CHARS):
        if not chunk.isascii():
            return None
        chunk = chunk.translate(_LINE_ENDS)
        if padding or "=" in chunk:
            letters = chunk.rstrip("=")
            if (padding and letters) or len(padding) + len(chunk) - len(letters) > 3:
                return None
            padding += chunk[len(letters):]
            chunk = letters
        piece = carry + chunk
        if not _BASE64_ALPHABET.fullmatch(piece):
            return None
        usable = len(piece) - len(piece) % 4  # whole quanta of four
        out.write(binascii.a2b_base64(piece[:usable]))
        carry = piece[usable:]
    # The end, padded as the stdlib pads it (decode_b: validate=True).
    piece = carry + padding
    missing = len(piece) % 4
    try:
        out.write(base64.b64decode(piece + "==="[:4 - missing] if missing else piece,
                                   validate=True))
    except binascii.Error:
        return None
    if missing:
        part.policy.handle_defect(part, email.errors.InvalidBase64PaddingDefect())
    out.truncate()
    return out.getvalue()  # the buffer itself, shrunk in place: not a copy


def _chunks(segments: list[str | memoryview], size: int) -> Iterator[str]:
    """The text of ``segments`` (str, or ASCII bytes of the raw message) ``size`` at a time."""
    for segment in segments:
        for start in range(0, len(segment), size):
            piece = segment[start:start + size]
            yield piece if isinstance(piece, str) else codecs.ascii_decode(piece)[0]


def _part_bytes(part: Message) -> bytes:
    streamed = _base64_payload(part)
    if streamed is not None:
        return streamed
    _Runs.restore_tree(part)
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    if isinstance(raw, str):
        return raw.encode("ascii", "surrogateescape")
    if isinstance(raw, list):  # message/delivery-status: blocks of fields
        return b"".join(m.as_bytes() for m in raw if isinstance(m, Message))
    return b""


def _text_bytes(part: Message) -> tuple[bytes, bool]:
    """A text part's bytes, at most :data:`_TEXT_BYTES` of them (cut after a line break).

    A body without a transfer encoding is cut before it is encoded, so a 20 MB text is
    never copied whole; a line break is a safe place to cut in every charset mail uses.
    """
    payload = _stored_payload(part)
    cte = str(part.get("content-transfer-encoding", "")).lower()
    if isinstance(payload, str) and len(payload) > _TEXT_BYTES and \
            cte not in ("quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue"):
        try:  # the parser's characters are bytes (ASCII and surrogate escapes)
            data = payload[:_TEXT_BYTES + 1].encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            data = _part_bytes(part)
    else:
        data = _part_bytes(part)
    if len(data) <= _TEXT_BYTES:
        return data, False
    end = data.rfind(b"\n", _TEXT_BYTES // 2, _TEXT_BYTES)
    return data[:end + 1 if end >= 0 else _TEXT_BYTES], True


def _part_text(part: Message, info: _Info, fallback_charset: str | None, body: _Body) -> str:
    data, cut = _text_bytes(part)
    if cut:
        body.cut.add(info.subtype)
    text, codec = _decode(data, info.param("charset") or fallback_charset)
    del data
    if body.codec is None and codec not in (None, "utf_8", "ascii"):
        body.codec = codec
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\ufeff", "")
    if info.subtype == "plain" and info.param("format") == "flowed":
        text = unflow(text, info.param("delsp") == "yes")
    return text


def _is_attachment(info: _Info, filename: str | None) -> bool:
    """Explicit attachments, and named parts unless they are text shown inline."""
    if info.disposition == "attachment":
        return True
    if filename is None:
        return False
    return not (info.disposition == "inline" and info.maintype == "text")


def _walk(part: Message, body: _Body, fallback: str | None, *, inline_context: bool,
          budget: _Budget, depth: int = 0) -> None:
    info = _info(part)
    ctype = info.ctype
    if part.is_multipart() and ctype.startswith("multipart/"):
        children = [p for p in part.get_payload() if isinstance(p, Message)]
        subtype = info.subtype
        if subtype == "alternative":
            chosen = _Body()
            for child in children:
                alt = _Body()
                _walk(child, alt, fallback, inline_context=inline_context, budget=budget,
                      depth=depth + 1)
                body.codec = body.codec or alt.codec
                body.cut |= alt.cut
                if alt.plain and not chosen.plain:
                    chosen.plain = alt.plain
                if alt.html:
                    chosen.html = alt.html  # the last (richest) HTML alternative
                chosen.attachments += alt.attachments
            body.plain += chosen.plain
            body.html += chosen.html
            body.attachments += chosen.attachments
        elif subtype == "related":
            for index, child in enumerate(children):
                _walk(child, body, fallback, inline_context=index > 0, budget=budget,
                      depth=depth + 1)
        else:
            for child in children:
                _walk(child, body, fallback, inline_context=inline_context, budget=budget,
                      depth=depth + 1)
        return
    if ctype.startswith("multipart/"):
        _salvage_multipart(part, body, fallback, budget, depth)
        return
    if not _MIME_TYPE.match(ctype):  # a mangled Content-Type: keep the bytes, untyped
        ctype = info.ctype = "application/octet-stream"
    filename = _filename(info, fallback)
    if ctype == "message/delivery-status":
        body.dsn = _delivery_status(part)
    elif ctype == "text/rfc822-headers":
        headers = email.parser.HeaderParser(policy=_POLICY).parsestr(
            _part_bytes(part).decode("ascii", "surrogateescape"))
        body.original_ids += _message_ids(_raw_header(headers, "Message-ID"))
    elif ctype == "message/rfc822" and part.is_multipart():
        inner = part.get_payload(0)
        if isinstance(inner, Message):
            body.original_ids += _message_ids(_raw_header(inner, "Message-ID"))
    if ctype in ("text/plain", "text/html") and not inline_context and \
            not _is_attachment(info, filename):
        text = _part_text(part, info, fallback, body)
        (body.plain if ctype == "text/plain" else body.html).append(text)
        return
    if ctype == "message/rfc822" and part.is_multipart():
        inner = part.get_payload(0)
        _Runs.restore_tree(part)
        data = inner.as_bytes() if isinstance(inner, Message) else b""
        subject = decode_header(_raw_header(inner, "Subject"), fallback) \
            if isinstance(inner, Message) else None
        filename = filename or _safe_name(subject or "forwarded message") + ".eml"
    else:
        data = _part_bytes(part)
    content_ids = _message_ids(_raw_header(part, "Content-ID"))
    content_id = content_ids[0] if content_ids else None
    inline = info.disposition == "inline" or (info.disposition != "attachment"
                                              and content_id is not None)
    body.attachments.append(AttachmentData(
        filename or _default_name(ctype, len(body.attachments) + 1),
        ctype, data, inline=inline, content_id=content_id))


_MIME_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")


def _salvage_multipart(part: Message, body: _Body, fallback: str | None, budget: _Budget,
                       depth: int) -> None:
    """A multipart whose boundary is missing or wrong: find the parts by their delimiters.

    The parser leaves such a body as one string; the delimiter lines are still in it, so
    split on the most common one and parse each chunk as a MIME entity of its own.
    """
    data = _part_bytes(part)
    candidates = _delimiter_candidates(data)
    if candidates:
        delimiter = max(set(candidates), key=candidates.count)
        chunks = re.split(rb"^--" + re.escape(delimiter) + rb"(?:--)?[ \t]*\r?$", data,
                          flags=re.MULTILINE)
        found = _Body()
        for chunk in chunks[1:]:
            chunk = chunk.lstrip(b"\r\n")
            if chunk.strip():
                _walk(_parse_bytes(chunk, budget, depth + 1), found, fallback,
                      inline_context=False, budget=budget, depth=depth + 1)
        if found.plain or found.html:
            body.cut |= found.cut
            body.plain += found.plain
            body.html += found.html
            body.attachments += found.attachments
            return
    text = decode_bytes(data, _info(part).param("charset") or fallback).replace("\r\n", "\n")
    body.plain.append(text)


def _delimiter_candidates(data: bytes) -> list[bytes]:
    """What follows ``--`` on each line that looks like a MIME delimiter line.

    The same as ``re.findall(rb"^--([^\\s][^\\r\\n]{0,200}?)(?:--)?[ \\t]*\\r?$", data, re.M)``
    line by line: that pattern's lazy name and trailing blanks overlap, which made a long
    line of blanks cost 200 steps per character.
    """
    found = []
    for line in data.split(b"\n"):
        if not line.startswith(b"--"):
            continue
        name = line[2:].removesuffix(b"\r")
        if b"\r" in name:
            continue
        name = name.rstrip(b" \t")
        if len(name) > 2 and name.endswith(b"--"):
            name = name[:-2]
        if 0 < len(name) <= 201 and name[:1] not in b" \t\n\r\x0b\x0c":
            found.append(name)
    return found


def _safe_name(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f/\\:*?\"<>|]", "_", text).strip()[:100] or "message"


_EXTENSIONS = {"message/rfc822": ".eml", "message/delivery-status": ".txt",
               "text/rfc822-headers": ".txt", "text/plain": ".txt", "text/html": ".html",
               "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif",
               "application/pdf": ".pdf", "text/calendar": ".ics"}


def _default_name(content_type: str, index: int) -> str:
    if content_type == "message/delivery-status":
        return "delivery-status.txt"
    if content_type == "text/rfc822-headers":
        return "original-headers.txt"
    if content_type not in _EXTENSIONS:
        import mimetypes

        return f"attachment-{index}{mimetypes.guess_extension(content_type) or '.bin'}"
    return f"attachment-{index}{_EXTENSIONS[content_type]}"


_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*+\n)+")  # r"\n\s*\n" without the overlap


def _delivery_status(part: Message) -> dict[str, Any]:
    """RFC 3464 fields an agent needs: who bounced, why."""
    blocks: list[Message] = []
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [b for b in payload if isinstance(b, Message)]
    else:
        text = _part_bytes(part).decode("utf-8", "replace").replace("\r\n", "\n")
        blocks = [email.parser.HeaderParser(policy=_POLICY).parsestr(chunk)
                  for chunk in _BLANK_LINES.split(text) if chunk.strip()]
    recipients = []
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        final = decode_header(_raw_header(block, "Final-Recipient"))
        if not final:
            continue
        recipients.append({
            "recipient": final.split(";", 1)[-1].strip(),
            "action": (decode_header(_raw_header(block, "Action")) or "").lower() or None,
            "status": decode_header(_raw_header(block, "Status")),
            "diagnostic": decode_header(_raw_header(block, "Diagnostic-Code")),
        })
    return {"recipients": recipients}


# ---------------------------------------------------------------- the entry point

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(r"[\041-\071\073-\176]*:")  # the feed parser's header test
_LINE = re.compile(r"[^\n]*\n|[^\n]+")


def _parse_single_part(raw: bytes) -> Message | None:
    """The feed parser's result for a plain single-part message, at a fraction of its cost.

    The feed parser pushes the whole message through its line machinery; for most customer
    mail (one text part, well-formed headers) that is most of the parse. Here the header
    lines are split and stored the way the feed parser stores them, and the body becomes
    the payload as it is. Anything else — multipart, message/*, an envelope ``From`` line,
    a bare CR, a line that is not a header, a first line that is a continuation — returns
    None and takes the full parse; a test holds this path to the feed parser's result.
    """
    end = _HEADER_END.search(raw)
    if end is None:
        return None
    block = raw[:end.start()].decode("ascii", "surrogateescape")
    if block.count("\r") != block.count("\r\n"):
        return None
    msg = Message(policy=_POLICY)
    lines: list[str] = []
    for line in _LINE.findall(block):
        if line[0] in " \t":
            if not lines:
                return None
            lines.append(line)
            continue
        if line.startswith("From ") or not _HEADER_LINE.match(line) or line[0] == ":":
            return None
        if lines:
            msg.set_raw(*_POLICY.header_source_parse(lines))
        lines = [line]
    if lines:
        msg.set_raw(*_POLICY.header_source_parse(lines))
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(codecs.ascii_decode(memoryview(raw)[end.end():], "surrogateescape")[0])
    return msg


def parse_email(raw: bytes, account: str, *, recipient: str | None = None,
                limits: ParseLimits = DEFAULT_PARSE_LIMITS,
                trusted_authserv_ids: tuple[str, ...] = ()) -> InboundMessage:
    """Parse raw mail into a normalized inbound message (never raises on bad MIME).

    ``recipient`` is the envelope recipient when known (SMTP ``RCPT TO``); it carries the
    plus-address reply token and becomes the message's ``to``. Linear in the size of
    ``raw``; a structure beyond ``limits`` raises :class:`MessageTooComplex`. With
    ``trusted_authserv_ids``, the message carries what those servers' Authentication-Results
    say of its sender (normalizer/authresults.py).
    """
    budget = _Budget(limits)
    try:
        msg = _parse_single_part(raw)
        if msg is None:  # not `or`: a Message without headers is falsy
            msg = _parse_large(raw, budget)
    except MessageTooComplex:
        raise
    except Exception:  # pragma: no cover - the feed parser is lenient; belt and braces
        msg = Message(policy=_POLICY)
        msg.set_payload(raw.decode("utf-8", "replace"))
    h = _header_map(msg)
    fallback = _first_charset(msg) if msg.is_multipart() else None

    message_ids = _message_ids(_FOLD.sub("", h.get("message-id") or ""))
    provider_id = message_ids[0] if message_ids else "sha256:" + hashlib.sha256(raw).hexdigest()

    body = _Body()
    try:
        _walk(msg, body, fallback, inline_context=False, budget=budget)
    except MessageTooComplex:
        raise
    except Exception:  # a structure too broken to walk still has its text
        body = _Body(plain=[_broken_text(raw)])
    # Raw 8-bit headers are most likely in whatever the body turned out to be written in
    # (which may not be what it was labeled).
    header_charset = body.codec or fallback

    senders = _addresses(h.get("from"), header_charset) \
        or _addresses(h.get("sender"), header_charset) \
        or _addresses(h.get("return-path"), header_charset)
    name, address = senders[0] if senders else (None, "unknown@invalid")
    reply_to = _addresses(h.get("reply-to"), header_charset)
    to = _addresses(h.get("to"), header_charset)
    cc = _addresses(h.get("cc"), header_charset)
    html = "\n".join(body.html) if body.html else None
    if body.plain:
        full_text = "\n\n".join(t.strip("\n") for t in body.plain if t.strip())
    elif html is not None:
        full_text = html_to_text(html)
    else:
        full_text = ""
    if not full_text.strip() and not body.attachments and not msg.is_multipart():
        full_text = _broken_text(raw)
    full_text = full_text.strip()
    truncated = []
    if len(full_text) > MAX_TEXT_CHARS or (body.plain and "plain" in body.cut):
        full_text = full_text[:MAX_TEXT_CHARS].rstrip() + TRUNCATED_NOTE
        truncated.append("text")
    if html is not None and (len(html) > MAX_TEXT_CHARS or "html" in body.cut):
        html = html[:MAX_TEXT_CHARS]
        truncated.append("html")
    text = strip_reply(full_text) if full_text else ""

    refs = _message_ids(h.get("in-reply-to"))
    refs += list(reversed(_message_ids(h.get("references"))))
    refs += body.original_ids  # a bounce or receipt names the message it is about
    refs = [r for r in dict.fromkeys(refs) if r != provider_id]

    envelope_to = recipient.strip().strip("<>").lower() if recipient else None
    if envelope_to is None:
        for header in ("Delivered-To", "X-Original-To"):
            found = _addresses(h.get(header.lower()), header_charset)
            if found:
                envelope_to = found[0][1]
                break
    if envelope_to is None and to:
        envelope_to = to[0][1]

    content: dict[str, Any] = {"type": "email"}
    if text != full_text:
        content["full_text"] = full_text
    if reply_to and reply_to[0][1] != address:
        content["reply_to"] = [a for _, a in reply_to]
    if cc:
        content["cc"] = [a for _, a in cc]
    if body.dsn is not None:
        content["dsn"] = body.dsn
    if truncated:
        content["truncated"] = truncated
    cids = {a.content_id: hashlib.sha256(a.data).hexdigest()
            for a in body.attachments if a.content_id and a.inline}
    if cids:
        # The HTML says <img src="cid:…">; the stored attachments are known by sha256.
        content["cid"] = cids

    return InboundMessage(
        channel="email", account=account, provider_message_id=provider_id,
        sender=Party("email", address, name or None),
        recipient=Party("email", envelope_to, None) if envelope_to else None,
        subject=decode_header(h.get("subject"), header_charset),
        text=text, html=html, attachments=body.attachments,
        sent_at=_date(h.get("date")),
        reply_refs=refs, automatic=classify_automatic(msg, h),
        raw=raw, raw_content_type="message/rfc822",
        reply_token=_reply_token(envelope_to, h, to + cc),
        content=content if len(content) > 1 else None,
        authentication=check_sender(msg.get_all("authentication-results") or (),
                                    address.rpartition("@")[2], trusted_authserv_ids)
        if trusted_authserv_ids else None,
    )


def _first_charset(msg: Message) -> str | None:
    """The first charset the message declares anywhere: the best guess for parts and raw
    headers that declare none."""
    for part in msg.walk():
        if not part.is_multipart():
            charset = _info(part).param("charset")
            if charset_codec(charset):
                return charset
    return None


def _broken_text(raw: bytes) -> str:
    """Text of a message whose MIME structure cannot be trusted: the body, leniently."""
    _head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        _head, sep, rest = raw.partition(b"\n\n")
    return decode_bytes(rest if sep else raw, None).replace("\r\n", "\n").strip()


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(_SPACE.sub(" ", value).strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000": UTC with no local offset known (RFC 5322 3.3)
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


_TOKEN = re.compile(r"^[^+@\s]+\+c-([0-9a-z]{26})@", re.IGNORECASE)


def _reply_token(envelope_to: str | None, headers: dict[str, str],
                 addressed: list[tuple[str | None, str]]) -> str | None:
    """``support+c-<token>@shop`` plus-address, or the X-Omnirelay-Conversation header."""
    header = decode_header(headers.get("x-omnirelay-conversation"))
    if header and re.fullmatch(r"[0-9A-Za-z]{26}", header):
        return header.lower()
    for address in filter(None, [envelope_to, *(a for _, a in addressed)]):
        match = _TOKEN.match(address)
        if match:
            return match.group(1).lower()
    return None

