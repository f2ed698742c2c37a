"""``Authentication-Results`` (RFC 8601) → :class:`SenderAuthentication`: is the From forged?

Only a header written by a server the account trusts counts (a sender can write any header
of its own): the topmost one whose authserv-id is in ``trusted``. Headers of other servers,
and headers without an authserv-id, are never read.

Why a hand parser, not the ``authres`` library (1.2.0): it raises on what Exchange Online
writes (no authserv-id, ``dmarc=pass action=none``), and one raise per odd header would
make the verdict depend on which mailer wrote it. This one is strict where it matters (the
authserv-id, ``method=result``) and skips what it does not understand; it never raises and
is linear in the header's length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from normalizer.model import SenderAuthentication

RESULTS = frozenset({"pass", "fail", "softfail", "none", "neutral", "temperror",
                     "permerror", "policy", "hardfail"})
_FAILED = frozenset({"fail", "softfail"})
MAX_HEADERS = 20  # a relay chain longer than this is not read further (bounded work)
_AUTHSERV_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[0-9]+")
_METHOD = re.compile(r"([A-Za-z0-9_\-]+)(?:/[0-9]+)?=([A-Za-z]+)")
_PROPERTY = re.compile(r"([A-Za-z]+)\.([A-Za-z0-9_\-]+)=(.*)")
_SPACE = re.compile(r"\s+")

NONE = SenderAuthentication("none")


def check_sender(headers: Iterable[str], from_domain: str,
                 trusted: Iterable[str]) -> SenderAuthentication:
    """The verdict of the topmost ``Authentication-Results`` written by a trusted server.

    ``headers`` are the field values top to bottom. Without a trusted header: ``none``,
    ``by`` None. Never raises.
    """
    trusted_ids = {t.lower() for t in trusted}
    for index, value in enumerate(headers):
        if index >= MAX_HEADERS:
            break
        parsed = _split(value)
        if parsed is None:
            continue
        authserv_id, results = parsed
        if authserv_id.lower() in trusted_ids:
            return _verdict(authserv_id.lower(), results, from_domain.lower())
    return NONE


def _verdict(by: str, results: list[tuple[str, str, dict[str, str]]],
             from_domain: str) -> SenderAuthentication:
    """DMARC decides when it gave a result; else an aligned DKIM or SPF pass does."""
    first: dict[str, str] = {}
    aligned_pass = False
    for method, result, props in results:
        if method not in ("dmarc", "spf", "dkim"):
            continue
        if method == "dkim":
            domain = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
        else:
            domain = props.get("smtp.mailfrom", "").rpartition("@")[2]
        if method != "dmarc" and result == "pass":
            first[method] = "pass"  # one passing signature of several is the one to show
            aligned_pass = aligned_pass or _aligned(domain.lower(), from_domain)
        first.setdefault(method, result)
    dmarc = first.get("dmarc")
    verdict: Literal["pass", "fail", "none"]
    if dmarc == "pass":
        verdict = "pass"
    elif dmarc == "fail":
        verdict = "fail"
    elif dmarc not in (None, "none"):  # temperror, permerror…: DMARC could not decide
        verdict = "none"
    elif aligned_pass:
        verdict = "pass"
    elif first.get("dkim") in _FAILED or first.get("spf") in _FAILED:
        verdict = "fail"
    else:
        verdict = "none"
    return SenderAuthentication(verdict, dmarc=dmarc, spf=first.get("spf"),
                                dkim=first.get("dkim"), by=by)


def _aligned(domain: str, from_domain: str) -> bool:
    """The authenticated domain is the From domain or a parent of it."""
    domain = domain.strip(".")
    return bool(domain) and (from_domain == domain or from_domain.endswith("." + domain))


def _split(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]] | None:
    """(authserv-id, [(method, result, {"ptype.property": value})]) or None when the header
    names no authserv-id or is not an Authentication-Results header at all."""
    segments = _uncomment(value).split(";")
    head = _SPACE.sub(" ", segments[0]).strip().split(" ")
    if len(head) == 2 and _VERSION.fullmatch(head[1]):
        head = head[:1]
    if len(head) != 1 or not _AUTHSERV_ID.fullmatch(head[0]):
        return None  # no authserv-id (``spf=pass …`` first), or not one
    results = []
    for segment in segments[1:]:
        words = segment.split()
        if not words or words == ["none"]:
            continue
        match = _METHOD.fullmatch(words[0])
        if match is None:
            continue  # a segment we cannot read says nothing; the others still count
        method, result = match.group(1).lower(), match.group(2).lower()
        if result not in RESULTS:
            continue
        props: dict[str, str] = {}
        for word in words[1:]:
            prop = _PROPERTY.fullmatch(word)
            if prop is not None:
                key = f"{prop.group(1).lower()}.{prop.group(2).lower()}"
                props.setdefault(key, prop.group(3).strip('"'))
        results.append((method, result, props))
    return head[0], results


def _uncomment(value: str) -> str:
    """The value without (comments), nested or not, and with quoted strings' ``;`` and
    ``(`` kept inert; a comment or quote left open ends the value."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            continue
        if quoted:
            if char == '"':
                quoted = False
            out.append(" " if char in ";" else char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            if char == '"':
                quoted = True
            out.append(char)
    return "".join(out)
