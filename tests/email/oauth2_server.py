"""A local OAuth2 authorization server for the XOAUTH2 tests (aiohttp on 127.0.0.1).

It speaks the token endpoint's documented wire format (RFC 6749 §4.4, §6: a form POST,
JSON answers, ``{"error": "invalid_grant", "error_description": …}`` with 400), rotates
refresh tokens the way Microsoft does (and can revoke the used one, to prove the newest is
used), and answers Dovecot's token introspection (RFC 7662: ``active`` and ``username``)
for the access tokens it issued, refusing expired and revoked ones. Knobs: ``expires_in``,
``fail_next(status)``, ``hang_next()``, ``revoke(token)``, ``expire_access_tokens()``.

Certificate credentials (RFC 7523 ``private_key_jwt``) are checked as Entra ID checks them:
the assertion's ``x5t#S256`` header must name a certificate registered for the client, its
signature must verify with that certificate's public key, ``aud`` must be this endpoint,
``iss`` and ``sub`` the client, ``nbf``..``exp`` must hold the server's time (``clock_skew``
moves that), the certificate must not have expired, and a ``jti`` is taken once. Only then
is a token issued.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def x5t_s256(certificate: x509.Certificate) -> str:
    """The ``x5t#S256`` of a certificate: base64url SHA-256 of its DER, unpadded."""
    digest = certificate.fingerprint(hashes.SHA256())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    """One request to the token endpoint, as received."""

    form: dict[str, str]
    status: int = 0


@dataclass
class Issued:
    """An access token the server handed out."""

    user: str
    expires_at: float
    revoked: bool = False


@dataclass
class OAuth2Server:
    """The authorization server; see the module docstring."""

    port: int = 0
    client_id: str = "omnirelay-test-client"
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_hex(8))
    expires_in: int = 3600
    rotate: bool = False
    revoke_used: bool = False
    requests: list[TokenRequest] = field(default_factory=list)
    introspections: list[tuple[str, bool]] = field(default_factory=list)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    app_mailboxes: dict[str, str] = field(default_factory=dict)  # client id -> mailbox
    certificates: dict[str, list[x509.Certificate]] = field(default_factory=dict)
    assertions: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    used_jtis: set[str] = field(default_factory=set)
    clock_skew: float = 0.0  # seconds the server's clock is ahead of this machine's
    access_tokens: dict[str, Issued] = field(default_factory=dict)
    failures: list[int] = field(default_factory=list)  # statuses to answer; 0: hang
    requested: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The token endpoint."""
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def introspection_url(self) -> str:
        """Where Dovecot asks whether a token is good."""
        return f"http://127.0.0.1:{self.port}/introspect"

    def consent(self, user: str) -> str:
        """A person consented: a refresh token that stands for ``user``."""
        token = "rt-" + secrets.token_hex(16)
        self.refresh_tokens[token] = user
        return token

    def grant_app(self, mailbox: str) -> tuple[str, str]:
        """An app registration with access to ``mailbox``: (client id, client secret)."""
        client_id = "app-" + secrets.token_hex(4)
        self.app_mailboxes[client_id] = mailbox
        return client_id, self.client_secret

    def register_certificate(self, client_id: str, certificate: x509.Certificate) -> None:
        """Upload a certificate to an app registration (Certificates & secrets)."""
        self.certificates.setdefault(client_id, []).append(certificate)

    def grant_app_certificate(self, mailbox: str, certificate: x509.Certificate) -> str:
        """An app registration with access to ``mailbox`` and only a certificate: its id."""
        client_id = "app-" + secrets.token_hex(4)
        self.app_mailboxes[client_id] = mailbox
        self.register_certificate(client_id, certificate)
        return client_id

    def revoke(self, token: str) -> None:
        """A refresh or access token stops working (a password change, an admin)."""
        self.refresh_tokens.pop(token, None)
        if token in self.access_tokens:
            self.access_tokens[token].revoked = True

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is refused from now on."""
        for issued in self.access_tokens.values():
            issued.expires_at = 0.0

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` token requests with ``status`` (e.g. 500)."""
        self.failures += [status] * times

    def hang_next(self, times: int = 1) -> None:
        """Never answer the next ``times`` token requests (a timeout for the client)."""
        self.failures += [0] * times

    def grants(self) -> list[TokenRequest]:
        """Token requests that got a token."""
        return [r for r in self.requests if r.status == 200]

    def active(self, token: str, user: str | None = None) -> bool:
        """Whether ``token`` is a live access token (for ``user``, when given)."""
        issued = self.access_tokens.get(token)
        return issued is not None and not issued.revoked and \
            time.time() < issued.expires_at and (user is None or issued.user == user)

    async def wait_requests(self, count: int, timeout: float = 15.0) -> list[TokenRequest]:
        """Until ``count`` token requests arrived."""
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.requested.clear()
                await self.requested.wait()
        return self.requests

    async def token(self, request: web.Request) -> web.Response:
        """The token endpoint (RFC 6749 §4.4 client credentials, §6 refresh)."""
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        record = TokenRequest(form)
        self.requests.append(record)
        self.requested.set()
        if self.failures:
            status = self.failures.pop(0)
            if status == 0:
                await self.stopping.wait()  # the client's deadline passes first
            record.status = status
            return web.Response(status=status, text="<html>upstream trouble</html>",
                                content_type="text/html")
        answer, status = self._grant(form)
        record.status = status
        return web.json_response(answer, status=status,
                                 headers={"Cache-Control": "no-store"})

    def _grant(self, form: dict[str, str]) -> tuple[dict[str, object], int]:
        grant = form.get("grant_type")
        client = form.get("client_id", "")
        known = client == self.client_id or client in self.app_mailboxes
        if "client_assertion" in form or "client_assertion_type" in form:
            refused = self._check_assertion(form, client)
            if refused is not None:
                return refused
        elif not known or form.get("client_secret") != self.client_secret:
            return {"error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided."}, 401
        if grant == "refresh_token":
            presented = form.get("refresh_token", "")
            user = self.refresh_tokens.get(presented)
            if user is None:
                return {"error": "invalid_grant",
                        "error_description": "AADSTS70000: The provided grant has expired "
                        "or was revoked."}, 400
            answer = self._issue(user, form.get("scope"))
            if self.rotate:
                answer["refresh_token"] = self.consent(user)
                if self.revoke_used:
                    self.refresh_tokens.pop(presented, None)
            return answer, 200
        if grant == "client_credentials" and client in self.app_mailboxes:
            return self._issue(self.app_mailboxes[client], form.get("scope")), 200
        return {"error": "unsupported_grant_type"}, 400

    def _check_assertion(self, form: dict[str, str],
                         client: str) -> tuple[dict[str, object], int] | None:
        """None when the client assertion is good (and its jti now used); else the answer."""
        def refuse(description: str, status: int = 401,
                   error: str = "invalid_client") -> tuple[dict[str, object], int]:
            return {"error": error, "error_description": description}, status

        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return refuse("client_assertion_type must be " + ASSERTION_TYPE, 400,
                          "invalid_request")
        if "client_secret" in form:
            return refuse("Only one client credential may be presented.", 400,
                          "invalid_request")
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError:
            return refuse("AADSTS50027: JWT token is invalid or malformed.")
        thumbprint = header.get("x5t#S256")
        certificate = next((c for c in self.certificates.get(client, [])
                            if x5t_s256(c) == thumbprint), None)
        if certificate is None:
            return refuse("AADSTS700027: Client assertion contains an invalid signature. "
                          "[Reason - The key was not found., Thumbprint of key used by "
                          f"client: '{thumbprint}']")
        if certificate.not_valid_after_utc.timestamp() <= time.time() + self.clock_skew:
            return refuse("The certificate of the client assertion has expired.")
        try:
            claims = jwt.decode(
                assertion, certificate.public_key(), algorithms=["PS256", "RS256"],
                audience=self.url, issuer=client,
                options={"require": ["aud", "iss", "sub", "jti", "nbf", "exp"],
                         "verify_exp": False, "verify_nbf": False, "verify_iat": False})
        except jwt.InvalidSignatureError:
            return refuse("AADSTS700027: Client assertion contains an invalid signature. "
                          "[Reason - The provided signature value did not match the "
                          "expected signature value.]")
        except jwt.InvalidTokenError as exc:
            return refuse(f"Client assertion is invalid: {exc}")
        if claims["sub"] != client:
            return refuse("Client assertion subject is not the client.")
        now = time.time() + self.clock_skew
        if not (claims["nbf"] - 60 <= now < claims["exp"]) or claims["exp"] - now > 600:
            return refuse("AADSTS700024: Client assertion is not within its valid time "
                          f"range. Current time: {now:.0f}, assertion valid from "
                          f"{claims['nbf']}, expiry time of assertion {claims['exp']}.")
        if claims["jti"] in self.used_jtis:
            return refuse("The client assertion was already used (its jti was seen before).")
        self.used_jtis.add(claims["jti"])
        self.assertions.append((header, claims))
        return None

    def _issue(self, user: str, scope: str | None) -> dict[str, object]:
        token = "at-" + secrets.token_hex(16)
        self.access_tokens[token] = Issued(user, time.time() + self.expires_in)
        return {"token_type": "Bearer", "access_token": token, "expires_in": self.expires_in,
                "scope": scope or ""}

    async def introspect(self, request: web.Request) -> web.Response:
        """RFC 7662 for Dovecot's oauth2 passdb (``introspection_mode = post``)."""
        token = str((await request.post()).get("token", ""))
        good = self.active(token)
        self.introspections.append((token, good))
        if not good:
            return web.json_response({"active": False})
        return web.json_response({"active": True, "username": self.access_tokens[token].user})

    async def start(self) -> None:
        """Listen on 127.0.0.1."""
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_post("/introspect", self.introspect)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        server = getattr(site, "_server", None)
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening (a hung request ends now)."""
        self.stopping.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
