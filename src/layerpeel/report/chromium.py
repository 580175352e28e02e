"""Where the system Chromium is and how to start it headless in a closed network.

Used by the browser tests and `benchmarks/report_size.py` (through Playwright); layerpeel itself
never starts a browser, and no browser is ever downloaded.
"""

from __future__ import annotations

import os
import shutil

# Debian's chromium as root in a container, with nothing running in the background.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """$LAYERPEEL_CHROMIUM, else `chromium` or `chromium-browser` on the PATH, else None."""
    return (
        os.environ.get("LAYERPEEL_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
