"""Attachment metadata every path can trust: MIME types by grammar, filenames without tricks.

A content type or filename ends up in HTTP headers (the download), MIME headers (e-mail
replies) and help-desk UIs. A CR/LF there splits a header, a bidi override (U+202E)
makes ``invoice<U+202E>fdp.exe`` read as a PDF, a path separator walks out of a download
folder. Two forms:

- *strict* (:func:`validate_content_type`, :func:`validate_filename`) for what a client
  sends us through the API: invalid metadata is refused (422), never stored or retried;
- *lenient* (:func:`sanitize_content_type`, :func:`sanitize_filename`) for what a provider
  sent (a message is never lost over its metadata) and for rows stored before the check.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse

MAX_FILENAME_CHARS = 255  # the usual file system limit for one name
MAX_CONTENT_TYPE_CHARS = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"
DEFAULT_FILENAME = "attachment"

# RFC 6838 §4.2 restricted-name, case-insensitive; RFC 9110 §5.6 token and quoted-string
# for parameters. Only SP/HTAB as whitespace: a CR or LF never matches. The input is
# bounded first, and no two quantifiers compete for the same characters.
_RESTRICTED_NAME = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_TOKEN = r"[a-z0-9!#$%&'*+.^_`|~-]+"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_MEDIA_TYPE = re.compile(rf"({_RESTRICTED_NAME})/({_RESTRICTED_NAME})"
                         rf"((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*)[ \t]*",
                         re.IGNORECASE)
_PARAMETER = re.compile(rf";[ \t]*({_TOKEN})=({_TOKEN}|{_QUOTED})", re.IGNORECASE)

# Bidi embeddings, overrides, isolates and marks (Unicode TR #9): they reorder what a
# person reads, which is how ``invoice<U+202E>fdp.exe`` passes for a PDF.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")
_PATH_SEPARATORS = str.maketrans({"/": "_", "\\": "_"})


class InvalidAttachmentMetadata(ValueError):
    """A content type or filename that the API refuses (the message says why)."""


def validate_content_type(value: object) -> str:
    """Return ``value`` as a normalized MIME type (``type/subtype[; name=value]``).

    Type, subtype and parameter names are lower-cased; parameter values are kept.
    ``multipart/*`` is refused: an attachment's bytes cannot be a multipart body whose
    boundary nobody declared.
    """
    if not isinstance(value, str):
        raise InvalidAttachmentMetadata("must be a string")
    if len(value) > MAX_CONTENT_TYPE_CHARS:
        raise InvalidAttachmentMetadata(f"is longer than {MAX_CONTENT_TYPE_CHARS} characters")
    match = _MEDIA_TYPE.fullmatch(value.strip(" \t"))
    if match is None:
        raise InvalidAttachmentMetadata("is not a MIME type (type/subtype, RFC 6838)")
    maintype, subtype = match.group(1).lower(), match.group(2).lower()
    if maintype == "multipart":
        raise InvalidAttachmentMetadata("may not be multipart/*")
    parameters = "".join(f"; {name.lower()}={param}"
                         for name, param in _PARAMETER.findall(match.group(3)))
    return f"{maintype}/{subtype}{parameters}"


def sanitize_content_type(value: str | None) -> str:
    """The normalized type when it is valid, else ``application/octet-stream``."""
    try:
        return validate_content_type(value)
    except InvalidAttachmentMetadata:
        return DEFAULT_CONTENT_TYPE


def mime_parts(content_type: str | None) -> tuple[str, str, dict[str, str]]:
    """``(maintype, subtype, parameters)`` of a content type, quoted values unquoted; an
    invalid one is ``application/octet-stream`` (for writers such as e-mail MIME)."""
    checked = sanitize_content_type(content_type)
    mime_type, _, rest = checked.partition(";")
    maintype, _, subtype = mime_type.partition("/")
    params = {}
    for name, value in _PARAMETER.findall(";" + rest if rest else ""):
        params[name] = (re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"')
                        else value)
    return maintype, subtype, params


def clean_filename(value: str) -> str:
    """``value`` without control, bidi or separator characters (maybe empty, any length).

    Path separators become ``_``; C0/C1 controls (CR, LF, NUL, …), DEL, bidi controls,
    line/paragraph separators and lone surrogates are dropped; the name is NFC-normalized
    and trimmed of surrounding whitespace. A name of dots only (``..``) becomes ``_``.
    """
    name = unicodedata.normalize("NFC", value.translate(_PATH_SEPARATORS))
    name = "".join(ch for ch in name if ch not in _BIDI_CONTROLS
                   and unicodedata.category(ch) not in ("Cc", "Cs", "Zl", "Zp")).strip()
    return "_" if name and not name.strip(".") else name


def validate_filename(value: object) -> str:
    """Return the cleaned filename (:func:`clean_filename`); refuse empty or too long."""
    if value is None:
        raise InvalidAttachmentMetadata("is required")
    if not isinstance(value, str):
        raise InvalidAttachmentMetadata("must be a string")
    if not value:
        raise InvalidAttachmentMetadata("is required")
    # A name of nothing but controls or spaces is named like a nameless attachment: the
    # OpenAPI schema can only say "non-empty", and the file itself is still wanted.
    name = clean_filename(value) or DEFAULT_FILENAME
    if len(name) > MAX_FILENAME_CHARS:
        raise InvalidAttachmentMetadata(f"is longer than {MAX_FILENAME_CHARS} characters")
    return name


def sanitize_filename(value: str | None) -> str:
    """A cleaned filename for any input: shortened (extension kept), ``attachment`` if empty."""
    name = clean_filename(value or "")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and 0 < len(extension) <= 16:
            name = f"{stem[:MAX_FILENAME_CHARS - len(extension) - 1]}.{extension}"
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name or DEFAULT_FILENAME


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """An RFC 6266 ``Content-Disposition`` value: an ASCII ``filename=`` everyone reads,
    plus ``filename*=UTF-8''…`` (RFC 8187) when the real name is not plain ASCII.
    """
    name = sanitize_filename(filename)
    fallback = "".join(_ascii_fallback(ch) for ch in name)
    if not fallback.strip("_. "):
        extension = name.rpartition(".")[2] if "." in name else ""
        fallback = DEFAULT_FILENAME + (f".{extension}" if extension.isascii()
                                       and extension.isalnum() else "")
    value = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + urllib.parse.quote(name, safe="!#$&+-.^_`|~")
    return value


def _ascii_fallback(ch: str) -> str:
    """One character of the ASCII name: ``é`` → ``e``, ``견`` → ``_``.

    Printable ASCII only, without the quote and backslash of a quoted-string or the
    percent sign some browsers decode (RFC 6266 appendix D).
    """
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return base if base and all(" " <= c <= "~" and c not in '"\\%' for c in base) else "_"
