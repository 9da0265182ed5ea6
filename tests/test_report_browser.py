"""The report in a real browser: headless Chromium (Debian's package) driven by Playwright's Python client.

Skipped where either is missing; no browser is ever downloaded (``playwright install`` is not used).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.report import build_report
from test_report_fixtures import make_cell

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium (apt-get install chromium)")]


def _image(path: Path) -> np.ndarray:
    try:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))
    except ImportError:
        import matplotlib.image

        return (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    for method in ("at", "taet", "trades"):
        make_cell(root / "results", method, 10, 0)
    index = build_report(root / "results", root / "reports")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        tab.on("request", lambda request: requests.append(request.url))
        tab.goto(index.as_uri())
        assert [url for url in requests if not url.startswith("file://")] == []  # nothing from the network
        yield tab, root
        browser.close()


def _column(tab, table: str, label: str) -> list[str]:
    return tab.eval_on_selector(table, """(t, label) => {
        const heads = Array.from(t.tHead.rows[t.tHead.rows.length - 1].cells).map(h => h.textContent.trim());
        const i = heads.indexOf(label);
        return Array.from(t.tBodies[0].rows).map(r => r.cells[i].getAttribute('data-sort'));
    }""", label)


def test_clicking_a_header_re_sorts_the_leaderboard(page):
    tab, _ = page
    board = "table[id^=leaderboard-]"
    ranked = _column(tab, board, "Worst case")
    assert [float(v) for v in ranked] == sorted(map(float, ranked), reverse=True)
    tab.click(f"{board} thead tr:last-child th:has-text('Method')")
    assert _column(tab, board, "Method") == ["at", "taet", "trades"]
    tab.click(f"{board} thead tr:last-child th:has-text('Method')")
    assert _column(tab, board, "Method") == ["trades", "taet", "at"]
    tab.click(f"{board} thead tr:last-child th:has-text('Clean acc.')")
    clean = [float(v) for v in _column(tab, board, "Clean acc.")]
    assert clean == sorted(clean, reverse=True)
    assert tab.get_attribute(f"{board} thead tr:last-child th:has-text('Clean acc.')", "aria-sort") == "descending"


def test_screenshot_is_a_real_rendering(page):
    tab, root = page
    shot = root / "report.png"
    tab.screenshot(path=str(shot), full_page=True)
    pixels = _image(shot)
    height, width, _ = pixels.shape
    assert width >= 1200 and height >= 1500  # the whole page: header, tables, figures
    colours = np.unique(pixels.reshape(-1, 3)[::37], axis=0)
    assert len(colours) > 50  # text, tables and figures, not one blank colour
    assert tab.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
