"""An empty secret is a config error naming its key, whichever form it is read from.

An empty ``*_file``, ``*_env`` or ``*_credential`` used to be accepted as an empty secret
and failed only at sign-in, as a provider's puzzling refusal (or, for a signing key, as a
key anyone knows). Now ``check-config`` and ``omnirelay run`` refuse it up front.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import Config, parse_config
from gateway.errors import ConfigErrors
from tests.ops.conftest import omnirelay
from tests.ops.test_check_config import EX_CONFIG, MARKER, clean_env

# Where a secret sits: the table around its keys ({keys}), and the key's path.
SECRETS = {
    "api token": ('[[tokens]]\nname = "ops"\nscopes = ["read"]\n{keys}\n', "tokens[0].token"),
    "smtp password": ('[[channels]]\ntype = "email"\nname = "support"\n'
                      'address = "support@shop.example"\n'
                      'smtp = {{ host = "127.0.0.1", username = "support", {keys} }}\n',
                      "channels[0].smtp.password"),
    "api callback secret": ('[[channels]]\ntype = "api"\nname = "crm"\n'
                            'callback_url = "https://crm.example/omnirelay"\n{keys}\n',
                            "channels[0].secret"),
    "oauth2 client secret": (
        '[[channels]]\ntype = "email"\nname = "support"\naddress = "support@shop.example"\n'
        'smtp = {{ host = "smtp.office365.com", username = "support@shop.example", '
        'oauth2 = {{ token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token", '
        'client_id = "app", {keys} }} }}\n', "channels[0].smtp.oauth2.client_secret"),
}
FORMS = ("file", "env", "credential")
NAME = "the-secret"  # the file, variable or credential holding it


def secret_config(tmp_path: Path, secret: str, form: str, content: str
                  ) -> tuple[str, dict[str, str]]:
    """A config reading ``secret`` in ``form``, whose source holds ``content``; and the
    environment it is read with."""
    table, key = SECRETS[secret]
    name = key.rsplit(".", 1)[-1]
    environ: dict[str, str] = {}
    if form == "file":
        (tmp_path / NAME).write_text(content)
        keys = f'{name}_file = "{tmp_path / NAME}"'
    elif form == "env":
        environ[NAME] = content
        keys = f'{name}_env = "{NAME}"'
    else:
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        # As the unit loads it: LoadCredential=omnirelay:DIR names the file omnirelay_NAME.
        (credentials / f"omnirelay_{NAME}").write_text(content)
        environ["CREDENTIALS_DIRECTORY"] = str(credentials)
        keys = f'{name}_credential = "{NAME}"'
    return table.format(keys=keys), environ


def parse(text: str, environ: dict[str, str]) -> Config:
    return parse_config(text, environ=environ)


@pytest.mark.parametrize("content", ["", "\n", " \t\n\n"], ids=["empty", "newline", "blank"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("secret", list(SECRETS))
def test_an_empty_secret_is_one_error_naming_its_key(
        secret: str, form: str, content: str, tmp_path: Path) -> None:
    text, environ = secret_config(tmp_path, secret, form, content)
    with pytest.raises(ConfigErrors) as raised:
        parse(text, environ)
    (error,) = raised.value.errors  # no "is required" on top of it
    assert error.key == f"{SECRETS[secret][1]}_{form}"
    assert error.message.endswith(" is empty"), error.message
    assert error.line == (4 if secret == "api token" else 5)
    assert error.hint


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("secret", list(SECRETS))
def test_a_secret_with_blanks_around_it_is_read_without_them(
        secret: str, form: str, tmp_path: Path) -> None:
    value = f"value-{MARKER}-0123456789abcdef"
    text, environ = secret_config(tmp_path, secret, form, f"  {value} \n\n")
    config = parse(text, environ)
    if secret == "api token":
        found = config.tokens[0].token
    elif secret == "api callback secret":
        found = config.channels[0].options.secret  # type: ignore[attr-defined]
    else:
        smtp = config.channels[0].options.smtp  # type: ignore[attr-defined]
        found = smtp.password if secret == "smtp password" else smtp.oauth2.client_secret
    assert found is not None and found.reveal() == value


def test_optional_secrets_left_out_stay_optional() -> None:
    """Leaving its keys out is how a secret is not given; that still works."""
    config = parse(textwrap.dedent("""
        [[channels]]
        type = "api"
        name = "crm"
        [[channels]]
        type = "webchat"
        name = "site"
        allowed_origins = ["https://shop.example"]
        [[channels]]
        type = "email"
        name = "support"
        address = "support@shop.example"
        smtp = { host = "127.0.0.1", port = 25, security = "none" }
        """), {})
    assert [c.options.secret for c in config.channels[:2]] == [None, None]  # type: ignore[attr-defined]
    assert config.channels[2].options.smtp.password is None  # type: ignore[attr-defined]


def test_check_config_names_the_empty_credential_with_line_and_hint(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "omnirelay_support-smtp").write_text("\n")
    path = tmp_path / "omnirelay.toml"
    path.write_text(textwrap.dedent("""\
        [[channels]]
        type = "email"
        name = "support"
        address = "support@shop.example"
        smtp = { host = "smtp.example", username = "support", password_credential = "support-smtp" }
        """))  # noqa: E501
    result = omnirelay("check-config", str(path),
                       env=clean_env(CREDENTIALS_DIRECTORY=str(credentials)))
    assert result.returncode == EX_CONFIG
    assert result.stderr.splitlines() == [
        f"{path}: channels[0].smtp.password_credential (line 5): credential "
        f"{credentials}/omnirelay_support-smtp is empty — hint: put the secret in the file "
        "in /etc/omnirelay/credentials/; LoadCredential= copies it when the service "
        "starts, so restart after filling it",
        f"{path}: 1 error(s)"]
