"""``python -m benchmark.evaluate``: evaluate a model trained elsewhere under a profile's attack suite.

RobustBench and AutoAttack evaluate a given model; a researcher comparing against our baselines needs the
same, per class, on the same examples and attacks as the grid's cells, with a record that joins the same
leaderboards. The checkpoint is a plain ``state_dict`` (or one under ``model``/``state_dict``; a
``module.`` prefix from DataParallel is dropped), loaded with ``weights_only=True`` so a hostile file
runs nothing. The model is a registered one (``--model resnet18``) or any Python callable
(``--model my_pkg.nets:build``, called with ``num_classes`` when it accepts it) returning an
``nn.Module`` for inputs in [0, 1]; ``--normalization MEAN/STD`` puts a normalization in front of it.

The record is a cell of method ``external`` (its preset the ``--name``), keyed by the checkpoint's
SHA-256, the model and the evaluation settings, and marked with its source under ``external``. The
imbalance ratio names the leaderboard it joins and the long-tailed training counts its head/tail
classes are taken from (the model itself was trained on whatever its authors used).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import importlib
import inspect
import json
import sys
import time
from pathlib import Path

import torch

from .errors import OneLineParser, UsageError

EXTERNAL_METHOD = "external"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: Path) -> dict:
    """A plain state_dict from ``path`` (weights only; nested under model/state_dict; no ``module.``)."""
    from .atomic import load_torch_plain

    if not Path(path).is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        state = load_torch_plain(path, map_location="cpu")
    except UsageError:
        raise
    except Exception as err:  # truncated, not a torch file
        raise UsageError(f"checkpoint {path} is unreadable: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"checkpoint {path} is not a state_dict (a mapping of names to tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def build_model(spec: str, num_classes: int, in_channels: int, model_args: dict) -> torch.nn.Module:
    """A registered model by name, or ``module:function`` returning an ``nn.Module``."""
    if ":" not in spec:
        from .models import create_model

        return create_model(spec, num_classes, in_channels, **model_args)
    module_name, _, function_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"model {spec}: cannot import it ({err})") from None
    parameters = inspect.signature(factory).parameters
    kwargs = dict(model_args)
    if "num_classes" in parameters and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    model = factory(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"model {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


class Normalized(torch.nn.Module):
    """(x - mean) / std in front of a model trained on normalized inputs: attacks still see [0, 1]."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


class _AsIs:
    """The inference rule of an external model: its own logits."""

    name = EXTERNAL_METHOD
    hparams: dict = {}

    def logits(self, model, x):
        return model(x)


def parse_normalization(text: str | None, in_channels: int) -> tuple[list[float], list[float]] | None:
    if not text:
        return None
    try:
        mean_text, std_text = text.split("/")
        mean = [float(v) for v in mean_text.split(",")]
        std = [float(v) for v in std_text.split(",")]
    except ValueError:
        raise UsageError(f"--normalization {text!r}: write MEAN/STD, e.g. 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616")
    if len(mean) != in_channels or len(std) != in_channels or any(s <= 0 for s in std):
        raise UsageError(f"--normalization {text!r}: {in_channels} means and {in_channels} positive stds are needed")
    return mean, std


def external_plan(args):
    """The plan whose data, evaluation subset and attacks the external model is evaluated on: the profile's,
    for the given dataset and imbalance ratio (the method and training fields are unused)."""
    from .config import expand_grid, load_profile

    overrides = {"methods": ["at"], "imbalance_ratios": [args.imbalance_ratio], "seeds": [0], "epochs": None,
                 "eps": args.eps, "data_root": args.data_root, "device": args.device}
    profile = load_profile(args.profile)
    profile["dataset"] = args.dataset
    if ":" not in args.model:
        profile["model"], profile["model_args"] = args.model, dict(args.model_args)
    (cfg,) = expand_grid(profile, overrides)
    plan = cfg.resolve()
    if args.attacks:
        known = {s.name: s for s in plan.eval_attacks}
        unknown = [a for a in args.attacks if a not in known]
        if unknown:
            raise UsageError(f"--attacks: {', '.join(unknown)} not in the profile's suite ({', '.join(known)})")
        import dataclasses

        plan = dataclasses.replace(plan, eval_attacks=tuple(known[a] for a in args.attacks))
    return plan


def external_config(plan, args, checkpoint_sha: str, normalization) -> dict:
    """What the external cell's key hashes and its record keeps."""
    resolved = copy.deepcopy(plan.record())
    resolved.update(method=EXTERNAL_METHOD, method_args={}, method_hparams={"name": args.name},
                    model=args.model if ":" not in args.model else "python-" + args.model.rsplit(":", 1)[1],
                    model_args=dict(args.model_args),
                    eval_attack_specs=[s.to_dict() for s in plan.eval_attacks],
                    external={"checkpoint_sha256": checkpoint_sha, "model": args.model,
                              "normalization": normalization})
    for field in ("epochs", "lr", "batch_size", "train_attack_spec", "milestone_epochs", "selection"):
        resolved[field] = None  # not trained here
    return resolved


def evaluate_external(args) -> dict:
    """Evaluate the checkpoint and write its cell record; return the record (JSON)."""
    from .atomic import write_text_atomic
    from .audit import build_audit, zero_gradient_fraction
    from .cell import CONFIG_FILE, LOCK_FILE, CellRecord, cell_key, cell_status, config_hash, read_record, \
        set_aside, write_record
    from .cell_lock import CellLock
    from .data.prepare import evaluation_subset
    from .evaluate import InferenceModel, evaluate
    from .metrics import summarize_evaluation
    from .provenance import cpu_name, harness_commit, package_versions
    from .runner import (attack_above_clean, data_info, load_checked_data, outside_worst_case, pick_device,
                         save_predictions)
    import yaml

    plan = external_plan(args)
    data = load_checked_data(plan)
    normalization = parse_normalization(args.normalization, data.in_channels)
    checkpoint = Path(args.checkpoint)
    state = load_state_dict(checkpoint)
    sha = sha256_of(checkpoint)
    model = build_model(args.model, data.num_classes, data.in_channels, dict(args.model_args))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0] + " " + " ".join(str(err).splitlines()[1:2])
        raise UsageError(f"checkpoint {checkpoint} does not fit model {args.model}: {first.strip()[:300]}") from None
    if normalization is not None:
        model = Normalized(model, *normalization)
    resolved = external_config(plan, args, sha, normalization)
    key = cell_key(resolved)
    cell_dir = Path(args.results) / key
    if cell_status(cell_dir) == "done" and not args.force:
        print(f"{key}: already evaluated (--force evaluates again; the old record is kept aside)", flush=True)
        return read_record(cell_dir).to_json()
    device = pick_device(plan.device)
    model.to(device).eval()
    with CellLock(cell_dir, key) as lock:
        if not lock.acquired:
            raise UsageError(f"{key} is being evaluated by pid {lock.owner.get('pid')} on {lock.owner.get('host')}")
        if any(p.name != LOCK_FILE for p in cell_dir.iterdir()):
            set_aside(cell_dir)
        write_text_atomic(cell_dir / CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False))
        x_eval, y_eval, eval_idx = evaluation_subset(plan, data)
        inference, specs = InferenceModel(model, _AsIs()), list(plan.eval_attacks)
        started = time.perf_counter()
        result = evaluate(inference, x_eval, y_eval, specs, plan.eval_batch_size, device, seed=0,
                          progress=not args.no_progress, num_classes=data.num_classes)
        y = y_eval.numpy()
        broken = attack_above_clean(y, result["predictions"])
        if broken:
            raise UsageError(f"{key}: {broken}")
        audit = build_audit(y, result["predictions"], specs, result["records"], data.num_classes,
                            zero_gradient_fraction(inference, x_eval, y_eval, plan.eval_batch_size, device))
        summary = summarize_evaluation(y, result["predictions"], data.num_classes, data.train_counts,
                                       outside_worst_case=outside_worst_case(specs, plan.eps))
        source = {"checkpoint": str(checkpoint.resolve()), "sha256": sha, "model": args.model,
                  "model_args": dict(args.model_args), "normalization": normalization, "name": args.name}
        record = CellRecord(
            cell_key=key, config_hash=config_hash(resolved),
            finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            method={"name": EXTERNAL_METHOD, "preset": args.name, "hparams": {}},
            data=data_info(plan, data, summary, len(y_eval), eval_idx),
            seeds={"training": None, "subset": plan.subset_seed, "eval_attack_start": 0},
            evaluation={**summary, "attack_records": result["records"]},
            model_selection={"rule": "external", "label": "external checkpoint", "metric": "none", "attack": None,
                             "from_epoch": None, "epoch": None, "score": None},
            audit=audit,
            cost={"eval_seconds": time.perf_counter() - started, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
                  "harness_commit": harness_commit(), "steps": 0},
            config=resolved, versions=package_versions(), extra={"external": source})
        save_predictions(cell_dir, y, eval_idx, result["predictions"])
        write_record(cell_dir, record)
    print(f"{key}: external model {args.name} evaluated on {len(y)} examples; record in {cell_dir}", flush=True)
    return record.to_json()


def _model_args(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmark.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a state_dict file (.pt/.pth), loaded with weights_only=True")
    p.add_argument("--model", required=True, help="a registered model (resnet18, small_cnn, ...) or module:function")
    p.add_argument("--model-args", type=_model_args, default={}, help='JSON options of the model, e.g. \'{"width": 0.5}\'')
    p.add_argument("--dataset", required=True, help="a registered dataset (cifar10, mnist5k, ...)")
    p.add_argument("--imbalance-ratio", type=float, default=None,
                   help="the leaderboard it joins (default: the profile's first imbalance ratio)")
    p.add_argument("--normalization", help="MEAN/STD per channel if the model expects normalized inputs")
    p.add_argument("--name", default="model", help="what the leaderboard calls it (default: model)")
    p.add_argument("--profile", default="quick", help="whose attack suite, ε and evaluation subset (default: quick)")
    p.add_argument("--attacks", type=lambda t: [a.strip() for a in t.split(",") if a.strip()],
                   help="only these attacks of the profile's suite (names, comma-separated)")
    p.add_argument("--eps", help="override ε")
    p.add_argument("--data-root", help="folder holding the datasets")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--force", action="store_true", help="evaluate again (the old record is moved aside)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.imbalance_ratio is None:
        from .config import load_profile

        irs = load_profile(args.profile).get("imbalance_ratios") or [1.0]
        args.imbalance_ratio = float(irs[0] if isinstance(irs, list) else irs)
    if not args.name.replace("_", "").replace("-", "").isalnum():
        print(f"error: --name {args.name!r}: letters, digits, '-' and '_' only", file=sys.stderr)
        return 2
    try:
        evaluate_external(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
