"""Headless Chromium for the UI tests: Debian's `chromium` (installed with apt when missing, as root, once per
machine), driven by Playwright for Python pointed at /usr/bin/chromium (`playwright install` cannot download
a browser here). `python -m scripts.browser` installs it and reports how long that took."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from resources.settings import load

CHROMIUM = Path(load()["NAUTILUS_CHROMIUM"])
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def log(msg: str) -> None:
    print(f"[browser] {msg}", flush=True)


def ensure_chromium() -> float:
    """Install Debian's chromium with apt-get if /usr/bin/chromium is missing; returns the seconds it took
    (0 when it was already there)."""
    if CHROMIUM.exists():
        return 0.0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium)")
    t0 = time.time()
    log("installing chromium with apt-get (once per machine) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, env=env)
    took = time.time() - t0
    log(f"chromium installed in {took:.0f}s")
    return took


@contextmanager
def browser():
    """A headless Chromium driven by Playwright (each launch gets a fresh temporary profile); closed after."""
    from playwright.sync_api import sync_playwright

    ensure_chromium()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


if __name__ == "__main__":
    took = ensure_chromium()
    out = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True).stdout.strip()
    log(f"{out} at {CHROMIUM} ({f'installed in {took:.0f}s' if took else 'already installed'})")
    sys.exit(0)
