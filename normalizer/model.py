"""The normalized inbound message that every adapter hands to the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

DeliveryStatus = Literal["queued", "sent", "delivered", "read", "failed"]


@dataclass(frozen=True, slots=True)
class Party:
    """Who sent or received a message: an identity plus a display name."""

    kind: str
    address: str
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the contract's ``from``/``to`` object."""
        return {"kind": self.kind, "address": self.address, "name": self.name}


@dataclass(frozen=True, slots=True)
class Group:
    """A group chat a message was posted in (a Telegram group, a LINE room)."""

    id: str
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the contract's ``conversation.group`` object."""
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True, slots=True)
class Reaction:
    """One person's reaction to a message."""

    emoji: str
    by: str  # the reacting identity's address (a customer id on the provider, or the page)
    at: datetime | None = None  # when it was given; None: when omnirelay learns of it


@dataclass(frozen=True, slots=True)
class MessageChange:
    """What a provider says changed about a message it delivered earlier.

    ``text`` is an edit (the new text; ``edited_at`` is set). ``reactions`` is the whole
    current set (the API channel, LINE); ``reactions_of`` is one person's current reactions
    (``("u-42", ("👍",))``; an empty tuple removes theirs: Meta and Telegram report it this
    way). ``withdrawn`` marks a message the sender took back (unsent, deleted). ``at`` is
    when the provider says the change happened: an edit older than the stored one is stale.
    """

    text: str | None = None
    reactions: tuple[Reaction, ...] | None = None
    reactions_of: tuple[str, tuple[str, ...]] | None = None
    withdrawn: bool = False
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SenderAuthentication:
    """What a trusted receiving server said about an e-mail's sender (docs/email.md,
    "Spoofed senders"): the ``verdict`` omnirelay draws from it, the ``dmarc``, ``spf`` and
    ``dkim`` results as the header gave them, and ``by``, the server (authserv-id) whose
    header was read; all None but the verdict (``none``) when no trusted header was there.
    """

    verdict: Literal["pass", "fail", "none"]
    dmarc: str | None = None
    spf: str | None = None
    dkim: str | None = None
    by: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the message's ``provider.authentication`` object."""
        return {"verdict": self.verdict, "dmarc": self.dmarc, "spf": self.spf,
                "dkim": self.dkim, "by": self.by}


@dataclass(frozen=True, slots=True)
class AttachmentData:
    """An attachment's bytes as received, before the gateway stores them."""

    filename: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteAttachment:
    """An attachment the provider serves by URL, fetched after the message is committed.

    ``source`` names the media source the adapter registered (``ctx.media``): the origins
    the URL may be on, the hosts a redirect may go to and the credentials the fetch may
    send (only to those origins). ``filename`` and ``content_type`` are hints; without
    them the URL's last path segment and the answer's ``Content-Type`` are used.
    """

    url: str
    source: str
    filename: str | None = None
    content_type: str | None = None


@dataclass(slots=True)
class InboundMessage:
    """One customer message, decoded and normalized, not yet stored.

    ``provider_message_id`` is the dedupe key within (channel, account). ``reply_refs``
    are provider message ids this message answers (e-mail In-Reply-To/References, a
    WhatsApp context id); the first one found in the store threads the message.
    ``linked_identities`` are further identities of the *sender* (an e-mail address given
    through the API channel) that link to an existing customer. ``remote_attachments`` are
    fetched after the commit (gateway/fetcher.py) and announced with ``message.updated``.

    ``direction = "outbound"`` makes it an echo: a message the account sent, seen on the
    provider's side (``sender`` is the account, ``recipient`` the customer). An echo of one
    of omnirelay's own sends is matched by its provider id, or, for a provider without ids,
    by recipient and text within ``match_window`` seconds, and adds nothing; any other echo
    is stored as an outbound message without an agent. ``group`` is set for a post in a
    group chat (stored only where the account sets ``groups = true``). ``error`` flags a
    message the channel received but could not read (``{"code": "unparsable", "message":
    …}``): it becomes the stored message's top-level ``error``. ``authentication`` is set
    for e-mail of an account with ``trusted_authserv_ids`` and becomes
    ``provider.authentication``.
    """

    channel: str
    account: str
    provider_message_id: str
    sender: Party
    text: str
    recipient: Party | None = None
    subject: str | None = None
    html: str | None = None
    attachments: list[AttachmentData] = field(default_factory=list)
    sent_at: datetime | None = None
    provider_thread_id: str | None = None
    reply_refs: list[str] = field(default_factory=list)
    linked_identities: list[Party] = field(default_factory=list)
    automatic: str | None = None
    content: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    raw: bytes | None = None
    raw_content_type: str = "application/octet-stream"
    reply_token: str | None = None
    remote_attachments: list[RemoteAttachment] = field(default_factory=list)
    direction: Literal["inbound", "outbound"] = "inbound"
    match_window: float | None = None
    group: Group | None = None
    error: dict[str, str] | None = None
    authentication: SenderAuthentication | None = None
