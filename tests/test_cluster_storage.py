"""Results in an fsspec store (benchmark/cluster/storage.py), on fsspec's own memory and local filesystems:
a cell runs in a staging folder and its files reach the store with the record last; a cell finished in the
store is not submitted again; a retry on a fresh node (empty staging folder) resumes from the checkpoint
in the store."""
from __future__ import annotations

import contextlib
import io
import json

import fsspec
import pytest
import yaml

from benchmark.__main__ import main
from benchmark.cluster.storage import Store
from benchmark.config import expand_grid
from benchmark.executors import run_grid
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")


def _plan(**changes):
    (cfg,) = expand_grid({**yaml.safe_load(TINY_PROFILE), "epochs": 1, **changes})
    return cfg.resolve("cpu")


@pytest.fixture(scope="module")
def memory_cell(tmp_path_factory):
    import os

    staging = tmp_path_factory.mktemp("staging")
    os.environ["TAILROBUST_STAGING"] = str(staging)
    store, plan = Store("memory://tailrobust-test/results", sync_every=0.2), _plan()
    order = []
    push = store._push
    store._push = lambda local, remote: (order.append(remote.rsplit("/", 1)[1]), push(local, remote))
    metrics = store.run(plan)
    yield {"store": store, "plan": plan, "metrics": metrics, "order": order, "staging": staging}
    os.environ.pop("TAILROBUST_STAGING")
    fsspec.filesystem("memory").rm("/tailrobust-test", recursive=True)


def test_a_cell_run_against_a_store_leaves_its_files_there_with_the_record_last(memory_cell):
    fs, key = fsspec.filesystem("memory"), memory_cell["plan"].key
    names = {path.rsplit("/", 1)[1] for path in fs.find(f"/tailrobust-test/results/{key}")}
    assert {"metrics.json", "checkpoint.pt", "log.jsonl", "config.yaml", "predictions.npz"} <= names
    assert not any(name.endswith(".tmp") for name in names)
    assert memory_cell["order"][-1] == "metrics.json" and memory_cell["order"].count("metrics.json") == 1
    stored = json.loads(fs.cat(f"/tailrobust-test/results/{key}/metrics.json"))
    assert stored["evaluation"] == memory_cell["metrics"]["evaluation"]
    assert memory_cell["store"].status(memory_cell["plan"]) == "done"


def test_a_retry_on_a_fresh_node_resumes_from_the_checkpoint_in_the_store(memory_cell, tmp_path, monkeypatch):
    fs, key = fsspec.filesystem("memory"), memory_cell["plan"].key
    fs.rm(f"/tailrobust-test/results/{key}/metrics.json")  # as if the node died after its last checkpoint
    assert memory_cell["store"].status(memory_cell["plan"]) == "resumable"
    monkeypatch.setenv("TAILROBUST_STAGING", str(tmp_path / "other-node"))  # nothing staged there
    again = memory_cell["store"].run(memory_cell["plan"])
    assert again["cost"]["resumed_from_epoch"] == 1  # pulled the 1-epoch checkpoint: no epoch trained again
    assert again["evaluation"]["attacks"]["worst_case"] == memory_cell["metrics"]["evaluation"]["attacks"]["worst_case"]


def test_a_cell_finished_in_the_store_is_never_submitted_again(tmp_path):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'tailrobust[slurm]')")
    from benchmark.cluster.slurm_executor import SlurmExecutor

    url, plan = f"file://{tmp_path / 'store'}", _plan()
    executor = SlurmExecutor(cluster="local", folder=str(tmp_path / "jobs"), num_cpus=1, num_gpus=0, poll=0.2)
    printed = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            (metrics,) = run_grid([plan], url, progress=False, quiet=True, executor=executor)
        printed.append(out.getvalue())
    assert metrics["status"] == "complete" and (tmp_path / "store" / plan.key / "metrics.json").exists()
    assert "submitted (job " in printed[0]
    assert "skip (finished)" in printed[1] and "submitted" not in printed[1]


def test_a_results_url_with_the_local_executor_is_one_line(tmp_path, capsys):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    code = main(["--profile", str(profile), "--results", "memory://x/results"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs --executor ray or slurm" in err
