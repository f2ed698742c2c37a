"""Compact encoding of cold JSON and raw payloads: zstd frames with a built-in dictionary.

Why: a ~300-byte message used to take ~4.4 KB on disk, most of it JSON keys, nulls and ids
repeated in every row (docs/benchmarks.md, "Disk per message"). Each stored value is
compressed on its own (a row reads without its neighbours) against a dictionary of the
shapes the store writes, so the keys cost almost nothing.

The dictionary holds structure only (keys, field order, the values every row repeats), no
customer data: erasing a customer never needs a new dictionary. It is stored in the database
(table ``codec_dictionaries``) as well as built here, so a database file is readable on its
own. Its bytes must never change: a different dictionary gets a new id (frames written with
a trained, id-carrying dictionary name it in their header; frames without a dictionary id
use dictionary 1).

A stored value is either plain (JSON text as before, or raw bytes) or one standard zstd
frame (it starts with the zstd magic number, which no JSON text does), so rows written by
older versions and by code that writes plain JSON read the same way.
"""

from __future__ import annotations

import threading

import orjson
import zstandard

MAGIC = b"\x28\xb5\x2f\xfd"  # every zstd frame starts with it; JSON text never does
BUILTIN_ID = 1
# zstd levels, chosen by CPU per byte saved (docs/benchmarks.md, "Disk per message"): JSON is
# written on every message and read often, raw payloads are cold.
LEVEL_JSON = -1
LEVEL_RAW = 1

_ZERO_ID = "0" * 26
_TIME = "2026-01-01T00:00:00.000Z"


def _builtin_dictionary() -> bytes:
    """Dictionary 1: the JSON shapes the store writes, most frequent last (nearest)."""
    def message(channel: str, account: str, direction: str, status: str,
                sender: dict[str, object] | None) -> dict[str, object]:
        return {"id": "msg_" + _ZERO_ID, "conversation_id": "cnv_" + _ZERO_ID,
                "customer_id": "cus_" + _ZERO_ID, "channel": channel, "account": account,
                "direction": direction, "from": sender, "to": None, "subject": None,
                "text": "", "html": None, "attachments": [], "in_reply_to": None,
                "provider": {"message_id": "", "thread_id": None}, "status": status,
                "error": None, "agent": None, "automatic": None, "sent_at": _TIME,
                "received_at": _TIME}

    conversation: dict[str, object] = {"id": "cnv_" + _ZERO_ID, "customer_id": "cus_" + _ZERO_ID,
                                       "channel": "api", "account": "default",
                                       "status": "open", "opened_at": _TIME,
                                       "closed_at": None, "last_message_at": _TIME,
                                       "tags": [], "priority": "normal", "queue": None,
                                       "context": {}}

    def envelope(event_type: str, data: bytes) -> bytes:
        return (b'{"id":"evt_' + _ZERO_ID.encode() + b'","seq":"","type":"'
                + event_type.encode() + b'","created_at":"' + _TIME.encode()
                + b'","data":' + data + b"}")

    parts = [
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
        b"quoted-printable\r\nMIME-Version: 1.0\r\nMessage-ID: <@>\r\nIn-Reply-To: <@>\r\n"
        b"References: <@>\r\nDate: \r\nFrom: \r\nTo: \r\nSubject: Re: \r\n",
        orjson.dumps({"attachments": [{"id": "att_" + _ZERO_ID, "filename": "",
                                       "content_type": "application/octet-stream",
                                       "size": 0, "sha256": "", "inline": False,
                                       "content_id": None}]}),
        envelope("message.status", orjson.dumps({"message": message(
            "email", "support", "outbound", "sent",
            {"kind": "email", "address": "", "name": None})})),
        envelope("message.queued", orjson.dumps({"message": message(
            "email", "support", "outbound", "queued",
            {"kind": "email", "address": "", "name": None})})),
        orjson.dumps(message("email", "support", "inbound", "received",
                             {"kind": "email", "address": "", "name": None})),
        envelope("customer.created", orjson.dumps({"customer": {
            "id": "cus_" + _ZERO_ID, "name": "", "merged_into": None, "identities": [
                {"kind": "email", "address": "", "channels": []},
                {"kind": "external", "address": "", "channels": ["api"]}],
            "created_at": _TIME}})),
        envelope("conversation.opened", orjson.dumps({"conversation": conversation})),
        b'{"message_id":"","from":{"id":"","name":"","email":""},"text":""}',
        orjson.dumps(message("api", "default", "inbound", "received",
                             {"kind": "external", "address": "", "name": ""})),
        # message.received stores its body with the message cut out (see Tx.emit)
        envelope("message.received", b'{"message":,"conversation":'
                 + orjson.dumps(conversation) + b"}"),
    ]
    return b"".join(parts)


class _Codecs(threading.local):
    """Compressors and decompressors are not thread-safe: one set per thread."""

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressors: dict[int, zstandard.ZstdDecompressor] = {}


_dictionaries: dict[int, zstandard.ZstdCompressionDict] = {}
_dictionary_bytes: dict[int, bytes] = {}
_lock = threading.Lock()
_local = _Codecs()


def builtin_dictionary() -> tuple[int, bytes]:
    """(id, bytes) of the dictionary new values are written with."""
    return BUILTIN_ID, _BUILTIN


def register(dictionary_id: int, data: bytes) -> None:
    """Make a database's dictionary known to this process (at open)."""
    with _lock:
        known = _dictionary_bytes.get(dictionary_id)
        if known is not None:
            if known != data:
                raise ValueError(f"compression dictionary {dictionary_id} differs from the "
                                 "one already loaded")
            return
        kind = (zstandard.DICT_TYPE_RAWCONTENT if dictionary_id == BUILTIN_ID
                else zstandard.DICT_TYPE_AUTO)
        _dictionaries[dictionary_id] = zstandard.ZstdCompressionDict(data, dict_type=kind)
        _dictionary_bytes[dictionary_id] = data


def _compressor(level: int) -> zstandard.ZstdCompressor:
    compressor = _local.compressors.get(level)
    if compressor is None:
        # The dictionary digested once for the level (not at every call).
        digested = zstandard.ZstdCompressionDict(_BUILTIN,
                                                 dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        digested.precompute_compress(level=level)
        compressor = _local.compressors[level] = zstandard.ZstdCompressor(
            dict_data=digested, write_checksum=False, write_content_size=True,
            write_dict_id=False)
    return compressor


def pack(value: bytes, level: int = LEVEL_JSON) -> bytes:
    """One zstd frame of ``value`` (with the built-in dictionary)."""
    return _compressor(level).compress(value)


def pack_many(values: list[bytes], level: int = LEVEL_JSON) -> list[bytes]:
    """:func:`pack` of each value, in one call (a batch's rows: one release of the GIL,
    not one a value; getting it back under load waits for the event loop)."""
    if not values:
        return []
    items: list[bytes | bytearray | memoryview[int]] = list(values)
    frames = _compressor(level).multi_compress_to_buffer(items, threads=0)
    return [frames[i].tobytes() for i in range(len(frames))]


def unpack(value: bytes | str) -> bytes | str:
    """The stored value as written: a frame decompressed, anything else as it is."""
    if isinstance(value, str) or value[:4] != MAGIC:
        return value
    dictionary_id = zstandard.get_frame_parameters(value).dict_id or BUILTIN_ID
    decompressor = _local.decompressors.get(dictionary_id)
    if decompressor is None:
        if dictionary_id not in _dictionaries:
            if dictionary_id != BUILTIN_ID:
                raise ValueError(f"unknown compression dictionary {dictionary_id}")
            register(BUILTIN_ID, _BUILTIN)
        decompressor = zstandard.ZstdDecompressor(dict_data=_dictionaries[dictionary_id])
        _local.decompressors[dictionary_id] = decompressor
    return decompressor.decompress(value)


def unpack_bytes(value: bytes | str) -> bytes:
    """Like :func:`unpack`, always bytes (event bodies, raw payloads)."""
    out = unpack(value)
    return out.encode() if isinstance(out, str) else bytes(out)


def frames_in(blob: bytes) -> list[bytes]:
    """Every compressed value found anywhere in ``blob`` (a database file's bytes, free
    pages included), decompressed: what a search for personal data must look through."""
    register(BUILTIN_ID, _BUILTIN)
    found = []
    start = blob.find(MAGIC)
    while start >= 0:
        decompressor = zstandard.ZstdDecompressor(dict_data=_dictionaries[BUILTIN_ID])
        try:
            found.append(decompressor.decompressobj().decompress(blob[start:start + (1 << 20)]))
        except zstandard.ZstdError:
            pass  # the magic number by chance, or a frame cut by a page boundary
        start = blob.find(MAGIC, start + 1)
    return found


def pack_raw(body: bytes, packed: bytes | None = None) -> bytes:
    """A raw provider payload as stored: a frame when that is smaller, or when the payload
    itself starts like one (so reading it back cannot mistake it); else as received.
    ``packed``: ``pack(body, LEVEL_RAW)`` when already made."""
    if packed is None:
        packed = pack(body, LEVEL_RAW)
    if len(packed) < len(body) or body[:4] == MAGIC:
        return packed
    return body


_BUILTIN = _builtin_dictionary()
