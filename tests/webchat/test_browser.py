"""The widget in a real headless Chromium (Debian's, driven by Playwright): a shop page on
its own origin under a strict CSP embeds it; the visitor writes, the agent answers through
the API, a reload keeps the history, markup is inert both ways, a foreign origin is refused;
it speaks the browser's language, the account's, or English.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Daemon
from tests.webchat.conftest import ARTIFACTS, Site, get_json, reply, wait_until
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
    await page.context.set_offline(False)
    await page.locator("li.msg.me:not(.pending)", has_text="typed on the train").wait_for(
        timeout=20000)
    assert await conversation_of(api, chat_daemon, "typed on the train")
    assert await page.locator("li.msg.pending").count() == 0


@pytest.fixture(scope="session")
async def form_site(chat_daemon: Daemon) -> AsyncIterator[Site]:
    """A site embedding the ``form`` account (pre-chat form on)."""
    site = Site(chat_daemon.url, "form", chat_daemon.ports["form"])  # type: ignore[attr-defined]
    await site.start()
    yield site
    await site.stop()


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
    site = Site(chat_daemon.url, "ja", chat_daemon.ports["ja"])  # type: ignore[attr-defined]
    await site.start()
    yield site
    await site.stop()


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
