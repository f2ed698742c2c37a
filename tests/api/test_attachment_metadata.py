"""The one validator of attachment metadata: MIME grammar, clean filenames, RFC 6266."""

from __future__ import annotations

import urllib.parse

import pytest

from gateway.attachments import (
    InvalidAttachmentMetadata,
    content_disposition,
    mime_parts,
    sanitize_content_type,
    sanitize_filename,
    validate_content_type,
    validate_filename,
)


@pytest.mark.parametrize(("given", "normalized"), [
    ("image/PNG", "image/png"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
     "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("image/svg+xml", "image/svg+xml"),
    ("Text/Plain; Charset=UTF-8", "text/plain; charset=UTF-8"),
    ('text/plain ;format=flowed;  name="a; b"', 'text/plain; format=flowed; name="a; b"'),
    ("message/rfc822", "message/rfc822"),
])
def test_valid_content_types_are_normalized(given: str, normalized: str) -> None:
    assert validate_content_type(given) == normalized


@pytest.mark.parametrize("given", [
    "text/plain\r\nX-Injected: 1", "image/png\n", "image/png\r", "text/plain\x00",
    "image/png; name=\"a\r\nb\"", "image", "/png", "image/", "image/png/x", "a b/c",
    "text/plain; charset", "text/plain; =x", "\uff49mage/png", "image/" + "p" * 200,
    "multipart/mixed; boundary=x", "", 42, None,
])
def test_invalid_content_types_are_refused(given: object) -> None:
    with pytest.raises(InvalidAttachmentMetadata):
        validate_content_type(given)
    if isinstance(given, str):
        assert sanitize_content_type(given) == "application/octet-stream"


@pytest.mark.parametrize(("given", "cleaned"), [
    ("invoice.pdf", "invoice.pdf"),
    ("a\r\nb.txt", "ab.txt"),
    ("nul\x00l.txt", "null.txt"),
    ("c1\x85\x9b.txt", "c1.txt"),
    ("del\x7f.txt", "del.txt"),
    ("invoice\u202efdp.exe", "invoicefdp.exe"),  # RIGHT-TO-LEFT OVERRIDE
    ("a\u2066b\u2069\u200f.txt", "ab.txt"),
    ("../../etc/passwd", ".._.._etc_passwd"),
    ("C:\\Windows\\x.dll", "C:_Windows_x.dll"),
    ("..", "_"),
    ("  견적서 2026.pdf \t", "견적서 2026.pdf"),
    ("e\u0301.txt", "\u00e9.txt"),  # NFC
])
def test_filenames_lose_control_bidi_and_path_characters(given: str, cleaned: str) -> None:
    assert validate_filename(given) == cleaned
    assert sanitize_filename(given) == cleaned


@pytest.mark.parametrize("given", [None, "", 7, "x" * 256])
def test_empty_or_overlong_filenames_are_refused(given: object) -> None:
    with pytest.raises(InvalidAttachmentMetadata):
        validate_filename(given)


@pytest.mark.parametrize("given", ["\r\n", "\u202e", " \x97 "])
def test_a_name_of_nothing_printable_becomes_the_default_name(given: str) -> None:
    assert validate_filename(given) == "attachment"


def test_the_lenient_form_shortens_keeping_the_extension() -> None:
    name = sanitize_filename("가" * 300 + ".pdf")
    assert len(name) == 255 and name.endswith("가.pdf")
    assert sanitize_filename("\x00") == "attachment"


@pytest.mark.parametrize(("name", "fallback"), [
    ("견적서 2026.pdf", "___ 2026.pdf"),
    ("Résumé.pdf", "Resume.pdf"),
    ("日本.txt", "__.txt"),
    ('quote"50%.txt', "quote_50_.txt"),
])
def test_download_names_follow_rfc_6266(name: str, fallback: str) -> None:
    value = content_disposition(name)
    assert value.isascii() and "\r" not in value and "\n" not in value
    params = dict(part.strip().split("=", 1) for part in value.split(";")[1:])
    assert params["filename"] == f'"{fallback}"'
    # What a browser does with filename* (RFC 8187): charset, empty language, %-encoding.
    charset, language, encoded = params["filename*"].split("'", 2)
    assert (charset, language) == ("UTF-8", "")
    assert urllib.parse.unquote(encoded, encoding="utf-8", errors="strict") == name


def test_an_ascii_name_needs_no_extended_parameter() -> None:
    assert content_disposition("report 2026.pdf") == 'attachment; filename="report 2026.pdf"'
    stored_badly = content_disposition("a\r\nb\u202e.pdf")
    assert stored_badly == 'attachment; filename="ab.pdf"'


def test_mime_parts_unquotes_parameters_and_defaults_invalid_types() -> None:
    assert mime_parts('text/plain; charset="utf-8"; name="a\\"b"') == (
        "text", "plain", {"charset": "utf-8", "name": 'a"b'})
    assert mime_parts("text/plain\r\nBcc: x@example.com") == ("application", "octet-stream",
                                                              {})
