"""Settings of a Naver TalkTalk partner account (chatbot API)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from adapters.base import AdapterConfig
from adapters.line.config import base_url, required_secret
from gateway.configkit import Secret
from gateway.media import InvalidOrigin, parse_origin

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.configkit import Section

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_API = "https://gw.talk.naver.com"
# Naver's published webhook source ranges: navertalk/chatbot-api README.md, "Webhook 요구 사항"
# (commit 35f8126 of 2021-06-23, "ACL 등록을 위한 IP 주소대역 변경"; unchanged as of 2026-12-02).
NAVER_WEBHOOK_RANGES = ("211.249.40.0/27", "211.249.68.0/27", "220.230.168.0/27")
NAVER_RANGES_SOURCE = ("https://github.com/navertalk/chatbot-api#webhook-요구-사항 "
                       "(changed 2021-06-23, checked 2026-12-02)")
# Where TalkTalk keeps the images customers send (public URLs: fetched without credentials).
DEFAULT_MEDIA_HOSTS = ("https://talk.pstatic.net", "https://talkimg.pstatic.net",
                       "https://shop-phinf.pstatic.net", "https://phinf.pstatic.net",
                       "https://shop1.phinf.naver.net")


@dataclass(frozen=True, slots=True)
class NaverTalkConfig(AdapterConfig):
    """``authorization`` is the partner center's send-API token; ``allowed_ips`` is the
    only protection of the hook (TalkTalk signs nothing)."""

    authorization: Secret
    api_base_url: str = DEFAULT_API
    allowed_ips: tuple[Network, ...] = ()
    timeout: float = 10.0
    echo_match_seconds: float = 120.0
    media_hosts: frozenset[str] = frozenset()
    default_region: str = "KR"

    example: ClassVar[Mapping[str, object]] = {"authorization": "ct_example_partner_token"}

    @classmethod
    def parse(cls, section: Section) -> NaverTalkConfig:
        """Read the token, the API base URL, the allowed source ranges and timeouts."""
        token = required_secret(section, "authorization",
                                "the partner center: 개발자도구 > 챗봇 API 설정 > 보내기 API")
        api = base_url(section, "api_base_url", DEFAULT_API)
        ranges = section.str_list("allowed_ips", NAVER_WEBHOOK_RANGES)
        networks: list[Network] = []
        for value in ranges:
            try:
                networks.append(ipaddress.ip_network(value.strip(), strict=False))
            except ValueError:
                section.error("allowed_ips", f"{value!r} is not an IP address or CIDR range",
                              'e.g. allowed_ips = ["211.249.40.0/27"]')
        if not ranges:
            section.error("allowed_ips", "must not be empty: TalkTalk signs nothing, the "
                          "source address is the hook's only check",
                          "leave it out for Naver's published ranges")
        timeout = float(section.get("timeout", (int, float), 10.0))
        if not 0 < timeout <= 120:
            section.error("timeout", "must be between 0 and 120 seconds")
        window = float(section.get("echo_match_seconds", (int, float), 120.0))
        hosts = set()
        for value in section.str_list("media_hosts", DEFAULT_MEDIA_HOSTS):
            try:
                hosts.add(parse_origin(value))
            except InvalidOrigin as exc:
                section.error("media_hosts", f"{value!r} {exc}",
                              'e.g. media_hosts = ["https://talk.pstatic.net"]')
        region = section.get("default_region", str, "KR")
        return cls(token or Secret(""), api, tuple(networks), timeout, max(window, 1.0),
                   frozenset(hosts), region)

    def check_notes(self) -> list[str]:
        """What ``omnirelay check-config`` shows for the account."""
        ranges = ", ".join(str(n) for n in self.allowed_ips)
        default = tuple(str(n) for n in self.allowed_ips) == NAVER_WEBHOOK_RANGES
        source = f" (Naver's published ranges: {NAVER_RANGES_SOURCE})" if default else ""
        return [f"allowed_ips = {ranges}{source}"]
