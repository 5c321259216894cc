"""The admin listener of a running `relaymail serve`: the status page in headless Chromium,
/metrics through prometheus-client's own parser, the token, and the refusals at start."""

from __future__ import annotations

import asyncio
import base64
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relaymail.admin.http import Response, listen
from tests.integration.daemon_process import RELAYMAIL, free_port, run_command
from tests.integration.test_daemon import make_config, start_daemon, swaks, wait_for
from tests.peers.browser import page_parts, render
from tests.peers.smtp_server import Script, SMTPPeer

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-token-for-the-admin-page"
# What the network says is hostile input: shown as text, never as markup.
HOSTILE_REPLY = "451 4.3.2 <script>alert(1)</script> try again later"


def admin_config(tmp_path: Path, port: int, ca_file: Path, routes: dict[str, list[str]],
                 **admin: Any) -> tuple[Path, str]:  # fmt: skip
    admin_port = free_port()
    table = {"address": f"127.0.0.1:{admin_port}", **admin}
    config = make_config(tmp_path, port, ca_file, routes, admin=table)
    return config, f"http://127.0.0.1:{admin_port}"


def hop_of(peer: SMTPPeer) -> list[str]:
    return [f"{peer.host}:{peer.port}"]


async def send(port: int, rcpt: str, subject: str = "status") -> str:
    code, out = await swaks(port, "--from", "a@src.test", "--to", rcpt, "--header",
                            f"Subject: {subject}")  # fmt: skip
    assert code == 0, out
    queued = re.search(r"queued as (\w+)", out)
    assert queued, out
    return queued[1]


async def get(url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, headers=headers)


def gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_status_page_in_chromium_shows_delivered_deferred_and_clear_after_454(
    smtp_peer, ca_file, tmp_path
):
    good = await smtp_peer(Script())
    busy = await smtp_peer(Script(rcpt_reply=HOSTILE_REPLY))
    plain = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))
    port = free_port()
    routes = {"ok.test": hop_of(good), "busy.test": hop_of(busy), "plain.test": hop_of(plain)}
    config, base = admin_config(tmp_path, port, ca_file, routes)
    daemon = await start_daemon(tmp_path, config, port)
    try:
        await send(port, "u@ok.test")
        deferred_id = await send(port, "u@busy.test")
        await send(port, "u@plain.test")
        await wait_for(lambda: daemon.text().count("status=sent") == 2
                       and "status=deferred" in daemon.text())  # fmt: skip
        # The history is written once a second: wait until the page has all three.
        async with asyncio.timeout(20):
            while (await get(base + "/")).text.count('href="/message/') < 3:
                await asyncio.sleep(0.1)
        rendered = await render(base + "/", tmp_path / "chromium")
        message = await get(f"{base}/message/{deferred_id}")
        metrics = gauges((await get(base + "/metrics")).text)
    finally:
        assert await daemon.stop() == 0

    # The daemon's own counters, fed by the events its log lines come from.
    assert metrics[("relaymail_deliveries_total", (("status", "sent"),))] == 2
    assert metrics[("relaymail_deliveries_total", (("status", "deferred"),))] == 1
    clear_after_454 = (("action", "continue_clear"), ("event", "tempfail"), ("level", "may"))
    assert metrics[("relaymail_tls_decisions_total", clear_after_454)] == 1
    verified = (("action", "use_tls"), ("event", "verified"), ("level", "may"))
    assert metrics[("relaymail_tls_decisions_total", verified)] == 2
    assert metrics[("relaymail_delivery_seconds_count", ())] == 2
    assert metrics[("relaymail_queue_messages", (("state", "deferred"),))] == 1

    text, tables = page_parts(rendered.dom)
    assert rendered.console == ()  # no script, no CSP violation, no error of any kind
    assert rendered.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (text["queue-messages"], text["queue-deferred"], text["queue-held"]) == ("1", "1", "0")
    assert tables["top-destinations"] == [["busy.test", "1"]]
    assert tables["top-deferral-reasons"][0][1] == "1"
    assert HOSTILE_REPLY in tables["top-deferral-reasons"][0][0]
    assert (text["day-delivered"], text["day-deferred"], text["day-bounced"]) == (
        "2 delivered", "1 deferred", "0 bounced",
    )  # fmt: skip
    posture = {row[0]: row[1:] for row in tables["tls-posture"]}
    assert posture["plain.test"] == [
        "1", "0%", "0%", "100%", "4xx to STARTTLS under may (default level): 1"
    ]  # fmt: skip
    assert posture["ok.test"] == ["1", "100%", "0%", "0%", "-"]
    recent = {row[2]: row for row in tables["recent-deliveries"]}
    assert recent["u@plain.test"][3:6] == ["delivered", f"{plain.host}:{plain.port}",
                                            "clear: 4xx to STARTTLS"]  # fmt: skip
    assert recent["u@plain.test"][6] == "may (default level)"
    assert "continued-clear" in recent["u@plain.test"][7]  # the decision trace
    assert recent["u@ok.test"][5] == "verified"
    assert recent["u@busy.test"][3] == "deferred"
    assert HOSTILE_REPLY in recent["u@busy.test"][7]
    assert "<script>" not in rendered.dom  # the reply is text in the page, never markup

    assert message.status_code == 200
    _, message_tables = page_parts(message.text)
    [recipient] = message_tables["recipients"]
    assert recipient[:3] == ["u@busy.test", "deferred", "1"]
    [attempt] = message_tables["attempts"]
    assert attempt[2] == "deferred" and "451 4.3.2" in attempt[6]


async def test_inline_script_is_refused_by_the_page_policy_and_seen_in_the_console(tmp_path):
    """The control for `console == ()` above: the same headers refuse an inline script, and
    the refusal reaches the console the test reads."""

    async def page(_request: object) -> Response:
        body = b'<!doctype html><p id="x">kept</p><script>document.body.remove()</script>'
        return Response(200, body, "text/html; charset=utf-8")

    port = free_port()
    server = await listen("127.0.0.1", port, page)  # type: ignore[arg-type]
    try:
        rendered = await render(f"http://127.0.0.1:{port}/", tmp_path / "chromium")
    finally:
        server.close()
    [violation] = rendered.console
    assert "Content Security Policy" in violation and "blocked" in violation
    assert page_parts(rendered.dom)[0]["x"] == "kept"


async def test_metrics_on_ipv6_loopback_show_the_queue_gauges_parsed_by_prometheus_client(
    smtp_peer, ca_file, tmp_path
):
    busy = await smtp_peer(Script(rcpt_reply="451 4.3.2 try again later"))
    port = free_port()
    admin_port = free_port()
    config = make_config(tmp_path, port, ca_file, {"busy.test": hop_of(busy)},
                         admin={"address": f"[::1]:{admin_port}"})  # fmt: skip
    base = f"http://[::1]:{admin_port}"
    daemon = await start_daemon(tmp_path, config, port)
    try:
        first = await send(port, "u@busy.test")
        await send(port, "v@busy.test")
        await wait_for(lambda: daemon.text().count("status=deferred") == 2)
        code, out, err = await run_command(RELAYMAIL, "queue", "--config", str(config),
                                           "hold", first)  # fmt: skip
        assert code == 0, out + err
        response = await get(base + "/metrics")
    finally:
        await daemon.stop()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = gauges(response.text)
    assert values[("relaymail_queue_messages", (("state", "deferred"),))] == 2
    assert values[("relaymail_queue_messages", (("state", "queued"),))] == 0
    assert values[("relaymail_queue_messages", (("state", "held"),))] == 1
    assert values[("relaymail_queue_recipients", (("state", "deferred"),))] == 2
    assert values[("relaymail_queue_oldest_seconds", ())] > 0
    assert values[("relaymail_queue_bytes", ())] > 0


async def test_with_a_token_every_page_needs_it_as_bearer_or_basic(smtp_peer, ca_file, tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    peer = await smtp_peer(Script())
    port = free_port()
    config, base = admin_config(tmp_path, port, ca_file, {"ok.test": hop_of(peer)},
                                token_file=token_file)  # fmt: skip
    daemon = await start_daemon(tmp_path, config, port)
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    try:
        refused = [await get(base + path) for path in ("/", "/metrics", "/style.css", "/x")]
        wrong = await get(base + "/metrics", Authorization=f"Bearer {TOKEN}x")
        in_query = await get(f"{base}/metrics?token={TOKEN}")
        bearer = await get(base + "/metrics", Authorization=f"Bearer {TOKEN}")
        browser = await get(base + "/", Authorization=f"Basic {basic}")
    finally:
        await daemon.stop()
    assert [r.status_code for r in refused] == [401, 401, 401, 401]
    assert refused[0].headers.get_list("www-authenticate") == [
        'Basic realm="relaymail admin", charset="UTF-8"', 'Bearer realm="relaymail admin"'
    ]  # fmt: skip
    assert (wrong.status_code, in_query.status_code) == (401, 401)
    assert bearer.status_code == 200 and "relaymail_queue_messages" in bearer.text
    assert browser.status_code == 200 and 'id="queue-messages"' in browser.text


@pytest.mark.parametrize(
    ("admin", "mode", "reason"),
    [
        ({"address": "0.0.0.0:{port}"}, None, "required when admin.address (0.0.0.0:"),
        ({"address": "[::]:{port}"}, None, "is not a loopback address"),
        ({"address": "0.0.0.0:{port}", "token_file": "{file}"}, 0o644, "readable or writable"),
        ({"address": "127.0.0.1:{port}", "token_file": "{file}"}, 0o600, "fewer than 16"),
    ],
)
async def test_admin_listener_refused_at_start_names_the_key(
    ca_file, tmp_path, admin, mode, reason
):
    token_file = tmp_path / "admin.token"
    token_file.write_text("short\n")
    if mode is not None:
        token_file.chmod(mode)
    table = {k: v.format(port=free_port(), file=token_file) for k, v in admin.items()}
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {}, admin=table)
    code, _, err = await run_command(RELAYMAIL, "serve", "--config", str(config), timeout=30)
    assert code == 78, err
    assert err.startswith("relaymail: configuration error: admin.token_file: "), err
    assert reason in err and err.count("\n") == 1, err


async def test_sighup_takes_a_new_token_from_the_same_file(smtp_peer, ca_file, tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port = free_port()
    config, base = admin_config(tmp_path, port, ca_file, {}, token_file=token_file)
    daemon = await start_daemon(tmp_path, config, port)
    try:
        before = await get(base + "/metrics", Authorization=f"Bearer {TOKEN}")
        token_file.write_text(TOKEN + "-rotated")
        await daemon.signal(signal.SIGHUP)
        await wait_for(lambda: "reloaded" in daemon.text())
        old = await get(base + "/metrics", Authorization=f"Bearer {TOKEN}")
        new = await get(base + "/metrics", Authorization=f"Bearer {TOKEN}-rotated")
    finally:
        await daemon.stop()
    assert [r.status_code for r in (before, old, new)] == [200, 401, 200]


async def test_hostile_admin_clients_leave_mail_flowing_and_a_clean_stop(
    smtp_peer, ca_file, tmp_path
):
    peer = await smtp_peer(Script())
    port = free_port()
    config, base = admin_config(tmp_path, port, ca_file, {"ok.test": hop_of(peer)})
    daemon = await start_daemon(tmp_path, config, port)
    admin_port = int(base.rsplit(":", 1)[1])
    try:
        _, slow = await asyncio.open_connection("127.0.0.1", admin_port)
        slow.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")  # and never more
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", admin_port)
        idle.write(b"GET /style.css HTTP/1.1\r\nHost: a\r\n\r\n")  # kept alive afterwards
        await idle_reader.readuntil(b"}\n")
        _, junk = await asyncio.open_connection("127.0.0.1", admin_port)
        junk.write(bytes(range(256)) * 64)
        await send(port, "u@ok.test")
        await wait_for(lambda: peer.transactions, what="delivery")
        page = await get(base + "/")
        code = await daemon.stop()  # with the slow and the idle connection still open
    finally:
        for writer in (slow, idle, junk):
            writer.close()
    assert code == 0 and page.status_code == 200
    assert "Traceback" not in daemon.text() and "Exception" not in daemon.text()
