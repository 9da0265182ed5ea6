"""Method cards: every method documents itself, and the committed cards match the code."""
from __future__ import annotations

import pytest

from methods import get_method_class, list_methods
from benchmark.tools.cards import DOCS, expected_files, render_card


@pytest.mark.parametrize("name", list_methods())
def test_every_method_states_summary_paper_and_code(name):
    cls = get_method_class(name)
    assert cls.summary and cls.paper and cls.code
    card = render_card(name)
    assert cls.paper in card and all(f"`{name}.{preset}`" in card for preset in cls.presets)
    assert all(f"`{key}`" in card for key in cls.defaults)


def test_committed_cards_match_the_methods_run_python_m_methods_cards_if_not():
    for filename, text in expected_files().items():
        path = DOCS / filename
        assert path.exists(), f"{path} missing: run python -m benchmark.tools.cards"
        assert path.read_text() == text, f"{path} is out of date: run python -m benchmark.tools.cards"
    stale = {p.name for p in DOCS.glob("*.md")} - set(expected_files())
    assert not stale, f"cards of unregistered methods: {sorted(stale)}"
