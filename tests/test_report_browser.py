"""The report in a real browser: headless Chromium (Debian's package) driven by Playwright's Python client.

Skipped where either is missing; no browser is ever downloaded (``playwright install`` is not used).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.report import build_report
from test_report import as_dataset
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
        as_dataset(make_cell(root / "results", method, 10, 0, key=f"cifar-{method}"), "cifar10")  # + the poster
    # the widest leaderboard: a preset, a test-selected tag, AutoAttack on a subset, both worst cases
    make_cell(root / "results", "taet", 10, 0, preset="authors", test_split="longtail", subset_attack=True,
              selection="test_best", flags=("pgd20 (0.400) above fgsm (0.380)",))
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


OVERFLOW = """() => Array.from(document.querySelectorAll('table')).filter(t => t.offsetParent !== null).map(t => {
    const wrap = t.closest('.table-wrap'), box = t.getBoundingClientRect();
    return {id: t.id || t.className, right: Math.ceil(box.right),
            scroll: wrap ? wrap.scrollWidth - wrap.clientWidth : 0};
})"""


def _overflowing(tab) -> list[dict]:
    """Visible tables wider than the page or than their scroll box (which would need a sideways scroll)."""
    width = tab.evaluate("document.documentElement.clientWidth")
    return [t for t in tab.evaluate(OVERFLOW) if t["right"] > width or t["scroll"] > 0]


def test_no_table_overflows_1280px_on_the_index_or_a_cell_page_and_both_are_screenshot(page):
    tab, root = page
    assert tab.evaluate("document.documentElement.clientWidth") == 1280
    measured = {t["id"].split("-mnist5k")[0] for t in tab.evaluate(OVERFLOW)}
    assert {"leaderboard", "per-class", "paper-taet-cifar10lt-ir10"} <= measured  # the check saw the tables
    assert _overflowing(tab) == []
    shots = {"index": root / "index.png"}
    tab.screenshot(path=str(shots["index"]), full_page=True)
    cell_page = sorted((root / "reports" / "cells").glob("*.html"))[0]
    tab.goto(cell_page.as_uri())
    assert len(tab.evaluate(OVERFLOW)) >= 4  # audit, per-class, confusion, attacks, cost
    assert _overflowing(tab) == []
    shots["cell"] = root / "cell.png"
    tab.screenshot(path=str(shots["cell"]), full_page=True)
    for name, shot in shots.items():
        pixels = _image(shot)
        height, width, _ = pixels.shape
        assert width == 1280 and height >= 1200, name  # the whole page: header, tables, figures
        colours = np.unique(pixels.reshape(-1, 3)[::37], axis=0)
        assert len(colours) > 50, name  # text, tables and figures, not one blank colour
        assert tab.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    tab.go_back()


def test_show_all_columns_reveals_the_paired_tests_and_keeps_the_header_spans_right(page):
    tab, _ = page
    board = f'table[id="{tab.eval_on_selector("table[id^=leaderboard-]", "t => t.id")}"]'  # the first one
    hidden = tab.eval_on_selector_all(f"{board} thead tr:last-child th", "hs => hs.filter(h => !h.offsetParent).map(h => h.textContent.trim())")
    assert any(h.startswith("p vs above") for h in hidden) and any(h.startswith("Train time") for h in hidden)
    spans = "t => Array.from(t.tHead.rows[0].cells).filter(c => c.offsetParent).reduce((n, c) => n + c.colSpan, 0)"
    shown = "t => Array.from(t.tHead.rows[1].cells).filter(c => c.offsetParent).length"
    assert tab.eval_on_selector(board, spans) == tab.eval_on_selector(board, shown)
    tab.click(".columns-toggle button >> nth=0")
    assert tab.eval_on_selector_all(f"{board} thead tr:last-child th", "hs => hs.filter(h => !h.offsetParent).length") == 0
    assert tab.eval_on_selector(board, spans) == tab.eval_on_selector(board, shown)
    assert tab.inner_text(".columns-toggle button >> nth=0") == "Show fewer columns"
    tab.click(".columns-toggle button >> nth=0")
    assert _overflowing(tab) == []
