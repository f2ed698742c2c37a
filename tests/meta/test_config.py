"""A Meta account's config: which networks it serves, the Graph URL, and clear errors."""

from __future__ import annotations

import pytest

from adapters.meta import MetaConfig
from gateway.config import parse_config
from gateway.errors import ConfigErrors

SECRETS = 'app_secret = "s"\nverify_token = "v"\n'


def meta(body: str) -> MetaConfig:
    config = parse_config(f'[[channels]]\ntype = "meta"\nname = "m"\n{SECRETS}{body}',
                          environ={})
    options = config.channels[0].options
    assert isinstance(options, MetaConfig)
    return options


def errors(body: str) -> dict[str, str]:
    with pytest.raises(ConfigErrors) as caught:
        meta(body)
    return {(e.key or "").removeprefix("channels[0]."): e.message for e in caught.value.errors}


def test_each_network_is_on_when_its_id_is_set() -> None:
    config = meta('page_id = "1"\npage_access_token = "t"\ninstagram_account_id = 2\n'
                  'whatsapp_phone_number_id = "3"\nwhatsapp_access_token = "w"\n')
    assert config.networks == {"messenger", "instagram", "whatsapp"}
    assert config.instagram_account_id == "2"
    assert meta('whatsapp_phone_number_id = "3"\nwhatsapp_access_token = "w"\n'
                ).networks == {"whatsapp"}


@pytest.mark.parametrize(("body", "key"), [
    ('page_id = "1"\n', "page_access_token"),
    ('page_access_token = "t"\n', "page_id"),
    ('instagram_account_id = "2"\n', "page_id"),
    ('whatsapp_phone_number_id = "3"\n', "whatsapp_access_token"),
    ('whatsapp_access_token = "w"\n', "whatsapp_phone_number_id"),
    ("", "page_id"),
    ('page_id = "shop"\npage_access_token = "t"\n', "page_id"),
])
def test_a_network_missing_half_its_settings_is_an_error_naming_the_key(body: str,
                                                                        key: str) -> None:
    assert key in errors(body)


@pytest.mark.parametrize(("body", "url"), [
    ("", "https://graph.facebook.com/v21.0"),
    ('graph_base_url = "https://graph.facebook.com/v19.0/"\n', "https://graph.facebook.com/v19.0"),
    ('graph_base_url = "http://127.0.0.1:9/proxy"\ngraph_api_version = "v22.0"\n',
     "http://127.0.0.1:9/proxy/v22.0"),
])
def test_the_graph_url_carries_the_api_version(body: str, url: str) -> None:
    assert meta(f'page_id = "1"\npage_access_token = "t"\n{body}').graph_url == url


def test_two_versions_or_a_bad_url_are_errors() -> None:
    base = 'page_id = "1"\npage_access_token = "t"\n'
    assert "graph_api_version" in errors(
        base + 'graph_base_url = "https://g.example/v19.0"\ngraph_api_version = "v21.0"\n')
    assert "graph_base_url" in errors(base + 'graph_base_url = "ftp://g.example"\n')
    assert "graph_api_version" in errors(base + 'graph_api_version = "21"\n')
    assert "media_hosts" in errors(base + 'media_hosts = ["https://cdn.example/path"]\n')
