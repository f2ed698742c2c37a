"""Where provider media may be fetched from: origins, redirect hosts, credentials.

An adapter whose provider serves attachments by URL (Twilio media, the Graph API, LINE's
content API, a CRM's file host) registers a :class:`MediaSource` under a name in
``ctx.media`` and hands over :class:`~normalizer.model.RemoteAttachment` references naming
it. The fetcher (gateway/fetcher.py) holds every fetch to its source: the URL must be on
one of the source's origins, a redirect is followed only to a host the source declares,
and credentials go only to the source's origins, never after a redirect to another host.
Nothing here does I/O, so the normalizers use the origin helpers too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from normalizer.urls import origin_of

CredentialHeaders = Callable[[], Awaitable[Mapping[str, str]]]
"""Returns the headers that authenticate a fetch (``Authorization: …``); called per fetch,
so a provider's short-lived token can be refreshed."""

ResolveUrl = Callable[[str], Awaitable[str]]
"""Turns a stored reference into the URL to GET, at fetch time: for a provider whose file
URL needs a lookup first (WhatsApp Cloud's media id → download URL) or carries the
credential in its path (Telegram's ``getFile`` and ``/file/bot<token>/<path>``), so the
credential is never stored with the message.
Raises :class:`ResolveFailed`; the URL it returns must be on the source's origins."""


class ResolveFailed(Exception):
    """A reference the provider could not resolve now (``retry``: a rate limit, a 5xx) or at
    all (a WhatsApp media id expired). ``code`` names the failure on the attachment
    (default ``media_unavailable`` / ``media_refused``)."""

    def __init__(self, message: str, *, retry: bool, retry_after: float | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.retry_after = retry_after
        self.code = code



class InvalidOrigin(ValueError):
    """A configured origin that is not ``http(s)://host[:port]`` or a bare host."""


def parse_origin(value: str) -> str:
    """A configured origin in the form :func:`origin_of` returns; a bare host means https.

    Raises InvalidOrigin for a path, query, user info or another scheme: an origin names
    a host, and a prefix match on paths would be easy to get wrong.
    """
    text = value.strip()
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidOrigin("must be an origin (scheme://host[:port]) without a path")
    origin = origin_of(text)
    if origin is None:
        raise InvalidOrigin("must be http(s)://host[:port] or a bare host")
    return origin


@dataclass(frozen=True, slots=True)
class MediaSource:
    """One provider's media: where its URLs may point and what a fetch may send.

    ``origins``: a URL must be on one of them (checked when the reference is made and again
    before the fetch). ``redirect_origins``: the only hosts a redirect is followed to (a
    CDN the provider documents); every other redirect fails the fetch. ``credentials``:
    headers sent only to ``origins`` and only before any redirect to another origin.
    ``resolve``: see :data:`ResolveUrl` (the reference and the resolved URL are both
    checked against ``origins``, so a lookup on the API host may answer a URL on a
    documented media host; errors name the reference, never the resolved URL).
    """

    origins: frozenset[str]
    redirect_origins: frozenset[str] = frozenset()
    credentials: CredentialHeaders | None = None
    resolve: ResolveUrl | None = None

    @classmethod
    def of(cls, origins: Iterable[str], *, redirect_origins: Iterable[str] = (),
           credentials: CredentialHeaders | None = None,
           resolve: ResolveUrl | None = None) -> MediaSource:
        """A source from configured origins (each passed through :func:`parse_origin`)."""
        return cls(frozenset(parse_origin(o) for o in origins),
                   frozenset(parse_origin(o) for o in redirect_origins), credentials, resolve)

    def allows(self, url: str) -> bool:
        """Whether ``url`` is on one of the source's origins. An origin written
        ``https://*.fbcdn.net`` takes every subdomain (a CDN with one host per region)."""
        origin = origin_of(url)
        if origin is None:
            return False
        if origin in self.origins:
            return True
        scheme, _, host = origin.partition("://")
        return any(o.startswith(f"{scheme}://*.") and host.endswith(o[len(scheme) + 4:])
                   for o in self.origins)


class MediaSources:
    """The daemon's registry of media sources, by name (``"<type>:<account>"``, optionally
    with ``/<part>`` for a provider with several media hosts)."""

    def __init__(self) -> None:
        self._sources: dict[str, MediaSource] = {}

    def register(self, name: str, source: MediaSource) -> None:
        """Register (or replace, after a reload) the source ``name``."""
        self._sources[name] = source

    def unregister(self, name: str) -> None:
        """Forget ``name`` (its pending fetches wait until it is registered again)."""
        self._sources.pop(name, None)

    def get(self, name: str) -> MediaSource | None:
        """The source registered as ``name``, if any."""
        return self._sources.get(name)


def source_name(adapter_type: str, account: str) -> str:
    """The usual name of an account's media source (health groups fetches by it)."""
    return f"{adapter_type}:{account}"
