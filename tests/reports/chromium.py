"""Find (or, as root / with password-less sudo, apt-install) a headless Chromium for browser tests.

`ensure_chromium()` returns (path, "") or (None, why not); `render(...)` loads one page headless,
writing a screenshot and capturing the DOM and the browser's stderr; `console_lines` picks the
page's console output ("Uncaught ..." errors, console.* calls) out of that stderr, leaving out
Chromium's own noise (D-Bus, GPU, sandbox warnings).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_install_tried: list[str] = []  # one apt attempt per test session


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    return next((p for p in map(shutil.which, BINARIES) if p), None)


def _install_commands() -> list[list[str]]:
    """apt-get update + install, via password-less sudo if present, else directly when root."""
    if shutil.which("sudo"):
        prefix = ["sudo", "-n"]
    elif hasattr(os, "geteuid") and os.geteuid() == 0:
        prefix = []
    else:
        return []
    return [[*prefix, "apt-get", "install", "-y", "chromium"], [*prefix, "apt-get", "update"],
            [*prefix, "apt-get", "install", "-y", "chromium"]]


def install_chromium(timeout: float = 900) -> str:
    """Try `[sudo -n] apt-get install -y chromium` (after `apt-get update` if the first try fails);
    returns a log of what was tried."""
    log = []
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in _install_commands():
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.append(f"{' '.join(cmd)}: {e}")
            continue
        log.append(f"{' '.join(cmd)}: exit {res.returncode} {res.stderr.strip()[-300:]}")
        if find_chromium():
            break
    return "\n".join(log) or "not root and no sudo: cannot apt-get install chromium"


def ensure_chromium(install: bool = True) -> tuple[str | None, str]:
    """(path to a headless-capable browser, "") or (None, why none could be found or installed)."""
    path = find_chromium()
    if path or not install:
        return path, "" if path else f"none of {', '.join(BINARIES)} on PATH"
    if not _install_tried:
        _install_tried.append(install_chromium())
    path = find_chromium()
    return path, "" if path else f"no chromium on PATH and install failed:\n{_install_tried[0]}"


@dataclass
class Rendered:
    """One headless page load: exit code, the serialised DOM, the browser's stderr."""

    returncode: int
    dom: str
    stderr: str

    @property
    def console(self) -> list[str]:
        return console_lines(self.stderr)


def console_lines(stderr: str) -> list[str]:
    """The page's console messages and uncaught errors from Chromium's `--enable-logging=stderr`."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


def render(browser: str, url: str, screenshot: Path, *, size: tuple[int, int] = (1400, 1000),
           timeout: float = 90) -> Rendered:
    """Load `url` headless: write a PNG screenshot to `screenshot`, return the DOM and stderr."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
               "--v=0", f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions",
               f"--window-size={size[0]},{size[1]}", f"--screenshot={screenshot}", "--dump-dom", url]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return Rendered(res.returncode, res.stdout, res.stderr)
