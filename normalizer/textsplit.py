"""Splitting a long reply into the pieces a messenger accepts, without breaking what a reader sees.

LINE takes 5,000 characters a text bubble, TalkTalk 10,000 a message. A reply longer than
that is cut where a person would cut it: at a paragraph, else a line, else a sentence end
(``.``, ``。``, ``!``, ``?``, …), else a space; only a text with none of those (a URL, a
run of CJK without punctuation) is cut mid-run, and never inside a character's sequence
(a surrogate pair, an emoji joined by ZWJ, a flag, a combining mark or a variation
selector stays with its base). The pieces joined back are the text exactly.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

_SENTENCE_ENDS = frozenset(".!?\u3002\uff0e\uff01\uff1f\u2026")  # CJK stops too
_JOINERS = frozenset("\u200d")  # ZERO WIDTH JOINER: the next character belongs to this one


def utf16_units(text: str) -> int:
    """Length as JavaScript and most messenger APIs count it (an emoji outside the BMP is 2)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _extends(ch: str) -> bool:
    """Whether ``ch`` belongs to the character before it (never start a piece with it)."""
    code = ord(ch)
    return (unicodedata.combining(ch) != 0 or 0xFE00 <= code <= 0xFE0F
            or 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F
            or unicodedata.category(ch) in ("Mn", "Me", "Mc") or ch in _JOINERS)


def _safe_cut(text: str, cut: int) -> int:
    """Move ``cut`` left until it is not inside one visible character's sequence."""
    while 0 < cut < len(text) and (_extends(text[cut]) or text[cut - 1] in _JOINERS
                                   or _inside_flag(text, cut)):
        cut -= 1
    return cut


def _inside_flag(text: str, cut: int) -> bool:
    """A flag is two regional indicators: cutting between them shows two letters."""
    def regional(ch: str) -> bool:
        return 0x1F1E6 <= ord(ch) <= 0x1F1FF
    if not (regional(text[cut - 1]) and regional(text[cut])):
        return False
    run = 0
    index = cut - 1
    while index >= 0 and regional(text[index]):
        run += 1
        index -= 1
    return run % 2 == 1


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """``text`` in pieces of at most ``limit`` (as ``measure`` counts), cut cleanly.

    ``"".join(split_text(t, n)) == t`` always; an empty text is one empty piece.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2")
    pieces: list[str] = []
    rest = text
    while measure(rest) > limit:
        window = _window(rest, limit, measure)
        cut = _best_cut(rest, window)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    return pieces


def _window(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """The longest prefix length (in code points) that measures at most ``limit``."""
    if measure is len:
        return limit
    low, high = 1, min(len(text), limit)
    while low < high:  # measure is monotonic in the prefix length
        mid = (low + high + 1) // 2
        if measure(text[:mid]) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


def _best_cut(text: str, window: int) -> int:
    """Where to end the next piece within ``text[:window]`` (always > 0)."""
    head = text[:window]
    floor = window // 2  # a break in the first half would make needlessly many pieces
    for marker in ("\n\n", "\n"):
        found = head.rfind(marker, floor)
        if found >= 0:
            return found + len(marker)
    for index in range(window - 1, floor - 1, -1):
        if head[index] in _SENTENCE_ENDS and (index + 1 >= len(text)
                                              or not text[index + 1].isalnum()):
            end = index + 1
            while end < window and text[end] in " \t":
                end += 1
            return _safe_cut(text, end) or window
    found = head.rfind(" ", floor)
    if found >= 0:
        return found + 1
    return _safe_cut(text, window) or window
