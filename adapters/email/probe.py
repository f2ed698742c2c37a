"""``check-config --online`` for an e-mail account: sign in to each server, change nothing.

An IMAP mailbox is opened with EXAMINE (read-only: no flag moves, nothing imported); the
SMTP relay gets EHLO, STARTTLS or TLS as configured, AUTH and QUIT, never MAIL FROM. Both
sign in through the code the daemon uses (:class:`~adapters.email.imap.ImapSession`, the
relay's XOAUTH2 exchange), so a probe that passes is the daemon's sign-in that works.
"""

from __future__ import annotations

import ssl

import aioimaplib
import aiosmtplib

from adapters.email.config import ImapSettings, ServerSettings
from adapters.email.imap import ImapFailure, ImapSession, describe
from adapters.email.outbound import smtp_tls
from gateway.errors import AdapterAuthError, AdapterConfigError, AdapterError, AdapterNotReady
from gateway.oauth2 import AccessTokens

_SECURITY = {"tls": "TLS", "starttls": "STARTTLS", "none": "no TLS"}


async def probe_mailbox(settings: ImapSettings, tokens: AccessTokens | None) -> str:
    """Sign in and EXAMINE the folder: "signed in to host:port as user, INBOX has 3 messages"."""
    where = f"{settings.host}:{settings.port}"
    session = ImapSession(settings, tokens)
    try:
        await session.open()
        count = await session.examine(settings.folder)
    except AdapterAuthError as exc:  # the password, or the token (or its endpoint's answer)
        raise AdapterAuthError(f"IMAP {where}: {exc.message.removeprefix('IMAP ')}",
                               channel_type="email") from exc
    except AdapterConfigError as exc:  # a rejected certificate, no STARTTLS, no such folder
        raise AdapterConfigError(f"IMAP {where}: {exc.message.removeprefix('IMAP ')}",
                                 channel_type="email") from exc
    except (ImapFailure, OSError, TimeoutError, aioimaplib.AioImapException) as exc:
        raise AdapterNotReady(f"IMAP {where}: {describe(exc)}", channel_type="email") from exc
    finally:
        await session.close()
    how = " with XOAUTH2" if settings.oauth2 is not None else ""
    user = f" as {settings.username}" if settings.username else ""
    return (f"IMAP signed in{how} to {where}{user} ({_SECURITY[settings.security]}), "
            f"{settings.folder} has {count} message{'' if count == 1 else 's'}")


async def probe_relay(settings: ServerSettings, tokens: AccessTokens | None) -> str:
    """EHLO, STARTTLS/TLS, AUTH, QUIT: "SMTP signed in to host:port as user"."""
    where = f"{settings.host}:{settings.port}"
    token = await tokens.token() if tokens is not None else None  # before connecting
    client = aiosmtplib.SMTP(hostname=settings.host, port=settings.port,
                             use_tls=settings.security == "tls",
                             start_tls=settings.security == "starttls",
                             tls_context=smtp_tls(settings), timeout=settings.timeout)
    try:
        async with client:
            if client.last_ehlo_response is None:
                await client.ehlo()
            if settings.username is None:
                signed = "connected to"
            elif token is not None:
                assert tokens is not None
                if "xoauth2" not in client.server_auth_methods:
                    raise AdapterConfigError(f"SMTP {where} does not offer AUTH XOAUTH2",
                                             channel_type="email")
                try:
                    await client.auth_xoauth2(settings.username, token)
                except aiosmtplib.SMTPAuthenticationError:  # revoked early: one fresh one
                    await client.auth_xoauth2(settings.username,
                                              await tokens.token(rejected=token))
                signed = "signed in with XOAUTH2 to"
            else:
                assert settings.password is not None
                await client.login(settings.username, settings.password.reveal())
                signed = "signed in to"
    except AdapterError:
        raise
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise AdapterAuthError(f"SMTP {where} refused the sign-in of {settings.username}: "
                               f"{exc.code} {exc.message}", channel_type="email") from exc
    except aiosmtplib.SMTPNotSupported as exc:
        raise AdapterConfigError(f"SMTP {where}: {exc.message}", channel_type="email") from exc
    except ssl.SSLCertVerificationError as exc:
        raise AdapterNotReady(f"SMTP {where}: server certificate rejected: "
                              f"{exc.verify_message}", channel_type="email") from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as exc:
        cause = exc.__cause__  # aiosmtplib wraps the socket's error in its own words
        reason = describe(cause if isinstance(cause, OSError) else exc)
        raise AdapterNotReady(f"cannot reach SMTP {where}: {reason}",
                              channel_type="email") from exc
    user = f" as {settings.username}" if settings.username else ""
    return f"SMTP {signed} {where}{user} ({_SECURITY[settings.security]})"
