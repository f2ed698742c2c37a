"""``[automation]`` and ``[templates]``: business hours, acknowledgements, rules, CSAT.

Parsed with the config toolkit like every table: each problem is recorded with its key and
a hint, never raised one at a time. docs/automation.md and docs/configuration.md describe
the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta

from gateway.automation.hours import (
    WEEKDAYS,
    BusinessHours,
    HoursError,
    parse_duration,
    parse_intervals,
)
from gateway.automation.rules import PRIORITIES, Rule, Urgency, weekday_numbers
from gateway.automation.templates import Template, Variant, placeholders
from gateway.configkit import Section

ACK_VARIABLES = frozenset({"eta", "opens_at", "in_hours", "customer_name", "channel"})
SURVEY_VARIABLES = frozenset({"customer_name", "channel", "agent_name"})
RULE_VARIABLES = ACK_VARIABLES

BUILTIN_TEMPLATES: dict[str, Template] = {
    "acknowledgement": Template("acknowledgement", {
        "en": Variant("Thanks for your message! A member of our team will answer {eta}."),
        "ko": Variant("문의 감사합니다! 담당자가 {eta} 답변드리겠습니다."),
    }, description="built in: the acknowledgement while the team is in"),
    "acknowledgement_closed": Template("acknowledgement_closed", {
        "en": Variant("Thanks for your message! We are away right now; a member of our team "
                      "will answer {eta}."),
        "ko": Variant("문의 감사합니다! 지금은 영업시간이 아니라서 담당자가 {eta} "
                      "답변드리겠습니다."),
    }, description="built in: the acknowledgement outside business hours"),
    "survey": Template("survey", {
        "en": Variant("How did we do? Reply with a number from 1 (bad) to 5 (great)."),
        "ko": Variant("상담은 만족스러우셨나요? 1(불만족)부터 5(매우 만족)까지 숫자로 "
                      "답해 주세요."),
    }, description="built in: the CSAT survey sent after a close"),
}


@dataclass(frozen=True, slots=True)
class AccountAutomation:
    """What one account (or every account, ``"*"``) does on its own."""

    account: str  # "type:name", "name" or "*"
    hours: BusinessHours | None = None
    language: str | None = None
    acknowledge: bool = False
    acknowledgement: str = "acknowledgement"
    acknowledgement_closed: str = "acknowledgement_closed"
    acknowledgement_window: timedelta = timedelta(hours=24)
    csat: bool = False
    survey: str = "survey"
    survey_answer_window: timedelta = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class AutomationConfig:
    """Everything omnirelay does on its own; empty (the default) does nothing."""

    timezone: str = "UTC"
    language: str = "en"
    hours: Mapping[str, BusinessHours] = field(default_factory=dict)
    accounts: tuple[AccountAutomation, ...] = ()
    rules: tuple[Rule, ...] = ()
    urgency: Urgency = field(default_factory=lambda: Urgency(enabled=False))
    templates: Mapping[str, Template] = field(default_factory=lambda: dict(BUILTIN_TEMPLATES))

    @property
    def classifies(self) -> bool:
        """Whether incoming messages are looked at (rules or the urgency signal)."""
        return bool(self.rules) or self.urgency.enabled

    @property
    def sends(self) -> bool:
        """Whether anything is sent on its own (acknowledgements, rule replies, surveys)."""
        return (any(a.acknowledge or a.csat for a in self.accounts)
                or any(r.reply for r in self.rules))

    def for_account(self, account_type: str, name: str) -> AccountAutomation | None:
        """The settings of ``type:name``, else of ``name``, else of ``"*"``."""
        for key in (f"{account_type}:{name}", name, "*"):
            for entry in self.accounts:
                if entry.account == key:
                    return entry
        return None


def parse_automation(section: Section | None, templates: Section | None) -> AutomationConfig:
    """Both tables; errors are recorded on the sections' context."""
    parsed_templates = dict(BUILTIN_TEMPLATES)
    language = "en" if section is None else section.get("language", str, "en")
    if templates is not None:
        for name in list(templates.data):
            sub = templates.sub(name)
            if sub is not None:
                template = _parse_template(name, sub, language)
                if template is not None:
                    parsed_templates[name] = template
    if section is None:
        return AutomationConfig(templates=parsed_templates)
    timezone = section.get("timezone", str, "UTC")
    hours: dict[str, BusinessHours] = {}
    hours_section = section.sub("hours")
    if hours_section is not None:
        for name in list(hours_section.data):
            sub = hours_section.sub(name)
            if sub is not None:
                schedule = _parse_hours(sub, timezone)
                if schedule is not None:
                    hours[name] = schedule
        hours_section.finish()
    accounts = tuple(
        entry for index, item in enumerate(section.get("accounts", list, []))
        if (entry := _parse_account(_item(section, "accounts", index, item), hours,
                                    parsed_templates)) is not None)
    rules = tuple(
        rule for index, item in enumerate(section.get("rules", list, []))
        if (rule := _parse_rule(_item(section, "rules", index, item), hours, timezone,
                                parsed_templates)) is not None)
    urgency = Urgency(enabled=False)
    urgency_section = section.sub("urgency")
    if urgency_section is not None:
        urgency = Urgency(
            enabled=urgency_section.get("enabled", bool, True),
            burst_messages=urgency_section.get("burst_messages", int, 3),
            burst_minutes=float(urgency_section.get("burst_minutes", (int, float), 5.0)))
        urgency_section.finish()
    section.finish()
    return AutomationConfig(timezone, language, hours, accounts, rules, urgency,
                            parsed_templates)


def _item(parent: Section, key: str, index: int, item: object) -> Section | None:
    if not isinstance(item, dict):
        parent.error(f"{key}[{index}]", "must be a table", f"[[automation.{key}]]")
        return None
    return Section(item, f"{parent.key(key)}[{index}]", parent.ctx)


def _parse_template(name: str, section: Section, language: str) -> Template | None:
    """One ``[templates.<name>]``: a top-level text is the ``language`` variant."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", name):
        section.error("text", f"template name {name!r}: use letters, digits, _ and - (1-64)")
        return None
    description = section.get("description", str)
    variants: dict[str, Variant] = {}
    top = _parse_variant(section, required=False)
    if top is not None:
        variants[language] = top
    channels: dict[str, dict[str, Variant]] = {}
    channel_section = section.sub("channels")
    if channel_section is not None:
        for channel in list(channel_section.data):
            per = channel_section.sub(channel)
            if per is None:
                continue
            languages = {}
            for language in list(per.data):
                sub = per.sub(language)
                if sub is not None and (variant := _parse_variant(sub)) is not None:
                    languages[language] = variant
            channels[channel] = languages
            per.finish()
        channel_section.finish()
    approved: dict[str, str] = {}
    approved_section = section.sub("approved")
    if approved_section is not None:
        for account_type in list(approved_section.data):
            value = approved_section.get(account_type, str)
            if value:
                approved[account_type] = value
        approved_section.finish()
    for key in list(section.data):
        if key in ("description", "channels", "text", "subject", "html", "approved"):
            continue
        if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", key):
            continue  # reported as an unknown key by finish()
        sub = section.sub(key)
        if sub is not None and (variant := _parse_variant(sub)) is not None:
            variants[key] = variant
    section.finish()
    if not variants:
        section.error("text", "a template needs a text, or a table per language",
                      f'[templates.{name}.en] text = "…"')
        return None
    return Template(name, variants, channels, description, approved)


def _parse_variant(section: Section, *, required: bool = True) -> Variant | None:
    text = section.get("text", str, required=required)
    subject = section.get("subject", str)
    html = section.get("html", str)
    if required:
        section.finish()
    if text is None:
        return None
    if not text.strip():
        section.error("text", "must not be empty")
        return None
    return Variant(text, subject, html)


def _parse_hours(section: Section, default_timezone: str) -> BusinessHours | None:
    days: dict[str, str] = {}
    valid = True
    for key in ("weekdays", *WEEKDAYS):
        value = section.get(key, str)
        if value is None:
            continue
        try:
            parse_intervals(value)
        except HoursError as exc:
            section.error(key, str(exc), f'{key} = "09:00-18:00" or "09:00-12:00, 13:00-18:00"')
            valid = False
            continue
        days.update(dict.fromkeys(WEEKDAYS[:5], value) if key == "weekdays" else {key: value})
    timezone = section.get("timezone", str, default_timezone)
    holidays = section.str_list("holidays")
    respond_within = section.get("respond_within", str, "2h")
    section.finish()
    if not valid:
        return None
    try:
        return BusinessHours.build(timezone, days, holidays, respond_within)
    except HoursError as exc:
        message = str(exc)
        key = ("timezone" if "time zone" in message else "holidays" if "holiday" in message
               else "respond_within")
        section.error(key, message)
        return None


def _duration(section: Section, key: str, default: timedelta) -> timedelta:
    value = section.get(key, str)
    if value is None:
        return default
    try:
        return parse_duration(value)
    except HoursError as exc:
        section.error(key, str(exc))
        return default


def _template_ref(section: Section, key: str, default: str | None,
                  templates: Mapping[str, Template], allowed: frozenset[str]) -> str | None:
    name = section.get(key, str, default)
    if name is None:
        return None
    template = templates.get(name)
    if template is None:
        section.error(key, f"no template {name!r}", f"define [templates.{name}]")
        return None
    unknown = sorted(set(template.variables()) - allowed)
    if unknown:
        section.error(key, f"template {name!r} uses {{{unknown[0]}}}, which is not known "
                      "here", f"the variables here are {', '.join(sorted(allowed))}")
    return name


def _parse_account(section: Section | None, hours: Mapping[str, BusinessHours],
                   templates: Mapping[str, Template]) -> AccountAutomation | None:
    if section is None:
        return None
    account = section.get("account", str, required=True,
                          hint='account = "email:support" (type:name), a name, or "*"')
    schedule = None
    hours_name = section.get("hours", str)
    if hours_name is not None:
        schedule = hours.get(hours_name)
        if schedule is None:
            section.error("hours", f"no valid [automation.hours.{hours_name}]",
                          f"valid: {', '.join(sorted(hours)) or 'none'}")
    entry = AccountAutomation(
        account=account or "*", hours=schedule, language=section.get("language", str),
        acknowledge=section.get("acknowledge", bool, False),
        acknowledgement=_template_ref(section, "acknowledgement", "acknowledgement",
                                      templates, ACK_VARIABLES) or "acknowledgement",
        acknowledgement_closed=_template_ref(section, "acknowledgement_closed",
                                             "acknowledgement_closed", templates,
                                             ACK_VARIABLES) or "acknowledgement_closed",
        acknowledgement_window=_duration(section, "acknowledgement_window",
                                         timedelta(hours=24)),
        csat=section.get("csat", bool, False),
        survey=_template_ref(section, "survey", "survey", templates,
                             SURVEY_VARIABLES) or "survey",
        survey_answer_window=_duration(section, "survey_answer_window", timedelta(days=3)))
    if entry.acknowledge and schedule is None and hours_name is None:
        section.error("hours", "an acknowledgement says when a human answers: name the "
                      "business hours", 'hours = "shop" with [automation.hours.shop]')
    section.finish()
    return entry if account else None


_TIME_WINDOW = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


def _parse_rule(section: Section | None, hours: Mapping[str, BusinessHours],
                default_timezone: str, templates: Mapping[str, Template]) -> Rule | None:
    if section is None:
        return None
    name = section.get("name", str, required=True, hint='name = "refunds"')
    patterns = []
    for index, pattern in enumerate(section.str_list("regex")):
        try:
            patterns.append(re.compile(pattern))
        except re.error as exc:
            section.error(f"regex[{index}]", f"not a regular expression: {exc}")
    days = frozenset[int]()
    try:
        days = weekday_numbers(section.str_list("days"))
    except ValueError as exc:
        section.error("days", str(exc), 'days = ["sat", "sun"]')
    time_from = time_to = None
    window = section.get("time", str)
    if window is not None:
        match = _TIME_WINDOW.fullmatch(window)
        if match and int(match[1]) < 24 and int(match[3]) < 24 and int(match[2]) < 60 \
                and int(match[4]) < 60:
            time_from = time(int(match[1]), int(match[2]))
            time_to = time(int(match[3]), int(match[4]))
        else:
            section.error("time", "must be a window of the day like \"18:00-09:00\"")
    during = section.get("during", str)
    if during not in (None, "business_hours", "outside_business_hours"):
        section.error("during", 'must be "business_hours" or "outside_business_hours"')
        during = None
    schedule = None
    hours_name = section.get("hours", str)
    if hours_name is not None:
        schedule = hours.get(hours_name)
        if schedule is None:
            section.error("hours", f"no [automation.hours.{hours_name}]")
    elif during is not None:
        section.error("hours", "during needs the business hours it is read in",
                      'hours = "shop"')
    if schedule is None and (days or time_from is not None):
        try:
            schedule = BusinessHours.build(default_timezone, {})  # the zone only
        except HoursError:
            schedule = None
    priority = section.get("priority", str)
    if priority is not None and priority not in PRIORITIES:
        section.error("priority", f"must be one of {', '.join(PRIORITIES)}")
        priority = None
    context = section.get("context", dict, {})
    if not all(isinstance(v, str) for v in context.values()):
        section.error("context", "values must be strings", 'context = { inflow = "ad" }')
        context = {}
    reply = _template_ref(section, "reply", None, templates, RULE_VARIABLES)
    rule = Rule(
        name=name or "", channels=frozenset(section.str_list("channels")),
        accounts=frozenset(section.str_list("accounts")),
        keywords=tuple(section.str_list("keywords")), patterns=tuple(patterns),
        identities=tuple(section.str_list("identities")), context=dict(context),
        new_customer=section.get("new_customer", bool), days=days, time_from=time_from,
        time_to=time_to, during=during, hours=schedule,
        tags=tuple(section.str_list("tags")), priority=priority,
        queue=section.get("queue", str), reply=reply)
    if not {"tags", "priority", "queue", "reply"} & set(section.data):
        section.error("tags", "a rule needs something to do: tags, priority, queue or reply")
    section.finish()
    return rule if name else None


def template_variables(template: Template) -> set[str]:
    """Every variable a template's variants use."""
    return {name for variant in template.variants.values()
            for part in (variant.text, variant.subject or "", variant.html or "")
            for name in placeholders(part)}
