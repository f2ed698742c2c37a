"""The store's business rules as pure functions over plain values.

Every backend asks the same questions (is this message already stored, which conversation
does it join, where does a reply go); the answers live here, tested without a database
(tests/store/test_rules.py), so a second backend reuses them instead of copying them. The
write jobs in ``gateway/store/jobs/`` do the lookups and call these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from gateway.store.base import JSON, Route

T = TypeVar("T")

# (channel, account, provider message id): one provider message is stored once.
DedupeKey = tuple[str, str, str]


# ---------------------------------------------------------------- inbound


def dedupe_key(channel: str, account: str, provider_message_id: str) -> DedupeKey:
    """The key under which a provider message is stored once.

    The account is part of it: two accounts of one channel (two shops' numbers) may see
    the same provider id for different messages. Threading, by contrast, looks a reference
    up on the whole channel (see :func:`threading_reference`): a customer may answer on
    one account a message that went out on another.
    """
    return (channel, account, provider_message_id)


def threading_reference(refs: Iterable[str], find: Callable[[str], T | None]
                        ) -> tuple[str, T] | None:
    """The first reference (in the message's order) that names a stored message.

    ``refs`` come most specific first (e-mail: In-Reply-To, then References newest first);
    ``find`` looks one up on the message's channel. Later references are not looked up.
    """
    for ref in refs:
        found = find(ref)
        if found is not None:
            return ref, found
    return None


def reply_token_conversation_id(token: str) -> str:
    """The conversation a reply token names (``support+c-<token>@shop``: the id's random
    part, lower-cased in the address)."""
    return "cnv_" + token.upper()


GroupKey = tuple[str, str]
"""A group chat as the store knows it: (account, the provider's group id). Two accounts
(two bots in one Telegram group) keep separate conversations of the same group."""


def may_join(conversation_customer_id: str, sender_customer_id: str,
             conversation_group: GroupKey | None = None,
             message_group: GroupKey | None = None) -> bool:
    """Whether a threaded message may join that conversation.

    A 1:1 message joins only its own customer's 1:1 conversation: a thread reference into
    another customer's conversation (a forwarded mail, a colleague replying) must not leak
    it, and one into a group chat (even one the sender opened) must not drag a private
    message into the group. A post in a group chat joins that group's conversation,
    whoever opened it (each poster is a customer of their own), and no other.
    """
    if conversation_group is not None or message_group is not None:
        return conversation_group == message_group
    return conversation_customer_id == sender_customer_id


def reopen_window_start(now: datetime, window_days: float) -> datetime:
    """The earliest ``closed_at`` that a customer writing ``now`` still reopens."""
    return now - timedelta(days=window_days)


def joins_latest(status: str, closed_at: datetime | None, window_start: datetime) -> bool:
    """Whether an unthreaded message joins the customer's latest conversation.

    An open conversation is joined however long it has been quiet. A closed one is
    reopened when it was closed at or after ``window_start`` (see
    :func:`reopen_window_start`): the window counts from when the agent closed it, not
    from the last message, as help desks do (Zendesk's solved ticket closes for good a
    set number of days after it was solved; a reply after that starts a follow-up).
    """
    if status == "open":
        return True
    return closed_at is not None and closed_at >= window_start


# ---------------------------------------------------------------- receipts

_STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3}


def receipt_moves(current: str, status: str) -> bool:
    """Whether a receipt saying ``status`` moves a message that is ``current``.

    Never backwards: queued < sent < delivered < read. ``failed`` ends a message that was
    not yet delivered (Twilio's undelivered/failed and Meta's failed follow ``sent``); a
    failure reported after delivery or reading is stale. Twilio documents that status
    callbacks may arrive out of order, so a later ``delivered`` or ``read`` proves a
    failed message arrived after all and moves it on.
    """
    if status == current:
        return False
    if status == "failed":
        return current in ("queued", "sent")
    if current == "failed":
        return status in ("delivered", "read")
    return _STATUS_RANK.get(status, -1) > _STATUS_RANK.get(current, 99)


# ---------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class LastInbound:
    """The conversation's latest inbound message, where a reply goes by default."""

    message_id: str
    channel: str
    account: str
    sender: JSON  # the message's ``from``


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    """Where a reply goes: the route (channel, account, our sender identity), the
    recipient when the rule knows it (None: the customer's newest identity reachable on
    the route's channel, see :func:`choose_recipient`) and the message it answers."""

    route: Route
    recipient: JSON | None = None
    in_reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class RouteRefused:
    """Why no route was chosen; ``accounts`` lists the candidates when the request must
    name one of them."""

    reason: str
    channel: str | None = None
    accounts: tuple[str, ...] = ()


def choose_reply_route(*, channel: str | None, account: str | None,
                       last_inbound: LastInbound | None,
                       conversation: tuple[str, str] | None,
                       routes: Sequence[Route]) -> ReplyRoute | RouteRefused:
    """Choose the channel, account and recipient of a reply or proactive message.

    ``channel``/``account``: what the request named (either may be None);
    ``conversation``: the (channel, account) of the conversation replied to, None for a
    proactive message; ``routes``: the configured accounts that can send.

    - No channel named, a conversation: the channel, account and sender of its latest
      inbound message (it answers that message), else the conversation's own.
    - A channel named: that channel. Its account is the one named; else its only account;
      else, when the conversation's latest inbound message came on that channel, that
      message's account; else the request is refused, naming the accounts to choose from.
    """
    recipient: JSON | None = None
    in_reply_to: str | None = None
    if channel is None and conversation is not None:
        if last_inbound is not None:
            channel, account = last_inbound.channel, last_inbound.account
            recipient, in_reply_to = last_inbound.sender, last_inbound.message_id
        else:
            channel, account = conversation
    if channel is None:
        return RouteRefused("name the channel to send on")
    on_channel = [r for r in routes if r.channel == channel]
    if account is None and len(on_channel) > 1:
        if last_inbound is not None and last_inbound.channel == channel and any(
                r.account == last_inbound.account for r in on_channel):
            account = last_inbound.account
        else:
            accounts = tuple(sorted({r.account for r in on_channel}))
            return RouteRefused(f"channel {channel!r} has several accounts "
                                f"({', '.join(accounts)}): name one in \"account\"",
                                channel, accounts)
    candidates = [r for r in on_channel if account is None or r.account == account]
    if not candidates:
        return RouteRefused(f"no configured account sends on channel {channel!r}"
                            + (f" as account {account!r}" if account else ""), channel,
                            tuple(sorted({r.account for r in on_channel})))
    return ReplyRoute(candidates[0], recipient, in_reply_to)


def choose_recipient(route: Route, identities_newest_first: Iterable[tuple[str, str]]
                     ) -> JSON | None:
    """The customer's newest identity (kind, address) that ``route``'s channel reaches
    (``route.kinds``, as its adapter declares them), or None."""
    for kind, address in identities_newest_first:
        if kind in route.kinds:
            return {"kind": kind, "address": address, "name": None}
    return None
