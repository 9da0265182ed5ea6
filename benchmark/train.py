"""The one training loop every method runs through: SGD, step schedule, AMP, checkpoint and resume.

Per step the method computes its own loss (including any attack); the loop only steps the
optimizer. Loss sums stay on the device until the epoch ends, so the hot loop never syncs with the
host. At each epoch end one line of ``log.jsonl`` is written, then, at most every ``checkpoint_every_s``
seconds and after the last epoch, a checkpoint (model, optimizer,
scheduler, method state, RNG states, the cell key and config hash) atomically, the one before it kept as
``checkpoint.prev.pt``; a restarted run resumes from the newest readable of the two (a truncated newest
one falls back to the epoch before, with a warning), which holds only tensors and builtins and is loaded
with ``weights_only=True``. A checkpoint of another cell or config is refused, never resumed.

The loop receives the cell's resolved ``Plan`` (benchmark/plan.py) and the model-selection rule the
runner built from it; it reads the plan and never calls back into the configuration.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks import AttackSpec
from methods import LossOut, Method, TrainContext
from .data.loader import iterate_batches, stratified_subset, to_float
from .data.prepare import CellData
from .data.transforms import augment
from .evaluate import InferenceModel, predict
from .metrics import per_class_recall
from .plan import Plan
from .selection import Selector
from .fastpath import autocast, compile_cache, prepare_model, resolve_cuda_graphs
from .atomic import UnsafeFile, load_torch_plain, save_torch_atomic, write_text_atomic
from .cell import (CHECKPOINT_FILE, LOG_FILE, PREVIOUS_CHECKPOINT_FILE, ForeignCellFile, config_hash,
                   ownership_problem, set_aside)

_clock = time.monotonic  # the checkpoint cadence's clock (tests replace it)
_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "method", "rng", "epoch", "step", "train_seconds")


def load_resume_state(cell_dir: Path, plan: Plan, device: torch.device) -> dict | None:
    """The newest readable checkpoint of the cell (None: none, start from epoch 0).

    Tried newest first, then the one before; an unreadable (truncated, empty, not a checkpoint) file is
    moved into ``superseded/`` with a warning naming it. One that belongs to another cell or config raises
    :class:`ForeignCellFile`, and one that is not plain tensors raises ``UnsafeFile``: neither is resumed."""
    expected = config_hash(plan.resolved)
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        path = Path(cell_dir) / name
        if not path.exists():
            continue
        try:
            state = load_torch_plain(path, map_location=device)
            if not isinstance(state, dict) or any(k not in state for k in _CHECKPOINT_KEYS):
                raise ValueError("not a training checkpoint of this harness (fields missing)")
        except UnsafeFile:
            raise
        except Exception as err:  # truncated or garbage: torch/zipfile errors name what they read
            moved = set_aside(cell_dir, only=(name,))
            detail = str(err).splitlines()[0][:160] if str(err) else ""
            print(f"warning: {path}: unreadable checkpoint ({type(err).__name__}: {detail}); moved to {moved}",
                  file=sys.stderr, flush=True)
            continue
        problem = ownership_problem(state, plan.key, expected, str(path))
        if problem:
            raise ForeignCellFile(f"{problem}: refused, not resumed (--retry-failed moves it aside and starts over)")
        return state
    return None


def save_checkpoint(cell_dir: Path, state: dict) -> None:
    """Keep the previous checkpoint, then write the new one atomically: a crash at any moment leaves one
    whole checkpoint to resume from, and a newest one damaged later still has the epoch before it."""
    path, previous = Path(cell_dir) / CHECKPOINT_FILE, Path(cell_dir) / PREVIOUS_CHECKPOINT_FILE
    if path.exists():
        os.replace(path, previous)
    save_torch_atomic(path, state)


def _rng_state(generator: torch.Generator) -> dict:
    """Every RNG the loop may draw from, as tensors and builtins (checkpoints load with weights_only=True)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    version, internal, gauss_next = random.getstate()
    state = {"python": [version, list(internal), gauss_next], "numpy": numpy_state, "torch": torch.get_rng_state(),
             "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].cpu().numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())  # RNG states are CPU byte tensors, whatever map_location moved
    generator.set_state(state["generator"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class TrainingFailed(RuntimeError):
    """Training cannot give a correct model: a non-finite loss or parameter, or no optimizer step in an
    epoch. The runner records the cell as ``failed`` with ``epoch``, ``step`` and ``cause``."""

    def __init__(self, cause: str, epoch: int, step: int | None):
        super().__init__(cause)
        self.cause, self.epoch, self.step = cause, epoch, step


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, method: Method, ctx: TrainContext,
               xb: torch.Tensor, yb: torch.Tensor, autocast_context) -> LossOut:
    """One optimizer step on the method's loss (its attack included); no host synchronization.
    ``benchmark.tools.perf`` times this same function as the fast path."""
    ctx.lr = optimizer.param_groups[0]["lr"]
    with autocast_context:
        out = method.loss(model, xb, yb, ctx)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    ctx.step += 1
    return out


def _trim_log(path: Path, last_epoch: int) -> None:
    """Keep only whole log lines of epochs the checkpoint covers: a crash may fall between the log
    and checkpoint writes, or in the middle of a line."""
    if not path.exists():
        return
    kept, dropped = [], 0
    for raw in path.read_bytes().splitlines():
        try:
            line = raw.decode("utf-8")
            if json.loads(line)["epoch"] <= last_epoch:
                kept.append(line)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            dropped += 1
    if dropped:
        print(f"warning: {path}: {dropped} unreadable line(s) dropped on resume", file=sys.stderr, flush=True)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def train(plan: Plan, data: CellData, method: Method, model: torch.nn.Module, cell_dir: Path,
          device: torch.device, selector: Selector | None = None, progress: bool = True,
          on_epoch: Callable[[dict], None] | None = None, resume_state: dict | None = None) -> dict:
    """Train ``model`` in place (resuming from ``cell_dir`` if a checkpoint is there); return the cost record.

    ``selector`` scores epochs under the plan's model-selection rule (``runner.make_selector``); without
    one the final epoch's model is kept, which only a plan with ``selection: final`` allows.
    ``resume_state``: the checkpoint, when the caller has already loaded it with :func:`load_resume_state`."""
    cell_dir = Path(cell_dir)
    if selector is None:
        if plan.selection != "final":
            raise ValueError(f"selection {plan.selection!r} needs its selector (benchmark.runner.make_selector)")
        selector = Selector.final(plan.epochs, plan.eval_batch_size)
    model.to(device)
    # a grid's cells share one on-disk compile cache: the folder above the cell (the results or staging root)
    compiled = compile_cache(cell_dir.parent) if plan.speed["torch_compile"] else None
    prepare_model(model, plan.speed)  # channels_last, cudnn.benchmark, compile: as the plan records them
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    graphs = resolve_cuda_graphs(plan.config.get("cuda_graphs", False), device, method)  # requested, used, why
    if graphs["used"]:
        from .cuda_graph import capturable_sgd

        optimizer = capturable_sgd(model.parameters(), plan.lr, plan.momentum, plan.weight_decay, device)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=plan.lr, momentum=plan.momentum,
                                    weight_decay=plan.weight_decay)
    steps_per_epoch = len(x_train) // plan.batch_size if plan.drop_last else -(-len(x_train) // plan.batch_size)
    milestones = list(plan.milestone_epochs)
    if plan.schedule_unit == "iteration":
        milestones = [m * steps_per_epoch for m in milestones]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=plan.lr_gamma)
    generator = torch.Generator().manual_seed(plan.seed)  # shuffling and augmentation
    ctx = TrainContext(epoch=0, epochs=plan.epochs, step=0, num_classes=data.num_classes,
                       class_counts=torch.tensor(data.train_counts, device=device),
                       attack=plan.train_attack, device=device)
    monitor_idx = torch.as_tensor(stratified_subset(data.y_test, plan.monitor_per_class, seed=0))
    x_monitor, y_monitor = data.x_test[monitor_idx], data.y_test[monitor_idx]
    monitor_attack = plan.monitor_attack
    inference = InferenceModel(model, method)

    start_epoch, seconds = 0, 0.0
    log_path = cell_dir / LOG_FILE
    state = resume_state if resume_state is not None else load_resume_state(cell_dir, plan, device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        _set_rng_state(state["rng"], generator)
        selector.load_state_dict(state.get("selection"))
        start_epoch, seconds, ctx.step = state["epoch"] + 1, state["train_seconds"], state["step"]
        _trim_log(log_path, state["epoch"])
    resumed_from = start_epoch if start_epoch else None

    def step(xb, yb):
        return train_step(model, optimizer, method, ctx, xb, yb, autocast(plan.speed["amp"], device))

    if graphs["used"]:
        from .cuda_graph import CapturedStep

        step = CapturedStep(model, optimizer, method, ctx, plan.speed["amp"], step, batch_size=plan.batch_size)
    if state is None:
        _trim_log(log_path, -1)  # epochs a crash logged before any checkpoint are run again
    last_checkpoint = _clock()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    epochs = tqdm(range(start_epoch, plan.epochs), desc=f"train {plan.method}", initial=start_epoch,
                  total=plan.epochs, disable=None if progress else True)
    for epoch in epochs:
        started = time.perf_counter()
        ctx.epoch = epoch
        method.on_epoch_start(ctx)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        stats_sum: dict[str, torch.Tensor] = {}
        seen = 0
        first_bad_step = torch.full((), -1, device=device, dtype=torch.long)  # device-side: no sync per step
        batches = iterate_batches(x_train, y_train, plan.batch_size, shuffle=True, drop_last=plan.drop_last,
                                  generator=generator)
        for xb, yb in tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{plan.epochs}", leave=False,
                           disable=None if progress else True):
            xb = augment(to_float(xb), plan.augment, generator)
            out = step(xb, yb)
            if plan.schedule_unit == "iteration":
                scheduler.step()
            loss_sum += out.loss.detach() * len(yb)
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(out.loss.detach()),
                                         ctx.step - 1, first_bad_step)
            if out.logits is not None:
                correct += (out.logits.argmax(1) == yb).sum()
            for name, value in out.stats.items():
                stats_sum[name] = stats_sum.get(name, 0) + value * len(yb)
            seen += len(yb)
        _check_epoch(epoch, seen, loss_sum, first_bad_step, model, ctx.step, plan.batch_size, len(x_train))
        lr = float(optimizer.param_groups[0]["lr"])  # a device tensor for the captured step
        if plan.schedule_unit == "epoch":
            scheduler.step()
        method.on_epoch_end(ctx)
        train_seconds = time.perf_counter() - started
        seconds += train_seconds
        record = {
            "epoch": epoch, "lr": lr, "loss": float(loss_sum) / max(seen, 1),
            "train_acc": float(correct) / max(seen, 1), "examples": seen, "seconds": train_seconds,
            **{name: float(value) / max(seen, 1) for name, value in stats_sum.items()},
        }
        if (epoch + 1) % plan.monitor_every == 0 or epoch == plan.epochs - 1:
            monitor_started = time.perf_counter()
            record.update(monitor(inference, x_monitor, y_monitor, monitor_attack, data.num_classes,
                                  plan.eval_batch_size, device))
            record["monitor_seconds"] = time.perf_counter() - monitor_started  # its cost, beside the epoch's
        record.update(method.log_epoch(record, ctx))  # the method's own per-epoch diagnostics (TAET's plateau)
        score = selector.observe(epoch, inference, model, method, device)
        if score is not None:
            record["selection_score"] = score
        if device.type == "cuda":
            record["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        with log_path.open("a") as handle:  # log first: a log ahead of the checkpoint is trimmed on resume
            handle.write(json.dumps(record) + "\n")
        # at most every checkpoint_every_s (0: every epoch), after the last epoch, and with each new best model
        # (best.pt and the selector's state in the checkpoint stay one choice); a resume redoes the epochs since
        if (_clock() - last_checkpoint >= plan.checkpoint_every_s or epoch == plan.epochs - 1
                or selector.best_epoch == epoch):
            save_checkpoint(cell_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "method": method.state_dict(), "rng": _rng_state(generator), "epoch": epoch, "step": ctx.step,
                "train_seconds": seconds, "config": plan.config, "selection": selector.state_dict(),
                "cell_key": plan.key, "config_hash": config_hash(plan.resolved),
            })
            last_checkpoint = _clock()
        postfix = {"loss": f"{record['loss']:.3f}", "acc": f"{record['train_acc']:.2f}"}
        if "monitor_clean_acc" in record:
            postfix.update(mon_clean=f"{record['monitor_clean_acc']:.2f}",
                           mon_rob=f"{record[f'monitor_{monitor_attack.name}_acc']:.2f}")
        epochs.set_postfix(postfix)
        if on_epoch is not None:  # live trackers (benchmark.tracking): the record, once it is in log.jsonl
            on_epoch(record)
    selector.restore_best(model, method, device)
    cost = {"train_seconds": seconds, "epochs": plan.epochs, "seconds_per_epoch": seconds / max(plan.epochs, 1),
            "resumed_from_epoch": resumed_from, "steps": ctx.step, "device": str(device),
            "model_selection": selector.record(plan.epochs),
            "method_diagnostics": method.diagnostics(), "cuda_graphs": _graph_record(graphs, step)}
    if compiled is not None:
        cost["compile"] = compiled()
    return cost


def _graph_record(graphs: dict, step) -> dict:
    """The cost record's ``cuda_graphs``: what was asked, whether the captured step ran, and why not."""
    record = dict(graphs)
    captured = getattr(step, "record", None)
    if captured is not None:
        record.update(captured)
        if captured["failed"]:
            record.update(used=False, why=captured["failed"])
    return record


def _check_epoch(epoch: int, seen: int, loss_sum: torch.Tensor, first_bad_step: torch.Tensor,
                 model: torch.nn.Module, step: int, batch_size: int, train_size: int) -> None:
    """Once per epoch (one host sync): the epoch made optimizer steps, every loss was finite, and the
    parameters still are (a non-finite gradient shows up there). TrainingFailed otherwise."""
    if seen == 0:
        raise TrainingFailed(f"zero optimizer steps in epoch {epoch}: batch size {batch_size} with "
                             f"{train_size} training examples (drop_last)", epoch, step)
    if not bool(torch.isfinite(loss_sum)):
        bad = int(first_bad_step)
        raise TrainingFailed(f"non-finite training loss at step {bad} (lower lr?)", epoch, bad if bad >= 0 else step)
    params = [p for p in model.parameters() if p.is_floating_point()]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise TrainingFailed(f"non-finite model parameters after epoch {epoch} (a non-finite gradient; lower lr?)",
                             epoch, step)


def monitor(inference: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, num_classes: int,
            batch_size: int, device: torch.device) -> dict:
    """Clean and robust accuracy, overall and per class, on the fixed monitoring subset (for robust-overfitting
    curves per class). Monitoring only: never used to choose a model."""
    y_np = y.numpy()
    out = {}
    for name, spec in (("clean", None), (attack.name, attack)):
        pred, _ = predict(inference, x, y, spec, batch_size, device, torch.Generator().manual_seed(0))
        recall, _ = per_class_recall(y_np, pred, num_classes)
        out[f"monitor_{name}_acc"] = float((pred == y_np).mean())
        out[f"monitor_per_class_{name}"] = [None if np.isnan(r) else float(r) for r in recall]
    out["monitor_note"] = "monitoring only: a fixed class-stratified test subset, never used to choose a model"
    return out
