"""The OpenAPI 3.1 description of the HTTP API, served at ``/v1/openapi.json``.

Built in Python so that shared schemas are written once; ``omnirelay openapi`` prints it
and ``docs/openapi.json`` is a copy that a test keeps in step. The identity kinds it accepts
are the adapter registry's (:func:`adapters.registry.identity_kinds`): a channel brings its
kinds with it.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from adapters.registry import identity_kinds as registered_identity_kinds
from gateway import __version__
from gateway.automation.config import BUILTIN_TEMPLATES

JSON = dict[str, Any]


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: JSON) -> JSON:
    return {"anyOf": [schema, {"type": "null"}]}


_STR = {"type": "string"}
_TS = {"type": "string", "format": "date-time"}
MAX_INT64 = 2**63 - 1
# The schema states what the server accepts, so that every request it calls valid is
# taken (schemathesis' positive_data_acceptance runs in the suite). Where the server's rule
# cannot be written as a pattern (a "possible" phone number depends on the numbering
# plan), the pattern is a subset that is always accepted.
ULID = "[0-9A-HJKMNP-TV-Z]{26}"
# No whitespace (as str.isspace() counts it), control character, "@" or angle bracket.
_EMAIL_CHAR = (r"[^@<>\s\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
               r"\u3000]")
EMAIL_PATTERN = f"{_EMAIL_CHAR}+@{_EMAIL_CHAR}+"
PHONE_PATTERN = r"\+(1[0-9]{10}|33[0-9]{9}|(44|49|81|82|86|91)[0-9]{9,10})"
NON_BLANK_PATTERN = r".*\S.*"
MIME_TYPE_PATTERN = (r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
                     r"/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
BASE64_PATTERN = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# An http(s) URL without user info (an attachment given by URL; gateway/media.py).
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^@/?#\s]+([/?#]\S*)?$"
HEARTBEAT_RANGE = (1, 60)


# The kinds whose addresses have a form of their own; any other kind's is non-blank text.
ADDRESS_PATTERNS = {"email": EMAIL_PATTERN, "phone": PHONE_PATTERN}


def _address_patterns(kinds: tuple[str, ...]) -> list[tuple[list[str], str]]:
    """(kinds, address pattern) for ``kinds``: e-mail and phone each their own, the others
    (ids a provider gives) together."""
    groups = [([kind], ADDRESS_PATTERNS[kind]) for kind in kinds if kind in ADDRESS_PATTERNS]
    others = [kind for kind in kinds if kind not in ADDRESS_PATTERNS]
    if others:
        groups.append((others, NON_BLANK_PATTERN))
    return groups


def identity_query_pattern(kinds: tuple[str, ...]) -> str:
    """``kind:address`` as ``GET /v1/customers?identity=`` accepts it, for ``kinds``."""
    branches = [f"{_one_of(group)}:{pattern}" for group, pattern in _address_patterns(kinds)]
    return f"^({'|'.join(branches)})$"


def _one_of(kinds: list[str]) -> str:
    """A regular expression matching exactly one of ``kinds``."""
    escaped = [re.escape(kind) for kind in kinds]
    return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"


def _kind_schema(kinds: list[str]) -> JSON:
    return {"const": kinds[0]} if len(kinds) == 1 else {"enum": kinds}


def _obj(props: JSON, required: list[str] | None = None, extra: bool = True) -> JSON:
    schema: JSON = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _error_responses(*codes: int) -> JSON:
    text = {400: "Invalid parameters", 401: "Missing or invalid token",
            403: "The token lacks the scope", 404: "Not found", 409: "Conflict",
            413: "Body too large", 422: "Invalid content",
            429: "Too many open streams for this token (see Retry-After)",
            503: "Store unavailable (see Retry-After)"}
    return {str(c): {"description": text[c], "content": {"application/json": {
        "schema": _ref("Error")}}} for c in codes}


def _ok(schema: JSON, description: str = "OK", status: int = 200) -> JSON:
    return {str(status): {"description": description,
                          "content": {"application/json": {"schema": schema}}}}


def _op(summary: str, responses: JSON, *, params: list[JSON] | None = None,
        body: JSON | None = None, auth: bool = True, errors: tuple[int, ...] = (),
        body_required: bool = True) -> JSON:
    op: JSON = {"summary": summary, "responses": {**responses, **_error_responses(
        *((401, 403) if auth else ()), *errors)}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": body_required,
                             "content": {"application/json": {"schema": body}}}
    if not auth:
        op["security"] = []
    return op


def _list_of(key: str, item: JSON) -> JSON:
    """A page of ``key`` items and the cursor of the next page."""
    return _obj({key: {"type": "array", "items": item}, "next": _nullable(_STR)}, [key])


def _path_id(prefix: str) -> JSON:
    return {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": f"^{prefix}_{ULID}$"},
            "description": f"a {prefix}_… id"}


def _query(name: str, schema: JSON, description: str = "") -> JSON:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _routing(routes: tuple[tuple[str, str], ...]) -> list[JSON]:
    """Which ``channel``/``account`` pairs a reply may name on this daemon: a channel
    served by several accounts needs the account."""
    by_channel: dict[str, list[str]] = {}
    for channel, account in routes:
        by_channel.setdefault(channel, []).append(account)
    branches: list[JSON] = [{"not": {"required": ["channel"]}}]
    for channel, accounts in sorted(by_channel.items()):
        branches.append({
            "required": ["channel", "account"] if len(accounts) > 1 else ["channel"],
            "properties": {"channel": {"const": channel},
                           "account": {"enum": sorted(accounts)}}})
    return branches


def openapi_document(routes: tuple[tuple[str, str], ...] = (),
                     identity_kinds: tuple[str, ...] | None = None,
                     media_hosts: tuple[str, ...] | None = None,
                     templates: tuple[tuple[str, tuple[str, ...]], ...] | None = None) -> JSON:
    """Return the OpenAPI document (a dict ready for JSON).

    ``routes`` (channel, account pairs) is what the running daemon serves: given, the
    reply schemas name the configured channels and accounts; ``docs/openapi.json`` is
    the document without them. ``identity_kinds`` defaults to the registered adapters'.
    ``media_hosts`` (the origins of the daemon's API accounts) narrows attachments given by
    URL to those origins, none at all when there are none: a schema-valid request is then
    one the daemon accepts. ``templates`` (name, its variables) are the daemon's canned
    replies (default: the built-in ones): a reply naming one must give its variables.
    """
    kinds = registered_identity_kinds() if identity_kinds is None else identity_kinds
    if templates is None:
        templates = tuple((name, tuple(template.variables()))
                          for name, template in sorted(BUILTIN_TEMPLATES.items()))
    return _document(routes, kinds, media_hosts, templates)


def _template_branches(templates: tuple[tuple[str, tuple[str, ...]], ...]) -> list[JSON]:
    """One branch per template: its name, and the variables it needs (gateway/api/
    templates.py refuses anything else with 422)."""
    value = {"type": ["string", "number", "boolean"]}
    branches = []
    for name, variables in templates:
        branch: JSON = {"required": ["template"], "not": {"required": ["text"]},
                        "properties": {"template": {
                            "const": name,
                            # A departure from CONTRACT.md, written in docs/api.md.
                            "description": "an omnirelay canned reply ([templates] in the "
                                           "config); a provider-approved template (WhatsApp "
                                           "outside 24 hours) is named by the canned reply's "
                                           "[templates.<name>.approved], never here"},
                            "variables": {
                            "type": "object", "required": list(variables),
                            "additionalProperties": value,
                            "properties": {v: value for v in variables}}}}
        if variables:
            branch["required"] = ["template", "variables"]
        branches.append(branch)
    return branches


_LABEL = {"type": "string", "pattern": NON_BLANK_PATTERN, "minLength": 1, "maxLength": 100}
_FILTER = {"type": "string", "pattern": NON_BLANK_PATTERN, "minLength": 1}
_CONVERSATION_FILTERS = (("channel", "the conversation's channel"),
                         ("account", "the conversation's account name"),
                         ("tag", "carries this tag"), ("queue", "in this queue"),
                         ("assignee", "assigned to the agent with this id"))
_DURATION = {"type": "object", "required": ["median", "p90", "count"], "properties": {
    "median": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    "p90": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    "count": {"type": "integer"}}}
_RATE = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]}


def _stats_schemas() -> JSON:
    """``GET /v1/stats``: the metrics of METRICS.md per group."""
    group = _obj({
        "key": _nullable(_STR), "conversations_created": {"type": "integer"},
        "open_conversations": {"type": "integer"}, "first_response_time": _DURATION,
        "response_time": _DURATION, "resolution_time": _DURATION,
        "one_touch_resolution_rate": _RATE, "automatic_resolutions": {"type": "integer"},
        "messages_per_conversation": _nullable({"type": "number"}),
        "conversations_closed": {"type": "integer"},
        "contact_rate": _nullable({"type": "number"}),
        "csat": _obj({"surveys_sent": {"type": "integer"}, "responses": {"type": "integer"},
                      "response_rate": _nullable({"type": "number"}),
                      "average_score": _nullable({"type": "number"}),
                      "satisfaction_score": _RATE}),
    }, ["key", "conversations_created", "open_conversations", "first_response_time",
        "response_time", "resolution_time", "one_touch_resolution_rate",
        "automatic_resolutions", "messages_per_conversation", "conversations_closed",
        "contact_rate", "csat"])
    stats = _obj({"from": _TS, "to": _TS,
                  "group_by": _nullable({"enum": ["channel", "account", "agent", "day"]}),
                  "clock": {"enum": ["wall", "business"]},
                  "groups": {"type": "array", "items": group}},
                 ["from", "to", "group_by", "clock", "groups"])
    patch = _obj({"tags": {"type": "array", "items": _LABEL, "maxItems": 50},
                  "priority": {"enum": ["normal", "high", "urgent"]},
                  "queue": _nullable(_LABEL), "assignee": _nullable(_ref("Agent")),
                  "agent": _nullable(_ref("Agent"))}, extra=False)
    patch["anyOf"] = [{"required": [name]} for name in ("tags", "priority", "queue",
                                                        "assignee")]
    return {"Stats": stats, "ConversationPatch": patch}


@cache
def _document(routes: tuple[tuple[str, str], ...], kinds: tuple[str, ...],
              media_hosts: tuple[str, ...] | None,
              templates: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> JSON:
    url_pattern = URL_PATTERN if media_hosts is None else (
        "^(" + "|".join(re.escape(host) for host in media_hosts) + r")([/?#]\S*)?$")
    party = _obj({"kind": _STR, "address": _STR, "name": _nullable(_STR)},
                 ["kind", "address"])
    # size, sha256 and url are null only for a file given by URL whose fetch was given up:
    # then ``error`` says why (docs/api.md, "Attachments given by URL").
    attachment = _obj({"id": _STR, "filename": _STR, "content_type": _STR,
                       "size": _nullable({"type": "integer"}), "sha256": _nullable(_STR),
                       "url": _nullable(_STR), "purged": {"type": "boolean"},
                       "error": _obj({"code": _STR, "message": _STR}, ["code", "message"])},
                      ["id", "filename", "content_type", "size", "sha256", "url"])
    message = _obj({
        "id": _STR, "conversation_id": _STR, "customer_id": _STR, "channel": _STR,
        "account": _STR, "direction": {"enum": ["inbound", "outbound"]},
        "from": _nullable(_ref("Party")), "to": _nullable(_ref("Party")),
        "subject": _nullable(_STR), "text": _STR, "html": _nullable(_STR),
        "attachments": {"type": "array", "items": _ref("Attachment")},
        "in_reply_to": _nullable(_STR),
        "provider": _obj({
            "message_id": _nullable(_STR), "thread_id": _nullable(_STR),
            # E-mail of an account with trusted_authserv_ids only (docs/email.md,
            # "Spoofed senders"): what that receiving server said of the sender.
            "authentication": {**_obj({
                "verdict": {"enum": ["pass", "fail", "none"]},
                "dmarc": _nullable(_STR), "spf": _nullable(_STR), "dkim": _nullable(_STR),
                "by": _nullable(_STR)}, ["verdict", "dmarc", "spf", "dkim", "by"]),
                "description": "e-mail only, when the account trusts a receiving server: "
                               "fail = the sender may be spoofed (docs/email.md)"},
        }),
        "status": {"enum": ["received", "queued", "sent", "delivered", "read", "failed"]},
        "error": _nullable(_obj({"code": _STR, "message": _STR}, ["code", "message"])),
        "agent": _nullable(_ref("Agent")), "automatic": _nullable(_STR),
        "sent_at": _nullable(_TS), "received_at": _TS,
        # Present once a provider changed the message (message.updated).
        "edited_at": _TS, "withdrawn": {"type": "boolean"},
        "reactions": {"type": "array", "items": _ref("Reaction")},
    }, ["id", "conversation_id", "customer_id", "channel", "account", "direction", "text",
        "attachments", "status", "received_at"])
    conversation = _obj({
        "id": _STR, "customer_id": _STR, "channel": _STR, "account": _STR,
        "status": {"enum": ["open", "closed"]}, "opened_at": _TS,
        "closed_at": _nullable(_TS), "last_message_at": _TS,
        "tags": {"type": "array", "items": _STR},
        "priority": {"enum": ["normal", "high", "urgent"]}, "queue": _nullable(_STR),
        "assignee": _nullable(_ref("Agent")),
        "context": {"type": "object"},
        "group": _nullable(_ref("Group")),
        "csat": _nullable(_obj({"score": {"type": "integer", "minimum": 1, "maximum": 5},
                                "agent": _nullable(_ref("Agent")), "answered_at": _TS},
                               ["score", "answered_at"])),
    }, ["id", "customer_id", "channel", "account", "status", "opened_at"])
    identity = _obj({"kind": _STR, "address": _STR,
                     "channels": {"type": "array", "items": _STR},
                     # Present only when the identity opted out somewhere (an SMS STOP).
                     "opt_outs": {"type": "array", "items": _obj(
                         {"channel": _STR, "account": _STR, "keyword": _STR, "at": _TS},
                         ["channel", "account", "keyword", "at"])}}, ["kind", "address"])
    customer = _obj({
        "id": _STR, "name": _nullable(_STR), "merged_into": _nullable(_STR),
        "identities": {"type": "array", "items": _ref("Identity")}, "created_at": _TS,
        "conversations": {"type": "array", "items": _ref("Conversation")},
    }, ["id", "identities", "created_at"])
    event = _obj({"id": _STR, "seq": _STR, "type": _STR, "created_at": _TS,
                  "data": {"type": "object"}}, ["id", "seq", "type", "created_at", "data"])
    attachment_in = _obj({"filename": {"type": "string", "minLength": 1, "maxLength": 255},
                          "content_type": {"type": "string", "pattern": MIME_TYPE_PATTERN},
                          "content_base64": {"type": "string", "pattern": BASE64_PATTERN,
                                             "contentEncoding": "base64"}},
                         ["filename", "content_base64"], extra=False)
    attachment_url_in = _obj({
        "url": {"type": "string", "maxLength": 2048, "pattern": url_pattern,
                "description": "its origin must be one of the account's media_hosts "
                               "(else 422); fetched after the message is committed"},
        "filename": {"type": "string", "minLength": 1, "maxLength": 255},
        "content_type": {"type": "string", "pattern": MIME_TYPE_PATTERN}},
        ["url", "filename"], extra=False)
    agent = _obj({"id": _STR, "name": _nullable(_STR)}, ["id"], extra=False)
    reply = _obj({
        "text": _STR, "html": _STR, "subject": _STR,
        "attachments": {"type": "array", "items": _ref("AttachmentInput")},
        "agent": _nullable(_ref("Agent")), "channel": _STR, "account": _STR,
        "template": {"type": "string", "minLength": 1}, "variables": {"type": "object"},
        "language": {"type": "string", "description": "the template's language (default: "
                                                      "the customer's, else the account's)"},
    }, extra=False)
    # A message needs text, attachments or a template (rendered for its channel: an unknown
    # one, a missing variable, or text beside it is refused with 422, never sent empty).
    reply["anyOf"] = [
        {"required": ["text"], "properties": {"text": {"minLength": 1}},
         "not": {"required": ["template"]}},
        {"required": ["attachments"], "properties": {"attachments": {"minItems": 1}},
         "not": {"required": ["template"]}},
        *_template_branches(templates),
    ]
    if routes:
        reply = {"allOf": [reply, {"anyOf": _routing(routes)}]}
    proactive = {"allOf": [_ref("Reply"), {"required": ["channel"],
                                           "properties": {"channel": {"minLength": 1}}}]}
    identity_in = _obj({"kind": {"enum": list(kinds),
                                 "description": "the identity kinds the registered channel "
                                                "adapters bring"},
                        "address": {"type": "string", "minLength": 1}},
                       ["kind", "address"], extra=False)
    identity_in["anyOf"] = [
        {"properties": {"kind": _kind_schema(group), "address": {"pattern": f"^{pattern}$"}}}
        for group, pattern in _address_patterns(kinds)]
    error = _obj({"error": _obj({"code": _STR, "message": _STR}, ["code", "message"])},
                 ["error"])
    channel = _obj({"name": _STR, "type": _STR, "channels": {"type": "array", "items": _STR},
                    "required": {"type": "boolean"}, "state": _STR,
                    "last_error": _nullable(_STR), "counters": {"type": "object"},
                    "loops": {"type": "array", "items": {"type": "object"}},
                    "media": _obj({"pending": {"type": "integer"},
                                   "last_error": _nullable(_STR)}, ["pending", "last_error"])},
                   ["name", "type", "state"])
    non_blank = {"type": "string", "pattern": f"^{NON_BLANK_PATTERN}$"}
    # email and phone are linked to the customer when valid; an invalid one is skipped (and
    # logged by its field name), never a reason to lose the message: any string is accepted.
    linked = {"type": "string", "description": "linked when it is a valid address"}
    api_party = _obj({"id": non_blank, "name": _nullable(_STR),
                      "email": _nullable(linked), "phone": _nullable(linked)}, ["id"],
                     extra=False)
    api_fields = {
        "message_id": {**non_blank, "maxLength": 255},
        # null is taken as absent, as the server does (a schema-valid request is accepted
        # and a schema-violating one refused: both are checked by schemathesis).
        "text": _nullable(_STR), "subject": _nullable(_STR), "html": _nullable(_STR),
        "sent_at": _nullable(_TS), "in_reply_to": _nullable(_STR),
        "context": _nullable({"type": "object"}),
        "attachments": _nullable({"type": "array", "items": {"anyOf": [
            _ref("AttachmentInput"),
            *([_ref("AttachmentUrlInput")] if media_hosts is None or media_hosts else [])]}}),
        "group": _obj({"id": {**non_blank, "maxLength": 255}, "name": _STR}, ["id"],
                      extra=False),
    }
    api_inbound = {"oneOf": [
        _obj({**api_fields, "direction": {"const": "inbound"}, "from": api_party},
             ["message_id", "from"], extra=False),
        _obj({**api_fields, "direction": {"const": "outbound"}, "to": api_party},
             ["message_id", "direction", "to"], extra=False),
    ], "anyOf": [
        {"required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}},
        {"required": ["attachments"],
         "properties": {"attachments": {"type": "array", "minItems": 1}}},
    ], "description": "A customer's message (from), or an echo of a reply typed in the "
                      "other system (direction outbound, to)."}
    reaction = _obj({"emoji": {"type": "string", "minLength": 1, "maxLength": 64},
                     "by": {**non_blank, "maxLength": 255}, "at": _TS},
                    ["emoji", "by"], extra=False)
    api_change = _obj({
        "text": {"type": "string", "minLength": 1}, "edited_at": _TS,
        "withdrawn": {"const": True},
        "reactions": {"type": "array", "items": _ref("Reaction"), "maxItems": 1000},
    }, extra=False)
    api_change["minProperties"] = 1
    api_change["anyOf"] = [{"required": ["text"]}, {"required": ["withdrawn"]},
                           {"required": ["reactions"]}]
    api_status = _obj({
        "message_id": {**non_blank, "maxLength": 255},
        "status": {"enum": ["delivered", "read", "failed"]},
        "error": _obj({"code": _STR, "message": _STR}, extra=False), "at": _TS,
    }, ["message_id", "status"], extra=False)
    api_status["if"] = {"required": ["error"]}
    api_status["then"] = {"properties": {"status": {"const": "failed"}}}
    group = _obj({"id": _STR, "name": _nullable(_STR)}, ["id"])
    hook_auth: list[JSON] = [{"bearer": []}, {"signature": []}]
    account = {"name": "account", "in": "path", "required": True, "schema": _STR}

    paths: JSON = {
        "/healthz": {"get": _op("Liveness", _ok(_obj({"status": _STR})), auth=False)},
        "/readyz": {"get": _op("Readiness: store reachable, required channels running",
                               {**_ok(_obj({"status": _STR})),
                                "503": {"description": "Not ready", "content": {
                                    "application/json": {"schema": _obj({
                                        "status": _STR,
                                        "problems": {"type": "array", "items": _STR}})}}}},
                               auth=False)},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {
            "200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": _STR}}}}}},
        "/v1/openapi.json": {"get": _op("This document (any valid token)",
                                        _ok({"type": "object"}))},
        "/v1/events": {"get": _op(
            "The feed: events after a cursor, oldest first; `wait` long-polls",
            _ok(_obj({"events": {"type": "array", "items": _ref("Event")}, "next": _STR},
                     ["events", "next"])),
            params=[_query("after", {"type": "string", "pattern": "^[0-9]{0,18}$"},
                           "opaque cursor (the `next` of a previous page, or an event seq)"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _query("wait", {"type": "integer", "minimum": 0, "maximum": 60})],
            errors=(400,))},
        "/v1/events/stream": {"get": {
            "summary": "The feed as Server-Sent Events; `id:` is the cursor. Resume with "
                       "Last-Event-ID or ?after=; after=0 replays from the start; neither "
                       "starts with new events. Comment lines are heartbeats.",
            "parameters": [_query("after", {"type": "string", "pattern": "^[0-9]{0,18}$"}),
                           _query("heartbeat", {"type": "number",
                                                "minimum": HEARTBEAT_RANGE[0],
                                                "maximum": HEARTBEAT_RANGE[1]},
                                  "seconds between heartbeats (default 15)"),
                           {"name": "Last-Event-ID", "in": "header", "required": False,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "an endless event stream",
                                  "content": {"text/event-stream": {"schema": _STR}}},
                          **_error_responses(400, 401, 403, 429)}}},
        "/v1/conversations": {"get": _op(
            "List conversations", _ok(_list_of("conversations", _ref("Conversation"))),
            params=[_query("status", {"enum": ["open", "closed"]}),
                    _query("customer_id", _STR), _query("after", _STR),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    *[_query(name, _FILTER, what) for name, what in _CONVERSATION_FILTERS],
                    _query("updated_since", _TS, "changed (a message, a status, a field) "
                                                 "at or after this time")],
            errors=(400, 404))},
        "/v1/conversations/{id}": {
            "get": _op("One conversation", _ok(_ref("Conversation")),
                       params=[_path_id("cnv")], errors=(404,)),
            "patch": _op("Set tags, priority, queue or assignee (one conversation.updated "
                         "event naming what changed; nothing changed, no event)",
                         _ok(_ref("Conversation")), params=[_path_id("cnv")],
                         body=_ref("ConversationPatch"), errors=(400, 404, 413, 422))},
        "/v1/stats": {"get": _op(
            "Support metrics of a period (docs/stats.md)", _ok(_ref("Stats")),
            params=[_query("from", _TS, "inclusive, rounded down to the quarter hour; "
                                        "default: 7 days before to"),
                    _query("to", _TS, "exclusive, rounded down to the quarter hour; "
                                      "default: now (the next quarter hour); not after "
                                      "from: the empty period at from"),
                    _query("group_by", {"enum": ["channel", "account", "agent", "day"]},
                           "day: in [stats] time_zone"),
                    _query("clock", {"enum": ["wall", "business"], "default": "wall"},
                           "the durations' clock: wall (default) or business, only the "
                           "time inside each account's business hours (an account without "
                           "any has count 0)")],
            errors=(400,))},
        "/v1/conversations/{id}/messages": {
            "get": _op("A conversation's messages, oldest first",
                       _ok(_list_of("messages", _ref("Message"))),
                       params=[_path_id("cnv"), _query("after", _STR),
                               _query("limit", {"type": "integer", "minimum": 1,
                                                "maximum": 1000})], errors=(400, 404)),
            "post": _op("Queue an agent's reply on the conversation's channel",
                        _ok(_ref("Message"), "Queued", 202),
                        params=[_path_id("cnv"),
                                {"name": "Idempotency-Key", "in": "header", "required": False,
                                 "schema": {"type": "string", "minLength": 1,
                                            "maxLength": 255}}],
                        body=_ref("Reply"), errors=(400, 404, 409, 413, 422, 503))},
        "/v1/conversations/{id}/close": {"post": _op(
            "Close", _ok(_ref("Conversation")), params=[_path_id("cnv")],
            body=_obj({"agent": _nullable(_ref("Agent"))}, extra=False), errors=(400, 404, 422),
            body_required=False)},
        "/v1/conversations/{id}/reopen": {"post": _op(
            "Reopen", _ok(_ref("Conversation")), params=[_path_id("cnv")],
            body=_obj({"agent": _nullable(_ref("Agent"))}, extra=False), errors=(400, 404, 422),
            body_required=False)},
        "/v1/messages/{id}": {"get": _op("One message", _ok(_ref("Message")),
                                         params=[_path_id("msg")], errors=(404,))},
        "/v1/messages/{id}/raw": {"get": {
            "summary": "The provider payload as received (until retention purges it)",
            "parameters": [_path_id("msg")],
            "responses": {"200": {"description": "raw bytes, in the provider's content type",
                                  "content": {"*/*": {"schema": {}}}},
                          **_error_responses(401, 403, 404)}}},
        "/v1/customers": {"get": _op(
            "Find the customer owning an identity",
            _ok(_obj({"customers": {"type": "array", "items": _ref("Customer")}},
                     ["customers"])),
            params=[{"name": "identity", "in": "query", "required": True,
                     "schema": {"type": "string", "pattern": identity_query_pattern(kinds)},
                     "description": "kind:address, e.g. phone:+821012345678 (e-mail "
                                    "addresses and E.164 numbers; the pattern lists common "
                                    "numbering plans, the server takes any possible "
                                    "number)"}],
            errors=(400, 422))},
        "/v1/customers/{id}": {
            "get": _op("One customer (a merged-away id answers with the survivor)",
                       _ok(_ref("Customer")), params=[_path_id("cus")], errors=(404,)),
            "delete": _op("Erase the customer and everything of theirs (admin)",
                          _ok(_obj({"customer_id": _STR, "conversations": {"type": "integer"},
                                    "messages": {"type": "integer"}})),
                          params=[_path_id("cus")], errors=(404,))},
        "/v1/customers/{id}/identities": {"post": _op(
            "Link an identity", _ok(_ref("Customer")), params=[_path_id("cus")],
            body=_ref("IdentityInput"),
            errors=(400, 404, 409, 422))},
        "/v1/customers/{id}/merge": {"post": _op(
            "Merge another customer into this one", _ok(_ref("Customer")),
            params=[_path_id("cus")],
            body=_obj({"from": {"type": "string", "pattern": f"^cus_{ULID}$"}}, ["from"],
                      extra=False),
            errors=(400, 404, 422))},
        "/v1/customers/{id}/messages": {"post": _op(
            "A proactive message to a customer on a named channel",
            _ok(_ref("Message"), "Queued", 202),
            params=[_path_id("cus"),
                    {"name": "Idempotency-Key", "in": "header", "required": False,
                     "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
            body=_ref("ProactiveMessage"), errors=(400, 404, 409, 413, 422, 503))},
        "/v1/attachments/{id}": {"get": {
            "summary": "The stored bytes", "parameters": [_path_id("att")],
            "responses": {"200": {"description": "the attachment",
                                  "content": {"*/*": {"schema": {}}}},
                          **_error_responses(401, 403, 404)}}},
        "/v1/templates": {"get": _op(
            "Canned replies: names, languages, variables (docs/automation.md)",
            _ok(_obj({"templates": {"type": "array", "items": _obj({
                "name": _STR, "description": _nullable(_STR),
                "languages": {"type": "array", "items": _STR},
                "variables": {"type": "array", "items": _STR},
                "channels": {"type": "array", "items": _STR},
                "text": {"type": "object", "additionalProperties": _STR},
                # By account type: the provider-approved template standing in for it.
                "approved": {"type": "object", "additionalProperties": _STR}},
                ["name", "languages", "variables"])}}, ["templates"])))},
        "/v1/channels": {"get": _op(
            "Each configured account: running, last error, counters",
            _ok(_obj({"channels": {"type": "array", "items": _ref("Channel")}},
                     ["channels"])))},
        "/v1/webhooks/dead-letters": {"get": _op(
            "Webhook deliveries given up (admin)",
            _ok(_obj({"dead_letters": {"type": "array", "items": _obj({
                "id": {"type": "integer"}, "subscription": _STR,
                "attempts": {"type": "integer"}, "last_error": _nullable(_STR),
                "event": _ref("Event")})}}, ["dead_letters"])),
            params=[_query("subscription", _STR),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
            errors=(400,))},
        "/v1/webhooks/dead-letters/replay": {"post": _op(
            "Deliver dead letters again (all, or the given ids)",
            _ok(_obj({"replayed": {"type": "integer"}}, ["replayed"])),
            body=_obj({"ids": {"type": "array", "items": {
                "type": "integer", "minimum": 1, "maximum": MAX_INT64}},
                       "subscription": _STR}, extra=False), errors=(400, 422),
            body_required=False)},
        "/hooks/api/{account}/messages": {"post": {
            "summary": "Generic API channel inbound (Omnirelay-Signature or bearer token)",
            "security": hook_auth, "parameters": [account],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ApiInbound")}}},
            "responses": {
                **_ok(_obj({"message": _ref("Message"), "created": {"type": "boolean"}}),
                      "A repeat delivery: the stored message"),
                **_ok(_obj({"message": _ref("Message"), "created": {"type": "boolean"}}),
                      "Stored", 201),
                **_ok(_obj({"message": {"type": "null"}, "created": {"const": False},
                            "ignored": _STR}),
                      "A group post where the account sets no groups = true: not stored", 202),
                **_error_responses(400, 401, 403, 404, 413, 422, 503)}}},
        "/hooks/api/{account}/messages/{message_id}": {"patch": {
            "summary": "Change a message this account delivered: an edit, reactions (the "
                       "whole current set) or a withdrawal → message.updated",
            "security": hook_auth,
            "parameters": [account, {"name": "message_id", "in": "path", "required": True,
                                     "schema": _STR}],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ApiChange")}}},
            "responses": {
                **_ok(_obj({"message": _ref("Message"),
                            "changed": {"type": "array", "items": _STR}},
                           ["message", "changed"]),
                      "The message; changed is empty when nothing changed (no event)"),
                **_error_responses(400, 401, 403, 404, 413, 422, 503)}}},
        "/hooks/api/{account}/status": {"post": {
            "summary": "A delivery or read receipt, or a failure, for a reply (by the provider "
                       "id the callback answered) → message.status, never backwards",
            "security": hook_auth, "parameters": [account],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ApiStatus")}}},
            "responses": {
                **_ok(_obj({"message": _ref("Message"), "changed": {"type": "boolean"}},
                           ["message", "changed"])),
                **_error_responses(400, 401, 403, 404, 409, 413, 422, 503)}}},
        "/hooks/api/{account}/users/{user_id}": {"delete": {
            "summary": "The user left the other system: their external identity (and the "
                       "name it gave) leaves the customer → customer.updated",
            "security": hook_auth,
            "parameters": [account, {"name": "user_id", "in": "path", "required": True,
                                     "schema": _STR}],
            "responses": {**_ok(_obj({"customer": _ref("Customer")}, ["customer"])),
                          **_error_responses(401, 403, 404, 503)}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "omnirelay", "version": __version__,
                 "description": "Omnichannel message gateway: one normalized feed, replies "
                                "relayed on the right channel. See docs/api.md."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "signature": {"type": "apiKey", "in": "header", "name": "Omnirelay-Signature",
                              "description": "t=<unix>,v1=<hex HMAC-SHA256(secret, "
                                             "\"<t>.<body>\")>"}},
            "schemas": {
                "Party": party, "Attachment": attachment, "AttachmentInput": attachment_in,
                "AttachmentUrlInput": attachment_url_in,
                "Message": message, "Conversation": conversation, "Identity": identity,
                "Customer": customer, "Event": event, "Agent": agent, "Reply": reply,
                "Error": error, "Channel": channel, "ApiInbound": api_inbound,
                "ProactiveMessage": proactive, "IdentityInput": identity_in,
                "Reaction": reaction, "Group": group, "ApiChange": api_change,
                "ApiStatus": api_status, **_stats_schemas(),
            },
        },
    }
