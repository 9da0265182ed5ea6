"""The HTML report: numbers on the page match the results store, tables, exports, safety and atomicity."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from benchmark.report import build_report
from benchmark.report.__main__ import main
from benchmark.report.tables import load_reference, mark_best, reference_table, wilson_interval
from benchmark.store import load_results
from test_report_fixtures import FLAG, add_bad_cells, make_cell, make_results


class PageTables(HTMLParser):
    """Every <table id=...> of a page as header labels and rows of cells (text, attributes, emphasis)."""

    def __init__(self, html: str):
        super().__init__()
        self.tables: dict[str, dict] = {}
        self._table = self._cell = None
        self._row: list | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"anon{len(self.tables)}"),
                                                 {"head": [], "rows": []})
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"tag": tag, "text": "", "attrs": attrs, "strong": False, "u": False}
        elif tag in ("strong", "u") and self._cell is not None:
            self._cell[tag] = True

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._cell["text"] = " ".join(self._cell["text"].split())
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            is_head = all(c["tag"] == "th" for c in self._row)
            self._table["head" if is_head else "rows"].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


def table(html: str, prefix: str) -> dict:
    tables = PageTables(html).tables
    matches = [t for name, t in tables.items() if name.startswith(prefix)]
    assert matches, f"no table whose id starts with {prefix!r}; have {sorted(tables)}"
    return matches[0]


def column(tab: dict, label: str) -> int:
    labels = [c["text"].replace("↕", "").strip() for c in tab["head"][-1]]
    return labels.index(label)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = make_results(root / "results")
    bad = add_bad_cells(results)
    index = build_report(results, root / "reports")
    return {"root": root, "results": results, "out": root / "reports", "html": index.read_text(),
            "store": load_results(results), "bad": bad}


IR10 = "mnist5k-ir10-Linf-eps0.1-balanced"


def test_leaderboard_numbers_are_the_stores_means_over_seeds(site):
    store, tab = site["store"], table(site["html"], f"leaderboard-{IR10}")
    group = store.cells[(store.cells["imbalance_ratio"] == 10) & (store.cells["test_split"] == "balanced")]
    worst = group[group["attack"] == "worst_case"].groupby("method_label")["balanced"].agg(["mean", "std"])
    clean = group[group["attack"] == "clean"].groupby("method_label")["accuracy"].mean()
    method, br, acc = column(tab, "Method"), column(tab, "Worst case"), column(tab, "Clean acc.")
    for row in tab["rows"]:
        label = row[method]["attrs"]["data-sort"]
        # 1,000 test examples per cell: one decimal (benchmark/report/precision.py)
        assert row[br]["text"] == f"{100 * worst.loc[label, 'mean']:.1f} ± {100 * worst.loc[label, 'std']:.1f}"
        assert float(row[acc]["attrs"]["data-sort"]) == pytest.approx(100 * clean.loc[label])
        assert row[column(tab, "Seeds")]["text"] == "2"


def test_leaderboard_is_ranked_by_worst_case_balanced_robustness(site):
    tab = table(site["html"], f"leaderboard-{IR10}")
    values = [float(r[column(tab, "Worst case")]["attrs"]["data-sort"]) for r in tab["rows"]]
    assert values == sorted(values, reverse=True)
    assert [r[0]["text"] for r in tab["rows"]] == ["1", "2", "3"]
    assert "sortable" in site["html"].split(f'id="leaderboard-{IR10}"')[1].split(">")[0]


def test_training_time_is_gpu_hours_only_on_cuda(site):
    tab = table(site["html"], f"leaderboard-{IR10}")
    hours = {r[column(tab, "Method")]["attrs"]["data-sort"]: r[column(tab, "Train time")]["text"] for r in tab["rows"]}
    assert hours["trades"].endswith("GPU-h")
    assert hours["at"].endswith("CPU-h") and hours["taet"].endswith("CPU-h")


def test_audit_flags_are_shown_beside_their_row(site):
    tab = table(site["html"], f"leaderboard-{IR10}")
    rows = {r[column(tab, "Method")]["attrs"]["data-sort"]: r for r in tab["rows"]}
    assert "⚠ 1" in rows["at"][column(tab, "Method")]["text"]
    assert rows["at"][column(tab, "Audit")]["text"] == "1 flag"
    assert rows["taet"][column(tab, "Audit")]["text"] == "none"
    assert FLAG in site["html"]


def test_split_notes_say_when_br_equals_robust_accuracy(site):
    html = site["html"]
    assert "Balanced Robustness equals robust accuracy here" in html.split('id="mnist5k-ir10-Linf-eps0.1-longtail"')[0]
    longtail = html.split('id="mnist5k-ir10-Linf-eps0.1-longtail"')[1].split("<section")[0]
    assert "differs from robust accuracy" in longtail


def test_subset_attacks_and_test_selection_are_labelled(site):
    tab = table(site["html"], "leaderboard-mnist5k-ir10-Linf-eps0.1-longtail")
    row = tab["rows"][0]
    assert "test-selected" in row[column(tab, "Method")]["text"]
    assert row[column(tab, "Examples")]["text"] == "403 (AutoAttack (torchattacks default, 10 it., reduced) on 100)"
    heads = [c["text"].replace("↕", "").strip() for c in tab["head"][-1]]
    assert heads.index("AutoAttack (torchattacks default, 10 it., reduced)") < heads.index("Worst case (all examples)") < heads.index("Worst case")
    section = site["html"].split('id="mnist5k-ir10-Linf-eps0.1-longtail"')[1].split("<section")[0]
    assert "optimistic" in section and "class-stratified subset" in section


def test_one_leaderboard_per_dataset_ir_threat_model_and_split(site):
    ids = [name for name in PageTables(site["html"]).tables if name.startswith("leaderboard-")]
    assert ids == [f"leaderboard-{IR10}", "leaderboard-mnist5k-ir10-Linf-eps0.1-longtail",
                   "leaderboard-mnist5k-ir50-Linf-eps0.1-balanced"]


def test_per_class_table_marks_only_a_clear_best_bold_and_second_underlined(site):
    """Three methods, 100 test images per class: integers, and a mark only where the printed values
    single out a best (and a second)."""
    tab = table(site["html"], f"per-class-{IR10}-pgd20")
    groups = [c["text"] for c in tab["head"][0] if c["text"]]
    assert groups == ["Clean", "Attacked (PGD-20)"]
    marked = 0
    for j in range(3, len(tab["head"][-1])):
        printed = [int(r[j]["text"]) for r in tab["rows"]]  # integers: 100 examples per class
        ranked = sorted(printed, reverse=True)
        clear_best = ranked[0] > ranked[1]
        for r, v in zip(tab["rows"], printed):
            assert r[j]["strong"] == (clear_best and v == ranked[0])
            assert r[j]["u"] == (clear_best and ranked[1] > ranked[2] and v == ranked[1])
        marked += clear_best
    assert marked >= 10  # the rule is not "never mark"


def test_per_class_cells_carry_a_wilson_interval_on_hover(site):
    store, tab = site["store"], table(site["html"], f"per-class-{IR10}-pgd20")
    row = next(r for r in tab["rows"] if r[0]["text"] == "taet")
    j = column(tab, "9") + 10  # class 9 under PGD-20 (the second block of ten classes)
    sub = store.classes[(store.classes["method_label"] == "taet") & (store.classes["imbalance_ratio"] == 10)
                        & (store.classes["attack"] == "pgd20") & (store.classes["class_index"] == 9)]
    low, high = wilson_interval(sub["correct"].sum(), sub["test_support"].sum())
    assert f"{sub['correct'].sum()}/{sub['test_support'].sum()} correct over 2 seeds" in row[j]["attrs"]["title"]
    assert f"{100 * low:.1f}–{100 * high:.1f}%" in row[j]["attrs"]["title"]
    assert float(row[j]["attrs"]["data-sort"]) == pytest.approx(100 * sub["recall"].mean())


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_mark_best_marks_only_a_real_best_and_second():
    assert mark_best([59.13, 58.63, 57.0, 50.0]) == ["best", "second", "", ""]
    assert mark_best([59.13, 58.63, 58.63, 50.0]) == ["best", "", "", ""]  # tied runner-up: no second
    assert mark_best([23.74, 23.74, 23.02]) == ["", "", ""]  # tied best: no winner
    assert mark_best([0.0, 0.0, 0.0, 0.0]) == [""] * 4  # all zeros
    assert mark_best([40.0, 10.0]) == ["", ""]  # two methods: the loser is not "second best"
    assert mark_best([40.0, None, 10.0]) == ["", "", ""]  # two values present
    assert mark_best([41.04, 40.96, 10.0], digits=0) == ["", "", ""]  # 41 and 41 print the same
    assert mark_best([41.04, 40.96, 10.0], digits=2) == ["best", "second", ""]


def test_the_posters_table_keeps_its_own_rule_ties_share_marks():
    from benchmark.report.tables import mark_as_printed

    assert mark_as_printed([59.13, 58.63, 58.63, 50.0]) == ["best", "second", "second", ""]
    assert mark_as_printed([23.74, 23.74, 23.02]) == ["best", "best", "second"]
    assert mark_as_printed([40.0]) == [""]


def test_paper_reference_transcribed_and_marked_as_printed():
    reference = load_reference()
    assert reference["source"]["venue"] == "CVPR 2025, poster"
    rows = {r["method"]: r for r in reference["rows"]}
    assert len(rows) == 11 and reference["classes"] == ["dog", "frog", "horse", "ship", "truck"]
    assert rows["AT-BSL [45]"]["clean"][0] == 58.63
    assert rows["TAET (our)"]["attacked"] == [23.74, 34.83, 32.53, 36.34, 27]
    assert round(163 / reference["test_support"][0] * 100, 2) == 58.63
    tab = reference_table(reference)
    for j, col in enumerate(tab.columns[1:], 1):
        part = "clean" if col.group == "Clean" else "attacked"
        printed = reference["printed_emphasis"][part][col.label]
        bold = [r[0].text for r in tab.rows if r[j].mark == "best"]
        underline = [r[0].text for r in tab.rows if r[j].mark == "second"]
        assert (bold, underline) == (printed["bold"], printed["underline"]), col.key


def test_the_posters_block_is_left_out_of_leaderboards_of_other_datasets(site):
    html = site["html"]  # MNIST digits only
    assert "PAPER-REPORTED" not in html and 'id="paper-reference"' not in html
    assert not (site["out"] / "tables" / "paper-taet-cifar10lt-ir10.tex").exists()


def as_dataset(cell: Path, dataset: str) -> Path:
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics["data"]["dataset"] = metrics["config"]["dataset"] = dataset
    (cell / "metrics.json").write_text(json.dumps(metrics))
    return cell


def test_paper_block_is_shown_beside_cifar10_marked_separate_and_says_how_settings_differ(tmp_path):
    results = tmp_path / "results"
    for method in ("at", "taet", "trades"):
        as_dataset(make_cell(results, method, 10, 0), "cifar10")
    make_cell(results, "at", 10, 0, key="digits")  # an MNIST leaderboard beside it: no block there
    html = build_report(results, tmp_path / "reports").read_text()
    assert html.count('id="paper-reference"') == 1 and html.count("PAPER-REPORTED") == 1
    cifar = html.split('<section id="cifar10-')[1].split("<section")[0]
    assert "PAPER-REPORTED" in cifar and "Our table above differs in:" in cifar and "dataset " not in cifar
    assert "model small_cnn here, resnet18 in the paper" in cifar
    digits = html.split('<section id="mnist5k-')[1].split("<section")[0]
    assert "PAPER-REPORTED" not in digits
    board = table(html, "leaderboard-cifar10")
    assert not any("AT-BSL" in r[2]["text"] for r in board["rows"])
    paper = table(html, "paper-taet")
    assert [r[0]["text"] for r in paper["rows"]][-1] == "TAET (our)"
    assert (tmp_path / "reports" / "tables" / "paper-taet-cifar10lt-ir10.tex").read_text().count(r"\textbf{") >= 10


def test_poster_flag_shows_the_block_on_any_dataset_and_no_poster_hides_it(tmp_path, capsys):
    results = small_results(tmp_path / "results")
    assert main(["--results", str(results), "--out", str(tmp_path / "a"), "--poster"]) == 0
    html = (tmp_path / "a" / "index.html").read_text()
    assert html.count('id="paper-reference"') == 1 and "dataset mnist5k here, cifar10 in the paper" in html
    as_dataset(next(results.iterdir()), "cifar10")
    assert main(["--results", str(results), "--out", str(tmp_path / "b"), "--no-poster"]) == 0
    assert "PAPER-REPORTED" not in (tmp_path / "b" / "index.html").read_text()


def test_skipped_folders_are_listed_with_their_reason(site):
    skipped = table(site["html"], "anon")  # the skipped table has no id
    reasons = {r[0]["text"].split("/")[0]: r[1]["text"] for r in skipped["rows"]}
    assert set(reasons) == set(site["bad"])
    for name, word in site["bad"].items():
        assert word in reasons[name]


def test_exports_parse_and_keep_the_marks(site):
    tables = site["out"] / "tables"
    frame = pd.read_csv(tables / f"leaderboard-{IR10}.csv")
    assert list(frame["Method"]) == ["taet", "trades", "at"]
    assert "Balanced Robustness (%) Worst case std" in frame
    per_class = pd.read_csv(tables / f"per-class-{IR10}-pgd20.csv")
    assert {"Clean 0", "Clean 0 ci95 low", "Clean 0 ci95 high", "Attacked (PGD-20) 9"} <= set(per_class)
    assert (per_class["Clean 0 ci95 low"] <= per_class["Clean 0"]).all()
    column = per_class["Attacked (PGD-20) 0"].round(0)
    best = column.max()
    latex = (tables / f"per-class-{IR10}-pgd20.tex").read_text()
    if (column == best).sum() == 1:  # a clear best: bold, printed as an integer (100 examples per class)
        assert rf"\textbf{{{best:.0f}}}" in latex
    assert r"\underline{" in latex and ".00" not in latex
    assert r"\toprule" in latex and r"\cmidrule(lr){4-13}" in latex and r"\bottomrule" in latex
    markdown = (tables / f"per-class-{IR10}-pgd20.md").read_text()
    assert "**" in markdown and "| Method |" in markdown


def test_cell_page_has_config_counts_confusion_audit_and_a_way_back(site):
    html = site["html"]
    href = next(a for a in html.split('href="')[1:] if a.startswith("cells/mnist5k-ir10-at-small_cnn-s1"))
    page = (site["out"] / href.split('"')[0]).read_text()
    assert 'href="../index.html"' in page and "dataset: mnist5k" in page and FLAG in page
    classes = next(t for name, t in PageTables(page).tables.items() if name.endswith("-per-class"))
    assert [c["text"] for c in classes["head"][-1]][:4] == ["Class", "Train count", "Test support", "Group"]
    confusion = PageTables(page).tables
    assert any(name.startswith("cell-") and "-confusion-pgd20" in name for name in confusion)
    assert "background: rgba(" in page
    assert 'src="../img/' in page and "train_seconds" in page


def test_figures_are_written_beside_the_html(site):
    img = site["out"] / "img"
    names = {p.name for p in img.iterdir()}
    assert f"{IR10}-per-class-pgd20.png" in names and f"{IR10}-class-counts.png" in names
    assert f"{IR10}-clean-vs-robust.png" in names
    assert any(n.endswith("br-vs-ir.png") for n in names)
    assert any(n.endswith("-monitor-per-class.png") for n in names)  # the cell that logs per-class monitoring
    assert all((img / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    for src in (s.split('"')[0] for s in site["html"].split('src="')[1:]):
        assert (site["out"] / src).is_file()


def test_page_loads_nothing_from_the_network(site):
    pages = [site["html"]] + [p.read_text() for p in (site["out"] / "cells").iterdir()]
    for page in pages:
        assert "<link" not in page and "<script src" not in page and 'src="http' not in page
        assert "@import" not in page


def test_a_real_cell_with_autoattack_on_a_subset(tmp_path):
    """A metrics.json and log.jsonl as the current runner writes them (quick profile, one epoch, AutoAttack on
    10 examples per class, per-class monitoring)."""
    from test_report_fixtures import DATA

    cell = tmp_path / "results" / "mnist5k-ir10-at-small_cnn-s0-08a4e077ab"
    cell.mkdir(parents=True)
    shutil.copy(DATA / "report_metrics_autoattack.json", cell / "metrics.json")
    shutil.copy(DATA / "report_log_autoattack.jsonl", cell / "log.jsonl")
    html = build_report(tmp_path / "results", tmp_path / "reports").read_text()
    board = table(html, "leaderboard-")
    assert board["rows"][0][column(board, "Examples")]["text"] == "1000 (AutoAttack (torchattacks default, 10 it., reduced) on 100)"
    heads = [c["text"].replace("↕", "").strip() for c in board["head"][-1]]
    assert "AutoAttack (torchattacks default, 10 it., reduced)" in heads and "Worst case (all examples)" in heads
    assert (tmp_path / "reports" / "img" / f"cell-{cell.name}-monitor-per-class.png").is_file()


def test_method_names_are_escaped(tmp_path):
    results = tmp_path / "results"
    cell = make_cell(results, "at", 10, 0, key="evil")
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics["method"]["name"] = "<script>alert(1)</script>"
    metrics["data"]["classes"][0] = "<b>zero</b>"
    (cell / "metrics.json").write_text(json.dumps(metrics))
    index = build_report(results, tmp_path / "reports")
    html = index.read_text() + (tmp_path / "reports" / "cells" / "evil.html").read_text()
    assert "<script>alert(1)" not in html and "<b>zero</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;zero&lt;/b&gt;" in html


def small_results(root: Path) -> Path:
    """Two methods, one IR, one seed: enough for tests that do not compare across the grid."""
    make_cell(root, "at", 10, 0)
    make_cell(root, "taet", 10, 0, per_class_monitor=True)
    return root


def test_tail_only_and_attack_choose_the_per_class_columns(tmp_path):
    build_report(small_results(tmp_path / "results"), tmp_path / "out", attack="fgsm", tail_only=True)
    tab = table((tmp_path / "out" / "index.html").read_text(), f"per-class-{IR10}-fgsm-tail")
    assert [c["text"] for c in tab["head"][-1]][3:] == ["5", "6", "7", "8", "9"] * 2
    assert [c["text"] for c in tab["head"][0] if c["text"]] == ["Clean", "Attacked (FGSM)"]


def test_rebuild_gives_identical_files(tmp_path):
    results, out = small_results(tmp_path / "results"), tmp_path / "reports"
    build_report(results, out)
    shutil.copytree(out, tmp_path / "first")
    build_report(results, out)
    before = {p.relative_to(tmp_path / "first"): p.read_bytes() for p in (tmp_path / "first").rglob("*") if p.is_file()}
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before.keys() == after.keys()
    assert [k for k in before if before[k] != after[k]] == []


def test_a_failed_build_leaves_the_old_site_in_place(tmp_path, monkeypatch):
    results = tmp_path / "results"
    make_cell(results, "at", 10, 0)
    out = tmp_path / "reports"
    out.mkdir()
    (out / ".gitkeep").write_text("")
    build_report(results, out)
    good = (out / "index.html").read_text()
    from benchmark.report import plots

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "class_counts", crash)
    make_cell(results, "taet", 10, 0)
    with pytest.raises(RuntimeError):
        build_report(results, out)
    assert (out / "index.html").read_text() == good
    assert (out / ".gitkeep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "results"]  # no temp folders left


def test_empty_results_folder_gives_a_page_that_says_so(tmp_path):
    (tmp_path / "results").mkdir()
    html = build_report(tmp_path / "results", tmp_path / "reports").read_text()
    assert "No finished cells" in html and "<table" not in html


def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    assert main(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    results = tmp_path / "results"
    make_cell(results, "at", 10, 0)
    assert main(["--results", str(results), "--out", str(tmp_path / "r"), "--attack", "nope"]) == 2
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    assert main(["--results", str(results), "--out", str(tmp_path / "notes")]) == 2
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "does not exist" in err[0] and "'nope'" in err[1] and "pgd20" in err[1] and "refusing" in err[2]
    assert not (tmp_path / "r").exists()


def test_cli_writes_index_and_prints_its_path(tmp_path, capsys):
    results = tmp_path / "results"
    make_cell(results, "at", 10, 0)
    assert main(["--results", str(results), "--out", str(tmp_path / "reports")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "reports" / "index.html")
    manifest = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert manifest["generator"] == "tailrobust report" and len(manifest["cells"]) == 1


def labelled_cell(root: Path, key: str = "labelled", labels: bool = True) -> Path:
    """A cell with the real AutoAttack, torchattacks' cross-check and a cheap stand-in, each record with the
    ``label`` evaluation writes (or none, as older cells), and the real one's survivor cascade."""
    import numpy as np

    y = np.repeat(np.arange(10), 100)
    wrong = (y + 1) % 10
    keep = lambda share: np.where(np.arange(y.size) % 100 < share, y, wrong)  # noqa: E731
    predictions = {"clean": y.copy(), "pgd20": keep(50), "aa": keep(40), "ta_aa": keep(41), "apgd_cheap": keep(45)}
    robust = [[100] * 10, [60] * 10, [50] * 10, [45] * 10, [40] * 10]
    records = {
        "aa": {"spec": {"kind": "autoattack", "eps": 0.1, "steps": 100, "version": "standard", "name": "aa"},
               "label": "AutoAttack", "cascade": {"stages": ["clean", "apgd-ce", "apgd-t", "fab-t", "square"],
                                                  "robust_per_class": robust, "examples_per_class": [100] * 10}},
        "ta_aa": {"spec": {"kind": "torchattacks_autoattack", "eps": 0.1, "steps": 100, "version": "standard",
                           "name": "ta_aa"}, "label": "AutoAttack (torchattacks)"},
        "apgd_cheap": {"spec": {"kind": "autoattack", "eps": 0.1, "steps": 10, "version": "apgd-ce",
                                "name": "apgd_cheap"}, "label": "APGD-CE (10 it., reduced)"},
    }
    if not labels:
        records = {name: {k: v for k, v in r.items() if k != "label"} for name, r in records.items()}
    return make_cell(root, "at", 10, 0, key=key, predictions=predictions, attack_records=records)


def test_attacks_are_named_by_their_records_label(tmp_path):
    labelled_cell(tmp_path / "results")
    html = build_report(tmp_path / "results", tmp_path / "reports").read_text()
    board = table(html, "leaderboard-")
    heads = [c["text"].replace("↕", "").strip() for c in board["head"][-1]]
    assert {"AutoAttack", "AutoAttack (torchattacks)", "APGD-CE (10 it., reduced)"} <= set(heads)
    cheap = board["head"][-1][heads.index("APGD-CE (10 it., reduced)")]["attrs"]["title"]
    assert "autoattack" not in cheap.lower() and "10 steps" not in cheap
    page = (tmp_path / "reports" / "cells" / "labelled.html").read_text()
    attacks = page.split("<h2>Attacks</h2>")[1].split("<h2>Cost</h2>")[0]
    assert "APGD-CE (10 it., reduced) <span" in attacks and "AutoAttack (torchattacks) <span" in attacks
    classes = next(t for name, t in PageTables(page).tables.items() if name.endswith("-per-class"))
    assert "APGD-CE (10 it., reduced)" in [c["text"] for c in classes["head"][-1]]


def test_older_cells_without_labels_are_named_from_the_spec(tmp_path):
    labelled_cell(tmp_path / "results", labels=False)
    html = build_report(tmp_path / "results", tmp_path / "reports").read_text()
    heads = [c["text"].replace("↕", "").strip() for c in table(html, "leaderboard-")["head"][-1]]
    assert {"AutoAttack", "AutoAttack (torchattacks)", "APGD-CE (10 it., reduced)"} <= set(heads)
    assert heads.count("AutoAttack") == 1  # only the standard version at the reference's iterations


def test_cell_page_shows_the_autoattack_cascade(tmp_path):
    labelled_cell(tmp_path / "results")
    build_report(tmp_path / "results", tmp_path / "reports")
    page = (tmp_path / "reports" / "cells" / "labelled.html").read_text()
    cascade = PageTables(page).tables["cell-labelled-cascade-aa"]
    heads = [c["text"].replace("↕", "").strip() for c in cascade["head"][-1]]
    assert heads[0] == "After stage" and heads[-2:] == ["Total", "Robust (%)"] and heads[1:11] == [str(c) for c in
                                                                                                  range(10)]
    rows = {r[0]["text"]: [c["text"] for c in r[1:]] for r in cascade["rows"]}
    assert list(rows) == ["examples", "clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert rows["examples"][-2] == "1000" and rows["apgd-ce"][-2:] == ["600", "60.0"]  # 1,000 examples: 1 decimal
    assert rows["square"][:10] == ["40"] * 10 and rows["square"][-2:] == ["400", "40.0"]
    assert "Cascade of AutoAttack" in page and "never increase" in page
    frame = pd.read_csv(tmp_path / "reports" / "tables" / "cell-labelled-cascade-aa.csv")
    assert frame["Total"].tolist() == [1000, 1000, 600, 500, 450, 400]
    assert not PageTables(page).tables.get("cell-labelled-cascade-ta_aa")  # no cascade recorded there


def test_an_older_cells_autoattack_is_labelled_as_the_torchattacks_default_it_ran():
    from benchmark.report.tables import spec_label
    from test_report_fixtures import DATA

    # before the reference became kind autoattack, kind autoattack (steps 0) ran torchattacks' AutoAttack
    # class at its 10 iterations, and the reference was kind reference_autoattack
    old = spec_label({"kind": "autoattack", "version": "standard", "steps": 0})
    assert old == "AutoAttack (torchattacks default, 10 it., reduced)"
    assert spec_label({"kind": "reference_autoattack", "version": "standard", "steps": 0}) == "AutoAttack"
    assert spec_label({"kind": "autoattack", "version": "standard", "steps": 100}) == "AutoAttack"
    real = json.loads((DATA / "report_metrics_autoattack.json").read_text())
    spec = real["evaluation"]["attack_records"]["aa"]["spec"]
    assert spec["kind"] == "autoattack" and spec["steps"] == 0 and spec_label(spec) == old


def test_an_attack_at_another_eps_than_its_cell_says_its_eps_in_the_label():
    from benchmark.report.tables import record_labels

    records = {"pgd20": {"label": "PGD-20", "spec": {"kind": "pgd", "eps": 0.031}},
               "ta_pgd20_8_255": {"label": "PGD-20 (torchattacks)", "spec": {"kind": "torchattacks_pgd", "eps": 8 / 255}}}
    labels = record_labels(records, cell_eps=0.031)
    assert labels == {"pgd20": "PGD-20", "ta_pgd20_8_255": "PGD-20 (torchattacks) at ε 8/255"}
    assert record_labels(records)["ta_pgd20_8_255"] == "PGD-20 (torchattacks)"  # cell ε unknown: as recorded
