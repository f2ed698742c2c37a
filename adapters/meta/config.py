"""Settings of a Meta account: one app's webhook, and the Page, Instagram account and
WhatsApp number it answers for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from adapters.base import AdapterConfig
from gateway.configkit import Secret
from gateway.media import InvalidOrigin, parse_origin

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.configkit import Section

DEFAULT_GRAPH_BASE_URL = "https://graph.facebook.com"
DEFAULT_GRAPH_VERSION = "v21.0"
# Where Messenger and Instagram attachment URLs point (signed links, fetched without
# credentials): Facebook's CDN has one host per region, hence the subdomain patterns.
DEFAULT_MEDIA_HOSTS = ("https://*.fbcdn.net", "https://*.fbsbx.com", "https://*.cdninstagram.com")
# Where a WhatsApp media id's lookup points (fetched with the WhatsApp token).
WHATSAPP_MEDIA_HOSTS = ("https://lookaside.fbsbx.com",)
_VERSION = re.compile(r"v\d+\.\d+")


@dataclass(frozen=True, slots=True)
class MetaConfig(AdapterConfig):
    """``app_secret`` checks the webhook's signature, ``verify_token`` answers its
    verification; each network is on when its id is set."""

    app_secret: Secret
    verify_token: Secret
    page_id: str | None = None
    page_access_token: Secret | None = None
    instagram_account_id: str | None = None
    whatsapp_phone_number_id: str | None = None
    whatsapp_access_token: Secret | None = None
    graph_url: str = f"{DEFAULT_GRAPH_BASE_URL}/{DEFAULT_GRAPH_VERSION}"  # with the version
    human_agent: bool = False  # the Page may use the HUMAN_AGENT tag (7 days)
    whatsapp_template_language: str = "en_US"
    media_hosts: frozenset[str] = frozenset(DEFAULT_MEDIA_HOSTS)
    timeout: float = 20.0

    example: ClassVar[Mapping[str, object]] = {
        "app_secret": "app-secret", "verify_token": "verify-token",
        "page_id": "100000000000001", "page_access_token": "page-token"}

    @property
    def networks(self) -> frozenset[str]:
        """The channels this account is configured for."""
        found = set()
        if self.page_id:
            found.add("messenger")
        if self.instagram_account_id:
            found.add("instagram")
        if self.whatsapp_phone_number_id:
            found.add("whatsapp")
        return frozenset(found)

    @classmethod
    def parse(cls, section: Section) -> MetaConfig:
        """Read the secrets, the network ids, the Graph URL and the window options."""
        app_secret = _required_secret(section, "app_secret",
                                      "the app's secret (App settings > Basic)")
        verify_token = _required_secret(section, "verify_token",
                                        "the token you type into the app's webhook settings")
        page_id = _id(section, "page_id")
        page_token = section.secret("page_access_token")
        instagram = _id(section, "instagram_account_id")
        phone_id = _id(section, "whatsapp_phone_number_id")
        wa_token = section.secret("whatsapp_access_token")
        if page_id and page_token is None:
            section.error("page_access_token", "is required with page_id (or "
                          "page_access_token_file / _env / _credential)",
                          "a Page access token with pages_messaging")
        if page_token is not None and not page_id:
            section.error("page_id", "is required with page_access_token",
                          "the Facebook Page's id")
        if instagram and not page_id:
            section.error("page_id", "is required with instagram_account_id",
                          "Instagram DMs are sent through the Page linked to the account")
        if phone_id and wa_token is None:
            section.error("whatsapp_access_token", "is required with whatsapp_phone_number_id"
                          " (or whatsapp_access_token_file / _env / _credential)",
                          "a system user token with whatsapp_business_messaging")
        if wa_token is not None and not phone_id:
            section.error("whatsapp_phone_number_id", "is required with whatsapp_access_token")
        if not (page_id or instagram or phone_id or page_token or wa_token):
            section.error("page_id", "is required (or instagram_account_id / "
                          "whatsapp_phone_number_id): the account answers for nothing",
                          "set page_id with page_access_token, and/or "
                          "whatsapp_phone_number_id with whatsapp_access_token")
        graph_url = _graph_url(section)
        human_agent = section.get("human_agent", bool, False)
        language = section.get("whatsapp_template_language", str, "en_US")
        timeout = float(section.get("timeout", (int, float), 20.0))
        if timeout <= 0:
            section.error("timeout", "must be more than 0 seconds")
        return cls(app_secret or Secret(""), verify_token or Secret(""), page_id, page_token,
                   instagram, phone_id, wa_token, graph_url, human_agent, language,
                   _media_hosts(section), timeout)


def _required_secret(section: Section, name: str, hint: str) -> Secret | None:
    """A required secret, reported under its own name when none of its forms is given."""
    forms = (name, f"{name}_file", f"{name}_env", f"{name}_credential")
    if not any(form in section.data for form in forms):
        section.used.update(forms)
        section.error(name, f"is required (as {name}_file, {name}_env or "
                      f"{name}_credential)", hint)
        return None
    return section.secret(name)


def _id(section: Section, name: str) -> str | None:
    """A Graph id: digits, written as a string or a number."""
    value = section.get(name, (str, int), None)
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit():
        section.error(name, "must be a numeric Graph id", f'{name} = "1234567890"')
        return None
    return text


def _graph_url(section: Section) -> str:
    """``graph_base_url`` with the API version: the version in the URL, else
    ``graph_api_version``."""
    base = section.get("graph_base_url", str, DEFAULT_GRAPH_BASE_URL).rstrip("/")
    version = section.get("graph_api_version", str, None)
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        section.error("graph_base_url", "must be an http(s) URL",
                      f'e.g. graph_base_url = "{DEFAULT_GRAPH_BASE_URL}"')
        return f"{DEFAULT_GRAPH_BASE_URL}/{DEFAULT_GRAPH_VERSION}"
    in_url = base.rsplit("/", 1)[-1] if _VERSION.fullmatch(base.rsplit("/", 1)[-1]) else None
    if version is not None and not _VERSION.fullmatch(version):
        section.error("graph_api_version", "must look like v21.0")
        version = None
    if in_url and version and version != in_url:
        section.error("graph_api_version", f"differs from the version in graph_base_url "
                      f"({in_url})", "give the version in one place")
    if in_url:
        return base
    return f"{base}/{version or DEFAULT_GRAPH_VERSION}"


def _media_hosts(section: Section) -> frozenset[str]:
    """``media_hosts``: where Messenger/Instagram attachment URLs may be fetched from."""
    if "media_hosts" not in section.data:
        section.used.add("media_hosts")
        return frozenset(DEFAULT_MEDIA_HOSTS)
    origins = set()
    for value in section.str_list("media_hosts"):
        try:
            origins.add(parse_origin(value))
        except InvalidOrigin as exc:
            section.error("media_hosts", f"{value!r} {exc}",
                          'e.g. media_hosts = ["https://*.fbcdn.net"]')
    return frozenset(origins)
