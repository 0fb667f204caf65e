"""Drive a headless Chromium over the DevTools protocol, with nothing but the standard library.

Chromium's `--remote-debugging-pipe` speaks CDP over file descriptors 3 (commands in) and 4
(replies and events out), one JSON message per NUL-terminated frame, so no WebSocket client (and
no Playwright download) is needed. `Browser` starts the binary and owns the pipe; `Page` is one
tab attached in flat mode (commands carry its session id): navigate, evaluate JavaScript, wait
for a condition, move and drag the mouse, take a screenshot. Console messages, uncaught
exceptions and CSP violations are collected per page in `Page.errors` / `Page.console`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe")


class CDPError(RuntimeError):
    """A command answered with an error, or the browser went away."""


def _high_fd(fd: int) -> int:
    """`fd` moved to a number >= 10, so the child's dup2 onto 3 and 4 cannot clobber it."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Browser:
    """A headless Chromium process with a CDP pipe; use as a context manager."""

    def __init__(self, binary: str, *, extra_flags: tuple[str, ...] = ()) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="cdp-profile-")
        cmd_r, cmd_w = (_high_fd(f) for f in os.pipe())  # we write commands, the browser reads fd 3
        ev_r, ev_w = (_high_fd(f) for f in os.pipe())  # the browser writes fd 4, we read

        def child_fds() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(ev_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, *extra_flags, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=child_fds)  # noqa: PLW1509 (no threads of ours touch fds here)
        os.close(cmd_r)
        os.close(ev_w)
        self._out = os.fdopen(cmd_w, "wb", buffering=0)
        self._in = os.fdopen(ev_r, "rb", buffering=0)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._listeners: dict[str | None, list[Callable[[dict], None]]] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ transport
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._in.read(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                frame, buf = buf.split(b"\0", 1)
                msg = json.loads(frame)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    for fn in self._listeners.get(msg.get("sessionId"), []):
                        fn(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        """Send one command and wait for its result (raises `CDPError` on an error reply)."""
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            self._out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise CDPError(f"{method}: {'browser exited' if self._closed else 'timed out'}")
                self._cond.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def listen(self, session: str | None, fn: Callable[[dict], None]) -> None:
        self._listeners.setdefault(session, []).append(fn)

    # ------------------------------------------------------------------ pages
    def new_page(self, width: int = 1400, height: int = 1000) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, target, session, width, height)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(CDPError):
                self.send("Browser.close", timeout=5)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for f in (self._out, self._in):
            with contextlib.suppress(OSError):
                f.close()
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: `errors` holds uncaught exceptions, console errors and CSP violations."""

    def __init__(self, browser: Browser, target: str, session: str, width: int, height: int) -> None:
        self.browser, self.target, self.session = browser, target, session
        self.errors: list[str] = []
        self.console: list[str] = []
        self.requests: list[str] = []
        self._loaded = threading.Event()
        browser.listen(session, self._on_event)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": False})

    def _on_event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.console.append(f"{p.get('type')}: {text}")
            if p.get("type") in ("error", "assert"):
                self.errors.append(f"console.{p.get('type')}: {text}")
        elif method == "Log.entryAdded":
            e = p["entry"]
            if e.get("level") == "error" or e.get("source") == "security":
                self.errors.append(f"log {e.get('source')}: {e.get('text')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])
        elif method == "Page.loadEventFired":
            self._loaded.set()

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def goto(self, url: str, timeout: float = 30) -> None:
        """Navigate and wait for the load event (none comes for a change of the #fragment only:
        CDP answers such a same-document navigation without a loaderId)."""
        self._loaded.clear()
        if "loaderId" not in self.send("Page.navigate", {"url": url}):
            return
        if not self._loaded.wait(timeout):
            raise CDPError(f"{url}: no load event within {timeout} s")

    def eval(self, expression: str, timeout: float = 30) -> Any:
        """The value of a JavaScript expression (promises awaited), JSON-serialisable."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError(f"{expression[:80]}: {d.get('exception', {}).get('description') or d}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15, interval: float = 0.05) -> Any:
        """Poll until `expression` is truthy; returns its value (raises `CDPError` on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out after {timeout} s waiting for: {expression}")
            time.sleep(interval)

    def mouse(self, kind: str, x: float, y: float, *, buttons: int = 0, button: str = "none",
              modifiers: int = 0, click_count: int = 0) -> None:
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "buttons": buttons,
                                               "button": button, "modifiers": modifiers,
                                               "clickCount": click_count})

    def hover(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 8, modifiers: int = 0) -> None:
        """Press the left button at (x0, y0), move to (x1, y1) in `steps`, release."""
        self.mouse("mouseMoved", x0, y0, modifiers=modifiers)
        self.mouse("mousePressed", x0, y0, buttons=1, button="left", modifiers=modifiers, click_count=1)
        for i in range(1, steps + 1):
            t = i / steps
            self.mouse("mouseMoved", x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, buttons=1, button="left",
                       modifiers=modifiers)
        self.mouse("mouseReleased", x1, y1, buttons=0, button="left", modifiers=modifiers, click_count=1)

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, buttons=1, button="left", click_count=1)
        self.mouse("mouseReleased", x, y, button="left", click_count=1)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = self.send("Page.captureScreenshot", params, timeout=60)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        with contextlib.suppress(CDPError):
            self.browser.send("Target.closeTarget", {"targetId": self.target}, timeout=10)
