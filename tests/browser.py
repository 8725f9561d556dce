"""A real headless Chromium driven over the DevTools protocol, with no package beyond the
standard library: ``--remote-debugging-pipe`` speaks CDP as NUL-terminated JSON on the child's
file descriptors 3 (commands in) and 4 (answers and events out).

One browser serves a whole test module; each ``page()`` is a fresh tab with its own session
storage. Waits are on conditions in the page (``wait_text``, ``wait_js``), never on time.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
]
#: Seconds to wait for one answer from the browser (a busy machine can be slow; none is expected
#: to take long).
ANSWER_TIMEOUT = 60.0


class BrowserError(RuntimeError):
    """The browser answered a command with an error, died, or did not answer in time."""


def executable() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _high(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or more (so it cannot collide with 3 or 4), then closed."""
    dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return dup


class Browser:
    def __init__(self, path: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="vs-chromium-")
        commands_read, self._commands = map(_high, os.pipe())
        self._answers, answers_write = map(_high, os.pipe())

        def wire() -> None:  # in the child, before exec: our pipes become its fds 3 and 4
            os.dup2(commands_read, 3)
            os.dup2(answers_write, 4)

        self.process = subprocess.Popen(
            [path, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, close_fds=False,
        )
        os.close(commands_read)
        os.close(answers_write)
        self._next_id = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._results: dict[int, dict[str, Any]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._answers, "rb", buffering=0) as stream:
            while chunk := stream.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._cond:
                            self._results[message["id"]] = message
                            self._cond.notify_all()
        with self._cond:
            self._results[-1] = {"error": {"message": "the browser closed its pipe"}}
            self._cond.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + ANSWER_TIMEOUT
        with self._cond:
            while call_id not in self._results and -1 not in self._results:
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise BrowserError(f"no answer to {method} within {ANSWER_TIMEOUT:g}s")
            answer = self._results.pop(call_id, None) or self._results[-1]
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def page(self, width: int = 1280, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except BrowserError:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        os.close(self._commands)
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.browser.send(method, params, self.session)

    def goto(self, url: str) -> None:
        answer = self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url}: {answer['errorText']}")

    def js(self, expression: str) -> Any:
        """The value of ``expression`` in the page (awaited when it is a promise)."""
        answer = self.send("Runtime.evaluate",
                           {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise BrowserError(f"{expression[:80]}: {details.get('exception', {}).get('description') or details}")
        return answer["result"].get("value")

    def wait_js(self, expression: str, timeout: float = 60.0) -> Any:
        """Wait until ``expression`` is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.js(expression)
            except BrowserError:
                value = None  # the page is between documents
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true in the page within {timeout:g}s: {expression}")
            time.sleep(0.1)

    def text(self, selector: str) -> str:
        """The rendered text of the first element matching ``selector`` ('' when none)."""
        value = self.js(f"(function () {{ var n = document.querySelector({json.dumps(selector)});"
                        " return n ? n.innerText : ''; })()")
        return " ".join(str(value or "").split())

    def wait_text(self, selector: str, needle: str, timeout: float = 60.0) -> str:
        """Wait until the element matching ``selector`` shows ``needle``; its whole text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text(selector)
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise TimeoutError(f"{selector!r} never showed {needle!r}; it shows: {text[:2000]!r}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) in the middle of the element."""
        box = self.js(
            f"(function () {{ var n = document.querySelector({json.dumps(selector)}); if (!n) return null;"
            " n.scrollIntoView({block: 'center'}); var r = n.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()")
        if not box:
            raise BrowserError(f"nothing to click: no element matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1})

    def type(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` into it, as a keyboard would insert it."""
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", {"text": text})

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13, "text": "\r" if kind == "keyDown" else ""})

    def screenshot(self, path: Path) -> None:
        """The whole page (not only the viewport) as a PNG."""
        size = self.js("({w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
        shot = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["w"], "height": size["h"], "scale": 1},
        })
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
