"""The widget's languages without a browser: the account's ``language`` key as
``check-config`` reads it, and the widget's string tables."""

from __future__ import annotations

import re

import pytest

from adapters.webchat.adapter import STATIC
from adapters.webchat.config import LANGUAGES, WebChatConfig
from gateway.config import parse_config
from gateway.errors import ConfigErrors

ACCOUNT = '[[channels]]\ntype = "webchat"\nname = "site"\nallowed_origins = ["shop.example"]\n'


def webchat(extra: str = "") -> WebChatConfig:
    """The account's parsed options."""
    options = parse_config(ACCOUNT + extra, environ={}).channels[0].options
    assert isinstance(options, WebChatConfig)
    return options


def test_the_language_follows_the_browser_unless_the_account_sets_one() -> None:
    assert webchat().language == "auto"
    assert webchat().title is None  # the widget's own title, in the visitor's language
    assert webchat('language = "ko"\n').language == "ko"
    assert webchat('language = "ja"\ntitle = "Kim\'s shop"\n').title == "Kim's shop"


@pytest.mark.parametrize("value", ['"ko-KR"', '"de"', '"KO"', '""', "1"])
def test_a_language_the_widget_lacks_is_an_error_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        webchat(f"language = {value}\n")
    [error] = caught.value.errors
    assert error.key == "channels[0].language"
    assert error.line == 5
    if value != "1":  # a number: "must be a string"
        assert '"auto", "en", "ko", "ja"' in error.message
        assert 'language = "ko"' in error.hint


def test_every_language_of_the_widget_has_every_string_and_the_file_stays_ascii() -> None:
    """A string missing in one table would show "undefined"; a byte beyond ASCII could be
    garbled on a shop page in EUC-KR or Shift_JIS."""
    widget = (STATIC / "widget.js").read_text(encoding="utf-8")
    assert widget.isascii()
    tables = dict(re.findall(r"\n    (\w+): \{\n(.*?)\n    \}", widget, flags=re.S))
    keys = {lang: re.findall(r"^\s+(\w+): \"", body, flags=re.M)
            for lang, body in tables.items()}
    assert set(keys) == set(LANGUAGES) - {"auto"}
    assert len(keys["en"]) > 20
    assert keys["ko"] == keys["en"] and keys["ja"] == keys["en"]
