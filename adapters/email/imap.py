"""IMAP mailboxes: IDLE (or poll), import new mail, acknowledge it only after commit.

One :class:`Mailbox` task per configured folder, so a slow or dead server stalls nothing but
itself. Each pass fetches the UIDs above a checkpoint kept in the store, tied to the
folder's UIDVALIDITY, and for each message: fetch with ``BODY.PEEK[]`` (which leaves the
``\\Seen`` flag alone), hand it to the gateway, and only once the gateway has committed it
mark it ``\\Seen`` (or move it to ``processed_folder``), then advance the checkpoint.

Crash anywhere in that order and the message is fetched again on the next pass; the store
dedupes it by Message-ID (or the raw bytes' hash), so it is acknowledged, never doubled,
and no event is emitted twice. A changed UIDVALIDITY (the folder was rebuilt) resyncs
everything that arrived since the last good sync through the same dedupe.

aioimaplib is used for the wire protocol; STARTTLS, mailbox-name encoding, connection
loss during IDLE and an XOAUTH2 exchange that answers the server's error challenge, which
it lacks, are added here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aioimaplib
import orjson
import structlog

from adapters.email.config import ImapSettings, ServerSettings
from gateway.backoff import Backoff
from gateway.errors import AdapterAuthError, AdapterConfigError, AdapterNotReady, StoreError
from gateway.http import connection_failure
from gateway.oauth2 import AccessTokens
from gateway.store.base import CheckpointStore
from gateway.supervisor import LoopGroup, SupervisedLoop
from gateway.tls import client_context

log = structlog.get_logger(__name__)

_LOST = [b"* connection lost"]  # pushed into the IDLE queue when the socket drops
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS")
_UNTAGGED_EXISTS = re.compile(rb"^\* \d+ EXISTS")
_CAPABILITY = re.compile(rb"CAPABILITY ([^\]\r\n]*)")
RECONNECT_BACKOFF = Backoff(base=0.5, cap=300.0)
_SIZES = re.compile(rb"UID (\d+)[^)]*RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+)[^)]*UID (\d+)")


# ---------------------------------------------------------------- small protocol helpers


def imap_utf7(name: str) -> str:
    """A mailbox name in IMAP's modified UTF-7 (RFC 3501 §5.1.3): "받은편지함" → "&rBwrm...-"."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def quote_mailbox(name: str) -> str:
    """The mailbox argument as it goes on the wire (encoded, quoted when it must be)."""
    encoded = imap_utf7(name)
    if encoded and not re.search(r'[\s"\\(){%*\]]', encoded):
        return encoded
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapFailure(Exception):
    """The server answered NO/BAD, or the session broke: reconnect with backoff."""


def xoauth2_string(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's documented format)."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


class _Xoauth2Command(aioimaplib.Command):  # type: ignore[misc]  # untyped library
    """``AUTHENTICATE XOAUTH2`` that answers the server's continuation requests.

    A refused token gets ``+ <base64 JSON error>`` and the server waits for an empty line
    before its ``NO``; aioimaplib's own ``xoauth2()`` never sends it and waits out its
    timeout. Without SASL-IR the response itself goes after the first ``+``.
    """

    def __init__(self, protocol: Any, sasl: str, *, initial: bool) -> None:
        args = (sasl,) if initial else ()
        super().__init__("AUTHENTICATE", protocol.new_tag(), "XOAUTH2", *args,
                         loop=protocol.loop)
        self._protocol = protocol
        self._pending: str | None = None if initial else sasl

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        """Answer a continuation; anything else is the response as usual."""
        if result == "Pending" and line.startswith(b"+"):
            answer, self._pending = (self._pending or ""), None
            self._protocol.transport.write(answer.encode() + b"\r\n")
            return
        super().append_to_resp(line, result)


def _ok(response: Any, what: str) -> Any:
    if response.result != "OK":
        text = b" ".join(line for line in response.lines if isinstance(line, bytes))
        raise ImapFailure(f"{what}: {response.result} {text.decode(errors='replace')}".strip())
    return response


# ---------------------------------------------------------------- one connection


class ImapSession:
    """A logged-in connection to one IMAP server (aioimaplib underneath).

    Every call has a deadline (``settings.timeout``); a dropped connection is noticed even
    in the middle of IDLE, where aioimaplib itself would wait forever.
    """

    def __init__(self, settings: ServerSettings, tokens: AccessTokens | None = None) -> None:
        self.settings = settings
        self.tokens = tokens
        self.client: aioimaplib.IMAP4 | None = None
        self.lost = asyncio.Event()
        self.mail_announced = False  # an untagged EXISTS arrived (reset by the caller)

    @property
    def capabilities(self) -> set[str]:
        """What the server said it can do (after login)."""
        return set(self.client.protocol.capabilities) if self.client else set()

    def _connection_lost(self, _exc: Exception | None) -> None:
        self.lost.set()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.protocol.idle_queue.put_nowait(_LOST)

    async def open(self) -> None:
        """Connect, upgrade to TLS as configured, log in. Failures are classified."""
        s = self.settings
        context = client_context(s.ca_file) if s.security in ("tls", "starttls") else None
        try:
            self.client = aioimaplib.IMAP4(
                host=s.host, port=s.port, timeout=s.timeout,
                conn_lost_cb=self._connection_lost,
                ssl_context=context if s.security == "tls" else None)
            self._watch_exists(self.client.protocol)
            await self.client.wait_hello_from_server()
            if s.security == "starttls":
                assert context is not None
                await self._starttls(context)
        except ssl.SSLCertVerificationError as exc:
            raise AdapterConfigError(f"IMAP server certificate rejected: {exc.verify_message}",
                                     channel_type="email") from exc
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            raise AdapterNotReady(f"cannot reach IMAP server {s.host}:{s.port}: "
                                  f"{describe(exc)}", channel_type="email") from exc
        if s.oauth2 is not None:
            await self._sign_in_with_token()
        elif s.username:
            assert s.password is not None
            try:
                response = await self.client.login(s.username, s.password.reveal())
            except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
                raise AdapterNotReady(f"IMAP login did not complete: {describe(exc)}",
                                      channel_type="email") from exc
            if response.result != "OK":
                answer = _text(response.lines)  # the server's words, e.g. [AUTHENTICATIONFAILED]
                raise AdapterAuthError(f"IMAP login rejected for {s.username}"
                                       + (f": {answer}" if answer else ""),
                                       channel_type="email")

    async def _sign_in_with_token(self) -> None:
        """AUTHENTICATE XOAUTH2; a refused token is replaced once before giving up.

        The cached token may have been revoked or expired early (a password change, a
        server with a shorter clock): only a second refusal, with a token fresh from the
        endpoint, is a rejected sign-in.
        """
        s = self.settings
        assert self.tokens is not None and s.username and self.client is not None
        offered = self.client.protocol.capabilities
        if "AUTH=XOAUTH2" not in offered:
            mechanisms = sorted(c for c in offered if c.startswith("AUTH="))
            raise AdapterConfigError(
                "the IMAP server does not offer AUTH=XOAUTH2 (it offers "
                f"{', '.join(mechanisms) or 'no AUTH= mechanism'}): sign in with a password",
                channel_type="email")
        token = await self.tokens.token()
        response = await self._xoauth2(s.username, token)
        if response.result != "OK":
            log.info("imap.token_refused", server=f"{s.host}:{s.port}", user=s.username)
            token = await self.tokens.token(rejected=token)
            response = await self._xoauth2(s.username, token)
        if response.result != "OK":
            raise AdapterAuthError(f"IMAP XOAUTH2 sign-in rejected for {s.username}: "
                                   f"{_text(response.lines)}", channel_type="email")

    async def _xoauth2(self, user: str, token: str) -> Any:
        assert self.client is not None
        protocol = self.client.protocol
        sasl = xoauth2_string(user, token)
        command = _Xoauth2Command(protocol, sasl, initial="SASL-IR" in protocol.capabilities)
        try:
            response = await self._call(protocol.execute(command, scrub=sasl), "AUTHENTICATE")
        except (OSError, TimeoutError, ImapFailure, aioimaplib.AioImapException) as exc:
            raise AdapterNotReady(f"IMAP sign-in did not complete: {describe(exc)}",
                                  channel_type="email") from exc
        if response.result == "OK":
            async with protocol.state_condition:
                protocol.state = aioimaplib.AUTH
                protocol.state_condition.notify_all()
            # Dovecot and others list the new capabilities with the OK; others must be asked.
            found = [match.group(1) for line in response.lines if isinstance(line, bytes)
                     and (match := _CAPABILITY.search(line)) is not None]
            if found:
                protocol.capabilities = set(found[-1].decode(errors="replace").split())
            else:
                await self._call(protocol.capability(), "CAPABILITY")
        return response

    def _watch_exists(self, protocol: Any) -> None:
        """Notice every ``* n EXISTS``, whichever command it arrives with.

        aioimaplib hands untagged responses to the command they arrive during and drops
        those that come with an async command (SEARCH, FETCH, STORE). A message announced
        while we were fetching would then wait for the next IDLE timeout; this flag makes
        the mailbox look again first.
        """
        original = protocol._untagged_response

        def untagged(line: bytes) -> Any:
            if _UNTAGGED_EXISTS.match(line):
                self.mail_announced = True
            return original(line)

        protocol._untagged_response = untagged

    async def _starttls(self, context: ssl.SSLContext) -> None:
        """RFC 3501 §6.2.1; aioimaplib has no STARTTLS, so upgrade its transport here."""
        assert self.client is not None
        protocol = self.client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise AdapterConfigError("the IMAP server does not offer STARTTLS",
                                     channel_type="email")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        _ok(await asyncio.wait_for(protocol.execute(command), self.settings.timeout),
            "STARTTLS")
        loop = asyncio.get_running_loop()
        protocol.transport = await asyncio.wait_for(
            loop.start_tls(protocol.transport, protocol, context,
                           server_hostname=self.settings.host),
            self.settings.timeout)
        # Capabilities learned before TLS must be forgotten (a MITM could have lied).
        await asyncio.wait_for(protocol.capability(), self.settings.timeout)

    async def _call(self, awaitable: Awaitable[Any], what: str,
                    timeout: float | None = None) -> Any:
        """Await one command with a deadline, failing at once if the connection drops.

        aioimaplib leaves a command waiting forever when the socket closes under it (and
        gives STORE, COPY, MOVE no timeout at all).
        """
        if self.lost.is_set():
            raise ImapFailure(f"connection lost before {what}")
        command = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({command, lost}, timeout=timeout or self.settings.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: nothing of ours keeps running
            command.cancel()
            raise
        finally:
            lost.cancel()
        if command in done:
            return command.result()
        command.cancel()
        with contextlib.suppress(BaseException):
            await command
        if lost in done:
            raise ImapFailure(f"connection lost during {what}")
        raise TimeoutError(f"{what} timed out")

    async def select(self, folder: str) -> tuple[int, int | None, int]:
        """SELECT: (UIDVALIDITY, UIDNEXT or None, EXISTS)."""
        assert self.client is not None
        response = await self._call(self.client.select(quote_mailbox(folder)), "SELECT")
        if response.result != "OK":
            raise AdapterConfigError(f"cannot open folder {folder!r}: "
                                     f"{_text(response.lines)}", channel_type="email")
        validity = uidnext = None
        exists = 0
        for line in response.lines:
            if not isinstance(line, bytes):
                continue
            if (match := _UIDVALIDITY.search(line)) is not None:
                validity = int(match.group(1))
            elif (match := _UIDNEXT.search(line)) is not None:
                uidnext = int(match.group(1))
            elif (match := _EXISTS.match(line)) is not None:
                exists = int(match.group(1))
        if validity is None:
            raise ImapFailure("the server sent no UIDVALIDITY")
        return validity, uidnext, exists

    async def examine(self, folder: str) -> int:
        """EXAMINE (a read-only SELECT: no flag changes, \\Recent left alone): how many
        messages the folder holds."""
        assert self.client is not None
        response = await self._call(self.client.examine(quote_mailbox(folder)), "EXAMINE")
        if response.result != "OK":
            raise AdapterConfigError(f"cannot open folder {folder!r}: "
                                     f"{_text(response.lines)}", channel_type="email")
        return next((int(match.group(1)) for line in response.lines if isinstance(line, bytes)
                     and (match := _EXISTS.match(line)) is not None), 0)

    async def search(self, *criteria: str) -> list[int]:
        """UID SEARCH: the matching UIDs, ascending."""
        assert self.client is not None
        response = _ok(await self._call(self.client.uid_search(*criteria, charset=None),
                                        "UID SEARCH"), "UID SEARCH")
        uids: list[int] = []
        # aioimaplib drops the "SEARCH" of the untagged line; the last line is the tagged
        # completion text.
        for line in response.lines[:-1]:
            if isinstance(line, bytes):
                line = line.removeprefix(b"SEARCH")
                if re.fullmatch(rb"[\d ]*", line):
                    uids += [int(v) for v in line.split()]
        return sorted(set(uids))

    async def sizes(self, uids: list[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID (one round trip for the batch)."""
        assert self.client is not None
        if not uids:
            return {}
        response = _ok(await self._call(self.client.uid("fetch", _uid_set(uids),
                                                        "(RFC822.SIZE)"), "UID FETCH"),
                       "UID FETCH RFC822.SIZE")
        sizes = {}
        for line in response.lines:
            if isinstance(line, bytes):
                for match in _SIZES.finditer(line):
                    uid, size = (match.group(1), match.group(2)) if match.group(1) else (
                        match.group(4), match.group(3))
                    sizes[int(uid)] = int(size)
        return sizes

    async def fetch(self, uid: int, size: int | None = None) -> bytes | None:
        """The raw message, without setting \\Seen; None if it is gone (expunged)."""
        assert self.client is not None
        # A big message gets time for its bytes (at 100 kB/s at worst) on top of the
        # usual deadline.
        deadline = self.settings.timeout + (size or 0) / 100_000
        response = _ok(await self._call(self.client.uid("fetch", str(uid), "(BODY.PEEK[])"),
                                        "UID FETCH", deadline), "UID FETCH")
        for line in response.lines:
            if isinstance(line, bytearray | memoryview):
                return bytes(line)
        return None

    async def mark_seen(self, uid: int) -> None:
        """Acknowledge one message by flagging it \\Seen."""
        assert self.client is not None
        _ok(await self._call(self.client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Seen)"),
                             "UID STORE"), "UID STORE")

    async def move(self, uid: int, folder: str) -> None:
        """Acknowledge by moving (RFC 6851), else COPY + \\Deleted + expunge."""
        assert self.client is not None
        target = quote_mailbox(folder)
        if "MOVE" in self.capabilities:
            _ok(await self._call(self.client.uid("move", str(uid), target), "UID MOVE"),
                "UID MOVE")
            return
        _ok(await self._call(self.client.uid("copy", str(uid), target), "UID COPY"),
            "UID COPY")
        _ok(await self._call(self.client.uid("store", str(uid), "+FLAGS.SILENT",
                                             r"(\Seen \Deleted)"), "UID STORE"), "UID STORE")
        if "UIDPLUS" in self.capabilities:
            _ok(await self._call(self.client.uid("expunge", str(uid)), "UID EXPUNGE"),
                "UID EXPUNGE")
        else:
            _ok(await self._call(self.client.expunge(), "EXPUNGE"), "EXPUNGE")

    async def append(self, folder: str, data: bytes, *, seen: bool = True) -> None:
        """APPEND a message (a copy of a sent reply)."""
        assert self.client is not None
        response = await self._call(self.client.append(
            data, mailbox=quote_mailbox(folder), flags=r"(\Seen)" if seen else None,
            date=datetime.now(UTC)), "APPEND", self.settings.timeout + len(data) / 100_000)
        _ok(response, f"APPEND to {folder!r}")

    async def wait_for_mail(self, timeout: float) -> bool:
        """IDLE until the server announces mail (True) or ``timeout`` passes (False).

        Raises :class:`ImapFailure` when the server says BYE or the connection drops.
        """
        assert self.client is not None
        # idle_start waits for the server's "+ idling" with no deadline of its own.
        idle = await self._call(self.client.idle_start(timeout=timeout), "IDLE")
        try:
            while True:
                try:
                    push = await self.client.wait_server_push(timeout=timeout + 5)
                except TimeoutError:
                    return False
                if push is _LOST or self.lost.is_set():
                    raise ImapFailure("connection lost during IDLE")
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    return False
                lines = [line for line in push if isinstance(line, bytes)]
                if any(line.startswith(b"BYE") for line in lines):
                    raise ImapFailure("server closed the session: " + _text(lines))
                if any(_EXISTS.match(line) for line in lines):
                    return True
        finally:
            if not self.lost.is_set() and self.client.has_pending_idle():
                self.client.idle_done()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(idle, self.settings.timeout)
            if not idle.done():
                idle.cancel()

    async def close(self) -> None:
        """LOGOUT politely (briefly), then drop the socket and aioimaplib's tasks."""
        client, self.client = self.client, None
        if client is None:
            return
        protocol = client.protocol
        # LOGOUT only on a quiet connection: behind a pending command (an IDLE that a
        # cancellation interrupted) it would just wait out its deadline.
        if not self.lost.is_set() and protocol.state in ("AUTH", "SELECTED") and \
                protocol.pending_sync_command is None and not protocol.pending_async_commands:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(protocol.logout(), 2)
        if protocol.transport is not None:
            protocol.transport.close()
        tasks = [*client.tasks, *protocol.tasks, client._client_task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _uid_set(uids: list[int]) -> str:
    return ",".join(str(u) for u in uids)


def _text(lines: list[Any]) -> str:
    return " ".join(line.decode(errors="replace") for line in lines
                    if isinstance(line, bytes))[:300]


def describe(exc: BaseException) -> str:
    """A reason ops can read: "Connection refused", not "[Errno 111] Connect call failed
    ('10.0.0.5', 993)" (the caller names the host and port)."""
    reason = None if isinstance(exc, ssl.SSLError | socket.gaierror) \
        else connection_failure(exc)  # a TLS or name error's own text says more
    return reason or str(exc) or type(exc).__name__




# ---------------------------------------------------------------- one mailbox, forever


IngestMail = Callable[[bytes], Awaitable[bool]]
"""Parse and ingest raw mail; returns after commit (True: new, False: a duplicate)."""


@dataclass(slots=True)
class Checkpoint:
    """Where a folder's import stands: everything up to ``uid`` under ``uidvalidity``.

    While a first visit (or a resync after a UIDVALIDITY change) is under way, UIDs up to
    ``catchup_until`` are imported only when they match ``criteria`` (UNSEEN, SINCE …), so
    a crash in the middle resumes that selection instead of importing everything.
    """

    uidvalidity: int
    uid: int
    synced_at: str
    catchup_until: int | None = None
    criteria: tuple[str, ...] = ()

    def dumps(self) -> str:
        """The stored form."""
        data: dict[str, Any] = {"uidvalidity": self.uidvalidity, "uid": self.uid,
                                "synced_at": self.synced_at}
        if self.catchup_until is not None:
            data["catchup_until"] = self.catchup_until
            data["criteria"] = list(self.criteria)
        return orjson.dumps(data).decode()

    @classmethod
    def loads(cls, value: str | None) -> Checkpoint | None:
        """Parse a stored checkpoint (None when absent or unreadable)."""
        if not value:
            return None
        try:
            data = orjson.loads(value)
            until = data.get("catchup_until")
            return cls(int(data["uidvalidity"]), int(data["uid"]), str(data["synced_at"]),
                       None if until is None else int(until),
                       tuple(str(c) for c in data.get("criteria", ())))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class Mailbox:
    """Imports one folder under a supervised loop: one IMAP session per run of its body.

    A session that fails raises out of :meth:`run_session`; the loop (``gateway/supervisor.py``)
    reconnects after a capped backoff with jitter, slower for rejected credentials, and
    ``/v1/channels`` shows it. A whole pass resets the backoff (``loop.ok()``).
    """

    def __init__(self, settings: ImapSettings, *, account: str, ingest: IngestMail,
                 store: CheckpointStore, max_message_bytes: int,
                 tokens: AccessTokens | None = None, index: int = 0) -> None:
        self.settings = settings
        self.index = index  # its place in the account's ``imap`` list (0 first)
        self.tokens = tokens
        self.account = account
        self.ingest = ingest
        self.store = store
        self.max_message_bytes = max_message_bytes
        self.key = f"email:{account}:imap:{settings.label}"
        self.log = log.bind(account=account, mailbox=settings.label)
        self.connected = False
        self.imported = 0
        self.duplicates = 0
        self.skipped = 0
        self.idle_supported: bool | None = None
        self.synced = asyncio.Event()  # set after every completed pass (tests, readiness)
        self.loop: SupervisedLoop | None = None

    @property
    def name(self) -> str:
        """The supervised loop's (and its task's) name."""
        return f"imap:{self.account}:{self.settings.label}"

    @property
    def metric_label(self) -> str:
        """The loop's ``loop`` label on unauthenticated /metrics: the account, the mailbox's
        place in its ``imap`` list and the folder, never the user or host. The place keeps
        two mailboxes on the same folder (of different users or servers) apart."""
        return f"imap:{self.account}:{self.index}:{self.settings.folder}"

    @property
    def last_error(self) -> str | None:
        """Why the mailbox is not connected, if it is not."""
        if self.connected or self.loop is None or self.loop.last_error is None:
            return None
        return f"imap {self.settings.label}: {self.loop.last_error}"

    @property
    def reconnects(self) -> int:
        """How often a session failed and was started again."""
        return self.loop.restarts if self.loop is not None else 0

    def start(self, loops: LoopGroup | None = None) -> None:
        """Run the mailbox as a loop of ``loops`` (the adapter's), or of its own group."""
        if self.loop is None:
            self.loop = (loops or LoopGroup()).supervise(
                self.name, self.run_session, backoff=RECONNECT_BACKOFF, label=self.metric_label)

    async def stop(self) -> None:
        """Cancel the loop; an in-flight commit finishes inside the store regardless."""
        if self.loop is not None:
            await self.loop.stop()

    async def run_session(self, loop: SupervisedLoop) -> None:
        """One session: connect, import and wait for mail until the session fails."""
        session = ImapSession(self.settings, self.tokens)
        try:
            await session.open()
            await self._session(session, loop)
        except (AdapterNotReady, AdapterAuthError, AdapterConfigError, ImapFailure, StoreError,
                OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            self.log.warning("imap.disconnected",
                             error=getattr(exc, "message", None) or describe(exc))
            raise
        finally:
            self.connected = False
            await asyncio.shield(session.close())

    async def _session(self, session: ImapSession, loop: SupervisedLoop) -> None:
        validity, uidnext, _exists = await session.select(self.settings.folder)
        self.connected = True
        self.idle_supported = "IDLE" in session.capabilities
        self.log.info("imap.connected", uidvalidity=validity,
                      idle=self.idle_supported and self.settings.idle)
        while True:
            session.mail_announced = False
            await self._pass(session, validity, uidnext)
            uidnext = None
            loop.ok()  # a whole pass worked: the next failure starts afresh
            self.synced.set()
            if session.mail_announced:
                continue  # mail arrived while we were busy: look again before waiting
            if self.settings.idle and self.idle_supported:
                await session.wait_for_mail(self.settings.idle_timeout)
            else:
                await asyncio.sleep(self.settings.poll_interval)
            if session.lost.is_set():
                raise ImapFailure("connection lost")

    async def _pass(self, session: ImapSession, validity: int, uidnext: int | None) -> None:
        """Import what is new since the checkpoint (after a catch-up phase, if one is due)."""
        checkpoint = Checkpoint.loads(await self.store.get_checkpoint(self.key))
        if checkpoint is None or checkpoint.uidvalidity != validity:
            checkpoint = await self._start_catchup(session, checkpoint, validity, uidnext)
        if checkpoint.catchup_until is not None:
            until = checkpoint.catchup_until
            if until > checkpoint.uid:
                found = await session.search(*checkpoint.criteria, "UID",
                                             f"{checkpoint.uid + 1}:{until}")
                uids = [u for u in found if checkpoint.uid < u <= until]
                await self._import_all(session, checkpoint, uids)
            checkpoint = Checkpoint(validity, checkpoint.catchup_until,
                                    datetime.now(UTC).isoformat())
            await self._save(checkpoint)
        found = await session.search("UID", f"{checkpoint.uid + 1}:*")
        uids = [u for u in found if u > checkpoint.uid]  # "n:*" always matches the last one
        await self._import_all(session, checkpoint, uids)

    async def _start_catchup(self, session: ImapSession, old: Checkpoint | None,
                             validity: int, uidnext: int | None) -> Checkpoint:
        """The folder is new to us, or was rebuilt: decide what the catch-up imports.

        A rebuilt folder (new UIDVALIDITY) is searched from a day before the last good sync:
        nothing that arrived in between is skipped, and what was imported before is
        recognised by its Message-ID and not emitted again. Mail arriving from now on
        (above today's last UID) is imported whatever its flags.
        """
        now = datetime.now(UTC)
        last = (uidnext - 1) if uidnext else max(await session.search("ALL") or [0])
        if old is not None:
            since = datetime.fromisoformat(old.synced_at) - timedelta(days=1)
            self.log.warning("imap.uidvalidity_changed", old=old.uidvalidity, new=validity,
                             resync_since=since.date().isoformat())
            criteria: tuple[str, ...] = ("SINCE", since.strftime("%d-%b-%Y"))
        elif self.settings.first_sync == "none":
            checkpoint = Checkpoint(validity, last, now.isoformat())
            await self._save(checkpoint)
            return checkpoint
        else:
            criteria = ("UNSEEN",) if self.settings.first_sync == "unseen" else ("ALL",)
        checkpoint = Checkpoint(validity, 0, now.isoformat(), last, criteria)
        await self._save(checkpoint)
        return checkpoint

    async def _import_all(self, session: ImapSession, checkpoint: Checkpoint,
                          uids: list[int]) -> None:
        if not uids:
            return
        sizes = await session.sizes(uids)
        for uid in uids:
            await self._import(session, checkpoint, uid, sizes.get(uid))

    async def _import(self, session: ImapSession, checkpoint: Checkpoint, uid: int,
                      size: int | None) -> None:
        if size is not None and size > self.max_message_bytes:
            # Left unread in the mailbox for a person; never half-imported.
            self.skipped += 1
            self.log.warning("imap.message_too_large", uid=uid, size=size,
                             limit=self.max_message_bytes)
        else:
            raw = await session.fetch(uid, size)
            if raw is not None:
                created = await self.ingest(raw)  # returns after commit
                if created:
                    self.imported += 1
                else:
                    self.duplicates += 1
                if self.settings.processed_folder:
                    await session.move(uid, self.settings.processed_folder)
                else:
                    await session.mark_seen(uid)
        await self._save(Checkpoint(checkpoint.uidvalidity, uid, datetime.now(UTC).isoformat(),
                                    checkpoint.catchup_until, checkpoint.criteria))

    async def _save(self, checkpoint: Checkpoint) -> None:
        await self.store.set_checkpoint(self.key, checkpoint.dumps())


async def append_copy(settings: ImapSettings, data: bytes,
                      tokens: AccessTokens | None = None) -> None:
    """Put a copy of a sent message into the Sent folder (a connection of its own)."""
    assert settings.sent_folder is not None
    session = ImapSession(settings, tokens)
    try:
        await session.open()
        await session.append(settings.sent_folder, data)
    finally:
        await session.close()
