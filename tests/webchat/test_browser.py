"""The widget in a real headless Chromium (Debian's, driven by Playwright): a shop page on
its own origin under a strict CSP embeds it; the visitor writes, the agent answers through
the API, a reload keeps the history, markup is inert both ways, a foreign origin is refused;
it speaks the browser's language, the account's, or English.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Daemon
from tests.webchat.conftest import ARTIFACTS, AUTH, Site, get_json, reply, serving, wait_until
from tests.webchat.test_protocol import PNG

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                reason="needs Debian's chromium (scripts/setup --test)")
WIDGET = "#omnirelay-chat"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """One Chromium for every browser test (no `playwright install`: Debian's binary)."""
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        await chromium.close()


class Watched:
    """A fresh browser profile's page, with everything it requested and every problem."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.requests: list[str] = []
        self.problems: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))
        page.on("console", lambda msg: self.problems.append(f"console: {msg.text}")
                if msg.type == "error" else None)


@pytest.fixture
async def visitor_page(browser: Any) -> AsyncIterator[Watched]:
    """A page in its own context (its own localStorage: a new visitor)."""
    context = await browser.new_context(viewport={"width": 900, "height": 640})
    watched = Watched(await context.new_page())
    yield watched
    await context.close()


PageIn = Callable[[str], Awaitable[Watched]]


@pytest.fixture
async def page_in(browser: Any) -> AsyncIterator[PageIn]:
    """New visitors' pages whose browser asks for a language (``locale="ko-KR"``: its
    ``navigator.languages`` and ``Accept-Language``)."""
    contexts: list[Any] = []

    async def make(locale: str) -> Watched:
        context = await browser.new_context(viewport={"width": 900, "height": 640},
                                            locale=locale)
        contexts.append(context)
        return Watched(await context.new_page())

    yield make
    for context in contexts:
        await context.close()


async def open_shop(watched: Watched, site: Site) -> Any:
    """Load the shop page, wait for the chat to be online and open its panel."""
    page = watched.page
    await page.goto(site.origin + "/")
    await page.wait_for_selector(f"{WIDGET}[data-state=online]", state="attached",
                                 timeout=15000)
    if not await page.locator(".panel").is_visible():
        await page.click(".bubble")
    return page


async def conversation_of(api: aiohttp.ClientSession, daemon: Daemon, text: str) -> str:
    """The conversation of the web chat message with ``text`` (from the feed)."""
    async def find() -> str | None:
        after = "0"
        while True:
            page = await get_json(api, f"{daemon.url}/v1/events?after={after}&limit=1000")
            for event in page["events"]:
                message = event["data"].get("message") or {}
                if event["type"] == "message.received" and message.get("text") == text:
                    return str(message["conversation_id"])
            if not page["events"]:
                return None
            after = page["next"]
    result: str = await wait_until(find)
    return result


async def test_visitor_writes_agent_replies_and_a_reload_keeps_the_history(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site,
        visitor_page: Watched) -> None:
    page = await open_shop(visitor_page, shop)
    assert await page.get_attribute(".bubble", "aria-expanded") == "true"
    assert await page.locator(".log").get_attribute("role") == "log"
    await page.fill("#omnirelay-text", "Do you ship to Busan?")
    await page.press("#omnirelay-text", "Enter")
    await page.locator("li.msg.me:not(.pending)", has_text="Do you ship to Busan?").wait_for()

    conversation_id = await conversation_of(api, chat_daemon, "Do you ship to Busan?")
    queued = await reply(api, chat_daemon, conversation_id, "Yes, in two days.", agent="Mina")
    answer = page.locator("li.msg.agent", has_text="Yes, in two days.")
    await answer.wait_for()
    assert await answer.locator(".who").text_content() == "Mina"
    # Shown in the open panel: read, as the help desk sees it.
    await wait_until(lambda: _status_is(api, chat_daemon, queued["id"], "read"))

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "webchat-widget.png"))

    await page.reload()
    await page.wait_for_selector(f"{WIDGET}[data-state=online]", state="attached")
    if not await page.locator(".panel").is_visible():
        await page.click(".bubble")
    texts = await page.locator("li.msg .text").all_text_contents()
    assert texts == ["Do you ship to Busan?", "Yes, in two days."]

    # Keyboard: Escape closes and gives focus back to the bubble; Enter opens again.
    await page.keyboard.press("Escape")
    assert await page.locator(".panel").is_hidden()
    assert await page.evaluate("document.activeElement.id") == "omnirelay-chat"
    await page.keyboard.press("Enter")
    assert await page.locator(".panel").is_visible()

    daemon_origin = chat_daemon.url
    strangers = [u for u in visitor_page.requests
                 if not u.startswith((shop.origin, daemon_origin,
                                      daemon_origin.replace("http", "ws")))]
    assert strangers == []  # no request leaves the shop and omnirelay
    assert visitor_page.problems == []  # no CSP violation, no script error


async def _status_is(api: aiohttp.ClientSession, daemon: Daemon, message_id: str,
                     status: str) -> bool:
    message = await get_json(api, f"{daemon.url}/v1/messages/{message_id}")
    return bool(message["status"] == status)


async def test_markup_from_the_visitor_or_the_agent_stays_text(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site,
        visitor_page: Watched) -> None:
    page = await open_shop(visitor_page, shop)
    payload = '<img src=x onerror="window.__xss=1"><b>bold</b>'
    await page.fill("#omnirelay-text", payload)
    await page.click(".send")
    await page.locator("li.msg.me:not(.pending)", has_text="onerror").wait_for()
    conversation_id = await conversation_of(api, chat_daemon, payload)
    agent_payload = '<script>window.__xss=2</script><img src=y onerror="window.__xss=3">'
    await reply(api, chat_daemon, conversation_id, agent_payload,
                agent='<img src=z onerror="window.__xss=4">')
    await page.locator("li.msg.agent", has_text="window.__xss=2").wait_for()

    texts = await page.locator("li.msg .text").all_text_contents()
    assert texts == [payload, agent_payload]  # shown as the characters typed
    assert await page.locator("li.msg.agent .who").text_content() == \
        '<img src=z onerror="window.__xss=4">'
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("li.msg img, li.msg script, li.msg b").count() == 0
    assert visitor_page.problems == []


async def test_a_page_of_another_origin_gets_no_chat(
        chat_daemon: Daemon, api: aiohttp.ClientSession, foreign: Site,
        visitor_page: Watched) -> None:
    page = visitor_page.page
    before = await _refused(api, chat_daemon)
    await page.goto(foreign.origin + "/")
    await page.wait_for_selector(f"{WIDGET}[data-state=offline]", state="attached",
                                 timeout=15000)
    await wait_until(lambda: _more_refused(api, chat_daemon, before))
    await page.click(".bubble")
    await page.fill("#omnirelay-text", "let me in")
    await page.press("#omnirelay-text", "Enter")
    # Kept in the widget, never stored.
    await page.locator("li.msg.pending", has_text="let me in").wait_for()
    assert await page.get_attribute(WIDGET, "data-state") != "online"
    assert await page.locator(".status").text_content() in (
        "Connecting…", "Offline — your messages are kept and sent when the connection returns.")


async def _refused(api: aiohttp.ClientSession, daemon: Daemon) -> int:
    channels = await get_json(api, f"{daemon.url}/v1/channels")
    shop = next(c for c in channels["channels"] if c["name"] == "shop")
    return int(shop["counters"]["refused_origin"])


async def _more_refused(api: aiohttp.ClientSession, daemon: Daemon, before: int) -> bool:
    return await _refused(api, daemon) > before


async def test_messages_typed_offline_are_sent_when_the_connection_returns(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site,
        visitor_page: Watched) -> None:
    page = await open_shop(visitor_page, shop)
    await page.context.set_offline(True)
    await page.evaluate("window.dispatchEvent(new Event('offline'))")
    await page.wait_for_selector(f"{WIDGET}[data-state=offline]", state="attached",
                                 timeout=15000)
    await page.fill("#omnirelay-text", "typed on the train")
    await page.press("#omnirelay-text", "Enter")
    pending = page.locator("li.msg.pending", has_text="typed on the train")
    await pending.wait_for()
    assert "Not sent yet" in (await pending.text_content() or "")
    # The train leaves the tunnel twenty minutes later (the page's clock moves on).
    await page.evaluate("(() => { const now = Date.now.bind(Date);"
                        " Date.now = () => now() + 20 * 60 * 1000; })()")
    await page.context.set_offline(False)
    await page.locator("li.msg.me:not(.pending)", has_text="typed on the train").wait_for(
        timeout=20000)
    conversation = await conversation_of(api, chat_daemon, "typed on the train")
    assert await page.locator("li.msg.pending").count() == 0
    # Agents see when it was written, not only when it arrived.
    listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation}/messages")
    [message] = [m for m in listed["messages"] if m["text"] == "typed on the train"]
    waited = (datetime.fromisoformat(message["received_at"])
              - datetime.fromisoformat(message["sent_at"]))
    assert timedelta(minutes=20) <= waited < timedelta(minutes=21)


@pytest.fixture(scope="session")
async def form_site(chat_daemon: Daemon) -> AsyncIterator[Site]:
    """A site embedding the ``form`` account (pre-chat form on)."""
    async with serving(chat_daemon, "form") as site:
        yield site


async def test_the_pre_chat_form_names_the_visitor_and_links_their_email(
        chat_daemon: Daemon, api: aiohttp.ClientSession, form_site: Site,
        visitor_page: Watched) -> None:
    page = await open_shop(visitor_page, form_site)
    assert await page.locator(".composer").is_hidden()
    await page.fill("#omnirelay-name", "Park Jisoo")
    await page.fill("#omnirelay-email", "not-an-address")
    await page.click(".start")
    assert await page.locator(".prechat").is_visible()  # the browser's own check stops it
    await page.fill("#omnirelay-email", "jisoo@example.com")
    await page.click(".start")
    assert await page.locator(".composer").is_visible()
    await page.wait_for_selector(f"{WIDGET}[data-state=online]", state="attached",
                                 timeout=15000)
    await page.fill("#omnirelay-text", "About my order")
    await page.press("#omnirelay-text", "Enter")
    await page.locator("li.msg.me:not(.pending)", has_text="About my order").wait_for()
    found = await get_json(api, f"{chat_daemon.url}/v1/customers?identity="
                                "email:jisoo@example.com")
    [customer] = found["customers"]
    assert customer["name"] == "Park Jisoo"
    assert {i["kind"] for i in customer["identities"]} == {"webchat", "email"}
    # Asked once: a reload goes straight to the chat.
    await page.reload()
    await page.wait_for_selector(f"{WIDGET}[data-state=online]", state="attached")
    await page.click(".bubble")
    assert await page.locator(".prechat").is_hidden()
    assert visitor_page.problems == []


async def test_a_file_is_sent_from_the_browser_and_shown(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site,
        visitor_page: Watched) -> None:
    page = await open_shop(visitor_page, shop)
    await page.set_input_files("#omnirelay-file", files=[
        {"name": "photo.png", "mimeType": "image/png", "buffer": PNG}])
    thumb = page.locator("li.msg.me:not(.pending) img.thumb")
    await thumb.wait_for()
    await page.wait_for_function(
        "() => { const host = document.querySelector('#omnirelay-chat');"
        " const img = host.shadowRoot.querySelector('img.thumb');"
        " return img && img.complete && img.naturalWidth === 1; }")
    assert await thumb.get_attribute("alt") == "photo.png"
    assert visitor_page.problems == []  # the shop's CSP let it load from omnirelay only


async def _texts(page: Any) -> dict[str, str | None]:
    """What a visitor reads and a screen reader announces, by part of the widget."""
    return {
        "lang": await page.get_attribute(".widget", "lang"),
        "bubble": await page.get_attribute(".bubble", "aria-label"),
        "title": await page.locator(".title").text_content(),
        "status": await page.locator(".status").text_content(),
        "send": await page.locator(".send").text_content(),
        "placeholder": await page.get_attribute("#omnirelay-text", "placeholder"),
        "name": await page.locator("label[for=omnirelay-name]").text_content(),
        "email": await page.locator("label[for=omnirelay-email]").text_content(),
        "start": await page.locator(".start").text_content(),
        "skip": await page.locator(".skip").text_content(),
    }


async def _online(page: Any, url: str) -> None:
    await page.goto(url)
    await page.wait_for_selector(f"{WIDGET}[data-state=online]", state="attached",
                                 timeout=15000)


async def test_a_korean_browser_gets_the_widget_in_korean_unless_the_page_says_otherwise(
        chat_daemon: Daemon, api: aiohttp.ClientSession, form_site: Site,
        page_in: PageIn) -> None:
    watched = await page_in("ko-KR")
    page = watched.page
    await _online(page, form_site.origin + "/")
    assert await _texts(page) == {
        "lang": "ko", "bubble": "채팅 상담 열기", "title": "채팅 상담", "status": "온라인",
        "send": "보내기", "placeholder": "메시지를 입력하세요…", "name": "이름",
        "email": "이메일", "start": "상담 시작하기", "skip": "건너뛰기"}
    await page.click(".bubble")
    assert await page.get_attribute(".bubble", "aria-label") == "채팅 상담 닫기"
    assert await page.locator(".prechat").is_visible()
    assert await page.get_attribute(".prechat", "aria-label") == "상담을 시작하기 전에"
    # The browser's language reaches the agents: the conversation's context says ko-KR.
    await page.click(".skip")
    await page.fill("#omnirelay-text", "배송은 언제 되나요?")
    await page.press("#omnirelay-text", "Enter")
    conversation_id = await conversation_of(api, chat_daemon, "배송은 언제 되나요?")
    conversation = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation_id}")
    assert conversation["context"]["language"] == "ko-KR"

    # The page's data-language wins over the browser.
    await _online(page, form_site.origin + "/?language=en")
    texts = await _texts(page)
    assert (texts["lang"], texts["title"], texts["send"], texts["name"]) == \
        ("en", "Chat with us", "Send", "Name")
    assert watched.problems == []


@pytest.fixture(scope="session")
async def ja_site(chat_daemon: Daemon) -> AsyncIterator[Site]:
    """A site embedding the ``ja`` account (``language = "ja"``, no title)."""
    async with serving(chat_daemon, "ja") as site:
        yield site


async def test_an_account_in_japanese_overrides_an_english_browser(
        chat_daemon: Daemon, api: aiohttp.ClientSession, ja_site: Site,
        page_in: PageIn) -> None:
    watched = await page_in("en-US")
    page = await open_shop(watched, ja_site)
    texts = await _texts(page)
    assert {k: texts[k] for k in ("lang", "bubble", "title", "status", "send",
                                  "placeholder")} == {
        "lang": "ja", "bubble": "チャットを閉じる", "title": "チャットでお問い合わせ",
        "status": "オンライン", "send": "送信", "placeholder": "メッセージを入力…"}
    await page.fill("#omnirelay-text", "サイズ交換はできますか")
    await page.press("#omnirelay-text", "Enter")
    await page.locator("li.msg.me:not(.pending)", has_text="サイズ交換").wait_for()
    conversation_id = await conversation_of(api, chat_daemon, "サイズ交換はできますか")
    await reply(api, chat_daemon, conversation_id, "はい、できます。", agent=None)
    answer = page.locator("li.msg.agent", has_text="はい、できます。")
    await answer.wait_for()
    assert await answer.locator(".who").text_content() == "担当者"  # not "Chat with us"
    assert watched.problems == []


async def test_a_browser_in_a_language_the_widget_lacks_gets_english(
        shop: Site, page_in: PageIn) -> None:
    watched = await page_in("de-DE")
    page = watched.page
    await _online(page, shop.origin + "/")
    texts = await _texts(page)
    assert {k: texts[k] for k in ("lang", "bubble", "title", "status", "send",
                                  "placeholder")} == {
        "lang": "en", "bubble": "Open chat", "title": "Kim's shop",  # the account's title
        "status": "Online", "send": "Send", "placeholder": "Write a message…"}
    assert await page.evaluate("navigator.language") == "de-DE"
    assert watched.problems == []


def test_the_screenshot_is_kept_as_an_artifact() -> None:
    shot = ARTIFACTS / "webchat-widget.png"
    if not shot.exists():
        pytest.skip("the browser test did not run")
    assert shot.stat().st_size > 1000
    assert Path(shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- files kept offline

KEPT_ENTRIES = """async () => {
  // The widget's IndexedDB entries on this origin (the schema as widget.js makes it).
  const db = await new Promise((resolve, reject) => {
    const request = indexedDB.open("omnirelay-chat", 1);
    request.onupgradeneeded = () => request.result.createObjectStore(
      "files", {keyPath: ["widget", "visitor", "id"]});
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  const entries = await new Promise((resolve, reject) => {
    const request = db.transaction("files").objectStore("files").getAll();
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  db.close();
  return entries.map(e => ({widget: e.widget, visitor: e.visitor, id: e.id, at: e.at,
                            names: e.files.map(f => f.filename),
                            bytes: e.files.reduce((n, f) => n + f.data.byteLength, 0)}));
}"""


async def kept_entries(page: Any) -> list[dict[str, Any]]:
    """What the widget keeps in this origin's IndexedDB."""
    entries: list[dict[str, Any]] = await page.evaluate(KEPT_ENTRIES)
    return entries


async def serve_from_cache(page: Any, site: Site, api: aiohttp.ClientSession) -> None:
    """Serve the shop page and the widget's files from copies, as the browser's cache or
    the shop's service worker would: the page reloads while the device is offline, the
    chat's WebSocket cannot connect."""
    urls = [site.origin + "/", f"{site.daemon_url}/chat/{site.account}/widget.js",
            f"{site.daemon_url}/chat/{site.account}/widget.css"]
    copies: dict[str, tuple[bytes, dict[str, str]]] = {}
    for url in urls:
        async with api.get(url) as response:
            assert response.status == 200
            copies[url] = (await response.read(),
                           {k: v for k, v in response.headers.items()
                            if k in ("Content-Type", "Content-Security-Policy")})

    async def fulfil(route: Any) -> None:
        body, headers = copies[route.request.url]
        await route.fulfill(status=200, body=body, headers=headers)

    for url in urls:
        await page.route(url, fulfil)
    # A page from a copy has no address, so Chromium counts it as the public internet and
    # keeps it from 127.0.0.1 (Local Network Access) unless allowed, as a shop's visitor
    # would be asked to; the shop and omnirelay are one public site apart in real life.
    await page.context.grant_permissions(["local-network-access"])


async def go_offline(page: Any) -> None:
    """The device loses its network (and the page hears of it at once)."""
    await page.context.set_offline(True)
    await page.evaluate("window.dispatchEvent(new Event('offline'))")
    await page.wait_for_selector(f"{WIDGET}[data-state=offline]", state="attached")


async def reload_offline(page: Any) -> None:
    """Reload while offline; the widget comes back offline, its panel open."""
    await page.reload()
    await page.wait_for_selector(f"{WIDGET}[data-state=offline]", state="attached")
    if not await page.locator(".panel").is_visible():
        await page.click(".bubble")


async def test_a_file_attached_offline_survives_a_reload_and_is_sent_once_in_its_place(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site,
        visitor_page: Watched) -> None:
    page = await open_shop(visitor_page, shop)
    await serve_from_cache(page, shop, api)
    await go_offline(page)
    photo = PNG + os.urandom(60_000)  # a photo of the damaged parcel (bytes after IEND)
    before, after = f"The parcel came damaged {uuid.uuid4().hex}", "Here is a photo of it."
    await page.fill("#omnirelay-text", before)
    await page.press("#omnirelay-text", "Enter")
    await page.set_input_files("#omnirelay-file", files=[
        {"name": "parcel.png", "mimeType": "image/png", "buffer": photo}])
    await page.locator("li.msg.pending .file", has_text="parcel.png").wait_for()
    await page.fill("#omnirelay-text", after)
    await page.press("#omnirelay-text", "Enter")
    await page.locator("li.msg.pending", has_text=after).wait_for()
    [entry] = await wait_until(lambda: kept_entries(page))
    visitor = (await page.evaluate(
        f"localStorage.getItem('omnirelay-chat:{shop.daemon_url}/chat/shop:token')")).strip('"')
    assert (entry["widget"], entry["visitor"]) == (f"{shop.daemon_url}/chat/shop",
                                                   visitor.split(".")[0])
    assert (entry["names"], entry["bytes"]) == (["parcel.png"], len(photo))

    await reload_offline(page)
    # Shown again as it was: the text, the file, the text, all not sent yet.
    pending = page.locator("li.msg.pending")
    await pending.nth(2).wait_for()
    assert await pending.locator(".text").all_text_contents() == [before, "", after]
    assert await pending.nth(1).locator(".file").text_content() == "parcel.png"
    assert await pending.locator(".note").all_text_contents() == ["Not sent yet"] * 3
    assert [e["id"] for e in await kept_entries(page)] == [entry["id"]]

    await page.context.set_offline(False)
    sent = page.locator("li.msg.me:not(.pending)")
    await sent.nth(2).wait_for(timeout=20000)
    assert await page.locator("li.msg.pending").count() == 0
    conversation_id = await conversation_of(api, chat_daemon, before)
    listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation_id}"
                                 "/messages")
    messages = listed["messages"]
    assert [(m["text"], [a["filename"] for a in m["attachments"]]) for m in messages] == [
        (before, []), ("", ["parcel.png"]), (after, [])]  # in order, each once
    [attachment] = messages[1]["attachments"]
    assert attachment["sha256"] == hashlib.sha256(photo).hexdigest()
    async with api.get(chat_daemon.url + attachment["url"], headers=AUTH) as response:
        assert response.status == 200 and await response.read() == photo
    # Confirmed by the server: nothing is kept any more.
    await wait_until(lambda: _nothing_kept(page))
    assert [p for p in visitor_page.problems if p.startswith("pageerror")] == []


async def _nothing_kept(page: Any) -> bool:
    return await kept_entries(page) == []


async def test_over_what_may_wait_offline_a_file_is_refused_with_a_note(
        shop: Site, page_in: PageIn) -> None:
    watched = await page_in("ko-KR")
    page = await open_shop(watched, shop)
    await go_offline(page)
    for n in range(10):  # ten files may wait
        await page.set_input_files("#omnirelay-file", files=[
            {"name": f"photo-{n}.jpg", "mimeType": "image/jpeg", "buffer": os.urandom(1000)}])
        await page.locator("li.msg.pending .file").nth(n).wait_for()
    assert await page.locator(".notice").is_hidden()
    await page.set_input_files("#omnirelay-file", files=[
        {"name": "photo-10.jpg", "mimeType": "image/jpeg", "buffer": os.urandom(1000)}])
    notice = page.locator(".notice")
    await notice.wait_for()
    assert await notice.get_attribute("role") == "alert"
    assert await notice.text_content() == (
        "photo-10.jpg 파일을 첨부하지 못했습니다. 전송을 기다리는 파일은 최대 10개(25MB)까지 "
        "보관됩니다. 메시지가 전송된 뒤 다시 첨부해 주세요.")
    assert await page.locator("li.msg.pending .file").count() == 10
    entries = await wait_until(lambda: _entries_at_least(page, 10))
    assert sorted(name for e in entries for name in e["names"]) == \
        sorted(f"photo-{n}.jpg" for n in range(10))
    # The next message clears the note.
    await page.fill("#omnirelay-text", "사진은 나중에 보낼게요")
    await page.press("#omnirelay-text", "Enter")
    await notice.wait_for(state="hidden")
    assert [p for p in watched.problems if p.startswith("pageerror")] == []


async def _entries_at_least(page: Any, count: int) -> list[dict[str, Any]] | None:
    entries = await kept_entries(page)
    return entries if len(entries) >= count else None


async def test_without_indexeddb_the_visitor_is_told_a_reload_loses_the_file(
        api: aiohttp.ClientSession, shop: Site, page_in: PageIn) -> None:
    watched = await page_in("ja-JP")
    page = watched.page
    # As some private modes do: opening a database throws.
    await page.context.add_init_script(
        "IDBFactory.prototype.open = function () {"
        " throw new DOMException('The operation is insecure.', 'SecurityError'); };")
    page = await open_shop(watched, shop)
    await serve_from_cache(page, shop, api)
    await go_offline(page)
    await page.set_input_files("#omnirelay-file", files=[
        {"name": "box.png", "mimeType": "image/png", "buffer": PNG}])
    note = page.locator("li.msg.pending", has_text="box.png").locator(".note")
    await note.filter(has_text="再読み込み").wait_for()
    assert await note.text_content() == \
        "未送信 — ページを再読み込みすると、このファイルは失われます"

    await reload_offline(page)
    failed = page.locator("li.msg.failed", has_text="box.png")
    await failed.wait_for()
    assert await failed.locator(".note").text_content() == \
        "送信できませんでした\uff1abox.png を保存できませんでした。もう一度添付してください。"
    assert await page.locator("li.msg.pending:not(.failed)").count() == 0
    assert [p for p in watched.problems if p.startswith("pageerror")] == []


PUT_ENTRIES = """async ([entries, queueKey, queue]) => {
  const db = await new Promise((resolve, reject) => {
    const request = indexedDB.open("omnirelay-chat", 1);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  await new Promise((resolve, reject) => {
    const tx = db.transaction("files", "readwrite");
    for (const e of entries) {
      tx.objectStore("files").put({...e, files: [{filename: e.name, content_type: "image/png",
                                                  data: new Uint8Array([1, 2, 3]).buffer}]});
    }
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
  });
  db.close();
  localStorage.setItem(queueKey, JSON.stringify(queue));
}"""


async def test_stale_entries_are_cleared_when_the_widget_starts(
        shop: Site, visitor_page: Watched) -> None:
    page = await open_shop(visitor_page, shop)
    widget = f"{shop.daemon_url}/chat/shop"
    token = await page.evaluate(f"localStorage.getItem('omnirelay-chat:{widget}:token')")
    visitor = token.strip('"').split(".")[0]
    now = await page.evaluate("Date.now()")
    entries = [
        {"widget": widget, "visitor": visitor, "id": "weekold", "at": now - 8 * 86400_000,
         "name": "old.png"},
        {"widget": widget, "visitor": "vis_someone_else_0000000", "id": "another",
         "at": now, "name": "theirs.png"},
        {"widget": widget, "visitor": visitor, "id": "unqueued", "at": now - 120_000,
         "name": "sent.png"},  # confirmed, but the page closed before its entry went
        {"widget": widget, "visitor": visitor, "id": "justkept", "at": now,
         "name": "new.png"},  # another tab kept it a moment ago and is about to queue it
        {"widget": "http://elsewhere.example/chat/x", "visitor": visitor, "id": "notours",
         "at": now - 8 * 86400_000, "name": "other-widget.png"},
    ]
    queue = [{"id": e["id"], "text": "", "at": e["at"], "files": [{"filename": e["name"],
                                                                   "size": 3}]}
             for e in entries[:2]]
    await page.evaluate(PUT_ENTRIES, [entries, f"omnirelay-chat:{widget}:queue", queue])
    assert len(await kept_entries(page)) == 5

    await page.reload()
    await page.wait_for_selector(f"{WIDGET}[data-state=online]", state="attached")
    for name in ("old.png", "theirs.png"):  # said, not dropped silently
        failed = page.locator("li.msg.failed", has_text=name)
        await failed.wait_for(state="attached")
        assert await failed.locator(".note").text_content() == \
            f"Not sent: {name} could not be kept. Please attach it again."
    # Another widget's, and one too fresh to be called stale.
    assert sorted(e["id"] for e in await kept_entries(page)) == ["justkept", "notours"]
    assert await queue_keys(page) == []  # the old queue was read, and the lost ones went
    assert visitor_page.problems == []


async def queue_keys(page: Any) -> list[str]:
    """The widget's saved queue in this origin's localStorage: its keys."""
    keys: list[str] = await page.evaluate(
        "Object.keys(localStorage).filter(k => k.startsWith('omnirelay-chat:')"
        " && (k.includes(':q:') || k.endsWith(':queue'))).sort()")
    return keys


async def test_messages_queued_offline_in_two_tabs_are_all_sent_once(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site, browser: Any) -> None:
    """One visitor, two tabs of the shop, both offline: each queues its own messages; after
    reloading both, every message is still there and stored once when they are online."""
    context = await browser.new_context(viewport={"width": 900, "height": 640})
    try:
        tabs = [Watched(await context.new_page()), Watched(await context.new_page())]
        first, second = [await open_shop(tab, shop) for tab in tabs]
        for page in (first, second):
            await serve_from_cache(page, shop, api)
            await go_offline(page)
        photo = PNG + os.urandom(20_000)
        order, broken = f"my order number is {uuid.uuid4().hex}", "and the parcel arrived broken"
        await first.fill("#omnirelay-text", order)
        await first.press("#omnirelay-text", "Enter")
        await first.locator("li.msg.pending", has_text=order).wait_for()
        # The other tab shows it waiting too.
        await second.locator("li.msg.pending", has_text=order).wait_for()
        await second.fill("#omnirelay-text", broken)
        await second.press("#omnirelay-text", "Enter")
        await second.set_input_files("#omnirelay-file", files=[
            {"name": "broken.png", "mimeType": "image/png", "buffer": photo}])
        await first.locator("li.msg.pending .file", has_text="broken.png").wait_for()
        assert len(await queue_keys(first)) == 3
        assert [e["names"] for e in await kept_entries(first)] == [["broken.png"]]

        for page in (first, second):
            await reload_offline(page)
        for page in (first, second):  # each tab shows all three, in the order written
            pending = page.locator("li.msg.pending")
            await pending.nth(2).wait_for()
            assert await pending.locator(".text").all_text_contents() == [order, broken, ""]
            assert await pending.nth(2).locator(".file").text_content() == "broken.png"
            assert await pending.locator(".note").all_text_contents() == ["Not sent yet"] * 3

        await context.set_offline(False)
        for page in (first, second):
            await page.locator("li.msg.me:not(.pending)").nth(2).wait_for(timeout=20000)
        conversation_id = await conversation_of(api, chat_daemon, order)
        listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation_id}"
                                     "/messages")
        messages = listed["messages"]
        assert [(m["text"], [a["filename"] for a in m["attachments"]]) for m in messages] == [
            (order, []), (broken, []), ("", ["broken.png"])]  # each once, in order
        assert messages[2]["attachments"][0]["sha256"] == hashlib.sha256(photo).hexdigest()
        for page in (first, second):  # each shown once, nothing waiting
            assert await page.locator("li.msg .text").all_text_contents() == [order, broken, ""]
            assert await page.locator("li.msg.pending").count() == 0
        assert await queue_keys(first) == []
        await wait_until(lambda: _nothing_kept(first))

        # Online, a message from one tab shows once in both, never left waiting in the other.
        await second.fill("#omnirelay-text", "thanks")
        await second.press("#omnirelay-text", "Enter")
        for page in (first, second):
            await page.locator("li.msg.me:not(.pending)", has_text="thanks").wait_for()
        assert await queue_keys(first) == []
        for page in (first, second):
            assert await page.locator("li.msg .text").all_text_contents() == [
                order, broken, "", "thanks"]
            assert await page.locator("li.msg.pending").count() == 0
        assert [p for tab in tabs for p in tab.problems if p.startswith("pageerror")] == []
    finally:
        await context.close()


class Relay:
    """A tab's chat WebSocket through the test: cut (it opens, but nothing reaches the
    server, so the widget waits as if offline), or passed on, with the frames ``hold_out``
    picks held until ``release``; ``on_in`` sees each frame from the server and says
    whether it goes to the page now (else the test sends it later with ``deliver``)."""

    def __init__(self) -> None:
        self.cut = False
        self.page: Any = None
        self.server: Any = None
        self.hanging = asyncio.Event()
        self.hold_out: Callable[[dict[str, Any]], bool] = lambda frame: False
        self.held_out: list[str] = []
        self.on_in: Callable[[dict[str, Any], str], bool] = lambda frame, raw: True

    def __call__(self, ws: Any) -> None:
        self.page, self.server = ws, None
        if self.cut:
            self.hanging.set()
            return
        self.server = server = ws.connect_to_server()
        ws.on_message(self._out)
        server.on_message(self._in)

    def _out(self, message: str | bytes) -> None:
        if self.hold_out(json.loads(message)):
            self.held_out.append(str(message))
        else:
            self.server.send(message)

    def _in(self, message: str | bytes) -> None:
        if self.on_in(json.loads(message), str(message)):
            self.page.send(message)

    def release(self) -> None:
        held, self.held_out = self.held_out, []
        for message in held:
            self.server.send(message)

    def deliver(self, message: str) -> None:
        self.page.send(message)

    async def cut_off(self, page: Any) -> None:
        """The connection drops; the widget's next ones reach nothing."""
        self.cut = True
        self.hanging.clear()
        server = self.server
        await self.page.close()
        if server is not None:
            await server.close()
        await self.hanging.wait()

    async def reconnect(self, page: Any) -> None:
        """Let the widget through again, now (as when the device is back online)."""
        self.cut = False
        await self.page.close()
        await page.wait_for_selector(f"{WIDGET}[data-state=offline]", state="attached")
        await page.evaluate("window.dispatchEvent(new Event('online'))")


async def test_a_message_confirmed_before_the_other_tab_connects_keeps_its_place(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site, browser: Any) -> None:
    """Two tabs of one visitor wait with the same three messages. One connects first and
    has the first stored (the other stops showing it as waiting); the other connects while
    the second is being stored, so it hears of the second before its history brings the
    first. Every tab shows them in the order written, as the store has them."""
    context = await browser.new_context(viewport={"width": 900, "height": 640})
    try:
        tabs = [Watched(await context.new_page()), Watched(await context.new_page())]
        first, second = tabs[0].page, tabs[1].page
        relays = {first: Relay(), second: Relay()}
        url = shop.daemon_url.replace("http://", "ws://") + "/chat/shop/ws"
        for tab in tabs:  # one visitor: the second tab reads the token the first was given
            await tab.page.route_web_socket(url, relays[tab.page])
            await open_shop(tab, shop)
        for page, relay in relays.items():
            await relay.cut_off(page)
        order, broken, more = (f"my order number is {uuid.uuid4().hex}",
                               "and the parcel arrived broken", "the box was wet too")
        for body in (order, broken, more):
            await first.fill("#omnirelay-text", body)
            await first.press("#omnirelay-text", "Enter")
        await second.locator("li.msg.pending").nth(2).wait_for()

        # The first tab has only its first message stored, for now.
        ahead, behind = relays[first], relays[second]
        ahead.hold_out = lambda frame: frame.get("type") == "message" \
            and frame.get("text") != order
        await ahead.reconnect(first)
        await first.locator("li.msg.me:not(.pending)", has_text=order).wait_for()
        await second.locator("li.msg", has_text=order).wait_for(state="detached")

        # The second tab connects; the first's next message is stored once the server has
        # the second's socket, and its confirmation reaches that tab before its history.
        held: list[str] = []
        confirmed = False

        def to_second(frame: dict[str, Any], raw: str) -> bool:
            nonlocal confirmed
            if frame.get("type") == "welcome":
                ahead.release()
            elif frame.get("type") == "history" and not confirmed:
                held.append(raw)
                return False
            elif frame.get("type") == "message" and frame["message"].get("text") == broken:
                confirmed = True
                behind.deliver(raw)
                for message in held:
                    behind.deliver(message)
                held.clear()
                return False
            return True
        behind.on_in = to_second
        await behind.reconnect(second)
        for page in (first, second):
            await page.locator("li.msg.me:not(.pending)").nth(2).wait_for(timeout=20000)
        conversation_id = await conversation_of(api, chat_daemon, order)
        listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation_id}"
                                     "/messages")
        assert [m["text"] for m in listed["messages"]] == [order, broken, more]
        for page in (first, second):
            assert await page.locator("li.msg .text").all_text_contents() == [
                order, broken, more]
            assert await page.locator("li.msg.pending").count() == 0
        assert [p for tab in tabs for p in tab.problems if p.startswith("pageerror")] == []
    finally:
        await context.close()


PUT_FILE = """async ([entry, bytes]) => {
  const db = await new Promise((resolve, reject) => {
    const request = indexedDB.open("omnirelay-chat", 1);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  await new Promise((resolve, reject) => {
    const tx = db.transaction("files", "readwrite");
    tx.objectStore("files").put({...entry, files: [{filename: entry.name,
      content_type: "image/png", data: new Uint8Array(bytes).buffer}]});
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
  });
  db.close();
}"""


async def test_a_queue_saved_by_an_earlier_widget_is_kept_and_sent(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site,
        visitor_page: Watched) -> None:
    """A visitor whose widget is upgraded during an outage: the one-key queue of the
    earlier version becomes one key per message, and is sent when the connection returns."""
    page = await open_shop(visitor_page, shop)
    await serve_from_cache(page, shop, api)
    await go_offline(page)
    widget = f"{shop.daemon_url}/chat/shop"
    token = await page.evaluate(f"localStorage.getItem('omnirelay-chat:{widget}:token')")
    visitor = token.strip('"').split(".")[0]
    now = await page.evaluate("Date.now()")
    first = f"written before the upgrade {uuid.uuid4().hex}"
    queue = [{"id": "old1", "text": first, "at": now - 5000},
             {"id": "old2", "text": "", "at": now - 4000,
              "files": [{"filename": "box.png", "size": len(PNG)}]},
             {"id": "old3", "text": "and a last word", "at": now - 3000}]
    await page.evaluate(PUT_FILE, [{"widget": widget, "visitor": visitor, "id": "old2",
                                    "at": now - 4000, "name": "box.png"}, list(PNG)])
    await page.evaluate("([key, queue]) => localStorage.setItem(key, JSON.stringify(queue))",
                        [f"omnirelay-chat:{widget}:queue", queue])

    await reload_offline(page)
    pending = page.locator("li.msg.pending")
    await pending.nth(2).wait_for()
    assert await pending.locator(".text").all_text_contents() == [first, "", "and a last word"]
    assert await queue_keys(page) == [f"omnirelay-chat:{widget}:q:old{n}" for n in (1, 2, 3)]

    await page.context.set_offline(False)
    await page.locator("li.msg.me:not(.pending)").nth(2).wait_for(timeout=20000)
    conversation_id = await conversation_of(api, chat_daemon, first)
    listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation_id}"
                                 "/messages")
    assert [(m["text"], [a["filename"] for a in m["attachments"]])
            for m in listed["messages"]] == [
        (first, []), ("", ["box.png"]), ("and a last word", [])]
    assert listed["messages"][1]["attachments"][0]["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert await page.locator("li.msg.pending").count() == 0
    assert await queue_keys(page) == []
    await wait_until(lambda: _nothing_kept(page))
    assert [p for p in visitor_page.problems if p.startswith("pageerror")] == []


async def test_a_message_the_server_refuses_is_shown_refused_in_every_tab(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site, browser: Any) -> None:
    """The account's limits were lowered after one tab was told them: that tab lets the
    visitor write more than the server takes. The refusal shows in the message's place in
    both tabs, neither keeps it waiting, and nothing is stored."""
    context = await browser.new_context(viewport={"width": 900, "height": 640})
    try:
        tabs = [Watched(await context.new_page()), Watched(await context.new_page())]
        sender, other = tabs[0].page, tabs[1].page

        def stale_limits(ws: Any) -> None:
            server = ws.connect_to_server()

            def to_page(message: str | bytes) -> None:
                frame = json.loads(message)
                if frame.get("type") == "welcome":
                    frame["limits"]["max_text_chars"] = 5000
                ws.send(json.dumps(frame))
            server.on_message(to_page)
        await sender.route_web_socket(shop.daemon_url.replace("http://", "ws://")
                                      + "/chat/shop/ws", stale_limits)
        for tab in tabs:
            await open_shop(tab, shop)
        marker = uuid.uuid4().hex
        await sender.fill("#omnirelay-text", f"{marker} " + "x" * 600)
        await sender.press("#omnirelay-text", "Enter")
        for page in (sender, other):
            failed = page.locator("li.msg.failed", has_text=marker)
            await failed.wait_for()
            assert await failed.locator(".note").text_content() == \
                "Not sent: text is longer than 500 characters"
            assert await page.locator("li.msg.pending:not(.failed)").count() == 0
        assert await queue_keys(other) == []
        # The other tab goes on as usual, and the refused text was never stored.
        await other.fill("#omnirelay-text", f"shorter now {marker}")
        await other.press("#omnirelay-text", "Enter")
        for page in (sender, other):
            await page.locator("li.msg.me:not(.pending)", has_text="shorter now").wait_for()
        conversation_id = await conversation_of(api, chat_daemon, f"shorter now {marker}")
        listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation_id}"
                                     "/messages")
        assert [m["text"] for m in listed["messages"]] == [f"shorter now {marker}"]
        assert [p for tab in tabs for p in tab.problems if p.startswith("pageerror")] == []
    finally:
        await context.close()


NEVER_KEPT = """() => {
  // IndexedDB never finishes keeping a file: the tab is closed (or reloaded) first.
  IDBObjectStore.prototype.put = function () {
    this.transaction.oncomplete = null;
    this.transaction.onabort = null;
    return {};
  };
}"""


async def test_a_tab_reloaded_before_its_file_was_kept_says_the_file_is_lost(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site, page_in: PageIn) -> None:
    watched = await page_in("ko-KR")
    page = await open_shop(watched, shop)
    await serve_from_cache(page, shop, api)
    await go_offline(page)
    await page.evaluate(NEVER_KEPT)
    await page.set_input_files("#omnirelay-file", files=[
        {"name": "receipt.png", "mimeType": "image/png", "buffer": PNG}])
    await page.locator("li.msg.pending .file", has_text="receipt.png").wait_for()
    assert len(await queue_keys(page)) == 1  # the message's key is written before its file

    await reload_offline(page)
    failed = page.locator("li.msg.failed", has_text="receipt.png")
    await failed.wait_for()
    assert await failed.locator(".note").text_content() == \
        "보내지 못했습니다: receipt.png 파일을 보관하지 못했습니다. 다시 첨부해 주세요."
    assert await queue_keys(page) == []
    assert await kept_entries(page) == []

    # Online again: no empty message is sent in its place.
    await page.context.set_offline(False)
    await page.wait_for_selector(f"{WIDGET}[data-state=online]", state="attached",
                                 timeout=20000)
    after = f"영수증은 다시 보낼게요 {uuid.uuid4().hex}"
    await page.fill("#omnirelay-text", after)
    await page.press("#omnirelay-text", "Enter")
    await page.locator("li.msg.me:not(.pending)", has_text=after).wait_for()
    conversation_id = await conversation_of(api, chat_daemon, after)
    listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation_id}"
                                 "/messages")
    assert [(m["text"], m["attachments"]) for m in listed["messages"]] == [(after, [])]
    assert await failed.count() == 1  # still said
    assert [p for p in watched.problems if p.startswith("pageerror")] == []


async def test_a_tab_closed_before_its_file_was_kept_leaves_a_note_in_the_other_tab(
        shop: Site, browser: Any) -> None:
    """The other tab showed the message waiting: when the tab keeping its file closes before
    IndexedDB had it, the other tab says the file is lost rather than wait forever."""
    context = await browser.new_context(viewport={"width": 900, "height": 640})
    try:
        tabs = [Watched(await context.new_page()), Watched(await context.new_page())]
        writer, other = [await open_shop(tab, shop) for tab in tabs]
        for page in (writer, other):
            await go_offline(page)
        await writer.evaluate(NEVER_KEPT)
        await writer.set_input_files("#omnirelay-file", files=[
            {"name": "label.png", "mimeType": "image/png", "buffer": PNG}])
        waiting = other.locator("li.msg.pending", has_text="label.png")
        await waiting.wait_for()
        assert await waiting.locator(".note").text_content() == "Not sent yet"

        await writer.close()
        failed = other.locator("li.msg.failed", has_text="label.png")
        await failed.wait_for()
        assert await failed.locator(".note").text_content() == \
            "Not sent: label.png could not be kept. Please attach it again."
        assert await queue_keys(other) == []
        assert [p for tab in tabs for p in tab.problems if p.startswith("pageerror")] == []
    finally:
        await context.close()
