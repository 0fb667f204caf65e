"""Find (or, as root / with password-less sudo, apt-install) a headless Chromium for browser tests.

`ensure_chromium()` returns (path, "") or (None, why not); `tests.reports.cdp` drives it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

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
