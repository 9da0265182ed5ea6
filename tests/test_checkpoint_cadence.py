"""Checkpoint and evaluation-progress cadence (issue #17): checkpoints at most every ``checkpoint_every_s`` and
after the last epoch, progress at most every ``progress_every_s``; a resume redoes the epochs since the last
checkpoint and ends where an uninterrupted run ends. Neither interval is in the cell key."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from attacks import AttackSpec
from benchmark import train as train_module
from benchmark.config import Config
from benchmark.data import to_float
from benchmark.data.prepare import prepare_cell_data
from benchmark.errors import UsageError
from benchmark.evaluate import predict
from benchmark.models import create_model
from benchmark.train import train
from methods import create_method

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS = 4


@pytest.fixture
def data(mnist5k, monkeypatch):
    monkeypatch.setattr("benchmark.data.prepare.load_dataset", lambda *args, **kwargs: mnist5k)
    return prepare_cell_data(_config(0))


def _config(every: float) -> Config:
    return Config(model="small_cnn", model_args={"width": 0.25}, epochs=EPOCHS, batch_size=800, eps=0.1,
                  device="cpu", checkpoint_every_s=every, monitor_per_class=1,
                  train_attack={"kind": "pgd", "steps": 1, "step_size": "eps/4", "start": "normal"},
                  monitor_attack={"kind": "pgd", "steps": 1, "step_size": "eps/4", "start": "uniform"}).validate()


def _train(cfg: Config, data, cell, crash_at_epoch: int | None = None):
    torch.manual_seed(0)
    method = create_method("at")
    if crash_at_epoch is not None:
        def on_epoch_start(ctx):
            if ctx.epoch == crash_at_epoch:
                raise KeyboardInterrupt("killed")  # after the epoch before it was logged
        method.on_epoch_start = on_epoch_start
    model = create_model("small_cnn", 10, 1, width=0.25)
    cell = cell / cfg.key()  # checkpoints carry the cell key: the folder is named by it
    cell.mkdir(parents=True, exist_ok=True)
    cost = train(cfg.resolve(), data, method, model, cell, torch.device("cpu"), progress=False)
    return model, cost


def _saved_epochs(monkeypatch) -> list[int]:
    saved, real = [], train_module.save_checkpoint

    def recording(cell_dir, state):
        saved.append(state["epoch"])
        real(cell_dir, state)

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    return saved


def _log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / _config(0).key() / "log.jsonl").read_text().splitlines()]


def test_a_long_interval_writes_only_the_final_checkpoint_and_zero_writes_one_every_epoch(data, tmp_path,
                                                                                          monkeypatch):
    saved = _saved_epochs(monkeypatch)
    _train(_config(3600), data, tmp_path / "long")
    assert saved == [EPOCHS - 1]
    assert [r["epoch"] for r in _log(tmp_path / "long")] == list(range(EPOCHS))  # the log is still per epoch
    saved.clear()
    _train(_config(0), data, tmp_path / "every")
    assert saved == list(range(EPOCHS))


def test_a_resume_redoes_the_epochs_since_the_last_checkpoint_and_ends_like_an_uninterrupted_run(
        data, tmp_path, monkeypatch):
    reference, _ = _train(_config(0), data, tmp_path / "reference")
    saved = _saved_epochs(monkeypatch)
    monkeypatch.setattr(train_module, "_clock", lambda c=itertools.count(0, 6): next(c))  # 6 s per reading
    cell = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        _train(_config(10), data, cell, crash_at_epoch=3)  # readings 0 (start), 6, 12 → save, 18, 24: none
    assert saved == [1] and [r["epoch"] for r in _log(cell)] == [0, 1, 2]
    resumed, cost = _train(_config(10), data, cell)
    assert cost["resumed_from_epoch"] == 2  # epoch 2 is trained again
    assert saved[-1] == EPOCHS - 1
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    ours, theirs = _log(cell), _log(tmp_path / "reference")
    assert [r["epoch"] for r in ours] == list(range(EPOCHS))  # epoch 2's line from before the crash is gone
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]


def test_a_crash_before_the_first_checkpoint_starts_over_with_a_clean_log(data, tmp_path):
    cell = tmp_path / "cell"
    with pytest.raises(KeyboardInterrupt):
        _train(_config(3600), data, cell, crash_at_epoch=2)
    assert not (cell / _config(0).key() / "checkpoint.pt").exists() and len(_log(cell)) == 2
    _, cost = _train(_config(3600), data, cell)
    assert cost["resumed_from_epoch"] is None and [r["epoch"] for r in _log(cell)] == list(range(EPOCHS))


def test_the_intervals_are_not_in_the_cell_key_and_bad_values_are_usage_errors():
    assert _config(0).key() == _config(3600).key()
    assert Config(progress_every_s=0).validate().key() == Config().validate().key()
    for bad in ({"checkpoint_every_s": -1}, {"progress_every_s": float("nan")}, {"checkpoint_every_s": "often"}):
        with pytest.raises(UsageError, match="checkpoint_every_s|progress_every_s"):
            Config(**bad).validate()


@pytest.mark.parametrize("every, saves", [(0, 3), (3600, 0)])
def test_evaluation_progress_is_saved_after_each_batch_only_when_the_interval_allows(clean_mnist_model, mnist5k,
                                                                                     tmp_path, monkeypatch,
                                                                                     every, saves):
    calls = []
    monkeypatch.setattr("benchmark.evaluate.save_npz_atomic", lambda path, **arrays: calls.append(path))
    x, y = to_float(mnist5k.x_test[:32]), mnist5k.y_test[:32]
    spec = AttackSpec(kind="pgd", eps=0.1, steps=1, step_size=0.025, start="uniform")
    pred, _ = predict(clean_mnist_model, x, y, spec, 8, torch.device("cpu"), torch.Generator().manual_seed(0),
                      progress_path=tmp_path / "pgd.npz", progress_every_s=every)
    assert len(calls) == saves  # 4 batches: progress after the first three at interval 0 (the last ends the attack)
    assert (pred >= 0).all()
