"""Headless Chromium driven over the DevTools protocol with aiohttp's WebSocket client: navigate, evaluate
JavaScript, take screenshots. No Selenium or Playwright (Playwright downloads its own browser, which cannot be
fetched here): Debian's ``chromium`` alone is enough."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import stop
from tests.harness import wait_for, wait_for_async

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        assert CHROMIUM is not None
        self.profile = profile
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             f"--window-size={width},{height}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = self._devtools_port()

    def _devtools_port(self, timeout: float = 30.0) -> int:
        path = self.profile / "DevToolsActivePort"

        def written_or_exited() -> str | bool:
            first = path.read_text().split("\n", 1)[0].strip() if path.exists() else ""
            return first if first.isdigit() else self.process.poll() is not None

        port = wait_for(written_or_exited, timeout, what="chromium to open its DevTools port")
        if port is True:
            raise AssertionError(f"chromium exited with {self.process.returncode}")
        return int(port)

    def close(self) -> None:
        stop(self.process, 10)


class Page:
    """One tab; use inside ``async with``."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Page:
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{self.browser.port}/json/list") as r:
            targets = await r.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def send(self, method: str, timeout: float = 20.0, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        message_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        async with asyncio.timeout(timeout):
            while True:
                message = await self._ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"DevTools connection ended: {message.type}")
                data = json.loads(message.data)
                if data.get("id") == message_id:
                    if "error" in data:
                        raise AssertionError(f"{method}: {data['error']}")
                    return dict(data.get("result", {}))

    async def navigate(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0, what: str = "") -> Any:
        """Poll a JavaScript expression until truthy (bounded by ``timeout``)."""
        return await wait_for_async(lambda: self.evaluate(expression), timeout, 0.1, what or expression)

    async def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        return base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"])
