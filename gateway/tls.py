"""Client TLS contexts: verified, with an optional private CA trusted as well.

Neutral, so every adapter that connects to a server (IMAP, SMTP relays, later provider
APIs behind a private CA) builds its context the same way.
"""

from __future__ import annotations

import ssl

from gateway.errors import AdapterConfigError


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verified TLS, with ``ca_file`` (a private CA or self-signed cert) trusted too.

    Raises :class:`AdapterConfigError` when ``ca_file`` cannot be loaded: a setting to fix,
    not a server to wait for.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        try:
            context.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise AdapterConfigError(f"cannot load ca_file {ca_file}: {exc}") from exc
    return context
