"""Customers: find by identity, read, add an identity, merge, erase."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from adapters.registry import identity_kinds
from gateway.api.auth import require
from gateway.api.params import json_body
from gateway.api.view import gw
from gateway.errors import BadRequest, NotFound, ValidationFailed
from gateway.http import json_response
from normalizer.identity import InvalidIdentity, normalize_party
from normalizer.model import Party

log = structlog.get_logger(__name__)


def _identity(value: Any, region: str) -> Party:
    """A client's ``{"kind", "address"}`` canonicalized as ingest does, so lookups match.

    The kinds are the registered adapters' (a kind no channel brings yet is refused, with
    the list).
    """
    if not isinstance(value, dict) or set(value) - {"kind", "address"}:
        raise ValidationFailed('an identity is {"kind": "…", "address": "…"}')
    kind, address = value.get("kind"), value.get("address")
    kinds = identity_kinds()
    if not isinstance(kind, str) or kind not in kinds:
        raise ValidationFailed(f"kind must be one of {', '.join(kinds)}", kinds=list(kinds))
    if not isinstance(address, str) or not address.strip():
        raise ValidationFailed("address must be a non-empty string")
    try:
        return normalize_party(Party(kind, address), region)
    except InvalidIdentity as exc:
        raise ValidationFailed(str(exc)) from exc


async def find_customers(request: web.Request) -> web.Response:
    """``GET /v1/customers?identity=kind:address``."""
    require(request, "read")
    raw = request.query.get("identity")
    if not raw or ":" not in raw:
        raise BadRequest("identity=kind:address is required")
    kind, address = raw.split(":", 1)
    party = _identity({"kind": kind, "address": address},
                      gw(request).config.store.default_region)
    try:
        customer = await gw(request).store.find_customer(party.kind, party.address)
    except NotFound:
        return json_response({"customers": []})
    return json_response({"customers": [customer]})


async def get_customer(request: web.Request) -> web.Response:
    """``GET /v1/customers/{id}``; a merged-away id answers with the survivor."""
    require(request, "read")
    return json_response(await gw(request).store.get_customer(request.match_info["id"]))


async def add_identity(request: web.Request) -> web.Response:
    """``POST /v1/customers/{id}/identities``."""
    require(request, "write")
    party = _identity(await json_body(request), gw(request).config.store.default_region)
    customer = await gw(request).store.add_identity(request.match_info["id"], party.kind,
                                                    party.address)
    return json_response(customer)


async def merge_customer(request: web.Request) -> web.Response:
    """``POST /v1/customers/{id}/merge`` with ``{"from": "cus_…"}``."""
    require(request, "write")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) != {"from"} or not isinstance(body["from"], str):
        raise ValidationFailed('the body is {"from": "cus_…"}')
    customer = await gw(request).store.merge_customers(request.match_info["id"], body["from"])
    return json_response(customer)


async def erase_customer(request: web.Request) -> web.Response:
    """``DELETE /v1/customers/{id}``: erase everything of the customer (admin)."""
    require(request, "admin")
    result = await gw(request).store.erase_customer(request.match_info["id"])
    gw(request).customers_erased(result.pop("_erased_ids", []))
    log.info("api.customer_erased", customer_id=result["customer_id"],
             messages=result["messages"])
    return json_response(result)
