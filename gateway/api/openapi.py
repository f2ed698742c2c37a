"""The OpenAPI 3.1 description of the HTTP API, served at ``/v1/openapi.json``.

Built in Python so that shared schemas are written once; ``omnirelay openapi`` prints it
and ``docs/openapi.json`` is a copy that a test keeps in step.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway import __version__

JSON = dict[str, Any]
IDENTITY_KINDS = ("email", "external", "instagram", "line", "messenger", "navertalk", "phone",
                  "telegram", "webchat", "whatsapp")


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: JSON) -> JSON:
    return {"anyOf": [schema, {"type": "null"}]}


_STR = {"type": "string"}
_TS = {"type": "string", "format": "date-time"}


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
            413: "Body too large", 422: "Invalid content", 503: "Store unavailable"}
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


def _path_id(prefix: str) -> JSON:
    return {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string"}, "description": f"a {prefix}_… id"}


def _query(name: str, schema: JSON, description: str = "") -> JSON:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


@cache
def openapi_document() -> JSON:
    """Return the OpenAPI document (a dict ready for JSON)."""
    party = _obj({"kind": _STR, "address": _STR, "name": _nullable(_STR)},
                 ["kind", "address"])
    attachment = _obj({"id": _STR, "filename": _STR, "content_type": _STR,
                       "size": {"type": "integer"}, "sha256": _STR, "url": _STR},
                      ["id", "filename", "content_type", "size", "sha256", "url"])
    message = _obj({
        "id": _STR, "conversation_id": _STR, "customer_id": _STR, "channel": _STR,
        "account": _STR, "direction": {"enum": ["inbound", "outbound"]},
        "from": _nullable(_ref("Party")), "to": _nullable(_ref("Party")),
        "subject": _nullable(_STR), "text": _STR, "html": _nullable(_STR),
        "attachments": {"type": "array", "items": _ref("Attachment")},
        "in_reply_to": _nullable(_STR),
        "provider": _obj({"message_id": _nullable(_STR), "thread_id": _nullable(_STR)}),
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
        "context": {"type": "object"},
        "group": _nullable(_ref("Group")),
    }, ["id", "customer_id", "channel", "account", "status", "opened_at"])
    identity = _obj({"kind": _STR, "address": _STR,
                     "channels": {"type": "array", "items": _STR}}, ["kind", "address"])
    customer = _obj({
        "id": _STR, "name": _nullable(_STR), "merged_into": _nullable(_STR),
        "identities": {"type": "array", "items": _ref("Identity")}, "created_at": _TS,
        "conversations": {"type": "array", "items": _ref("Conversation")},
    }, ["id", "identities", "created_at"])
    event = _obj({"id": _STR, "seq": _STR, "type": _STR, "created_at": _TS,
                  "data": {"type": "object"}}, ["id", "seq", "type", "created_at", "data"])
    attachment_in = _obj({"filename": {"type": "string", "minLength": 1},
                          "content_type": _STR, "content_base64": _STR},
                         ["filename", "content_base64"], extra=False)
    agent = _obj({"id": _STR, "name": _nullable(_STR)}, ["id"], extra=False)
    reply = _obj({
        "text": _STR, "html": _STR, "subject": _STR,
        "attachments": {"type": "array", "items": _ref("AttachmentInput")},
        "agent": _nullable(_ref("Agent")), "channel": _STR, "account": _STR,
        "template": {"type": "string", "minLength": 1}, "variables": {"type": "object"},
    }, extra=False)
    # A message needs text, attachments or a template.
    reply["anyOf"] = [
        {"required": ["text"], "properties": {"text": {"minLength": 1}}},
        {"required": ["attachments"], "properties": {"attachments": {"minItems": 1}}},
        {"required": ["template"]},
    ]
    proactive = {"allOf": [_ref("Reply"), {"required": ["channel"],
                                           "properties": {"channel": {"minLength": 1}}}]}
    identity_in = _obj({"kind": {"enum": list(IDENTITY_KINDS)},
                        "address": {"type": "string", "minLength": 1}},
                       ["kind", "address"], extra=False)
    error = _obj({"error": _obj({"code": _STR, "message": _STR}, ["code", "message"])},
                 ["error"])
    channel = _obj({"name": _STR, "type": _STR, "channels": {"type": "array", "items": _STR},
                    "required": {"type": "boolean"}, "state": _STR,
                    "last_error": _nullable(_STR), "counters": {"type": "object"}},
                   ["name", "type", "state"])
    api_party = _obj({"id": {"type": "string", "minLength": 1}, "name": _STR, "email": _STR,
                      "phone": _STR}, ["id"], extra=False)
    api_fields = {
        "message_id": {"type": "string", "minLength": 1, "maxLength": 255},
        "text": _STR, "subject": _STR, "html": _STR, "sent_at": _TS, "in_reply_to": _STR,
        "context": {"type": "object"},
        "attachments": {"type": "array", "items": _ref("AttachmentInput")},
        "group": _obj({"id": {"type": "string", "minLength": 1, "maxLength": 255},
                       "name": _STR}, ["id"], extra=False),
    }
    api_inbound = {"oneOf": [
        _obj({**api_fields, "direction": {"const": "inbound"}, "from": api_party},
             ["message_id", "from"], extra=False),
        _obj({**api_fields, "direction": {"const": "outbound"}, "to": api_party},
             ["message_id", "direction", "to"], extra=False),
    ], "description": "A customer's message (from), or an echo of a reply typed in the "
                      "other system (direction outbound, to)."}
    reaction = _obj({"emoji": {"type": "string", "minLength": 1, "maxLength": 64},
                     "by": {"type": "string", "minLength": 1, "maxLength": 255}, "at": _TS},
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
        "message_id": {"type": "string", "minLength": 1, "maxLength": 255},
        "status": {"enum": ["delivered", "read", "failed"]},
        "error": _obj({"code": _STR, "message": _STR}, extra=False), "at": _TS,
    }, ["message_id", "status"], extra=False)
    group = _obj({"id": _STR, "name": _nullable(_STR)}, ["id"])
    hook_auth = [{"bearer": []}, {"signature": []}]
    account = {"name": "account", "in": "path", "required": True, "schema": _STR}

    list_of = lambda key, item: _obj({key: {"type": "array", "items": item},  # noqa: E731
                                      "next": _nullable(_STR)}, [key])
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
                           _query("heartbeat", {"type": "number", "minimum": 0.05,
                                                "maximum": 60}, "seconds between heartbeats"),
                           {"name": "Last-Event-ID", "in": "header", "required": False,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "an endless event stream",
                                  "content": {"text/event-stream": {"schema": _STR}}},
                          **_error_responses(400, 401, 403)}}},
        "/v1/conversations": {"get": _op(
            "List conversations", _ok(list_of("conversations", _ref("Conversation"))),
            params=[_query("status", {"enum": ["open", "closed"]}),
                    _query("customer_id", _STR), _query("after", _STR),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
            errors=(400, 404))},
        "/v1/conversations/{id}": {"get": _op("One conversation", _ok(_ref("Conversation")),
                                              params=[_path_id("cnv")], errors=(404,))},
        "/v1/conversations/{id}/messages": {
            "get": _op("A conversation's messages, oldest first",
                       _ok(list_of("messages", _ref("Message"))),
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
                     "schema": {"type": "string",
                                "pattern": f"^({'|'.join(IDENTITY_KINDS)}):.+$"},
                     "description": "kind:address, e.g. phone:+821012345678"}],
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
            params=[_path_id("cus")], body=_obj({"from": _STR}, ["from"], extra=False),
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
            body=_obj({"ids": {"type": "array", "items": {"type": "integer"}},
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
                **_error_responses(400, 401, 403, 404, 413, 422, 503)}}},
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
                "Message": message, "Conversation": conversation, "Identity": identity,
                "Customer": customer, "Event": event, "Agent": agent, "Reply": reply,
                "Error": error, "Channel": channel, "ApiInbound": api_inbound,
                "ProactiveMessage": proactive, "IdentityInput": identity_in,
                "Reaction": reaction, "Group": group, "ApiChange": api_change,
                "ApiStatus": api_status,
            },
        },
    }
