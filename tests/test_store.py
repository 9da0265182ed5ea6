"""The results store: metrics.json files as tidy tables, and unusable folders as reasons, never crashes."""
from __future__ import annotations

import json
import math
import re

import pytest

from benchmark import store as store_module
from benchmark.store import (CLASS_COLUMNS, STORE_SCHEMA_VERSION, eps_label, load_results, read_log)
from test_report_fixtures import add_bad_cells, make_cell, make_results, template


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    results = make_results(tmp_path_factory.mktemp("store") / "results")
    return load_results(results)


def test_one_row_per_cell_attack_and_class(grid):
    # clean, fgsm, 3 PGDs, worst_case; the authors cell adds autoattack and the all-examples worst case
    attacks = 12 * 6 + 8
    assert len(grid.classes) == attacks * 10
    assert len(grid.cells) == attacks
    assert not grid.classes.duplicated(["cell_key", "attack", "class_index"]).any()


def test_rows_hold_the_numbers_of_metrics_json(grid):
    key = next(k for k in grid.metrics if "-taet-" in k and "ir50" in k)
    m = grid.metrics[key]["evaluation"]["attacks"]["pgd20"]
    rows = grid.classes[(grid.classes["cell_key"] == key) & (grid.classes["attack"] == "pgd20")]
    assert rows["recall"].tolist() == pytest.approx(m["per_class_recall"])
    assert rows["correct"].tolist() == m["per_class_correct"]
    assert rows["train_count"].tolist() == grid.metrics[key]["data"]["train_counts"]
    cell = grid.cells[(grid.cells["cell_key"] == key) & (grid.cells["attack"] == "pgd20")].iloc[0]
    assert cell["balanced"] == pytest.approx(m["balanced"])
    assert cell["tail_mean"] == pytest.approx(m["group_means"]["tail"])
    assert cell["group_head"] == pytest.approx(m["group_means"]["head"])
    assert (cell["dataset"], cell["imbalance_ratio"], cell["method"], cell["model"], cell["seed"]) == \
        ("mnist5k", 50.0, "taet", "small_cnn", grid.metrics[key]["seeds"]["training"])


def test_groups_and_ranks_go_by_training_count(grid):
    rows = grid.classes[(grid.classes["attack"] == "clean")].drop_duplicates(["cell_key", "class_index"])
    for _, cell in rows.groupby("cell_key"):
        assert cell.sort_values("train_rank")["train_count"].is_monotonic_decreasing
    assert set(rows[rows["class_index"] >= 5]["group"]) == {"tail"}


def test_seeds_share_a_setting_and_methods_do_not(grid):
    first = grid.cells.drop_duplicates("cell_key")
    per_setting = first.groupby("setting").agg(seeds=("seed", "nunique"), methods=("method_label", "nunique"),
                                               irs=("imbalance_ratio", "nunique"))
    assert (per_setting["methods"] == 1).all() and (per_setting["irs"] == 1).all()
    assert sorted(per_setting["seeds"]) == [1] + [2] * 6


def test_preset_label_and_threat_model_columns(grid):
    authors = grid.cells[grid.cells["preset"] == "authors"].iloc[0]
    assert authors["method_label"] == "taet.authors" and authors["test_split"] == "longtail"
    assert authors["norm"] == "Linf" and authors["eps"] == pytest.approx(0.1) and authors["eps_label"] == "0.1"
    assert eps_label("8/255") == "8/255" and eps_label(8 / 255) == "8/255" and eps_label(0.031) == "0.031"


def test_an_attack_on_a_subset_is_scored_on_its_own_examples(grid):
    key = next(k for k in grid.metrics if "authors" in k)
    cells = grid.cells[grid.cells["cell_key"] == key].set_index("attack")
    assert cells.loc["autoattack", "examples"] == 100
    assert cells.loc["clean", "examples"] == cells.loc["clean", "eval_examples"]
    assert cells.loc["worst_case", "examples"] == 100
    rows = grid.classes[(grid.classes["cell_key"] == key) & (grid.classes["attack"] == "autoattack")]
    assert rows["test_support"].tolist() == [10] * 10
    assert (rows["correct"] / rows["test_support"]).tolist() == pytest.approx(rows["recall"].tolist())
    clean = grid.classes[(grid.classes["cell_key"] == key) & (grid.classes["attack"] == "clean")]
    assert clean["test_support"].tolist() == grid.metrics[key]["evaluation"]["test_support"]
    assert cells.loc["clean", "selection"] == "test-selected"


def test_a_class_without_test_examples_has_undefined_recall(tmp_path):
    cell = make_cell(tmp_path, "at", 10, 0, key="gap")
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics["evaluation"]["test_support"][9] = 0
    for m in metrics["evaluation"]["attacks"].values():
        m["per_class_recall"][9], m["per_class_correct"][9] = None, 0
    (cell / "metrics.json").write_text(json.dumps(metrics))
    rows = load_results(tmp_path).classes
    assert rows[rows["class_index"] == 9]["recall"].map(math.isnan).all()


def test_unusable_folders_are_skipped_with_a_reason(tmp_path):
    make_cell(tmp_path, "at", 10, 0)
    expected = add_bad_cells(tmp_path)
    result = load_results(tmp_path)
    assert len(result.metrics) == 1
    reasons = {s.path.relative_to(tmp_path).parts[0]: s.reason for s in result.skipped}
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word in reasons[name]


def test_wrong_length_per_class_lists_are_skipped(tmp_path):
    metrics = template()
    metrics["evaluation"]["attacks"]["pgd20"]["per_class_recall"].pop()
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "metrics.json").write_text("[1, 2]")
    result = load_results(tmp_path)
    reasons = sorted(s.reason for s in result.skipped)
    assert "per_class_recall / per_class_correct need 10 entries" in reasons[0]
    assert "not a JSON object" in reasons[1]


def test_hidden_folders_and_stray_files_are_ignored(tmp_path):
    make_cell(tmp_path, "at", 10, 0)
    (tmp_path / ".gitkeep").write_text("")
    (tmp_path / ".trash").mkdir()
    result = load_results(tmp_path)
    assert len(result.metrics) == 1 and result.skipped == []


def test_empty_folder_gives_empty_tables_with_every_column(tmp_path):
    result = load_results(tmp_path)
    assert result.empty and list(result.classes.columns) == CLASS_COLUMNS and result.cells.empty


def test_read_log_keeps_the_last_line_of_each_epoch(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 0, "loss": 2.0}\n{"epoch": 1, "loss": 1.5}\nnot json\n{"epoch": 1, "loss": 1.2}\n')
    assert [e["loss"] for e in read_log(log)] == [2.0, 1.2]
    assert read_log(tmp_path / "missing.jsonl") == []


def test_module_docstring_documents_every_column():
    doc = store_module.__doc__
    assert f"STORE_SCHEMA_VERSION`` = {STORE_SCHEMA_VERSION}" in doc
    words = set(re.findall(r"[a-z_]+", doc))
    assert [c for c in CLASS_COLUMNS + ["worst_class_recall", "tail_mean"] if c not in words] == []
