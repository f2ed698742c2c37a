"""CSAT answers: a customer's reply to the 1-5 survey, in the forms people actually type.

A digit ("5", "4점", "5/5", "⭐⭐⭐⭐"), an emoji (😡 … 😍, 👍/👎), or a word in
Korean or English ("최고", "만족", "별로", "excellent", "bad"). Only a short answer is read
as a score: a longer message is a customer writing again (it reopens the conversation as
any message does), so "I gave 5 stars but my order is still missing" is never a 5.
"""

from __future__ import annotations

import re
import unicodedata

MAX_ANSWER_CHARS = 40  # longer than this is a message, not an answer

_DIGIT = re.compile(r"^\s*([1-5])\s*(?:/\s*5|점|stars?|star|out of 5|!|\.)?\s*$")
_STARS = re.compile(r"^\s*([⭐★]{1,5})\s*$")
_EMOJI = {
    "😡": 1, "🤬": 1, "😠": 1, "😞": 2, "🙁": 2, "☹": 2, "😕": 2, "👎": 1,
    "😐": 3, "😶": 3, "🙂": 4, "😊": 4, "👍": 4, "😀": 5, "😄": 5, "😁": 5, "😍": 5,
    "🥰": 5, "🤩": 5, "❤": 5, "❤️": 5, "💯": 5,
}
_WORDS = {
    # English
    "terrible": 1, "awful": 1, "very bad": 1, "horrible": 1, "very poor": 1,
    "bad": 2, "poor": 2, "not good": 2, "unhappy": 2,
    "ok": 3, "okay": 3, "average": 3, "meh": 3, "so-so": 3, "fine": 3, "neutral": 3,
    "good": 4, "satisfied": 4, "happy": 4, "nice": 4,
    "great": 5, "excellent": 5, "amazing": 5, "perfect": 5, "very good": 5,
    "very satisfied": 5, "awesome": 5, "fantastic": 5,
    # Korean
    "매우 불만족": 1, "매우불만족": 1, "최악": 1, "아주 나쁨": 1, "매우 나쁨": 1,
    "불만족": 2, "별로": 2, "나쁨": 2, "별로예요": 2, "불만": 2,
    "보통": 3, "그저 그래요": 3, "그냥 그래요": 3, "보통이에요": 3, "괜찮아요": 3,
    "만족": 4, "좋아요": 4, "좋음": 4, "좋았어요": 4, "만족해요": 4,
    "매우 만족": 5, "매우만족": 5, "아주 만족": 5, "최고": 5, "최고예요": 5, "최고에요": 5,
    "아주 좋아요": 5, "완벽해요": 5, "감사합니다 최고": 5,
}


def parse_score(text: str) -> int | None:
    """The 1-5 score a short answer gives, or None when it is not an answer."""
    if not text or len(text.strip()) > MAX_ANSWER_CHARS:
        return None
    folded = unicodedata.normalize("NFKC", text).strip()
    match = _DIGIT.match(folded.lower())
    if match:
        return int(match.group(1))
    match = _STARS.match(folded)
    if match:
        return len(match.group(1))
    bare = folded.replace("\ufe0f", "")
    if bare in _EMOJI:
        return _EMOJI[bare]
    emojis = [c for c in bare if not c.isspace()]
    if emojis and all(c in _EMOJI for c in emojis) and len({_EMOJI[c] for c in emojis}) == 1:
        return _EMOJI[emojis[0]]  # "👍👍"
    word = re.sub(r"[\s!.~^]+$", "", folded.lower()).strip()
    word = re.sub(r"\s+", " ", word)
    return _WORDS.get(word)
