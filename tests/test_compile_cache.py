"""``torch_compile: true``: inductor's on-disk caches under ``<results>/.cache/inductor``, shared by the cells of a
grid (a later cell loads the kernels an earlier one compiled), or the user's own TORCHINDUCTOR_CACHE_DIR."""
from __future__ import annotations

import json
import os

import pytest

from benchmark import fastpath
from benchmark.__main__ import main
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_compile_cache_goes_under_the_results_folder_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.setattr(fastpath, "_USER_COMPILE_CACHE", None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")  # recorded, so the variable is restored after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    probe = fastpath.compile_cache(tmp_path / "results")
    expected = str((tmp_path / "results" / ".cache" / "inductor").resolve())
    assert probe() == {"cache_dir": expected, "chosen_by": "harness", "fx_graph_cache_hits": 0,
                       "fx_graph_cache_misses": 0}
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == expected
    monkeypatch.setattr(fastpath, "_USER_COMPILE_CACHE", str(tmp_path / "mine"))
    assert fastpath.compile_cache(tmp_path / "results")()["cache_dir"] == str(tmp_path / "mine")


@pytest.mark.slow  # inductor compiles the small CNN's train, attack and no_grad graphs: minutes on 2 cores
def test_the_second_compiled_cell_of_a_grid_loads_the_first_cells_kernels(tmp_path, monkeypatch):
    monkeypatch.setattr(fastpath, "_USER_COMPILE_CACHE", None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")  # recorded, so the variable is restored after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE.replace("epochs: 2", "epochs: 1").replace("seeds: [0]", "seeds: [0, 1]")
                       + "torch_compile: true\n")
    results = tmp_path / "results"
    assert main(["--profile", str(profile), "--results", str(results), "--device", "cpu", "--no-progress"]) == 0
    records = sorted((json.loads(p.read_text()) for p in results.glob("*/metrics.json")),
                     key=lambda r: r["config"]["seed"])
    first, second = (r["cost"]["compile"] for r in records)
    assert first["cache_dir"] == second["cache_dir"] == str((results / ".cache" / "inductor").resolve())
    assert first["fx_graph_cache_misses"] > 0  # a fresh cache: the first cell compiles
    assert second["fx_graph_cache_misses"] == 0 and second["fx_graph_cache_hits"] >= first["fx_graph_cache_misses"]
    assert any((results / ".cache" / "inductor").rglob("*"))
