"""TAET: Two-Stage Adversarial Equalization Training (Wang Yu-Hang et al., CVPR 2025, arXiv 2503.01924).

Stage 1 (initial stabilization), epochs [0, ce_epochs): cross-entropy on clean inputs, no attack.
Stage 2, the rest: HARL on PGD examples. With l_i = CE(f(x_adv_i), y_i) and L_c the mean of l_i
over the batch's examples of class c:

    BCL  = mean_c L_c                        (balanced cross-class loss)
    HDL  = mean_c (L_c − mean_k L_k)²        (hierarchical deviation loss)
    RCEL = Σ_c (L_c / Σ_k L_k)²              (rare-class emphasis loss)
    L_HARL = α·BCL + β·HDL + γ·RCEL,  α = β = γ = 0.1 (the authors' HARL.py)

``class_mean`` chooses what "mean over classes" runs over, where the authors' code and a clean
reading of the equations differ:
  * ``"all"`` (default): the authors' code: means over all C classes, a class absent from the batch
    counting as L_c = 0 (denominators guarded by 1e-10). Default because it is what produced the
    reported numbers. The readings coincide only on batches that hold every class. With batch 128
    (shuffled, drop_last) that is 94% of CIFAR-10-LT batches at IR 10 but 39% at IR 50 and 16% at
    IR 100 (exact, by inclusion-exclusion over the long-tail counts with n_max 5000; checked against
    seeded batches in tests/test_method_taet.py), and 62% of the quick profile's batches (MNIST-5k at
    IR 10, batch 64); on CIFAR-100-LT almost none. So the readings part at IR 50/100 and on
    CIFAR-100-LT, where reproducing the code matters.
  * ``"present"``: means over the classes present in the batch only.
RCEL is the same under both (an absent class adds 0).

Step size. Per example, ∂L_HARL/∂l_i = (1/n_c)·[α/C + (2β/C)(L_c − L̄) + 2γ(r_c − Σ_k r_k²)/S] with
r = L/S, S = Σ_k L_k (n_c the class's count in the batch), against CE's 1/B. On a class-balanced
batch α·BCL has exactly α = 0.1 times CE's gradient, so under one learning rate the balanced part of
HARL moves ten times slower than PGD-AT (the authors' notebook pairs these weights with lr 0.1, so
that part moves like CE at lr 0.01). HDL adds weight to classes whose adversarial loss is above the
mean and makes the weight negative (pushes the loss up) for a class more than α/(2β) = 0.5 below
it. Measured ‖∇θ L_HARL‖ / ‖∇θ CE‖ on the same PGD-10 examples (quick profile, mean over 10 batches
of 64; scripts/taet_loop_study.py --grad-ratio): 0.08 at initialization (α·BCL alone 0.06; 5 seeds),
0.8-1.0 at the stage switch after the clean stage (α·BCL alone 0.16-0.18; 5 and 3 seeds: the
clean-trained model's adversarial class losses are far apart, and HDL dominates) and 0.26 at the
end of a 10-epoch run (α·BCL alone 0.10; 3 seeds). So the adversarial stage is not uniformly ten
times slower than PGD-AT: it starts with steps of CE's size, mostly HDL's pull towards equal class
losses, and slows to a quarter of CE's and less as the losses equalize. A short budget leaves the
stage unconverged: on the quick profile (8 epochs: 3 clean, 5 HARL, 3 of them before the lr decay)
13 HARL epochs after the same clean stage lift Balanced Robustness from 0.77 to 0.87 (3 seeds).

Loop. tests/test_loop_equivalence.py trains benchmark.train.train and a minimal loop written from
the notebook (zero_grad, forward, HARL with eval-mode PGD and train-mode forward, backward, step,
MultiStepLR per epoch) across the stage switch: the same weights. The notebook's loop also runs an
unused clean forward before every step (twice in stage 1: its stage-1 CE uses a second forward),
which updates BatchNorm running statistics once more per step; we do not reproduce it, and the test
shows it is the only difference (with it the weights part). Its DataLoader keeps the last partial
batch (``drop_last: false`` reproduces that) and its PGD takes the first gradient at the unclamped
x + 0.001·N(0, 1) (ours clamps the start to [0, 1]: the same point except at pixels within noise
of 0 or 1).

Harness vs the authors' loop (issue 18; scripts/taet_loop_study.py, quick profile at 10 epochs with 4
clean, 5 seeds, Balanced Robustness under PGD-20 on the balanced test split): harness 0.822 ± 0.049,
the notebook's loop (its extra forwards, unclamped start, no drop_last) 0.840 ± 0.028; paired
difference −0.018 ± 0.064 (t = −0.6): no difference beyond seed noise, and no clean-stage epoch on
the head-class plateau on either side. Most of the seed spread comes from the first HARL epoch, which
in some runs (either loop) knocks training accuracy from ~0.95 to 0.6-0.76 before it recovers.

Diagnostics. On a long-tailed set the clean stage can sit for epochs on the plateau where the model
predicts the head class (train accuracy ≈ the head-class share, loss ≈ the label entropy, 2.07 at
IR 10), leaving a short effective clean stage. ``log_epoch`` marks each stage-1 epoch of log.jsonl
(``taet_on_plateau``: train accuracy ≤ head share + 0.05; ``taet_left_plateau``; ``taet_stage_switch``
with the train and monitor clean/robust accuracy of the last clean epoch), and ``diagnostics``
becomes the cell's ``method_diagnostics`` block in metrics.json (shown on its report page).

Presets: ``common`` (the common long-tail protocol of the config) and ``authors`` (their notebook:
ε = 0.031 with training step 0.003, the long-tailed test split, PGD-20 evaluation at step 1/255,
40 of 100 epochs of stage 1). Their notebooks train a torchvision ResNet-50 (ResNet-18 in the demo)
on inputs resized to 224×224 although the poster says ResNet-18; the preset keeps the profile's
model (CIFAR ResNet-18 in the CIFAR profiles) and records the difference here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.errors import UsageError

from .base import LossOut, Method, register_method

CLASS_MEANS = ("all", "present")
PLATEAU_MARGIN = 0.05  # stage 1 is "on the plateau" while train accuracy <= head-class share + this


def class_losses(per_example: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean loss L_c (0 for an absent class, denominators + 1e-10 as in HARL.py) and per-class counts."""
    zeros = torch.zeros(num_classes, device=per_example.device, dtype=per_example.dtype)
    sums = zeros.index_add(0, y, per_example)
    counts = zeros.index_add(0, y, torch.ones_like(per_example))  # bincount's counts, at a fixed size: no host sync
    return sums / (counts + 1e-10), counts


def harl_terms(per_example: torch.Tensor, y: torch.Tensor, num_classes: int,
               class_mean: str = "all") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(BCL, HDL, RCEL) of the TAET paper's HARL, unweighted."""
    if class_mean not in CLASS_MEANS:
        raise ValueError(f"class_mean must be one of {CLASS_MEANS}; got {class_mean!r}")
    per_class, counts = class_losses(per_example, y, num_classes)
    if class_mean == "present":  # means over the present classes as masked sums: no data-dependent shape
        present = (counts > 0).to(per_class.dtype)
        n = present.sum()
        bcl = (per_class * present).sum() / n
        hdl = (((per_class - bcl) ** 2) * present).sum() / n
    else:
        bcl = per_class.mean()
        hdl = ((per_class - bcl) ** 2).mean()
    rcel = ((per_class / (per_class.sum() + 1e-10)) ** 2).sum()  # an absent class adds 0 under both readings
    return bcl, hdl, rcel


@register_method("taet")
class TAET(Method):
    summary = "clean CE for a first stage, then HARL (balanced class loss + deviation + rare-class emphasis) on PGD examples"
    paper = "Wang Yu-Hang et al., CVPR 2025, arXiv 2503.01924 (HARL: BCL, HDL, RCEL)"
    code = "BuhuiOK/TAET-Two-Stage-Adversarial-Equalization-Training-on-Long-Tailed-Distributions"
    graph_safe = True  # class counts by a fixed-size index_add, not bincount; its two stages are graph phases
    defaults = {"alpha": 0.1, "beta": 0.1, "gamma": 0.1, "ce_fraction": 0.4, "ce_epochs": None, "class_mean": "all"}
    presets = {
        "common": {},
        "authors": {
            "eps": 0.031,
            "train_attack": {"kind": "pgd", "steps": 10, "step_size": 0.003, "start": "normal"},
            "test_split": "longtail",
            # the notebook trains at 0.031 but tests with torchattacks' PGD-20 at 8/255, step 1/255 (random
            # start): added to the profile's suite (which runs at the cell's ε), outside its worst case
            "extra_eval_attacks": [{"kind": "torchattacks_pgd", "steps": 20, "step_size": "1/255", "start": "uniform",
                                    "eps": "8/255", "name": "ta_pgd20_8_255"}],
            "method_args": {"ce_fraction": 0.4},
            "milestones": [0.75, 0.9],  # the notebook's MultiStepLR([75, 90]) of 100 epochs, not AT-BSL's
        },
    }

    def __init__(self, **hparams):
        super().__init__(**hparams)
        if self.hparams["class_mean"] not in CLASS_MEANS:
            raise UsageError(f"taet: class_mean must be one of {', '.join(CLASS_MEANS)}; got {self.hparams['class_mean']!r}")
        self._diagnostics = self._fresh_diagnostics()

    def ce_epochs(self, epochs: int) -> int:
        """Length of stage 1: ``ce_epochs`` if given, else ``ce_fraction`` of the budget (40 of 100 in the authors' code)."""
        if self.hparams["ce_epochs"] is not None:
            return int(self.hparams["ce_epochs"])
        return int(round(self.hparams["ce_fraction"] * epochs))

    # --- diagnostics: how long the clean stage really learned (benchmark.train logs, the runner records) ---
    def _fresh_diagnostics(self) -> dict:
        return {"plateau_epochs": 0, "left_plateau_epoch": None, "stage_switch": None}

    def log_epoch(self, record: dict, ctx) -> dict:
        """Fields added to the epoch's log line during stage 1: ``taet_on_plateau`` (train accuracy within
        PLATEAU_MARGIN of the head-class share, i.e. no better than predicting the head class),
        ``taet_left_plateau`` on the first epoch above it, and ``taet_stage_switch`` (train and monitor
        accuracy) on the last clean epoch."""
        ce_epochs = self.ce_epochs(ctx.epochs)
        if record["epoch"] >= ce_epochs:
            return {}
        d = self._diagnostics
        counts = [float(c) for c in ctx.class_counts.tolist()]
        head_share = max(counts) / sum(counts)
        on_plateau = record["train_acc"] <= head_share + PLATEAU_MARGIN
        out = {"taet_on_plateau": on_plateau}
        if d["left_plateau_epoch"] is None:
            if on_plateau:
                d["plateau_epochs"] += 1
            else:
                d["left_plateau_epoch"] = record["epoch"]
                out["taet_left_plateau"] = True
        if record["epoch"] == ce_epochs - 1:
            monitors = {k[len("monitor_"):-len("_acc")]: v for k, v in record.items()
                        if k.startswith("monitor_") and k.endswith("_acc")}
            d["stage_switch"] = out["taet_stage_switch"] = {
                "epoch": record["epoch"], "train_acc": record["train_acc"], "loss": record["loss"],
                "monitor_clean_acc": monitors.pop("clean", None),
                "monitor_robust_acc": next(iter(monitors.values()), None),
                "monitor_attack": next(iter(monitors), None)}
        d["head_share"] = head_share
        return out

    def diagnostics(self) -> dict:
        """The ``method_diagnostics`` block of metrics.json: when stage 1 left the head-class plateau and where
        the model stood when stage 2 began. ``effective_clean_epochs`` = clean epochs after the plateau."""
        d = self._diagnostics
        left = d["left_plateau_epoch"]
        ce_epochs = None if d["stage_switch"] is None else d["stage_switch"]["epoch"] + 1
        return {"ce_epochs": ce_epochs, "head_share": d.get("head_share"), "plateau_margin": PLATEAU_MARGIN,
                "clean_stage_epochs_on_plateau": d["plateau_epochs"], "left_plateau_epoch": left,
                "effective_clean_epochs": None if ce_epochs is None else (0 if left is None else ce_epochs - left),
                "stage_switch": d["stage_switch"],
                "note": "plateau: epoch train accuracy <= head-class share + margin (the model predicts the head class)"}

    def state_dict(self) -> dict:
        return {"diagnostics": dict(self._diagnostics)}

    def load_state_dict(self, state: dict) -> None:
        self._diagnostics = dict(state.get("diagnostics") or self._fresh_diagnostics())

    def graph_phase(self, ctx) -> str:
        return "clean" if ctx.epoch < self.ce_epochs(ctx.epochs) else "harl"

    def loss(self, model, x, y, ctx) -> LossOut:
        if ctx.epoch < self.ce_epochs(ctx.epochs):
            logits = model(x)
            return LossOut(F.cross_entropy(logits.float(), y), logits)
        x_adv = self.adversarial(model, x, y, ctx)
        logits = model(x_adv)
        per_example = F.cross_entropy(logits.float(), y, reduction="none")
        bcl, hdl, rcel = harl_terms(per_example, y, ctx.num_classes, self.hparams["class_mean"])
        h = self.hparams
        loss = h["alpha"] * bcl + h["beta"] * hdl + h["gamma"] * rcel
        return LossOut(loss, logits, {"bcl": bcl.detach(), "hdl": hdl.detach(), "rcel": rcel.detach()})
