"""Paper-ready report output: settings named by what differs, audit sentences, compact LaTeX, edge-case plots."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.report import build_report
from benchmark.report.naming import setting_labels
from test_report import PageTables, column, table
from test_report_fixtures import make_cell


def with_config(cell: Path, **changes) -> Path:
    """Rewrite a fixture cell's resolved config (dotted keys: method_hparams.tau)."""
    metrics = json.loads((cell / "metrics.json").read_text())
    for dotted, value in changes.items():
        *path, leaf = dotted.split(".")
        node = metrics["config"]
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    (cell / "metrics.json").write_text(json.dumps(metrics))
    return cell


def test_two_settings_of_one_method_are_named_by_the_hyperparameter_that_differs(tmp_path):
    results = tmp_path / "results"
    for tau, seed in ((1.0, 0), (1.5, 0), (1.5, 1)):
        with_config(make_cell(results, "at_bsl", 10, seed, key=f"bsl-{tau}-{seed}"),
                    **{"method_hparams.tau": tau, "method_args.tau": tau})
    make_cell(results, "at", 10, 0)
    html = build_report(results, tmp_path / "reports").read_text()
    board = table(html, "leaderboard-")
    names = {r[column(board, "Method")]["attrs"]["data-sort"] for r in board["rows"]}
    assert names == {"at", "at_bsl (τ=1.5)", "at_bsl (τ=1)"}
    seeds = {r[column(board, "Method")]["attrs"]["data-sort"]: r[column(board, "Seeds")]["text"] for r in board["rows"]}
    assert seeds["at_bsl (τ=1.5)"] == "2"  # the seeds of one setting stay one row
    per_class = table(html, "per-class-")
    assert {r[0]["text"] for r in per_class["rows"]} == names


def test_setting_labels_name_schedule_and_attack_fields_and_fall_back_to_the_hash():
    base = {"epochs": 100, "train_attack_spec": {"steps": 10, "eps": 0.031}, "seed": 0, "data_root": "/a"}
    other = {"epochs": 50, "train_attack_spec": {"steps": 7, "eps": 0.031}, "seed": 3, "data_root": "/b"}
    assert setting_labels("at", {"s1": base, "s2": other}) == {"s1": "at (epochs=100, train steps=10)",
                                                              "s2": "at (epochs=50, train steps=7)"}
    same = dict(base, seed=5, data_root="/elsewhere")  # seed and location are not settings
    assert setting_labels("at", {"s1": base, "s2": same}) == {"s1": "at [s1]", "s2": "at [s2]"}
    many = {f"s{i}": {"a": i, "b": i, "c": i, "d": i} for i in range(2)}
    assert setting_labels("m", many)["s1"] == "m (a=1, b=1, c=1, +1 more)"
    lists = {"s1": {"model_args": {"stages": [{"width": 64, "depth": 2}, {"width": 128, "depth": 2}]}},
             "s2": {"model_args": {"stages": [{"width": 32, "depth": 2}, {"width": 64, "depth": 2}]}}}
    assert setting_labels("at", lists) == {"s1": "at (stages=variant 1)", "s2": "at (stages=variant 2)"}
    evaluation_only = {"s1": {"eval_attack_specs": [{"kind": "pgd"}], "eval_batch_size": 500, "epochs": 1},
                       "s2": {"eval_attack_specs": [{"kind": "fgsm"}], "eval_batch_size": 100, "epochs": 2}}
    assert setting_labels("at", evaluation_only)["s2"] == "at (epochs=2)"  # evaluation is not a setting


def audit_rows(page: str) -> list[tuple[str, str, str, str]]:
    """(check, result word, status class, finding) per row of a cell page's audit table."""
    tab = next(t for name, t in PageTables(page).tables.items() if name.endswith("-audit"))
    return [(r[0]["text"], r[1]["text"], r[1]["attrs"]["class"], r[2]["text"]) for r in tab["rows"]]


def test_audit_of_a_clean_cell_reads_as_sentences_all_marked_green(tmp_path):
    make_cell(tmp_path / "results", "at", 10, 0, key="clean-audit")
    build_report(tmp_path / "results", tmp_path / "reports")
    page = (tmp_path / "reports" / "cells" / "clean-audit.html").read_text()
    rows = audit_rows(page)
    assert {check for check, *_ in rows} >= {"PGD cross-check", "Attack strength", "Threat model", "Gradients",
                                            "Model mode", "Re-scoring"}
    assert all(word == "pass" and "status-ok" in css for _, word, css, _ in rows)
    assert any("agree on every example" in finding for *_, finding in rows)
    audit = page.split("<h2>Audit</h2>")[1].split("<h2>")[0]
    assert "[]" not in audit and "{" not in audit and "true" not in audit


def test_failed_and_borderline_checks_are_red_and_amber_with_the_classes_named(tmp_path):
    cell = make_cell(tmp_path / "results", "at", 10, 0, key="bad-audit")
    metrics = json.loads((cell / "metrics.json").read_text())
    audit = metrics["audit"]
    audit["attack_agreement"][0].update(disagreements=5, per_class=[0] * 7 + [3, 2, 0], flagged_classes=[7, 8])
    audit["order_checks"] = [
        {"stronger": "pgd20", "weaker": "fgsm", "stronger_acc": 0.45, "weaker_acc": 0.40, "examples": 1000, "ok": False},
        {"stronger": "pgd20_nostart", "weaker": "fgsm", "stronger_acc": 0.405, "weaker_acc": 0.40, "examples": 1000,
         "ok": True}]
    audit["zero_gradient_fraction"] = 0.02
    audit["rescoring"] = {"pgd20": {"reported_robust": 37, "rescored_robust": 35, "matches": False}}
    audit["autoattack_agreement"] = [{"reference": "autoattack", "torchattacks": "ta_aa", "examples": 20,
                                      "reference_acc": 0.80, "torchattacks_acc": 0.85, "disagreements": 1,
                                      "library_weaker_classes": [3]}]
    audit["something_new"] = {"x": 1}
    (cell / "metrics.json").write_text(json.dumps(metrics))
    build_report(tmp_path / "results", tmp_path / "reports")
    rows = audit_rows((tmp_path / "reports" / "cells" / "bad-audit.html").read_text())
    by_status = {s: [f for _, _, css, f in rows if f"status-{s}" in css] for s in ("ok", "warn", "fail")}
    assert any("classes 7, 8" in f and "5 examples" in f for f in by_status["fail"])
    assert any("PGD-20 leaves more examples correct than the weaker FGSM" in f and "45.0% against 40.0%" in f
               for f in by_status["fail"])
    assert any("re-scoring the inputs it returned gives 35" in f for f in by_status["fail"])
    assert any("within the tolerance" in f for f in by_status["warn"])
    assert any(f.startswith("2.0% of test examples have a zero input gradient") for f in by_status["warn"])
    assert any("something_new" in f for f in by_status["warn"])
    assert "ta_aa against the reference AutoAttack: the library found fewer adversarial examples in classes 3 " \
           "(robust 85.0% against 80.0%)." in by_status["fail"]
    assert [w for _, w, css, _ in rows if "status-fail" in css] == ["fail"] * len(by_status["fail"])


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, by file name, with its axes' limits (captured before it is closed)."""
    from benchmark.report import plots

    seen: dict[str, list[dict]] = {}
    save = plots._save

    def capture(fig, path, tight=True):
        seen[Path(path).name] = [{"xlim": ax.get_xlim(), "ylim": ax.get_ylim(), "xticks": list(ax.get_xticks())}
                                 for ax in fig.axes]
        return save(fig, path, tight)

    monkeypatch.setattr(plots, "_save", capture)
    return seen


def test_a_one_epoch_one_cell_report_has_readable_axes(tmp_path, figures):
    cell = make_cell(tmp_path / "results", "at", 10, 0, key="one", per_class_monitor=True)
    log = [json.loads(line) for line in (cell / "log.jsonl").read_text().splitlines()][:1]  # one epoch (0)
    (cell / "log.jsonl").write_text(json.dumps(log[0]) + "\n")
    build_report(tmp_path / "results", tmp_path / "reports")
    for name in ("cell-one-training.png", "cell-one-monitor-per-class.png"):
        for ax in figures[name]:
            low, high = ax["xlim"]
            assert (low, high) == (-0.5, 0.5) and ax["xticks"] == [0], name  # not -0.04..0.04
    loss_axis = figures["cell-one-training.png"][0]
    assert loss_axis["ylim"][0] == 0 and loss_axis["ylim"][1] > log[0]["loss"]
    scatter = next(v for k, v in figures.items() if k.endswith("clean-vs-robust.png"))[0]
    assert scatter["xlim"][1] - scatter["xlim"][0] >= 10 and scatter["ylim"][1] - scatter["ylim"][0] >= 10
    assert 0 <= scatter["xlim"][0] and scatter["xlim"][1] <= 100


def test_percent_limits_keep_a_span_inside_0_and_100():
    from benchmark.report.plots import percent_limits

    assert percent_limits([50.0]) == (45.0, 55.0)
    assert percent_limits([0.0, 0.0]) == (0.0, 10.0)
    assert percent_limits([100.0]) == (90.0, 100.0)
    low, high = percent_limits([20.0, 80.0])
    assert low < 20 and high > 80 and high - low < 70
    assert percent_limits([]) == (0.0, 100.0)


def three_methods_with_autoattack(root: Path) -> Path:
    """at, taet, trades (one seed each) evaluated under PGD-20 and the reference AutoAttack on 1,000 digits."""
    import numpy as np

    y = np.repeat(np.arange(10), 100)
    wrong = (y + 1) % 10
    for method, (clean, pgd, aa) in {"at": (90, 50, 44), "taet": (85, 55, 47), "trades": (88, 52, 40)}.items():
        keep = lambda share, shift=0: np.where((np.arange(y.size) + shift) % 100 < share - 3 * (y // 4), y, wrong)  # noqa: E731
        make_cell(root, method, 10, 0, predictions={"clean": keep(clean), "pgd20": keep(pgd), "aa": keep(aa)},
                  attack_records={"aa": {"label": "AutoAttack", "spec": {"kind": "autoattack", "eps": 0.1,
                                                                        "steps": 100, "version": "standard"}}})
    return root


def test_compact_latex_has_the_six_paper_columns_and_fits_one_column(tmp_path):
    from benchmark.report.paper import COLUMN_WIDTH_PT
    from benchmark.store import load_results

    results = three_methods_with_autoattack(tmp_path / "results")
    build_report(results, tmp_path / "reports")
    tables = tmp_path / "reports" / "tables"
    slug = "compact-mnist5k-ir10-Linf-eps0.1-balanced"
    frame = __import__("pandas").read_csv(tables / f"{slug}.csv")
    assert [c for c in frame.columns if not c.endswith(("ci95 low", "ci95 high", "± 95%", "± source"))] == \
        ["Method", "Clean", "BR (%) PGD-20", "BR (%) AA", "Class recall (%) Worst", "Class recall (%) Tail"]
    store = load_results(results)
    cells = store.cells
    for row in frame.to_dict("records"):
        method = row["Method"]
        mine = cells[(cells["method_label"] == method)].set_index("attack")
        assert row["Clean"] == pytest.approx(100 * mine.loc["clean", "balanced"])
        assert row["BR (%) AA"] == pytest.approx(100 * mine.loc["aa", "balanced"])
        assert row["Class recall (%) Worst"] == pytest.approx(100 * mine.loc["worst_case", "worst_class_recall"])
        # one seed: ± is the normal half-width of the class-mean recall over test sampling
        per_class = store.classes[(store.classes["method_label"] == method) & (store.classes["attack"] == "clean")]
        p = per_class["correct"] / per_class["test_support"]
        half = 100 * 1.959964 * (p * (1 - p) / per_class["test_support"]).sum() ** 0.5 / 10
        assert row["Clean ± 95%"] == pytest.approx(half, rel=1e-4)
        assert row["Clean ± source"].startswith("test-set sampling")
    latex = (tables / f"{slug}.tex").read_text()
    body = latex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 3 and all(line.count("&") == 5 for line in body)
    assert r"\begin{table}[t]" in latex and r"\begin{table*}" not in latex and r"\scriptsize$\pm$" in latex
    width = float(latex.split("% estimated width ")[1].split(" pt")[0])
    assert width <= COLUMN_WIDTH_PT
    assert ".00" not in latex  # 1,000 examples: one decimal, never two
    assert all(len(cell.split(r"\,")[0].split("{")[-1].strip(" }\\")) <= 4 for line in body
               for cell in line.split("&")[1:2])


def test_per_class_paper_tables_split_head_and_tail_classes(tmp_path):
    results = three_methods_with_autoattack(tmp_path / "results")
    build_report(results, tmp_path / "reports")
    tables = tmp_path / "reports" / "tables"
    base = "per-class-mnist5k-ir10-Linf-eps0.1-balanced-pgd20"
    head = __import__("pandas").read_csv(tables / f"{base}-head.csv")
    tail = __import__("pandas").read_csv(tables / f"{base}-tail.csv")
    assert "Model" not in head and "Seeds" not in head
    assert [c for c in head.columns if c.startswith("Clean ") and "ci95" not in c] == [f"Clean {c}" for c in range(5)]
    assert [c for c in tail.columns if c.startswith("Clean ") and "ci95" not in c] == [f"Clean {c}" for c in range(5, 10)]
    latex = (tables / f"{base}-tail.tex").read_text()
    assert r"\multicolumn{5}{c}{Clean}" in latex and r"\caption{Per-class recall (tail classes)" in latex


def test_a_table_too_wide_for_one_column_is_emitted_as_table_star():
    from benchmark.report.exports import to_latex
    from benchmark.report.tables import Cell, Column, Table

    columns = [Column("method", "Method", numeric=False)] + [Column(f"c{i}", f"class{i}") for i in range(20)]
    rows = [[Cell("method")] + [Cell("55.5", 55.5) for _ in range(20)]]
    wide = to_latex(Table("wide", "wide", columns, rows, kind="compact"))
    assert r"\begin{table*}[t]" in wide and r"\end{table*}" in wide and "both columns" in wide
    narrow = to_latex(Table("narrow", "narrow", columns[:4], [r[:4] for r in rows], kind="compact"))
    assert r"\begin{table}[t]" in narrow and "one column" in narrow


def test_naming_ignores_exactly_what_the_cell_key_leaves_out():
    from benchmark import cell
    from benchmark.report import naming

    for name in ("LOCATION_FIELDS", "PACING_FIELDS", "AS_WRITTEN_FIELDS", "EVALUATION_FIELDS"):
        assert getattr(naming, name) == getattr(cell, name), name


def test_many_classes_the_page_shows_the_tail_most_and_the_rest_behind_show_all(tmp_path, monkeypatch):
    from benchmark.report import tables

    monkeypatch.setattr(tables, "PAGE_CLASSES_MAX", 4)  # as 10 of CIFAR-100's 100 classes
    for method in ("at", "taet", "trades"):
        make_cell(tmp_path / "results", method, 10, 0)
    html = build_report(tmp_path / "results", tmp_path / "reports").read_text()
    tab = table(html, "per-class-")
    heads = tab["head"][-1][3:]
    shown = [h["text"] for h in heads if "detail" not in h["attrs"].get("class", "")]
    assert shown == ["6", "7", "8", "9"] * 2  # fewest training images: the last classes of the long tail
    assert all("detail" in r[j + 3]["attrs"]["class"] for r in tab["rows"] for j, h in enumerate(heads)
               if h["text"] not in shown)
    assert "Show all 23 columns (12 more: the classes with more training images)" in html
    export = (tmp_path / "reports" / "tables" / "per-class-mnist5k-ir10-Linf-eps0.1-balanced-pgd20.csv").read_text()
    assert "Clean 0," in export  # the exports keep every class
