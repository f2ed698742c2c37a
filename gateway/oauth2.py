"""OAuth2 access tokens for servers that no longer take passwords (IMAP/SMTP XOAUTH2).

Two grants of RFC 6749: ``refresh_token`` (delegated: a person consented once, e.g. for
Microsoft 365 or Gmail, and the refresh token stands for them) and ``client_credentials``
(app-only: Microsoft 365 with an application permission on the mailbox). The token is
cached and fetched again a while before it expires; callers that need one at the same
moment share one request.

The client authenticates with a client secret, or with a certificate (RFC 7523
``private_key_jwt``, what Entra ID asks of app-only access where secrets are forbidden):
each token request carries a fresh JWT signed with the certificate's private key, whose
header names the certificate by its SHA-256 thumbprint (``x5t#S256``).

Microsoft rotates refresh tokens: every answer may carry a new one. The newest is kept in
memory and in the store (an adapter checkpoint, so it survives a restart, follows the data
to PostgreSQL, and several instances share it), keyed by a hash of the configured token it
descends from. A configured token that changes (the operator consented again) starts a new
lineage, so the kept one is used only while it is newer than what the config holds. The
configured file is never written (it may be read-only, a systemd credential).

Errors are typed for the caller's supervisor: an OAuth error answer (``invalid_grant``,
``invalid_client``…) is :class:`OAuth2Rejected`, an ``AdapterAuthError`` (retried slowly,
shown like a wrong password; repeated without a request for a while, so a queue of replies
does not hammer the endpoint); a network error, a timeout or a 5xx is
:class:`OAuth2Unavailable`, an ``AdapterNotReady`` (retried with the caller's backoff).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from gateway.backoff import Backoff
from gateway.errors import AdapterAuthError, AdapterNotReady, StoreError
from gateway.http import redact_url, redact_urls_in, remote_error_excerpt

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from gateway.client_certificate import ClientCertificate
    from gateway.configkit import Secret, Section
    from gateway.store.base import CheckpointStore

log = structlog.get_logger(__name__)

REFRESH_MARGIN = 300.0
"""Seconds before expiry a token is replaced (or half its lifetime, when that is shorter)."""
DEFAULT_LIFETIME = 3600.0
"""Assumed when an answer has no ``expires_in`` (RFC 6749 only recommends it)."""
REJECTED_BACKOFF = Backoff(base=30.0, cap=900.0)
"""After an OAuth error answer: how long the same error is repeated without a request."""
_LOOPBACK_NAMES = ("localhost",)
ASSERTION_ALGORITHMS = ("PS256", "RS256")
"""PS256 is what Entra ID documents now; RS256 for token endpoints that lack PSS."""
CERTIFICATE_WARNING_DAYS = 30
"""A certificate credential this close to its end is warned about (check-config, start)."""
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""RFC 7523 §2.2: the client authenticates with a signed JWT (``client_assertion``)."""
@dataclass(frozen=True, slots=True)
class OAuth2Settings:
    """Where and how to get an access token; ``refresh_token`` None: client credentials.

    The client authenticates with ``client_secret``, ``certificate`` or (a public client)
    neither.
    """

    token_url: str
    client_id: str
    client_secret: Secret | None = None
    refresh_token: Secret | None = None
    scope: str | None = None
    certificate: ClientCertificate | None = None

    @property
    def grant(self) -> str:
        """The grant type this configuration uses."""
        return "refresh_token" if self.refresh_token is not None else "client_credentials"


def parse_oauth2(section: Section) -> OAuth2Settings:
    """Read an ``oauth2 = { token_url = …, client_id = …, … }`` table (errors recorded)."""
    token_url = section.get("token_url", str, "", required=True,
                            hint='e.g. "https://login.microsoftonline.com/<tenant>'
                                 '/oauth2/v2.0/token"')
    if token_url and not _acceptable_url(token_url):
        section.error("token_url", "must be an https:// URL (http:// only to a loopback "
                      "address)", "the token endpoint receives the client secret and the "
                      "refresh token: they must not cross a network in clear")
    client_id = section.get("client_id", str, "", required=True,
                            hint="the application (client) id of the app registration")
    client_secret = section.secret("client_secret")
    refresh_token = section.secret("refresh_token")
    private_key = section.secret("private_key")
    certificate_file = section.get("certificate_file", str, None)
    algorithm = section.get("assertion_algorithm", str, "PS256")
    if algorithm not in ASSERTION_ALGORITHMS:
        section.error("assertion_algorithm", f"must be {' or '.join(ASSERTION_ALGORITHMS)}",
                      "PS256 (Microsoft's current advice) unless the token endpoint "
                      "knows only RS256")
    certificate = None
    gave_secret = _source(section, "client_secret")
    gave_key = _source(section, "private_key")
    if gave_key is not None or certificate_file is not None:
        if gave_secret is not None:
            section.error(gave_key or "certificate_file",
                          "give either a client secret or a certificate, not both",
                          f"the app signs in with one credential: delete {gave_secret} to "
                          "use the certificate, or private_key_* and certificate_file to "
                          "keep the secret")
        elif gave_key is None:
            section.error("private_key_file", "is required with certificate_file",
                          "the PEM private key the certificate was made with, e.g. "
                          'private_key_credential = "m365-app-key"')
        elif private_key is not None and section.ctx.resolve_secrets:
            # Imported here: only a certificate credential needs PyJWT and cryptography.
            from gateway.client_certificate import read_client_certificate
            certificate = read_client_certificate(section, gave_key, private_key,
                                                  certificate_file, algorithm)
    elif refresh_token is None and gave_secret is None:
        section.error("client_secret_file", "is required without refresh_token "
                      "(client credentials: the app signs in as itself)",
                      "give refresh_token_file for a delegated sign-in, or the app's "
                      "client_secret_file or private_key_file and certificate_file for "
                      "app-only access")
    scope = section.get("scope", str, None) or None
    return OAuth2Settings(token_url, client_id, client_secret, refresh_token, scope,
                          certificate)


def _source(section: Section, name: str) -> str | None:
    """The key a secret ``name`` is given with (``name_file``…), if any."""
    return next((k for k in (name, f"{name}_file", f"{name}_env", f"{name}_credential")
                 if k in section.data), None)


def _acceptable_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    if not host:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and is_loopback(host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (where a token may go without TLS)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class OAuth2Rejected(AdapterAuthError):
    """The authorization server refused to issue a token (an OAuth error answer)."""

    code = "oauth2_rejected"

    def __init__(self, message: str, *, error: str, description: str | None) -> None:
        super().__init__(message)
        self.error = error
        self.description = description


class OAuth2Unavailable(AdapterNotReady):
    """The token endpoint could not be reached or answered 5xx / garbage: try again later."""

    code = "oauth2_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float  # monotonic
    expires_at: float  # monotonic


class AccessTokens:
    """Hands out a current access token for one :class:`OAuth2Settings`.

    ``token()`` returns the cached one while it is fresh. A server that refused a token
    (IMAP ``NO``, SMTP ``535``) passes it back as ``rejected``: a newer one, if another
    caller got it meanwhile, or else a fresh one is fetched — once, however many callers
    ask at the same moment.
    """

    def __init__(self, settings: OAuth2Settings, *, http: aiohttp.ClientSession,
                 store: CheckpointStore | None = None, timeout: float = 30.0,
                 logger: structlog.typing.FilteringBoundLogger | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock  # tests pass a fake one
        self.wall_clock = wall_clock  # a client assertion's iat/nbf/exp
        self.http = http
        self.store = store
        self.timeout = timeout
        # No key may sound like a secret ("token_url"): the log masks such values.
        self.log = (logger or log).bind(endpoint=redact_url(settings.token_url),
                                        client_id=settings.client_id,
                                        grant=settings.grant)
        if settings.certificate is not None:
            # The thumbprint the Entra portal lists, to tell which certificate was used.
            self.log = self.log.bind(certificate=settings.certificate.sha1_thumbprint)
            left = settings.certificate.not_after - datetime.now(UTC)
            if left.days < CERTIFICATE_WARNING_DAYS:
                # Said when the token source is made (a mailbox's at start, a relay's at
                # its first send); config.warning says it at each start and reload.
                self.log.warning("oauth2.certificate_expiring", days_left=max(left.days, 0),
                                 not_after=settings.certificate.not_after.isoformat())
        self._key: rsa.RSAPrivateKey | None = None  # the certificate's, loaded once
        self.refreshes = 0  # requests that got a token
        self._token: _Token | None = None
        self._rotated: str | None = None  # the newest refresh token, when it was rotated
        self._lock = asyncio.Lock()
        self._attempts = 0
        self._failure: OAuth2Rejected | OAuth2Unavailable | None = None
        self._rejections = 0
        self._quiet_until = 0.0

    @property
    def lineage_key(self) -> str | None:
        """The checkpoint holding the newest refresh token (None for client credentials).

        A hash of the endpoint, the client and the configured refresh token: another
        configured token (a new consent) is another key, so an older kept one is ignored.
        """
        s = self.settings
        if s.refresh_token is None:
            return None
        digest = hashlib.sha256("\0".join((s.token_url, s.client_id,
                                           s.refresh_token.reveal())).encode()).hexdigest()
        return f"oauth2:{digest[:32]}"

    async def token(self, *, rejected: str | None = None) -> str:
        """A current access token; raises :class:`OAuth2Rejected` / :class:`OAuth2Unavailable`.

        A refresh that fails while the cached token is still valid (in its last minutes)
        returns that one: a blip at the endpoint costs nothing until the token runs out.
        """
        current = self._token
        if current is not None and current.value != rejected and \
                self.clock() < current.refresh_at:
            return current.value
        attempts = self._attempts
        async with self._lock:
            current = self._token
            usable = current.value if current is not None and current.value != rejected \
                and self.clock() < current.expires_at else None
            if self._attempts != attempts:
                # Someone asked while we waited: their outcome is ours.
                if usable is not None:
                    return usable
                if self._failure is not None:
                    raise self._failure
            if isinstance(self._failure, OAuth2Rejected) and \
                    self.clock() < self._quiet_until:
                if usable is not None:
                    return usable
                raise self._failure
            try:
                token = await self._request()
            except (OAuth2Rejected, OAuth2Unavailable) as exc:
                self._failure = exc
                if isinstance(exc, OAuth2Rejected):
                    self._rejections += 1
                    self._quiet_until = self.clock() + REJECTED_BACKOFF.delay(
                        self._rejections)
                if usable is not None:
                    return usable
                raise
            finally:
                self._attempts += 1
            self._failure = None
            self._rejections = 0
            self._token = token
            return token.value

    def forget(self) -> None:
        """Drop the cached access token (the next ``token()`` fetches one)."""
        self._token = None

    async def _refresh_token(self) -> str:
        """The newest refresh token: kept in the store, else in memory, else configured."""
        assert self.settings.refresh_token is not None
        key = self.lineage_key
        if self.store is not None and key is not None:
            try:
                kept = await self.store.get_checkpoint(key)
            except StoreError as exc:
                self.log.warning("oauth2.kept_token_unreadable", error=exc.message)
                kept = None
            if kept:
                try:
                    value = orjson.loads(kept)["refresh_token"]
                    if isinstance(value, str) and value:
                        return value
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.log.warning("oauth2.kept_token_unreadable", error="not a token record")
        return self._rotated or self.settings.refresh_token.reveal()

    async def _keep(self, refresh_token: str) -> None:
        """Remember a rotated refresh token, in memory and in the store."""
        self._rotated = refresh_token
        key = self.lineage_key
        if self.store is None or key is None:
            return
        record = orjson.dumps({"refresh_token": refresh_token,
                               "updated_at": datetime.now(UTC).isoformat()}).decode()
        try:
            await self.store.set_checkpoint(key, record)
        except StoreError as exc:
            # The access token is good; only a restart before the store is back would
            # fall back to the configured refresh token.
            self.log.warning("oauth2.rotated_token_not_kept", error=exc.message)

    async def _request(self) -> _Token:
        s = self.settings
        form = {"grant_type": s.grant, "client_id": s.client_id}
        used_refresh: str | None = None
        if s.refresh_token is not None:
            used_refresh = await self._refresh_token()
            form["refresh_token"] = used_refresh
        if s.client_secret is not None:
            form["client_secret"] = s.client_secret.reveal()
        if s.certificate is not None:
            # A fresh assertion each time: its jti may be used once, its exp is minutes away.
            if self._key is None:
                self._key = s.certificate.load_key()
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = s.certificate.assertion(
                client_id=s.client_id, audience=s.token_url, now=self.wall_clock(),
                key=self._key)
        if s.scope:
            form["scope"] = s.scope
        started = self.clock()
        try:
            async with self.http.post(
                    s.token_url, data=form, headers={"Accept": "application/json"},
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                status = response.status
                body = await response.content.read(64 * 1024)
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(
                f"token endpoint unreachable: {redact_urls_in(_describe(exc))}") from exc
        answer = _json(body)
        if status == 200 and isinstance(answer, dict) and \
                isinstance(answer.get("access_token"), str) and answer["access_token"]:
            return await self._accepted(answer, started, used_refresh)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str) and \
                400 <= status < 500:
            raise self._rejected(answer["error"], answer.get("error_description"), status)
        if status == 429 or status >= 500:
            raise self._unavailable(remote_error_excerpt(status, body),
                                    retry_after=_seconds(retry_after))
        raise self._unavailable(f"unexpected answer from the token endpoint: "
                                f"{remote_error_excerpt(status, body)}")

    async def _accepted(self, answer: dict[str, Any], started: float,
                        used_refresh: str | None) -> _Token:
        lifetime = answer.get("expires_in")
        try:
            seconds = float(lifetime) if lifetime is not None else DEFAULT_LIFETIME
        except (TypeError, ValueError):
            seconds = DEFAULT_LIFETIME
        seconds = max(seconds, 0.0)
        rotated = answer.get("refresh_token")
        is_new = isinstance(rotated, str) and bool(rotated) and rotated != used_refresh
        if is_new and used_refresh is not None:
            assert isinstance(rotated, str)
            await self._keep(rotated)
        self.refreshes += 1
        self.log.info("oauth2.token_refreshed", expires_in=round(seconds),
                      rotated=is_new and used_refresh is not None)
        refresh_at = started + max(seconds - REFRESH_MARGIN, seconds / 2)
        return _Token(answer["access_token"], refresh_at, started + seconds)

    def _rejected(self, error: str, description: object, status: int) -> OAuth2Rejected:
        # Both come from a remote host: shown only as a short, cleaned excerpt.
        error = re.sub(r"[^A-Za-z0-9_.\-]", "", error)[:64] or "error"
        text = None
        if isinstance(description, str) and description.strip():
            text = remote_error_excerpt(status, description).removeprefix(f"HTTP {status}: ")
        self.log.warning("oauth2.failed", error=error, description=text, status=status)
        # Worded so the log's secret masking ("token: …") leaves it readable.
        message = f"OAuth2 sign-in failed: {error}"
        if text:
            message += f" ({text})"
        if error == "invalid_grant" and self.settings.refresh_token is not None:
            message += "; the refresh token no longer works, sign in again for a new one"
        elif error in ("invalid_client", "unauthorized_client"):
            certificate = self.settings.certificate
            if certificate is None:
                message += "; check client_id and the client secret"
            else:
                message += (f"; check client_id, that the certificate (SHA-1 thumbprint "
                            f"{certificate.sha1_thumbprint}) is uploaded to the app "
                            "registration, and this machine's clock")
                if certificate.not_after <= datetime.now(UTC):
                    message += f"; the certificate expired on {certificate.not_after:%Y-%m-%d}"
        return OAuth2Rejected(message, error=error, description=text)

    def _unavailable(self, reason: str, *,
                     retry_after: float | None = None) -> OAuth2Unavailable:
        self.log.warning("oauth2.unavailable", error=reason)
        return OAuth2Unavailable(f"OAuth2 token request failed: {reason}",
                                 retry_after=retry_after)


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
