"""The running daemon against its own OpenAPI document (schemathesis, all checks)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import aiohttp
import orjson

from gateway.api.openapi import openapi_document
from tests.conftest import TOKEN, Daemon, base_config, free_port
from tests.helpers import post_inbound, unique

ROOT = Path(__file__).resolve().parents[2]


def test_docs_copy_of_the_openapi_document_is_current() -> None:
    on_disk = orjson.loads((ROOT / "docs" / "openapi.json").read_bytes())
    assert on_disk == openapi_document(), "run: omnirelay openapi > docs/openapi.json"


async def test_every_route_is_documented(daemon: Daemon) -> None:
    from adapters.registry import route_families
    from gateway.api.app import create_app

    class Stub:
        config = type("C", (), {"server": type("S", (), {"max_body_bytes": 1024,
                                                         "trusted_proxies": ()})()})()
        adapters: dict[tuple[str, str], object] = {}

    app = create_app(Stub())  # type: ignore[arg-type]
    documented = openapi_document()["paths"]
    for resource in app.router.resources():
        path = resource.canonical
        if path.startswith("/hooks/"):
            continue  # provider hooks are per adapter; the API channel's is documented
        if path.endswith("/{tail}") and path.removesuffix("/{tail}") in route_families():
            continue  # a route family's pages and sockets (web chat: docs/webchat.md)
        assert path in documented, f"{path} is served but not in the OpenAPI document"


async def test_running_daemon_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    port = free_port()
    extra = """
        [[channels]]
        type = "api"
        name = "crm"
        secret = "crm-secret-0123456789"
        """
    daemon = Daemon(tmp_path, base_config(tmp_path / "data", port, free_port(), extra=extra),
                    port)
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            for i in range(3):  # some data, so ids and cursors exist
                await post_inbound(http, daemon.url, {"message_id": unique("m"),
                                                      "from": {"id": f"c{i}"}, "text": "hi"})
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.st_hooks",
               "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "st"), "run", f"{daemon.url}/v1/openapi.json",
            # All checks, positive_data_acceptance included: a request the schema calls
            # valid is never refused with 400/422 (the schema states the real rules).
            "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all",
            "--exclude-path", "/v1/events/stream",  # endless by design; tested in e2e
            "--max-examples", "8", "--request-timeout", "10", "--workers", "1",
            "--seed", "1", "--no-color",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
        report = out.decode(errors="replace")
        assert proc.returncode == 0, report[-6000:]
        assert "Internal Server Error" not in daemon.logs()
    finally:
        assert await daemon.stop() == 0, daemon.logs()


def test_requests_the_server_refuses_are_invalid_in_the_schema() -> None:
    """The cases an outside schemathesis run found: schema-valid, yet refused."""
    from jsonschema import Draft202012Validator

    doc = openapi_document()
    [identity] = doc["paths"]["/v1/customers"]["get"]["parameters"]
    pattern = re.compile(identity["schema"]["pattern"])
    for refused in ("email:0", "phone:0", "phone:+1234", "external: ", "email:a b@c"):
        assert not pattern.search(refused), refused
    for accepted in ("email:kim@shop.example", "phone:+821012345678", "external:crm-7"):
        assert pattern.search(accepted), accepted

    identity_in = Draft202012Validator(doc["components"]["schemas"]["IdentityInput"])
    assert not identity_in.is_valid({"kind": "phone", "address": "0"})
    assert not identity_in.is_valid({"kind": "email", "address": "0"})
    assert not identity_in.is_valid({"kind": "external", "address": "  "})
    assert identity_in.is_valid({"kind": "phone", "address": "+821012345678"})
    assert identity_in.is_valid({"kind": "external", "address": "12345"})

    replay = doc["paths"]["/v1/webhooks/dead-letters/replay"]["post"]["requestBody"]
    replay_body = Draft202012Validator(replay["content"]["application/json"]["schema"])
    assert not replay_body.is_valid({"ids": [2**63]})
    assert not replay_body.is_valid({"ids": [0]})
    assert replay_body.is_valid({"ids": [2**63 - 1]})

    [heartbeat] = [p for p in doc["paths"]["/v1/events/stream"]["get"]["parameters"]
                   if p["name"] == "heartbeat"]
    assert heartbeat["schema"]["minimum"] == 1


async def test_served_document_names_the_daemons_channels_and_accounts(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    async with http.get(f"{daemon.url}/v1/openapi.json",
                        headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        served = await resp.json()

    registry = Registry().with_resource("urn:omnirelay", Resource.from_contents(
        {**served, "$schema": "https://json-schema.org/draft/2020-12/schema"}))
    reply = Draft202012Validator({"$ref": "urn:omnirelay#/components/schemas/Reply"},
                                 registry=registry)
    assert reply.is_valid({"text": "hi"})
    assert reply.is_valid({"text": "hi", "channel": "email"})
    assert reply.is_valid({"text": "hi", "channel": "api", "account": "crm"})
    assert not reply.is_valid({"text": "hi", "channel": "api"})  # two accounts: name one
    assert not reply.is_valid({"text": "hi", "channel": "sms"})  # not configured here
    assert not reply.is_valid({"template": "order_shipped"})  # nothing renders templates
