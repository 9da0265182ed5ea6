"""Runs cells: one cell = train one method on one long-tailed dataset with one seed, then evaluate.

A cell's folder (``results/<key>``) holds ``config.yaml``, ``indices.json``, ``log.jsonl``, the
checkpoint and, once finished, ``metrics.json``. A finished cell is skipped unless forced (and a
forced re-run moves the old files aside, never overwrites them); an unfinished one resumes.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from attacks import AttackSpec
from methods import create_method
from .audit import build_audit, zero_gradient_fraction
from .data.datasets import is_naturally_imbalanced
from .data.prepare import evaluation_subset, prepare_cell_data
from .evaluate import InferenceModel, evaluate
from .fastpath import resolve_cuda_graphs
from .metrics import summarize_evaluation
from .models import create_model
from .plan import Plan
from .atomic import load_torch_plain, save_npz_atomic, save_torch_atomic, write_json_atomic, write_text_atomic
from .cell import (CHECKPOINT_FILE, CONFIG_FILE, EVAL_PROGRESS_DIR, INDICES_FILE, LOG_FILE, METRICS_FILE,
                   PREDICTIONS_FILE, PREVIOUS_CHECKPOINT_FILE, CellRecord, ForeignCellFile, cell_key, cell_status,
                   config_hash, non_finite_path, ownership_problem, read_record, record_problem, set_aside,
                   training_key, write_failure, write_record)
from .cell_lock import CellLock, describe as describe_owner
from .errors import UsageError
from .provenance import cpu_name, harness_commit, package_versions, peak_rss_mb
from .selection import BEST, Selector
from .train import TrainingFailed, load_resume_state, train
from .plugins import load_plugins
from .tracking import Trackers


class DataFault(RuntimeError):
    """Data that is there but cannot be read (corrupt, truncated): a runtime fault, not bad input."""


def check_batch_fits(plan: Plan, data) -> None:
    """1 <= batch size <= the training-set size (known only once the long-tailed subset is drawn)."""
    n = len(data.y_train)
    if plan.batch_size > n:
        raise UsageError(f"batch_size {plan.batch_size} is larger than the training set of {plan.dataset} at IR "
                         f"{plan.imbalance_ratio:g} ({n} examples): give batch_size <= {n}")


def _data_identity(plan: Plan) -> tuple:
    return (plan.dataset, plan.data_root, plan.imbalance_ratio, plan.subset_seed, plan.test_split, plan.selection,
            plan.val_fraction)


def load_checked_data(plan: Plan):
    """The cell's data, with the batch size checked against it. Missing data is the dataset's own
    UsageError (exit 2); data that is there but unreadable is a DataFault (exit 1) naming the cause."""
    try:
        data = prepare_cell_data(plan)
    except (UsageError, KeyboardInterrupt):
        raise
    except OSError as err:
        raise DataFault(f"data of {plan.dataset}: {err.filename or plan.data_root or ''}: {err.strerror or err}") from None
    except Exception as err:  # a corrupt file: pickle, numpy, PIL errors name what they read
        raise DataFault(f"data of {plan.dataset} (root {plan.data_root}) is unreadable: "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    check_batch_fits(plan, data)
    return data


def check_grid_data(plans: list[Plan], results_dir: Path, retry_failed: bool = False, force: bool = False) -> None:
    """Before any cell folder is made: the data of every cell that will run loads and its training set holds
    at least one batch (one load per distinct data setting)."""
    seen = set()
    for plan in plans:
        status = plan_status(plan, results_dir)
        if not force and (status == "done" or (status == "failed" and not retry_failed)):
            continue
        ident = _data_identity(plan)
        if ident in seen:
            continue
        check_batch_fits(plan, load_checked_data(plan))
        seen.add(ident)


def outside_worst_case(specs: list, eps: float) -> tuple[str, ...]:
    """Attacks scored but left out of the worst case: those at another ε than the cell's (TAET's notebook
    tests at 8/255 after training at 0.031), and torchattacks' AutoAttack, a cross-check of the reference
    that the audit compares per class; run on a smaller subset, it would otherwise shrink the examples the
    worst case (the ranking number) is taken on to its own."""
    return tuple(s.name for s in specs if s.eps != eps or s.kind == "torchattacks_autoattack")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _owner(plan: Plan) -> dict:
    """What every file a cell resumes from carries, to be checked against its folder."""
    return {"cell_key": plan.key, "config_hash": config_hash(plan.resolved)}


def make_selector(plan: Plan, data, cell_dir: Path) -> Selector:
    """The model-selection rule of the cell with the examples and attack it scores on."""
    if plan.selection == "val_best":
        return Selector("val_best", plan.selection_start_epoch, plan.monitor_attack, data.x_val, data.y_val,
                        "balanced robust accuracy (validation split)", plan.eval_batch_size, cell_dir / BEST,
                        owner=_owner(plan))
    if plan.selection == "test_best":
        x, y, _ = evaluation_subset(plan, data)
        specs = {s.name: s for s in plan.eval_attacks}
        attack = specs.get("pgd20") or AttackSpec("pgd", plan.eps, 20, plan.eps / 4, "uniform")
        return Selector("test_best", plan.selection_start_epoch, attack, x, y,
                        "robust accuracy (test split: test-selected)", plan.eval_batch_size, cell_dir / BEST,
                        owner=_owner(plan))
    return Selector.final(plan.epochs, plan.eval_batch_size)


def attack_above_clean(y: np.ndarray, predictions: dict) -> str | None:
    """Why an evaluation is wrong when an attack leaves more examples correct than clean inputs on the
    examples it scored (-1: not scored); None when none does. No tolerance: an attack starts from (a point
    near) the clean input and maximizes the loss, so more correct than clean means a broken attack."""
    clean = np.asarray(predictions["clean"])
    for name, pred in predictions.items():
        pred = np.asarray(pred)
        if name == "clean":
            continue
        scored = pred >= 0
        robust, base = int(((pred == y) & scored).sum()), int(((clean == y) & scored).sum())
        if robust > base:
            return (f"attack {name} leaves {robust} of {int(scored.sum())} examples correct, more than clean "
                    f"inputs ({base}): a broken attack (a negative step size?)")
    return None


def _fail(cell_dir: Path, plan: Plan, stage: str, cause: str, epoch: int | None, step: int | None) -> dict:
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_failure(cell_dir, stage=stage, cause=cause, epoch=epoch, step=step, config=plan.record(), finished_at=now)
    print(f"FAILED {cell_dir.name}: {stage}" + (f" (epoch {epoch}, step {step})" if epoch is not None else "")
          + f": {cause}", file=sys.stderr, flush=True)
    return json.loads((cell_dir / METRICS_FILE).read_text())


def run_cell(cell, results_dir: Path, force: bool = False, progress: bool = True, retry_failed: bool = False) -> dict:
    """Train (or resume) and evaluate one cell, a ``Plan`` or a ``Config`` (resolved here, once, for the
    device it names); return its metrics (read back if already finished), or its ``failed`` record (status
    "failed", with the stage, epoch, step and cause) when training or evaluation went wrong. A failed
    cell runs again only with ``retry_failed`` (or ``force``). A finished cell that lacks one of the plan's
    attacks is evaluated under it without training (:func:`evaluate_trained`).

    The cell is run under its lock (:class:`~benchmark.cell_lock.CellLock`): while another live process
    owns it, nothing is touched and ``{"status": "locked", "cell_key", "owner"}`` comes back."""
    plan = cell if isinstance(cell, Plan) else cell.resolve()
    load_plugins(plan.plugins)  # in whichever process runs the cell (a device worker, a Ray task, a Slurm job)
    cell_dir = Path(results_dir) / plan.key
    status = plan_status(plan, results_dir)
    if status == "done" and not force:
        return read_record(cell_dir).to_json()
    if status == "failed" and not (force or retry_failed):
        return json.loads((cell_dir / METRICS_FILE).read_text())
    data = load_checked_data(plan)  # before the folder is made: a batch larger than the training set is bad input
    with CellLock(cell_dir, plan.key) as lock:
        if not lock.acquired:
            return locked_result(plan.key, lock.owner)
        if lock.took_over:
            print(f"note: {cell_dir.name}: took over the stale lock of {describe_owner(lock.took_over)}",
                  file=sys.stderr, flush=True)
        status = plan_status(plan, results_dir)  # again, under the lock: another process may have finished it
        if status == "done" and not force:
            return read_record(cell_dir).to_json()
        if status == "failed" and not (force or retry_failed):
            return json.loads((cell_dir / METRICS_FILE).read_text())
        if status == "evaluate" and not force:
            return evaluate_trained(plan, data, cell_dir, progress)
        trackers = Trackers(plan.trackers, cell_dir, results_dir, plan.key, plan.record(), data.classes)
        try:  # live tracking (benchmark.tracking): each epoch's log record, then the finished record's numbers
            return trackers.finish(_run_owned(plan, data, cell_dir, status, force, progress, trackers.log_epoch))
        finally:
            trackers.close()


def remove_stale_temporaries(cell_dir: Path) -> list[Path]:
    """Delete the half-written temporary files (``.<name>.<random>.tmp``, benchmark.atomic) that a killed
    process left in the cell: safe only under the cell's lock, when no other process writes there."""
    removed = []
    for folder in (cell_dir, cell_dir / EVAL_PROGRESS_DIR):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def cells_of_other_versions(results_dir: Path, plans: list[Plan]) -> list[tuple[str, str]]:
    """Finished folders in ``results_dir`` whose config is that of a planned cell but whose key is not,
    because another harness version made them (its key covers the version): ``(folder, its version)``.
    They are listed, not reused: this version's numbers may differ from theirs."""
    planned = {p.key for p in plans}
    found = []
    for folder in sorted(Path(results_dir).iterdir()) if Path(results_dir).is_dir() else ():
        if folder.name in planned or not (folder / METRICS_FILE).is_file():
            continue
        try:
            record = read_record(folder)
        except Exception:  # noqa: BLE001 - any unreadable folder is simply not one of these
            continue
        if record.config and cell_key(record.config) in planned:
            found.append((folder.name, str(record.versions.get("tailrobust", "before 0.2.0"))))
    return found


def locked_result(key: str, owner: dict | None) -> dict:
    """What a cell that another process owns gives back: neither done nor failed; the grid lists it."""
    return {"status": "locked", "cell_key": key, "owner": owner or {}}


def is_locked(metrics: dict) -> bool:
    return metrics.get("status") == "locked"


def _run_owned(plan: Plan, data, cell_dir: Path, status: str, force: bool, progress: bool, on_epoch=None) -> dict:
    """The body of :func:`run_cell`, run while this process holds the cell's lock."""
    device = pick_device(plan.device)
    if (force or status == "failed") and status != "new":  # a forced run or a retry starts over
        moved = set_aside(cell_dir)
        print(f"{'--force' if force else '--retry-failed'}: previous files of {cell_dir.name} moved to {moved}",
              file=sys.stderr)
    elif (cell_dir / METRICS_FILE).exists():  # a record that is not a finished one: keep it aside, run again
        problem = record_problem(cell_dir)
        moved = set_aside(cell_dir, only=(METRICS_FILE,))
        print(f"warning: {cell_dir / METRICS_FILE}: {problem}; moved to {moved}, the cell runs again",
              file=sys.stderr)
    cell_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cell_dir)
    write_text_atomic(cell_dir / CONFIG_FILE, yaml.safe_dump(plan.record(), sort_keys=False))

    write_json_atomic(cell_dir / INDICES_FILE, {
        "train_indices": data.train_indices.tolist(),
        "test_indices": data.test_indices.tolist() if data.test_indices is not None else None,
        "val_indices": data.val_indices.tolist() if data.val_indices is not None else None,
        "subset_seed": plan.subset_seed})
    twin = find_trained_twin(plan, cell_dir.parent) if status == "new" and not force else None
    if twin is not None:
        try:
            adopt_training(twin, cell_dir, plan)
            print(f"{cell_dir.name}: the same training as the finished cell {twin.name} (only the evaluation "
                  "subset differs): its trained model is evaluated here, no epoch runs", file=sys.stderr, flush=True)
        except Exception as err:  # noqa: BLE001 - a twin whose files cannot be adopted: train as if there were none
            for name in (CHECKPOINT_FILE, BEST, LOG_FILE):
                (cell_dir / name).unlink(missing_ok=True)
            print(f"warning: {cell_dir.name}: the training of {twin.name} could not be reused "
                  f"({str(err).splitlines()[0][:200]}); training here", file=sys.stderr, flush=True)
            twin = None
    method, model = fresh_model(plan, data)
    try:
        cost = train(plan, data, method, model, cell_dir, device, make_selector(plan, data, cell_dir),
                     progress=progress, on_epoch=on_epoch)
    except TrainingFailed as err:
        return _fail(cell_dir, plan, "training", err.cause, err.epoch, err.step)
    except ForeignCellFile as err:
        return _fail(cell_dir, plan, "resume", str(err), None, None)
    if twin is not None:
        cost["resumed_from_epoch"] = None
        cost["training_reused_from"] = {"cell": twin.name, "note": "trained once for both cells: the training, "
                                        "its cost and its log (monitoring included) are that cell's"}
    return _evaluate_and_record(plan, data, cell_dir, method, model, device, cost, progress)


def fresh_model(plan: Plan, data):
    """The plan's method and its freshly initialised model, after seeding every RNG with the training seed (a
    checkpoint, when one is resumed, then overwrites the weights)."""
    seed_everything(plan.seed)
    method = create_method(plan.method, **plan.method_args)
    return method, method.wrap_model(create_model(plan.model, data.num_classes, data.in_channels, **plan.model_args))


def find_trained_twin(plan: Plan, results_dir: Path) -> Path | None:
    """A finished cell in ``results_dir`` with this plan's training (``cell.training_key``: the same config but
    for the evaluation subset) whose final checkpoint, and selected model where the selection keeps one, are
    still there: the plan's model is that one, so it is evaluated rather than trained again."""
    wanted = training_key(plan.resolved)
    if wanted is None or not Path(results_dir).is_dir():
        return None
    for folder in sorted(Path(results_dir).iterdir()):
        if folder.name == plan.key or not (folder / CHECKPOINT_FILE).is_file() or cell_status(folder) != "done":
            continue
        if plan.selection != "final" and not (folder / BEST).is_file():
            continue
        try:
            config = read_record(folder).config
        except Exception:  # noqa: BLE001 - an unreadable folder is simply not a twin
            continue
        if config and training_key(config) == wanted and cell_key(config) == folder.name:
            return folder
    return None


def adopt_training(twin: Path, cell_dir: Path, plan: Plan) -> None:
    """Give a new cell its twin's finished training: the training log, then the selected model and the final
    checkpoint (last: its presence makes the cell resumable), each checked to be the twin's own and relabelled
    with this cell's key, config hash and config, as if trained here."""
    twin_hash = config_hash(read_record(twin).config)
    write_text_atomic(cell_dir / LOG_FILE, (twin / LOG_FILE).read_text(encoding="utf-8"))
    for name in (BEST, CHECKPOINT_FILE):
        if not (twin / name).is_file():
            continue
        state = load_torch_plain(twin / name, map_location="cpu")  # plain tensors only
        problem = ownership_problem(state, twin.name, twin_hash, str(twin / name))
        if problem:
            raise ForeignCellFile(f"{problem}: not adopted")
        state.update(_owner(plan))
        if "config" in state:
            state["config"] = plan.config
        save_torch_atomic(cell_dir / name, state)


def missing_attacks(plan: Plan, record: CellRecord) -> list:
    """The plan's evaluation attacks that the cell's record has not evaluated under their evaluation key."""
    records = record.attack_records
    return [spec for spec in plan.eval_attacks
            if records.get(spec.name, {}).get("eval_key") != spec.evaluation_key(plan.seed, plan.eval_batch_size)]


def plan_status(plan: Plan, results_dir: Path) -> str:
    """:func:`~benchmark.cell.cell_status`, and ``evaluate`` for a finished cell that the plan asks an attack of
    that it has not run yet (the trained model is evaluated again; it is never retrained)."""
    cell_dir = Path(results_dir) / plan.key
    status = cell_status(cell_dir)
    if status == "done" and missing_attacks(plan, read_record(cell_dir)):
        return "evaluate"
    return status


def _previous_evaluation(cell_dir: Path, record: CellRecord, y_eval: np.ndarray) -> tuple[dict, dict, list]:
    """A finished cell's predictions, attack records and specs, to be kept beside the attacks added now."""
    from attacks import AttackSpec

    with np.load(cell_dir / PREDICTIONS_FILE, allow_pickle=False) as stored:
        if not np.array_equal(stored["y"], y_eval):
            raise DataFault(f"{cell_dir / PREDICTIONS_FILE}: its examples are not this cell's evaluation subset")
        predictions = {k[len("pred_"):]: stored[k] for k in stored.files if k.startswith("pred_")}
    records = dict(record.attack_records)
    specs = [AttackSpec(**r["spec"]) for name, r in records.items() if name != "clean" and r.get("spec")]
    return predictions, records, specs


def _evaluate_and_record(plan: Plan, data, cell_dir: Path, method, model, device: torch.device, cost: dict,
                         progress: bool, previous: CellRecord | None = None) -> dict:
    """Evaluate the trained model under the plan's attacks (with ``previous``: only those its record lacks,
    keeping the others' predictions) and write the cell's record."""
    x_eval, y_eval, eval_idx = evaluation_subset(plan, data)
    started = time.perf_counter()
    inference = InferenceModel(model, method)
    attack_specs = missing_attacks(plan, previous) if previous is not None else list(plan.eval_attacks)
    added = [spec.name for spec in attack_specs]
    captured = resolve_cuda_graphs(plan.config.get("cuda_graphs", False), device, method)["used"]
    result = evaluate(inference, x_eval, y_eval, attack_specs, plan.eval_batch_size, device, seed=plan.seed,
                      progress=progress, num_classes=data.num_classes, progress_dir=cell_dir / EVAL_PROGRESS_DIR,
                      owner=_owner(plan), progress_every_s=plan.progress_every_s, capture=captured)
    predictions, records = result["predictions"], result["records"]
    if previous is not None:  # the attacks evaluated before stay, except those evaluated again now
        old_predictions, old_records, old_specs = _previous_evaluation(cell_dir, previous, y_eval.numpy())
        again = {spec.name for spec in attack_specs}
        changed = int((old_predictions["clean"] != predictions["clean"]).sum())
        if changed:
            print(f"warning: {cell_dir.name}: the re-loaded model's clean predictions differ from the recorded ones on "
                  f"{changed} example(s) (another device or library?); the recorded ones are kept", file=sys.stderr)
        predictions = {**{k: v for k, v in old_predictions.items() if k not in again}, **{
            k: v for k, v in predictions.items() if k != "clean"}, "clean": old_predictions["clean"]}
        records = {**{k: v for k, v in old_records.items() if k not in again},
                   **{k: v for k, v in records.items() if k != "clean"}, "clean": old_records.get("clean", records["clean"])}
        attack_specs = [s for s in old_specs if s.name not in again] + attack_specs
    audit = build_audit(y_eval.numpy(), predictions, attack_specs, records, data.num_classes,
                        zero_gradient_fraction(inference, x_eval, y_eval, plan.eval_batch_size, device))
    eval_seconds = time.perf_counter() - started
    if previous is None:
        cost["eval_seconds"] = eval_seconds
        cost["method_extra_parameters"] = int(getattr(method, "extra_parameters", 0))  # e.g. LAS-AT's policy network
        if device.type == "cuda":
            cost["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            cost["device_name"] = torch.cuda.get_device_name(device)
        else:
            cost["device_name"] = cpu_name()
        cost["peak_rss_mb"] = peak_rss_mb()
        cost["harness_commit"] = harness_commit()
    else:  # the training's cost stays as it was measured; the evaluations added are listed with theirs
        cost = {**previous.cost, "evaluations_added": [*previous.cost.get("evaluations_added", []), {
            "attacks": added,
            "seconds": eval_seconds, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "harness_commit": harness_commit()}]}
    broken = attack_above_clean(y_eval.numpy(), predictions)
    steps = cost.get("steps")
    if broken:
        return _fail_evaluation(cell_dir, plan, broken, steps, y_eval, eval_idx, predictions, previous)
    summary = summarize_evaluation(y_eval.numpy(), predictions, data.num_classes, data.train_counts,
                                   outside_worst_case=outside_worst_case(attack_specs, plan.eps))
    bad_number = non_finite_path(summary, "evaluation")
    if bad_number:
        return _fail_evaluation(cell_dir, plan, f"non-finite number at {bad_number}", steps, y_eval, eval_idx,
                                predictions, previous)
    order = ["clean", *[s.name for s in plan.eval_attacks], *[s.name for s in attack_specs]]
    records = {name: records[name] for name in dict.fromkeys(order) if name in records}
    record = CellRecord(
        cell_key=cell_dir.name,
        config_hash=config_hash(plan.resolved),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        method={"name": method.name, "preset": plan.method_preset, "hparams": method.hparams},
        data=data_info(plan, data, summary, len(y_eval), eval_idx),
        seeds={"training": plan.seed, "subset": plan.subset_seed, "eval_attack_start": plan.seed},
        evaluation={**summary, "attack_records": records},
        model_selection=cost.pop("model_selection") if previous is None else previous.model_selection,
        method_diagnostics=(cost.pop("method_diagnostics", None) or None) if previous is None
        else previous.method_diagnostics,  # TAET: its plateau
        audit=audit,
        cost=cost,
        config=plan.record(),
        versions=package_versions(),
    )
    if previous is not None:  # the record it replaces is kept, never overwritten
        moved = set_aside(cell_dir, only=(METRICS_FILE, PREDICTIONS_FILE, CONFIG_FILE))
        write_text_atomic(cell_dir / CONFIG_FILE, yaml.safe_dump(plan.record(), sort_keys=False))
        print(f"{cell_dir.name}: evaluated {', '.join(cost['evaluations_added'][-1]['attacks'])} on the trained model "
              f"(no training); the previous record is in {moved}", file=sys.stderr, flush=True)
    save_predictions(cell_dir, y_eval.numpy(), eval_idx, predictions)
    # tidy before the record: a finished cell is never touched again, and a crash here only costs a re-evaluation
    shutil.rmtree(cell_dir / EVAL_PROGRESS_DIR, ignore_errors=True)  # partial attack results, now in predictions.npz
    (cell_dir / PREVIOUS_CHECKPOINT_FILE).unlink(missing_ok=True)  # the final checkpoint stays; its fallback is done
    write_record(cell_dir, record)
    return record.to_json()


def save_predictions(cell_dir: Path, y: np.ndarray, eval_idx: np.ndarray | None, predictions: dict) -> None:
    """``predictions.npz``: the evaluated labels, their indices in the test split and every attack's predictions."""
    save_npz_atomic(cell_dir / PREDICTIONS_FILE, y=y, eval_indices=np.arange(len(y)) if eval_idx is None else eval_idx,
                    **{f"pred_{name}": pred for name, pred in predictions.items()})


def data_info(plan: Plan, data, summary: dict, eval_examples: int, eval_idx: np.ndarray | None) -> dict:
    """The record's ``data`` block: what was trained on and what was evaluated."""
    return {"dataset": data.name, "classes": data.classes, "imbalance_ratio": plan.imbalance_ratio,
            "subset_seed": plan.subset_seed, "train_counts": data.train_counts,
            "train_size": int(sum(data.train_counts)),
            "test_split": "natural" if is_naturally_imbalanced(data.name) else plan.test_split,
            "balanced_robustness_equals_robust_accuracy": len(set(summary["test_support"]) - {0}) <= 1,
            "eval_examples": int(eval_examples),
            "eval_subset": "all" if eval_idx is None else f"{plan.eval_per_class} per class, seed 0"}


def _fail_evaluation(cell_dir, plan, cause, steps, y_eval, eval_idx, predictions, previous) -> dict:
    """A broken evaluation: a first one fails the cell; one added to a finished cell leaves its record as it was."""
    if previous is not None:
        print(f"FAILED {cell_dir.name}: added evaluation: {cause}; the finished record is unchanged",
              file=sys.stderr, flush=True)
        return {"status": "failed", "cell_key": cell_dir.name, "config": plan.record(),
                "failure": {"stage": "evaluation", "epoch": None, "step": None, "cause": cause}}
    save_predictions(cell_dir, y_eval.numpy(), eval_idx, predictions)
    return _fail(cell_dir, plan, "evaluation", cause, plan.epochs - 1, steps)


def evaluate_trained(plan: Plan, data, cell_dir: Path, progress: bool) -> dict:
    """Run the plan's attacks that a finished cell lacks on its trained model: the model is loaded from the
    final checkpoint (and the selected epoch's weights), never trained."""
    previous = read_record(cell_dir)
    device = pick_device(plan.device)
    missing = ", ".join(s.name for s in missing_attacks(plan, previous))
    try:
        state = load_resume_state(cell_dir, plan, device)
    except ForeignCellFile as err:
        return _fail(cell_dir, plan, "resume", str(err), None, None)
    if state is None or state["epoch"] != plan.epochs - 1:
        print(f"warning: {cell_dir.name}: cannot evaluate {missing}: its final checkpoint is gone or unreadable "
              "(a finished cell keeps checkpoint.pt for this); its record is unchanged (--force retrains it)",
              file=sys.stderr, flush=True)
        return previous.to_json()
    method, model = fresh_model(plan, data)
    # the last epoch's checkpoint: train() restores it (and the selected epoch) and runs no epoch
    try:
        cost = train(plan, data, method, model, cell_dir, device, make_selector(plan, data, cell_dir),
                     progress=False, resume_state=state)
    except ForeignCellFile as err:  # the selected epoch's best.pt of another cell
        return _fail(cell_dir, plan, "resume", str(err), None, None)
    return _evaluate_and_record(plan, data, cell_dir, method, model, device, cost, progress, previous=previous)
