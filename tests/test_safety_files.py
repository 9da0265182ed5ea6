"""Untrusted files stay data, and shared folders stay readable (issue 14, items 1 and 6).

Each test hands the harness a hostile or careless file: a checkpoint whose unpickling would run code
(refused in one line, the code never runs), a YAML profile that asks for a Python object, names that
matplotlib would read as mathtext or a spreadsheet as a formula, results written under a umask, and
cells this user may not read.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.atomic import UnsafeFile, load_torch_plain, save_torch_atomic, write_json_atomic
from benchmark.errors import UsageError
from benchmark.report import build_report, plots
from benchmark.report.__main__ import main as report_main
from benchmark.report.exports import csv_safe, to_csv
from benchmark.report.tables import Cell, Column, Table
from benchmark.store import UNREADABLE, load_results
from test_report_fixtures import make_cell
from toys import TINY_PROFILE


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``: what a hostile checkpoint.pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint.pt that looks like ours (model, epoch, ...) with a code-running object inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 0, "config": _Payload(marker)}, path)
    return path


# ----------------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_that_would_run_code_is_refused_in_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = hostile_checkpoint(tmp_path / "cell" / "checkpoint.pt", marker)
    with pytest.raises(UnsafeFile) as caught:
        load_torch_plain(path)
    message = str(caught.value)
    assert isinstance(caught.value, UsageError)  # the CLIs print it as one line
    assert "\n" not in message and message.startswith(f"refusing to load {path}: it is not a plain-tensor checkpoint")
    assert "system" in message  # names what the pickle asked for
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is hostile: the old loading ran its code
    assert marker.exists()


def test_a_run_over_a_folder_with_a_hostile_checkpoint_refuses_it_and_runs_nothing(tmp_path, capsys):
    from benchmark.__main__ import main
    from benchmark.config import expand_grid, load_profile

    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    (cfg,) = expand_grid(load_profile(str(profile)))
    marker = tmp_path / "pwned"
    hostile_checkpoint(tmp_path / "results" / cfg.key() / "checkpoint.pt", marker)
    code = main(["--profile", str(profile), "--results", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and not marker.exists()
    lines = [line for line in err.splitlines() if "refusing to load" in line]
    assert len(lines) == 1 and "checkpoint.pt" in lines[0] and "not a plain-tensor checkpoint" in lines[0], err
    assert not (tmp_path / "results" / cfg.key() / "metrics.json").exists()


def test_a_hostile_best_model_file_is_refused(tmp_path):
    from benchmark.selection import Selector

    marker = tmp_path / "pwned"
    selector = Selector("val_best", 0, None, None, None, "balanced", 8,
                        hostile_checkpoint(tmp_path / "best.pt", marker), best_epoch=0, best_score=0.5)
    with pytest.raises(UnsafeFile, match="refusing to load .*best.pt"):
        selector.restore_best(torch.nn.Linear(2, 2), None, torch.device("cpu"))
    assert not marker.exists()


def test_perf_refuses_a_hostile_cell_checkpoint(tmp_path):
    from benchmark.tools.perf import load_cell_model

    marker = tmp_path / "pwned"
    hostile_checkpoint(tmp_path / "cell" / "checkpoint.pt", marker)
    with pytest.raises(UnsafeFile, match="refusing to load"):
        load_cell_model(tmp_path / "cell", "cpu")
    assert not marker.exists()


def test_rng_states_are_plain_and_round_trip_through_a_weights_only_load(tmp_path):
    from benchmark.train import _rng_state, _set_rng_state

    generator = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # a cached Gaussian is part of numpy's state too
    save_torch_atomic(tmp_path / "rng.pt", _rng_state(generator))
    expected = (random.random(), np.random.normal(), torch.rand(2), torch.rand(2, generator=generator))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), generator.manual_seed(9)
    _set_rng_state(load_torch_plain(tmp_path / "rng.pt"), generator)
    got = (random.random(), np.random.normal(), torch.rand(2), torch.rand(2, generator=generator))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


# ----------------------------------------------------------------------------------- YAML
def test_a_profile_asking_for_a_python_object_is_not_constructed(tmp_path):
    from benchmark.config import load_profile

    marker = tmp_path / "pwned"
    profile = tmp_path / "evil.yaml"
    profile.write_text(TINY_PROFILE + f"description: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(Exception):  # a config error (or yaml's): the safe loader builds no Python objects
        load_profile(str(profile))
    assert not marker.exists()


# ----------------------------------------------------------------------------------- report
EVIL_METHOD = '=HYPERLINK("http://x")$\\undefinedcommand{$'  # a formula, and two $ around bad mathtext
EVIL_CLASS = "-$\\frac{$-"


def _evil_results(root: Path) -> Path:
    cell = make_cell(root, "at", 10, 0, key="evil", per_class_monitor=True)
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics["method"]["name"] = EVIL_METHOD
    metrics["data"]["classes"][0] = EVIL_CLASS
    (cell / "metrics.json").write_text(json.dumps(metrics))
    return root


def test_names_with_dollars_render_literally_in_figures_and_formulas_are_neutralized_in_csv_only(tmp_path):
    results = _evil_results(tmp_path / "results")
    index = build_report(results, tmp_path / "reports")  # mathtext on "$\undefinedcommand{$" would raise
    assert plots.STYLE["text.parse_math"] is False and plots.STYLE["text.usetex"] is False
    csvs = "".join(p.read_text() for p in (tmp_path / "reports" / "tables").glob("*.csv"))
    assert "'=HYPERLINK" in csvs and "\n=" not in csvs and ",=" not in csvs
    assert "'-$" in csvs and ",-$" not in csvs
    html = index.read_text() + (tmp_path / "reports" / "cells" / "evil.html").read_text()
    assert "=HYPERLINK(&#34;http://x&#34;)" in html or "=HYPERLINK(&quot;http://x&quot;)" in html
    assert "'=HYPERLINK" not in html and "&#39;=HYPERLINK" not in html


def test_with_mathtext_on_the_same_names_crash_a_figure(tmp_path, monkeypatch):
    """The names above really are hostile: with matplotlib's default math parsing a figure fails."""
    monkeypatch.setattr(plots, "STYLE", {**plots.STYLE, "text.parse_math": True})
    with pytest.raises(ValueError):
        plots.class_counts([EVIL_CLASS, "b"], [10, 5], tmp_path / "counts.png", title=EVIL_METHOD)


def test_csv_keeps_numbers_and_plain_text_and_prefixes_formula_text():
    assert [csv_safe(v) for v in ("=1+2", "+A1", "-2+3", "@SUM(A1)", "\tx", "\rx", "at", "-0.25", -0.25, None)] == [
        "'=1+2", "'+A1", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "at", "-0.25", -0.25, None]
    table = Table("t", "title", [Column("m", "=method", numeric=False), Column("v", "value")],
                  [[Cell(text="=cmd", value="=cmd"), Cell(text="-0.25", value=-0.25)],
                   [Cell(text="at", value="at"), Cell(text="3", value=3.0)]])
    assert to_csv(table).splitlines() == ["'=method,value", "'=cmd,-0.25", "at,3.0"]


# ----------------------------------------------------------------------------------- shared folders
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_are_written_with_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "metrics.json", {"a": 1})
        save_torch_atomic(tmp_path / "checkpoint.pt", {"a": torch.zeros(1)})
    finally:
        os.umask(old)
    for name in ("metrics.json", "checkpoint.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.json"]  # no temp files left


def _deny(monkeypatch, denied: set[Path]) -> None:
    """Reading these files raises PermissionError, as for another user's 0600 file (tests may run as root)."""
    read_text = Path.read_text

    def guarded(self, *args, **kwargs):
        if self in denied:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded)


def test_an_unreadable_cell_is_listed_as_unreadable_and_the_others_render(tmp_path, monkeypatch):
    results = tmp_path / "results"
    make_cell(results, "at", 10, 0, key="mine")
    theirs = make_cell(results, "taet", 10, 0, key="theirs")
    _deny(monkeypatch, {theirs / "metrics.json"})
    store = load_results(results)
    assert sorted(store.records) == ["mine"]
    assert [(p.parent.name, reason) for p, reason in store.skipped] == [("theirs", UNREADABLE)]
    assert UNREADABLE == "unreadable (permission denied)"
    index = build_report(results, tmp_path / "reports")
    assert "unreadable (permission denied)" in index.read_text()


def test_a_report_over_only_unreadable_cells_exits_non_zero_with_one_line(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    cells = [make_cell(results, "at", 10, seed, key=f"theirs{seed}") for seed in (0, 1)]
    _deny(monkeypatch, {cell / "metrics.json" for cell in cells})
    code = report_main(["--results", str(results), "--out", str(tmp_path / "reports")])
    captured = capsys.readouterr()
    assert code != 0 and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "unreadable (permission denied)" in captured.err and "2 of 2" in captured.err
    assert not (tmp_path / "reports" / "index.html").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their mode; the PermissionError tests above cover it")
def test_a_cell_folder_closed_with_chmod_000_is_listed_as_unreadable(tmp_path):
    results = tmp_path / "results"
    make_cell(results, "at", 10, 0, key="mine")
    theirs = make_cell(results, "taet", 10, 0, key="theirs")
    (theirs / "metrics.json").chmod(0)
    try:
        store = load_results(results)
    finally:
        (theirs / "metrics.json").chmod(0o644)
    assert sorted(store.records) == ["mine"] and [r for _, r in store.skipped] == [UNREADABLE]


def test_the_report_still_escapes_every_string(tmp_path):
    """Kept beside the hostile-file tests: HTML in a name stays text (see also test_report)."""
    results = tmp_path / "results"
    cell = make_cell(results, "at", 10, 0, key="evil")
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics["method"]["name"] = "<img src=x onerror=alert(1)>"
    (cell / "metrics.json").write_text(json.dumps(metrics))
    with contextlib.redirect_stdout(io.StringIO()):
        index = build_report(results, tmp_path / "reports")
    html = index.read_text() + (tmp_path / "reports" / "cells" / "evil.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import pickle

    from benchmark.data import load_dataset
    from dataset_files import write_cifar10

    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as stream:
        pickle.dump({"data": _Payload(marker), "labels": [0]}, stream, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="data_batch_3: refusing to load posix.system"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()
