"""Canned replies: named templates with variables and language variants, rendered per channel.

A template's text is written once with light markup (``**bold**``, ``[label](https://…)``,
blank lines between paragraphs) and ``{variable}`` placeholders (``{{`` and ``}}`` for
literal braces). Rendering fills the variables and turns the markup into what the channel
shows: e-mail gets an HTML part (variables escaped) beside the plain text, every other
channel plain text with links spelled out, checked against the channel's length limit.
Nothing is ever sent empty or cut: an unknown template, a missing variable or a text over
the limit is a :class:`TemplateError` naming it (the API answers 422).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# Longest text a channel takes in one message (characters). SMS: Twilio's 1,600 for a
# concatenated message; WhatsApp 4,096; Telegram 4,096; Messenger 2,000; Instagram 1,000;
# LINE 5,000; KakaoTalk/TalkTalk 1,000. No entry: no limit (e-mail, the API channel).
CHANNEL_LIMITS: dict[str, int] = {
    "sms": 1600, "mms": 1600, "whatsapp": 4096, "telegram": 4096, "messenger": 2000,
    "instagram": 1000, "line": 5000, "kakao": 1000, "navertalk": 1000, "webchat": 5000,
}
HTML_CHANNELS = frozenset({"email"})

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"\*\*([^*\n]+)\*\*")


class TemplateError(ValueError):
    """Why a template cannot be sent; ``field`` names the template or the variable."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Variant:
    """One language of a template: the text, and optionally an e-mail subject and HTML."""

    text: str
    subject: str | None = None
    html: str | None = None


@dataclass(frozen=True, slots=True)
class Template:
    """A named canned reply. ``variants`` by language; ``channels`` per channel and
    language, for a channel that needs shorter words (an SMS)."""

    name: str
    variants: Mapping[str, Variant]
    channels: Mapping[str, Mapping[str, Variant]] = field(default_factory=dict)
    description: str | None = None
    # By account type (``meta``, ``twilio``): the provider-approved template that stands for
    # this one where only such a template may be sent (WhatsApp outside its 24-hour window):
    # a Meta template name, a Twilio Content SID. Variables go along as its parameters.
    approved: Mapping[str, str] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        """The languages it is written in, the default (first) one first."""
        return list(self.variants)

    def variables(self) -> list[str]:
        """Every variable any variant uses, sorted."""
        names: set[str] = set()
        for variant in [*self.variants.values(),
                        *(v for per in self.channels.values() for v in per.values())]:
            for part in (variant.text, variant.subject or "", variant.html or ""):
                names.update(placeholders(part))
        return sorted(names)

    def to_json(self) -> dict[str, object]:
        """What ``GET /v1/templates`` lists."""
        return {
            "name": self.name, "description": self.description, "languages": self.languages,
            "variables": self.variables(), "channels": sorted(self.channels),
            "approved": dict(sorted(self.approved.items())),
            "text": {lang: v.text for lang, v in self.variants.items()},
        }


@dataclass(frozen=True, slots=True)
class Rendered:
    """A template filled in for one channel: what the outbound message carries."""

    text: str
    html: str | None
    subject: str | None
    language: str
    approved: str | None = None  # the provider's approved template for the account's type


def placeholders(text: str) -> list[str]:
    """The variable names in ``text``, in order."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1)]


def choose_language(template: Template, wanted: str | None, default: str | None) -> str:
    """The variant to send: the wanted language, else the account's, else the first."""
    for language in (wanted, default):
        if language and language in template.variants:
            return language
    return template.languages[0]


def render(template: Template, variables: Mapping[str, object], *, channel: str,
           language: str | None = None, default_language: str | None = None,
           account_type: str | None = None) -> Rendered:
    """Fill ``template`` for ``channel``; raise :class:`TemplateError` naming what is wrong."""
    chosen = choose_language(template, language, default_language)
    variant = template.channels.get(channel, {}).get(chosen) or template.variants[chosen]
    values = {key: _as_text(value) for key, value in variables.items()}
    missing = [name for name in dict.fromkeys(
        placeholders(variant.text) + placeholders(variant.subject or "")
        + placeholders(variant.html or "")) if name not in values]
    if missing:
        raise TemplateError(f"template {template.name!r} needs the variable {missing[0]!r}"
                            + (f" (and {', '.join(repr(m) for m in missing[1:])})"
                               if len(missing) > 1 else ""), field=missing[0])
    text = plain_text(_fill(variant.text, values))
    limit = CHANNEL_LIMITS.get(channel)
    if not text.strip():
        raise TemplateError(f"template {template.name!r} renders to an empty text",
                            field=template.name)
    if limit is not None and len(text) > limit:
        raise TemplateError(f"template {template.name!r} renders to {len(text)} characters; "
                            f"{channel} takes {limit} (write a shorter [templates."
                            f"{template.name}.channels.{channel}] variant)",
                            field=template.name)
    rendered_html = subject = None
    if channel in HTML_CHANNELS:
        subject = _fill(variant.subject, values) if variant.subject else None
        rendered_html = (_fill(variant.html, values, escape=True) if variant.html
                         else markup_html(_fill(variant.text, values, escape=True)))
    approved = template.approved.get(account_type) if account_type else None
    return Rendered(text, rendered_html, subject, chosen, approved)


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float | str):
        return str(value)
    raise TemplateError(f"variable values must be strings or numbers, not "
                        f"{type(value).__name__}", field="variables")


def _fill(text: str, values: Mapping[str, str], *, escape: bool = False) -> str:
    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        value = values[match.group(1)]
        return html.escape(value) if escape else value
    return _PLACEHOLDER.sub(one, text)


def plain_text(text: str) -> str:
    """Light markup → plain text: ``**x**`` → ``x``, ``[label](url)`` → ``label: url``."""
    text = _LINK.sub(lambda m: m.group(2) if m.group(1) == m.group(2)
                     else f"{m.group(1)}: {m.group(2)}", text)
    return _BOLD.sub(r"\1", text).strip()


def markup_html(escaped: str) -> str:
    """Light markup (already HTML-escaped) → HTML paragraphs with links and bold."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", escaped.strip()) if p.strip()]
    out = []
    for paragraph in paragraphs:
        body = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', paragraph)
        body = _BOLD.sub(r"<strong>\1</strong>", body).replace("\n", "<br>\n")
        out.append(f"<p>{body}</p>")
    return "\n".join(out)
