"""``media_hosts``: origins parsed once, exactly matched; anything else is refused."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigErrors
from gateway.media import InvalidOrigin, origin_of, parse_origin
from normalizer.api import parse_api_inbound
from normalizer.errors import InvalidInput

HOSTS = frozenset({"https://files.crm.example", "http://127.0.0.1:9000"})


@pytest.mark.parametrize(("configured", "origin"), [
    ("https://files.crm.example", "https://files.crm.example"),
    ("files.crm.example", "https://files.crm.example"),  # a bare host means https
    ("HTTPS://Files.CRM.example:443/", "https://files.crm.example"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("http://[::1]:9000", "http://[::1]:9000"),
])
def test_configured_origins_are_normalized(configured: str, origin: str) -> None:
    assert parse_origin(configured) == origin


@pytest.mark.parametrize("configured", [
    "https://files.crm.example/uploads", "ftp://files.crm.example", "https://u:p@host",
    "https://host?x=1", "https://", "http://host:99999"])
def test_anything_but_an_origin_is_a_config_error(configured: str) -> None:
    with pytest.raises(InvalidOrigin):
        parse_origin(configured)
    toml = f'[[channels]]\ntype = "api"\nname = "crm"\nmedia_hosts = ["{configured}"]\n'
    with pytest.raises(ConfigErrors) as caught:
        parse_config(toml, environ={})
    assert "media_hosts" in str(caught.value)


@pytest.mark.parametrize(("url", "accepted"), [
    ("https://files.crm.example/q/1.pdf", True),
    ("https://FILES.crm.example:443/q/1.pdf?sig=abc", True),
    ("http://127.0.0.1:9000/a", True),
    ("http://files.crm.example/q/1.pdf", False),  # another scheme is another origin
    ("https://files.crm.example:8443/q/1.pdf", False),
    ("https://evil.example/?https://files.crm.example/", False),
    ("https://files.crm.example.evil.example/q", False),
    ("https://files.crm.example@evil.example/q", False),
    ("http://127.0.0.1:9001/a", False),
    ("file:///etc/passwd", False),
])
def test_an_api_attachment_url_must_be_on_a_media_host(url: str, accepted: bool) -> None:
    body = {"message_id": "m1", "from": {"id": "u1"},
            "attachments": [{"url": url, "filename": "q.pdf"}]}
    if not accepted:
        with pytest.raises(InvalidInput):
            parse_api_inbound(body, "crm", media_hosts=HOSTS, media_source="api:crm")
        return
    inbound = parse_api_inbound(body, "crm", media_hosts=HOSTS, media_source="api:crm")
    (ref,) = inbound.remote_attachments
    assert (ref.url, ref.source, ref.filename, ref.content_type) == (url, "api:crm", "q.pdf",
                                                                     None)
    assert inbound.attachments == []
    assert origin_of(url) in HOSTS


def test_without_media_hosts_every_url_is_refused() -> None:
    body = {"message_id": "m1", "from": {"id": "u1"}, "text": "x",
            "attachments": [{"url": "https://files.crm.example/a", "filename": "a"}]}
    with pytest.raises(InvalidInput, match="media_hosts"):
        parse_api_inbound(body, "crm")


def test_a_bad_inline_attachment_beside_a_url_is_named_by_its_place() -> None:
    body = {"message_id": "m1", "from": {"id": "u1"}, "attachments": [
        {"url": "https://files.crm.example/a", "filename": "a"},
        {"filename": "b.txt", "content_base64": "not base64!"}]}
    with pytest.raises(InvalidInput, match=r"attachments\[1\]\.content_base64"):
        parse_api_inbound(body, "crm", media_hosts=HOSTS, media_source="api:crm")
    body["attachments"][1]["content_base64"] = "aGk="
    inbound = parse_api_inbound(body, "crm", media_hosts=HOSTS, media_source="api:crm")
    assert [a.data for a in inbound.attachments] == [b"hi"]
    assert [r.url for r in inbound.remote_attachments] == ["https://files.crm.example/a"]
