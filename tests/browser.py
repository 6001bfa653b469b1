"""A real browser for the page tests: headless Chromium renders a page (its scripts run), and the
tests read the page's text, not its pixels."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    """The Chromium on PATH; skips the test where there is none."""
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it "
                    "where it runs as root): the browser tests need a real browser")
    return found


def rendered(url: str, profile: Path, budget_ms: int = 30_000, window: str = "800,600") -> str:
    """The DOM of `url` once headless Chromium has run its scripts (up to `budget_ms` of the
    page's virtual time, which stands still while a request is open), in a window `window`
    pixels wide and high (MLflow's runs grid renders only the columns that fit)."""
    command = [browser(), "--headless", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", f"--user-data-dir={profile}", f"--window-size={window}",
               f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout, proc.stderr[-4000:]
    return proc.stdout


def grid_rows(dom: str) -> dict[str, str]:
    """The text of each row of MLflow's runs grid, by run id (a row's cells lie in several
    containers, one per pinned side, each marked with the row's id)."""
    rows: dict[str, str] = {}
    for part in dom.split('row-id="')[1:]:
        run_id, _, rest = part.partition('"')
        rows[run_id] = rows.get(run_id, "") + " " + text(">" + rest)
    return rows


def text(fragment: str) -> str:
    return " ".join(re.sub(r"<[^>]*>", " ", fragment).split())
