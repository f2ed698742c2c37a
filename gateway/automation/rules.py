"""Routing rules and the urgency signal: a message in, the conversation's fields out.

Pure functions over a :class:`MessageFacts` (what the message and its conversation say),
so the same decision is made inside the ingest transaction (tags, priority, queue carried
in that message's own events) and checked by a table of real-looking messages in tests.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time

from gateway.automation.hours import WEEKDAYS, BusinessHours

PRIORITIES = ("normal", "high", "urgent")  # the contract's, lowest first


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What a rule can look at."""

    channel: str
    account: str  # the account's name
    account_type: str  # the account's ``type`` (the rules name accounts as type:name)
    text: str
    subject: str | None
    sender: str  # "kind:address", e.g. "email:kim@vip.example"
    sender_name: str | None
    context: Mapping[str, object]
    at: datetime
    new_customer: bool
    first_message: bool  # the message opened the conversation
    recent_messages: int = 0  # the customer's messages in the burst window, this one included


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[automation.rules]]`` entry: conditions (all must hold) and what it sets."""

    name: str
    channels: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()  # "type:name" or "name"
    keywords: tuple[str, ...] = ()  # any of them, case-insensitive, in subject or text
    patterns: tuple[re.Pattern[str], ...] = ()  # any of them
    identities: tuple[str, ...] = ()  # globs over "kind:address"
    context: Mapping[str, str] = field(default_factory=dict)
    new_customer: bool | None = None
    days: frozenset[int] = frozenset()  # weekday numbers, Monday 0
    time_from: time | None = None  # with time_to: a window of the day (may wrap midnight)
    time_to: time | None = None
    during: str | None = None  # "business_hours" | "outside_business_hours"
    hours: BusinessHours | None = None  # the schedule ``during``/``time`` are read in
    tags: tuple[str, ...] = ()
    priority: str | None = None
    queue: str | None = None
    reply: str | None = None  # a template answering a matching first message

    def matches(self, facts: MessageFacts) -> bool:
        """Whether every condition the rule states holds for ``facts``."""
        if self.channels and facts.channel not in self.channels:
            return False
        if self.accounts and not ({facts.account, f"{facts.account_type}:{facts.account}"}
                                  & self.accounts):
            return False
        words = fold(f"{facts.subject or ''}\n{facts.text}")
        if self.keywords and not any(fold(k) in words for k in self.keywords):
            return False
        if self.patterns and not any(p.search(f"{facts.subject or ''}\n{facts.text}")
                                     for p in self.patterns):
            return False
        if self.identities and not any(fnmatch.fnmatchcase(facts.sender.lower(), g.lower())
                                       for g in self.identities):
            return False
        for key, wanted in self.context.items():
            if str(facts.context.get(key, "")) != wanted:
                return False
        if self.new_customer is not None and facts.new_customer != self.new_customer:
            return False
        return self._time_matches(facts.at)

    def _time_matches(self, at: datetime) -> bool:
        local = at.astimezone(self.hours.timezone) if self.hours is not None else at
        if self.days and local.weekday() not in self.days:
            return False
        if self.time_from is not None and self.time_to is not None:
            now = local.time().replace(tzinfo=None)
            if self.time_from <= self.time_to:
                if not self.time_from <= now < self.time_to:
                    return False
            elif self.time_to <= now < self.time_from:  # wraps midnight: 22:00-06:00
                return False
        if self.during is not None and self.hours is not None:
            open_now = self.hours.is_open(at)
            return open_now == (self.during == "business_hours")
        return True


@dataclass(frozen=True, slots=True)
class Urgency:
    """The built-in signal: cue words and bursts that raise a conversation's priority."""

    enabled: bool = True
    burst_messages: int = 3  # this many customer messages…
    burst_minutes: float = 5.0  # …within this many minutes is a cue
    anger: tuple[str, ...] = (
        "angry", "furious", "unacceptable", "ridiculous", "worst", "scam", "disgusting",
        "fed up", "lawyer", "sue you", "never again", "terrible",
        "화가", "화나", "짜증", "최악", "어이없", "어이가 없", "사기", "장난하", "답답",
        "고소", "소송", "열받", "황당", "실망", "당장",
    )
    money: tuple[str, ...] = ("refund", "money back", "환불", "돈 돌려")
    severe: tuple[str, ...] = ("chargeback", "charge back", "dispute", "차지백", "카드사",
                               "소비자원", "lawyer", "고소", "소송")


@dataclass(frozen=True, slots=True)
class Classification:
    """What the message sets: tags to add, the priority to raise to, a queue, a reply."""

    tags: tuple[str, ...] = ()
    priority: str | None = None
    queue: str | None = None
    reply: str | None = None
    rules: tuple[str, ...] = ()  # names of the rules that matched
    cues: tuple[str, ...] = ()  # urgency cues seen: anger, money, severe, burst, shouting


def fold(text: str) -> str:
    """Case- and width-insensitive form for keyword search (NFKC, casefold)."""
    return unicodedata.normalize("NFKC", text).casefold()


def urgency_cues(facts: MessageFacts, urgency: Urgency) -> tuple[str, ...]:
    """The cues in the message: anger, money (a refund), severe (a chargeback, a lawyer),
    shouting (most letters upper-case, or "!!!"), burst (several messages in minutes)."""
    if not urgency.enabled:
        return ()
    words = fold(f"{facts.subject or ''}\n{facts.text}")
    cues = []
    if any(fold(w) in words for w in urgency.anger):
        cues.append("anger")
    if any(fold(w) in words for w in urgency.money):
        cues.append("money")
    if any(fold(w) in words for w in urgency.severe):
        cues.append("severe")
    letters = [c for c in facts.text if c.isalpha() and c.isascii()]
    if "!!!" in facts.text or (len(letters) >= 12
                               and sum(c.isupper() for c in letters) / len(letters) > 0.7):
        cues.append("shouting")
    if facts.recent_messages >= urgency.burst_messages:
        cues.append("burst")
    return tuple(cues)


def urgency_priority(cues: Sequence[str]) -> str | None:
    """One cue: high. A severe cue (chargeback, lawyer) or two kinds together: urgent."""
    if not cues:
        return None
    kinds = set(cues) - {"shouting"} | ({"anger"} if "shouting" in cues else set())
    if "severe" in cues or len(kinds) >= 2:
        return "urgent"
    return "high"


def higher(a: str | None, b: str | None) -> str | None:
    """The higher of two priorities (None: no opinion)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if PRIORITIES.index(a) >= PRIORITIES.index(b) else b


def classify(facts: MessageFacts, rules: Sequence[Rule], urgency: Urgency) -> Classification:
    """Every matching rule applies: tags add up, the highest priority wins, the first
    queue and the first reply count. The urgency signal can only raise the priority."""
    tags: list[str] = []
    priority: str | None = None
    queue = reply = None
    matched = []
    for rule in rules:
        if not rule.matches(facts):
            continue
        matched.append(rule.name)
        tags.extend(t for t in rule.tags if t not in tags)
        priority = higher(priority, rule.priority)
        queue = queue or rule.queue
        if reply is None and rule.reply and facts.first_message:
            reply = rule.reply
    cues = urgency_cues(facts, urgency)
    priority = higher(priority, urgency_priority(cues))
    return Classification(tuple(tags), priority, queue, reply, tuple(matched), cues)


def changes_for(conversation: Mapping[str, object],
                result: Classification) -> dict[str, dict[str, object]]:
    """``{"field": {"from", "to"}}`` for what ``result`` changes on ``conversation``: tags
    are added to, the priority only raised, the queue set only when there is none (an
    agent's choice stands)."""
    changes: dict[str, dict[str, object]] = {}
    old_tags = list(conversation.get("tags") or [])  # type: ignore[call-overload]
    new_tags = old_tags + [t for t in result.tags if t not in old_tags]
    if new_tags != old_tags:
        changes["tags"] = {"from": old_tags, "to": new_tags}
    old_priority = conversation.get("priority") or "normal"
    assert isinstance(old_priority, str)
    raised = higher(old_priority, result.priority)
    if raised != old_priority:
        changes["priority"] = {"from": old_priority, "to": raised}
    if result.queue and not conversation.get("queue"):
        changes["queue"] = {"from": None, "to": result.queue}
    return changes


def detect_language(text: str, default: str) -> str:
    """The customer's language from the script they write in: Hangul → ko, kana → ja,
    Latin letters → en; else ``default``."""
    hangul = kana = latin = 0
    for char in text:
        code = ord(char)
        if 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
            hangul += 1
        elif 0x3040 <= code <= 0x30FF:
            kana += 1
        elif char.isascii() and char.isalpha():
            latin += 1
    if hangul and hangul * 3 >= latin:
        return "ko"
    if kana:
        return "ja"
    if latin:
        return "en"
    return default


def weekday_numbers(names: Sequence[str]) -> frozenset[int]:
    """``["sat", "sunday"]`` → {5, 6}; raises ValueError naming an unknown day."""
    numbers = set()
    for name in names:
        key = name.strip().lower()
        found = [i for i, day in enumerate(WEEKDAYS) if key and day.startswith(key)
                 and len(key) >= 3]
        if not found:
            raise ValueError(f"{name!r} is not a day of the week")
        numbers.add(found[0])
    return frozenset(numbers)
