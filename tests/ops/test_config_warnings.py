"""Config warnings reach the journal: a ``config.warning`` line each, at start and reload.

``check-config`` prints them, but under systemd nobody runs it; a certificate about to end
must show in the daemon's own log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import TOKEN, base_config, free_port
from tests.email.certificates import make_certificate
from tests.ops.conftest import NotifySocket, OpsDaemon
from tests.ops.test_reload import reload

CRM_SECRET = "crm-literal-secret-0123456789"


def lines_starting(config: str, start: str) -> list[int]:
    """The numbers of the lines of ``config`` that start with ``start``."""
    return [number for number, line in enumerate(config.splitlines(), start=1)
            if line.startswith(start)]


def warnings(daemon: OpsDaemon) -> list[dict[str, Any]]:
    return [e for e in daemon.lines() if e["event"] == "config.warning"]


async def test_config_warnings_are_logged_at_start_and_at_each_reload(
        tmp_path: Path, notify_socket: NotifySocket, daemons: list[OpsDaemon]) -> None:
    http_port, smtp_port = free_port(), free_port()
    key_file, cert_file = make_certificate(days=10).write(tmp_path)
    relay = f"""
        [[channels]]
        type = "email"
        name = "m365"
        address = "support@shop.example"
        smtp = {{ host = "smtp.office365.com", username = "support@shop.example", oauth2 = {{ token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token", client_id = "app", private_key_file = "{key_file}", certificate_file = "{cert_file}" }} }}
        """  # noqa: E501
    before = base_config(tmp_path / "data", http_port, smtp_port, extra=relay)
    daemon = OpsDaemon(tmp_path, before, http_port,
                       env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()

    certificate = {"key": "channels[2].smtp.oauth2.certificate_file",
                   "line": lines_starting(before, "smtp = ")[0], "level": "warning",
                   "config": str(daemon.config_path)}
    started = warnings(daemon)
    (expiring,) = [w for w in started if w["key"] == certificate["key"]]
    assert certificate.items() <= expiring.items()
    assert "expires on" in expiring["message"] and "upload a new one" in expiring["message"]
    # The base config's [[tokens]] are written into the file: warned about, never shown.
    literal = [w for w in started if w["key"].startswith("tokens[")]
    assert [(w["key"], w["line"]) for w in literal] == [
        (f"tokens[{n}].token", line) for n, line in enumerate(lines_starting(before, "token = "))]
    assert all(w["message"].startswith("secret written in the config file") for w in literal)
    assert len(started) == 4

    # A reload whose file has another warning logs it, and again those still there.
    after = before + f"""
[[channels]]
type = "api"
name = "crm"
secret = "{CRM_SECRET}"
"""
    await reload(daemon, notify_socket, after)
    assert await daemon.stop() == 0
    lines = daemon.lines()
    cut = next(i for i, e in enumerate(lines) if e["event"] == "daemon.reloaded")
    assert [e for e in lines[:cut] if e["event"] == "config.warning"] == started
    reloaded = [e for e in lines[cut:] if e["event"] == "config.warning"]
    (crm,) = [w for w in reloaded if w["key"] == "channels[3].secret"]
    assert crm["line"] == lines_starting(after, "secret = ")[0] and crm["level"] == "warning"
    assert "prefer secret_file, secret_env or secret_credential" in crm["message"]
    assert sorted(w["key"] for w in reloaded) == sorted(
        [w["key"] for w in started] + ["channels[3].secret"])
    output = daemon.logs()
    assert TOKEN not in output and CRM_SECRET not in output
