"""The chat page in real browsers: headless Chromium (driven over the DevTools
protocol) and headless Firefox (driven over WebDriver BiDi, built into Firefox)
load ``GET /`` from the chat server, join a room and chat with a Python client
through the browser's own WebSocket; then, in Chromium, a server that requires
signed tokens (the page gets one from ``GET /token``), and a refused token.

Needs Debian's ``chromium`` and ``firefox-esr`` (``.ci/run`` installs them).
Without them the tests skip on a developer machine and FAIL under CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

import reinhardt_ws as rw
from reinhardt_ws.apps.chat import (
    CHAT_SUBPROTOCOL,
    ChatHandler,
    chat_http_handler,
    chat_router,
    make_chat_http_handler,
)

from ..fixtures import free_port, run_on

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")

pytestmark = pytest.mark.slow


def _need(browser: str | None, package: str) -> str:
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{package} is not installed (apt-get install {package})")
        pytest.skip(f"{package} is not installed")
    return browser


def _need_chromium() -> str:
    return _need(CHROMIUM, "chromium")


class DevTools:
    """A minimal DevTools-protocol client for one page."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression,
                                 awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"browser never satisfied: {expression}")

    async def screenshot(self) -> bytes:
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


class BiDi(DevTools):
    """A minimal WebDriver BiDi client for one browsing context (Firefox)."""

    context = ""

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == call_id:
                if reply.get("type") == "error":
                    raise AssertionError(f"{method}: {reply}")
                return dict(reply.get("result", {}))

    async def open(self, url: str) -> None:
        await self.call("session.new", capabilities={})
        tree = await self.call("browsingContext.getTree")
        self.context = tree["contexts"][0]["context"]
        await self.call("browsingContext.navigate", context=self.context, url=url,
                        wait="complete")

    async def js(self, expression: str) -> Any:
        result = await self.call("script.evaluate", expression=expression,
                                 target={"context": self.context}, awaitPromise=True)
        if result.get("type") != "success":
            raise AssertionError(f"{expression}: {result}")
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        shot = await self.call("browsingContext.captureScreenshot", context=self.context)
        return base64.b64decode(shot["data"])


def _end_group(browser: subprocess.Popen[bytes]) -> None:
    """Stop Chromium and every helper process it started (renderer, zygote...)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGTERM)
    try:
        browser.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()
    # Helpers may outlive the main process by a moment: end what is left.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGKILL)


def _page_ws_url(port: int, timeout: float = 20.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [p for p in json.load(r) if p.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("chromium's DevTools endpoint did not come up")


async def _chat_in_browser(chromium: str, screenshot: Path) -> None:
    rooms = rw.RoomManager()
    # Same origin: the page's Origin is the server's own, which the CLI's default
    # policy admits (the test uses that policy).
    async with rw.serve(chat_router(ChatHandler(rooms)), "127.0.0.1", 0,
                        origins=[rw.SAME_ORIGIN, None], ping_interval=None) as server:
        await _in_chromium(chromium, f"http://127.0.0.1:{server.port}/",
                           lambda page: _drive(page, server.port, screenshot))


async def _drive(page: DevTools, port: int, screenshot: Path, name: str = "chromium") -> None:
    await page.wait_for("document.getElementById('status').textContent === 'connected'")
    # Browsers offer permessage-deflate; the server's answer, as the page sees it
    # (Chromium shows the parameters; Firefox only the extension's name).
    extensions = await page.js("ws.extensions")
    assert extensions.split(";")[0] == "permessage-deflate", extensions
    if name == "chromium":
        assert extensions == (
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=12")
    # The browser joins "lobby" through the page's own form.
    await page.js("document.getElementById('room').value = 'lobby';"
                  "document.getElementById('joinform').requestSubmit(); true")
    await page.wait_for("document.getElementById('log').textContent.includes('joined lobby')")
    async with rw.connect(f"ws://127.0.0.1:{port}/ws") as py:
        await py.send_json({"type": "join", "room": "lobby"})
        joined = (await py.recv()).parse_json()["data"]
        assert joined == {"event": "joined", "room": "lobby", "size": 2}
        # Browser -> server -> Python client (and back to the browser itself).
        await page.js(f"document.getElementById('text').value = 'hello from {name}';"
                      "document.getElementById('sendform').requestSubmit(); true")
        event = (await py.recv()).parse_json()["data"]
        assert event["event"] == "message"
        assert event["room"] == "lobby"
        assert event["data"] == f"hello from {name}"
        await page.wait_for(
            f"document.getElementById('log').textContent.includes('hello from {name}')")
        # Python client -> server -> browser.
        await py.send_json({"type": "message", "room": "lobby", "data": "hello from python"})
        mine = (await py.recv()).parse_json()["data"]
        assert mine["data"] == "hello from python"
        await page.wait_for(
            "document.getElementById('log').textContent.includes('hello from python')")
        # A bad request from the browser gets an error reply; its socket stays open.
        await page.js("document.getElementById('room').value = '';"
                      "document.getElementById('joinform').requestSubmit(); true")
        await page.wait_for("document.getElementById('log').textContent.includes('error:')")
        assert await page.js("document.getElementById('status').textContent") == "connected"
    screenshot.write_bytes(await page.screenshot())


def test_chat_page_in_chromium(tmp_path: Path) -> None:
    chromium = _need_chromium()
    shot = tmp_path / "chat.png"
    run_on("asyncio", _chat_in_browser(chromium, shot), timeout=90)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("REINHARDT_WS_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


async def _in_chromium(chromium: str, page: str,
                       drive: Callable[[DevTools], Awaitable[None]]) -> None:
    """Start headless Chromium on *page* and run *drive* on its DevTools session."""
    debug_port = free_port()
    # Chromium's helper processes may still touch the profile as it exits.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--remote-debugging-port={debug_port}",
             "--remote-debugging-address=127.0.0.1", "--window-size=900,700", page],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: helpers end with it
        try:
            url = await asyncio.to_thread(_page_ws_url, debug_port)
            async with websockets.connect(url, max_size=None) as cdp_ws:
                await drive(DevTools(cdp_ws))
        finally:
            _end_group(browser)


def _bidi_url(port: int, browser: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """Wait until Firefox's WebDriver BiDi endpoint accepts a TCP connection."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            raise AssertionError(f"firefox exited with {browser.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return f"ws://127.0.0.1:{port}/session"
        time.sleep(0.2)
    raise AssertionError("firefox's WebDriver BiDi endpoint did not come up")


async def _chat_in_firefox(firefox: str, screenshot: Path) -> list[tuple[str, str]]:
    rooms = rw.RoomManager()
    seen: list[tuple[str, str]] = []

    def note_connection_header(request: rw.Request) -> None:
        seen.append((request.headers.get("user-agent", ""),
                     request.headers.get("connection", "")))

    async with rw.serve(chat_router(ChatHandler(rooms)), "127.0.0.1", 0,
                        origins=[rw.SAME_ORIGIN, None], process_request=note_connection_header,
                        ping_interval=None) as server:
        debug_port = free_port()
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
            browser = subprocess.Popen(
                [firefox, "--headless", "--no-remote", "--profile", profile,
                 f"--remote-debugging-port={debug_port}", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "MOZ_HEADLESS": "1"}, start_new_session=True)
            try:
                url = await asyncio.to_thread(_bidi_url, debug_port, browser)
                async with websockets.connect(url, max_size=None) as bidi_ws:
                    page = BiDi(bidi_ws)
                    await page.open(f"http://127.0.0.1:{server.port}/")
                    await _drive(page, server.port, screenshot, "firefox")
            finally:
                _end_group(browser)
    return seen


def test_chat_page_in_firefox(tmp_path: Path) -> None:
    firefox = _need(FIREFOX, "firefox-esr")
    shot = tmp_path / "chat-firefox.png"
    seen = run_on("asyncio", _chat_in_firefox(firefox, shot), timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The page's WebSocket came from Firefox itself.  (Firefox 153 ESR sends
    # "Connection: Upgrade" on this fresh connection; the "keep-alive, Upgrade"
    # form other Firefox versions send is tested in tests/io/test_handshake_http.py.)
    agents = [agent for agent, connection in seen if "Firefox/" in agent]
    assert agents, seen
    assert all("upgrade" in connection.lower() for _agent, connection in seen), seen


SECRET = "browser-test-secret-" + "q" * 16


async def _token_chat_in_browser(chromium: str, screenshot: Path) -> None:
    """The server as ``serve --token-secret`` runs it."""
    signer = rw.TokenSigner(SECRET)
    async with rw.serve(ChatHandler(rw.RoomManager(), policy=rw.ClaimsPolicy()),
                        "127.0.0.1", 0, http_handler=make_chat_http_handler(signer),
                        authenticate=rw.SignedTokenAuth(signer),
                        subprotocols=(CHAT_SUBPROTOCOL,), ping_interval=None) as server:
        await _in_chromium(chromium, f"http://127.0.0.1:{server.port}/?name=alice",
                           lambda page: _drive_with_token(page, server, signer, screenshot))


async def _drive_with_token(page: DevTools, server: rw.Server, signer: rw.TokenSigner,
                            screenshot: Path) -> None:
    port = server.port
    await page.wait_for("document.getElementById('status').textContent === 'connected'")
    who = await page.wait_for("document.getElementById('who').textContent")
    assert "alice" in who and "DEMO" in who
    (browser_conn,) = server.connections
    assert browser_conn.user["sub"] == "alice"
    assert browser_conn.subprotocol == CHAT_SUBPROTOCOL  # the token was never echoed
    assert "token" not in browser_conn.path  # it rode in the subprotocol, not the URL
    await page.js("document.getElementById('room').value = 'lobby';"
                  "document.getElementById('joinform').requestSubmit(); true")
    await page.wait_for("document.getElementById('log').textContent.includes('joined lobby')")
    bob = signer.sign("bob", ttl=60, rooms=["lobby"])
    async with rw.connect(f"ws://127.0.0.1:{port}/ws?token={bob}") as py:
        await py.send_json({"type": "join", "room": "lobby"})
        assert (await py.recv()).parse_json()["data"] == \
            {"event": "joined", "room": "lobby", "size": 2}
        # Bob's token names his rooms: the policy answers with an error event.
        await py.send_json({"type": "join", "room": "elsewhere"})
        assert (await py.recv()).parse_json()["data"] == \
            {"event": "error", "error": "may not join room 'elsewhere'"}
        await page.js("document.getElementById('text').value = 'hello from alice';"
                      "document.getElementById('sendform').requestSubmit(); true")
        heard = (await py.recv()).parse_json()["data"]
        assert (heard["user"], heard["data"]) == ("alice", "hello from alice")
        await py.send_json({"type": "message", "room": "lobby", "data": "hello from bob"})
        await page.wait_for(
            "document.getElementById('log').textContent.includes('bob: \"hello from bob\"')")
    shot = await page.call("Page.captureScreenshot", format="png")
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    # A page that brings a bad token (from its address' fragment) is refused, and
    # says so.
    forged = rw.TokenSigner("f" * 32).sign("mallory")
    await page.call("Page.navigate", url=f"http://127.0.0.1:{port}/?again=1#token={forged}")
    status = await page.wait_for(
        "document.getElementById('status').textContent.startsWith('refused')"
        " && document.getElementById('status').textContent")
    assert status == "refused: bad token signature (3000)"
    log = await page.js("document.getElementById('log').textContent")
    assert log.count("refused this connection: bad token signature") == 1


def test_chat_page_with_a_token_in_chromium(tmp_path: Path) -> None:
    chromium = _need_chromium()
    shot = tmp_path / "chat-token.png"
    run_on("asyncio", _token_chat_in_browser(chromium, shot), timeout=90)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def _recovery_in_browser(chromium: str) -> None:
    """Two servers share one manager (with the chat's history and presence): the
    page talks to the first; it is closed under the page, a Python client on the
    second says three things meanwhile, the first comes back on its port, and the
    page reconnects (backoff), recovers exactly those messages and shows who is
    there."""
    from reinhardt_ws.apps.chat import CHAT_HISTORY

    rooms = rw.RoomManager(history=CHAT_HISTORY, presence=True)
    handler = ChatHandler(rooms)
    port = free_port()
    first = await rw.serve(handler, "127.0.0.1", port, http_handler=chat_http_handler,
                           ping_interval=None)
    async with rw.serve(handler, "127.0.0.1", 0, ping_interval=None) as second:
        try:
            async def drive(page: DevTools) -> None:
                nonlocal first
                await page.wait_for(
                    "document.getElementById('status').textContent === 'connected'")
                await page.js("document.getElementById('room').value = 'lobby';"
                              "document.getElementById('joinform').requestSubmit(); true")
                await page.wait_for(
                    "document.getElementById('log').textContent.includes('joined lobby')")
                async with rw.connect(f"ws://127.0.0.1:{second.port}/") as py:
                    await py.send_json({"type": "join", "room": "lobby", "presence": True})
                    joined = (await py.recv()).parse_json()["data"]
                    assert len(joined["members"]) == 2
                    await page.wait_for("document.getElementById('members').textContent"
                                        ".split(',').length === 2")
                    await py.send_json({"type": "message", "room": "lobby", "data": "before"})
                    await page.wait_for(
                        "document.getElementById('log').textContent.includes('before')")
                    await first.close(timeout=1)  # the page's server goes away
                    await page.wait_for("document.getElementById('status').textContent"
                                        ".startsWith('reconnecting')")
                    for i in range(3):
                        await py.send_json({"type": "message", "room": "lobby",
                                            "data": f"missed {i}"})
                    first = await rw.serve(handler, "127.0.0.1", port,
                                           http_handler=chat_http_handler, ping_interval=None)
                    await page.wait_for(
                        "document.getElementById('log').textContent.includes('recovered lobby')",
                        timeout=20)
                    await page.wait_for(
                        "document.getElementById('log').textContent.includes('missed 2')")
                    log = await page.js("document.getElementById('log').textContent")
                    assert [log.count(f"missed {i}") for i in range(3)] == [1, 1, 1]
                    assert log.count("before") == 1
                    assert log.index("missed 0") < log.index("missed 1") < log.index("missed 2")
                    assert await page.js(
                        "document.getElementById('status').textContent") == "connected"

            await _in_chromium(chromium, f"http://127.0.0.1:{port}/", drive)
        finally:
            await first.close(timeout=1)


def test_chat_page_recovers_after_its_server_went_away(tmp_path: Path) -> None:
    chromium = _need_chromium()
    run_on("asyncio", _recovery_in_browser(chromium), timeout=90)
