"""Does TAET train less robust under the harness than under its authors' loop? (issue 18, item 2)

For each seed, on the quick profile's data and model (MNIST-5k at IR 10, small_cnn, lr 0.05, batch 64,
PGD-10 at ε/4 from x + 0.001·N(0, 1), ε = 0.1), with an epoch budget whose clean stage is 40% of it as in
the authors' notebook (default 10 epochs, 4 clean):
  * harness: benchmark.train.train with the TAET method (what a grid cell runs);
  * authors: the minimal loop of tests/test_loop_equivalence.py run to the end, with the authors' choices:
    the notebook's unused clean forward (and stage 1's second clean forward), the unclamped PGD start and
    no drop_last. Same initial weights, same shuffling generator, same long-tailed subset.
Both are scored the same way: Balanced Robustness under PGD-20 (step ε/4, uniform start, seeded) on the
balanced 1,000-digit test split, and after every epoch the clean accuracy and mean CE on the long-tailed
training set (eval mode) and the monitor subset's clean / PGD-10 accuracy, from which the head-class plateau
(train accuracy ≤ head share + 0.05) is counted. On seed 0 the minimal loop is also run with the harness's
choices, which must reproduce the harness's weights (a check of item 1 on the real model).

    nice -n 10 .venv/bin/python scripts/taet_loop_study.py --seeds 0 1 2 3 4 --out results/taet_loop_study.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmark.config import expand_grid, load_profile  # noqa: E402
from benchmark.data.loader import iterate_batches, to_float  # noqa: E402
from benchmark.data.prepare import prepare_cell_data  # noqa: E402
from benchmark.evaluate import InferenceModel, predict  # noqa: E402
from benchmark.metrics import per_class_recall  # noqa: E402
from benchmark.models import create_model  # noqa: E402
from benchmark.runner import seed_everything  # noqa: E402
from benchmark.train import monitor, train  # noqa: E402
from methods import create_method  # noqa: E402
import test_loop_equivalence as loops  # noqa: E402
from test_loop_equivalence import authors_loop  # noqa: E402  (the minimal loop of item 1)

PLATEAU_MARGIN = 0.05


OVERRIDES: dict = {}  # --batch-size / --ce-epochs (the independent check used batch 128)


def config(seed: int, epochs: int):
    extra = dict(OVERRIDES)
    if "ce_epochs" in extra:
        extra["method_args"] = {"taet": {"ce_epochs": extra.pop("ce_epochs")}}
    return expand_grid(load_profile("quick"), {"epochs": epochs, "seeds": [seed], "methods": ["taet"], "monitor_every": 1,
                                               "device": "cpu", **extra})[0]


def epoch_probe(model, method, data, cfg, x_train, y_train, x_mon, y_mon):
    """End-of-epoch numbers both loops are judged by (eval mode; no draw from the global generator)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x_train[i:i + 500]) for i in range(0, len(x_train), 500)])
    model.train(was)
    out = {"train_acc": float((logits.argmax(1) == y_train).float().mean()),
           "train_ce": float(F.cross_entropy(logits, y_train))}
    mon = monitor(InferenceModel(model, method), x_mon, y_mon, cfg.monitor_attack_spec(), data.num_classes,
                  cfg.eval_batch_size, torch.device("cpu"))
    out["monitor_clean_acc"] = mon["monitor_clean_acc"]
    out["monitor_robust_acc"] = mon[f"monitor_{cfg.monitor_attack_spec().name}_acc"]
    return out


def balanced_robustness(model, method, data, cfg, seed):
    spec = next(s for s in cfg.eval_attack_specs() if s.name == "pgd20")
    inference = InferenceModel(model, method)
    out = {}
    for name, attack in (("clean", None), ("pgd20", spec)):
        pred, _ = predict(inference, data.x_test, data.y_test, attack, cfg.eval_batch_size, torch.device("cpu"),
                          torch.Generator().manual_seed(seed))
        recall, _ = per_class_recall(data.y_test.numpy(), pred, data.num_classes)
        out[name] = float(np.nanmean(recall))
        out[f"{name}_per_class"] = [float(r) for r in recall]
    return out


def plateau(epochs: list[dict], head_share: float, ce_epochs: int) -> dict:
    on = [e["train_acc"] <= head_share + PLATEAU_MARGIN for e in epochs[:ce_epochs]]
    left = next((i for i, flag in enumerate(on) if not flag), None)
    return {"clean_stage_epochs_on_plateau": int(sum(on)), "left_plateau_after_epoch": left}


def run_seed(seed: int, epochs: int, check: bool, harness_only: bool = False) -> dict:
    cfg = config(seed, epochs)
    data = prepare_cell_data(cfg)
    seed_everything(cfg.seed)
    method = create_method(cfg.method, **cfg.method_args)
    model = method.wrap_model(create_model(cfg.model, data.num_classes, data.in_channels, **cfg.model_args))
    init = copy.deepcopy(model.state_dict())
    ce_epochs = method.ce_epochs(cfg.epochs)
    x_train, y_train = to_float(data.x_train), data.y_train
    from benchmark.data.loader import stratified_subset

    idx = torch.as_tensor(stratified_subset(data.y_test, cfg.monitor_per_class, seed=0))
    x_mon, y_mon = data.x_test[idx], data.y_test[idx]
    head_share = max(data.train_counts) / sum(data.train_counts)
    result = {"seed": seed, "ce_epochs": ce_epochs, "head_share": head_share,
              "label_entropy": -sum(n / sum(data.train_counts) * math.log(n / sum(data.train_counts))
                                    for n in data.train_counts)}

    def probe_into(records):
        return lambda epoch, m: records.append({"epoch": epoch, **epoch_probe(m, method, data, cfg, x_train, y_train,
                                                                            x_mon, y_mon)})

    # harness
    records: list[dict] = []
    original_end = method.on_epoch_end

    def on_epoch_end(ctx):
        original_end(ctx)
        probe_into(records)(ctx.epoch, model)

    method.on_epoch_end = on_epoch_end
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cell_dir:
        seed_everything(cfg.seed)
        train(cfg.resolve(), data, method, model, Path(cell_dir), torch.device("cpu"), progress=False)
        log = [json.loads(line) for line in (Path(cell_dir) / "log.jsonl").read_text().splitlines()]
    harness_weights = copy.deepcopy(model.state_dict())
    result["harness"] = {"epochs": records, "log_train_acc": [r["train_acc"] for r in log],
                         "log_loss": [r["loss"] for r in log], **plateau(records, head_share, ce_epochs),
                         **balanced_robustness(model, method, data, cfg, seed),
                         "seconds": time.perf_counter() - started}

    def minimal(**options):
        m = method.wrap_model(create_model(cfg.model, data.num_classes, data.in_channels, **cfg.model_args))
        m.load_state_dict(init)
        recs: list[dict] = []
        seed_everything(cfg.seed)
        t0 = time.perf_counter()
        authors_loop("taet", m, data.x_train, data.y_train, data.train_counts, seed=cfg.seed, epochs=cfg.epochs,
                     batch=cfg.batch_size, lr=cfg.lr, milestones=cfg.milestone_epochs(), ce_epochs=ce_epochs,
                     eps=cfg.eps_value, steps=cfg.train_attack_spec().steps,
                     step_size=cfg.train_attack_spec().step_size, on_epoch_end=probe_into(recs), **options)
        return m, recs, time.perf_counter() - t0

    if harness_only:
        return result
    m, recs, seconds = minimal(extra_forwards=True, clamp_start=False, drop_last=False)
    result["authors"] = {"epochs": recs, **plateau(recs, head_share, ce_epochs),
                         **balanced_robustness(m, method, data, cfg, seed), "seconds": seconds}
    if check:  # the minimal loop with the harness's choices: the authors' HARL arithmetic, then ours
        def difference():
            m, _, _ = minimal(extra_forwards=False, clamp_start=True, drop_last=cfg.drop_last)
            return max(float((m.state_dict()[k] - harness_weights[k]).abs().max()) for k in harness_weights)

        result["harness_options_max_abs_difference"] = difference()
        authors_harl = loops.harl
        loops.harl = _harness_harl
        try:
            result["harness_options_and_harl_arithmetic_max_abs_difference"] = difference()
        finally:
            loops.harl = authors_harl
    return result


def _harness_harl(outputs, y, num_classes):
    """HARL with the harness's arithmetic (index_add class sums) instead of the authors' masked class loop."""
    from methods.taet import harl_terms

    bcl, hdl, rcel = harl_terms(F.cross_entropy(outputs.float(), y, reduction="none"), y, num_classes, "all")
    return 0.1 * bcl + 0.1 * hdl + 0.1 * rcel


def summarize(runs: list[dict]) -> dict:
    out = {}
    for side in ("harness", "authors"):
        br = [r[side]["pgd20"] for r in runs]
        out[side] = {"br_pgd20": br, "br_mean": float(np.mean(br)), "br_std": float(np.std(br, ddof=1)),
                     "clean_balanced_mean": float(np.mean([r[side]["clean"] for r in runs])),
                     "plateau_epochs": [r[side]["clean_stage_epochs_on_plateau"] for r in runs]}
    diff = [r["harness"]["pgd20"] - r["authors"]["pgd20"] for r in runs]
    out["paired_difference_harness_minus_authors"] = {
        "values": diff, "mean": float(np.mean(diff)), "std": float(np.std(diff, ddof=1)),
        "t": float(np.mean(diff) / (np.std(diff, ddof=1) / math.sqrt(len(diff)))) if np.std(diff) > 0 else 0.0}
    return out


def gradient_ratios(seed: int, epochs: int, batches: int = 10, with_end: bool = False) -> dict:
    """‖∇θ HARL‖ / ‖∇θ CE‖ on the same PGD-10 examples of the quick profile (batch 64, the first ``batches``
    batches of a seeded shuffle), at initialization and at TAET's stage switch (after the harness's clean
    stage); also the α·BCL part alone. The model has dropout off (drop_rate 0), so both gradients are of
    one and the same network."""
    from attacks import run_attack
    from methods.taet import harl_terms

    cfg = config(seed, epochs)
    data = prepare_cell_data(cfg)
    seed_everything(cfg.seed)
    method = create_method("taet")
    model = create_model(cfg.model, data.num_classes, data.in_channels, **{**cfg.model_args, "drop_rate": 0.0})
    ce_epochs = method.ce_epochs(cfg.epochs)

    def measure():
        generator = torch.Generator().manual_seed(seed)
        params = list(model.parameters())
        out = {"harl": [], "alpha_bcl": []}
        for i, (xb, yb) in enumerate(iterate_batches(data.x_train, data.y_train, cfg.batch_size, True, True,
                                                      generator)):
            if i == batches:
                break
            xb = to_float(xb)
            torch.manual_seed(seed + i)
            x_adv = run_attack(cfg.train_attack_spec(), model, xb, yb)
            model.train()

            def norm(loss):
                return float(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).norm())

            ce = norm(F.cross_entropy(model(x_adv), yb))
            bcl, hdl, rcel = harl_terms(F.cross_entropy(model(x_adv), yb, reduction="none"), yb, 10)
            out["harl"].append(norm(0.1 * bcl + 0.1 * hdl + 0.1 * rcel) / ce)
            bcl, _, _ = harl_terms(F.cross_entropy(model(x_adv), yb, reduction="none"), yb, 10)
            out["alpha_bcl"].append(norm(0.1 * bcl) / ce)
        return {k: float(np.mean(v)) for k, v in out.items()}

    result = {"seed": seed, "init": measure()}
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(ce_epochs):  # the clean stage (lr is constant before the milestones)
        for xb, yb in iterate_batches(data.x_train, data.y_train, cfg.batch_size, True, True, generator):
            loss = F.cross_entropy(model(to_float(xb)), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    result["stage_switch"] = measure()
    if with_end:  # the adversarial stage (the harness's TAET loss and schedule), then the end of training
        from methods import TrainContext

        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestone_epochs(), cfg.lr_gamma)
        for _ in range(ce_epochs):
            scheduler.step()
        ctx = TrainContext(epoch=0, epochs=cfg.epochs, step=0, num_classes=10,
                           class_counts=torch.tensor(data.train_counts), attack=cfg.train_attack_spec())
        for epoch in range(ce_epochs, cfg.epochs):
            ctx.epoch = epoch
            model.train()
            for xb, yb in iterate_batches(data.x_train, data.y_train, cfg.batch_size, True, True, generator):
                loss = method.loss(model, to_float(xb), yb, ctx).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
        result["end"] = measure()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "taet_loop_study.json")
    parser.add_argument("--grad-ratio", action="store_true",
                        help="only measure ‖∇HARL‖/‖∇CE‖ at initialization and at the stage switch, per seed")
    parser.add_argument("--with-end", action="store_true", help="--grad-ratio: also train stage 2 and measure at the end")
    parser.add_argument("--harness-only", action="store_true", help="run only the harness side (budget checks)")
    parser.add_argument("--no-check", action="store_true", help="skip seed 0's harness-options check runs")
    parser.add_argument("--batch-size", type=int, help="override the quick profile's batch size (64)")
    parser.add_argument("--ce-epochs", type=int, help="TAET's clean-stage length (default 40%% of --epochs); "
                        "--ce-epochs = --epochs runs only the clean stage (a plateau check)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    OVERRIDES.update({k: v for k, v in (("batch_size", args.batch_size), ("ce_epochs", args.ce_epochs)) if v})
    if args.grad_ratio:
        ratios = [gradient_ratios(seed, args.epochs, with_end=args.with_end) for seed in args.seeds]
        summary = {f"{when}_{part}": float(np.mean([r[when][part] for r in ratios]))
                   for when in ("init", "stage_switch", "end") for part in ("harl", "alpha_bcl") if when in ratios[0]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "runs": ratios}, indent=1))
        print(json.dumps(summary, indent=1))
        return
    runs = []
    for i, seed in enumerate(args.seeds):
        runs.append(run_seed(seed, args.epochs, check=i == 0 and not args.no_check, harness_only=args.harness_only))
        r = runs[-1]
        if args.harness_only:  # a budget check: the harness alone
            print(f"seed {seed}: BR harness {r['harness']['pgd20']:.3f}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"settings": {"epochs": args.epochs, **OVERRIDES}, "runs": runs}, indent=1))
            continue
        print(f"seed {seed}: BR harness {r['harness']['pgd20']:.3f} (plateau {r['harness']['clean_stage_epochs_on_plateau']})"
              f"  authors {r['authors']['pgd20']:.3f} (plateau {r['authors']['clean_stage_epochs_on_plateau']})",
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": {"profile": "quick", "epochs": args.epochs,
                                                     "plateau_margin": PLATEAU_MARGIN, **OVERRIDES},
                                        "summary": summarize(runs) if len(runs) > 1 else None, "runs": runs},
                                       indent=1))
    if not args.harness_only:
        print(json.dumps(summarize(runs), indent=1))


if __name__ == "__main__":
    main()
