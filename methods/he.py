"""PGD-AT + HE: Pang, Yang, Dong, Xu, Zhu, Su, "Boosting Adversarial Training with Hypersphere
Embedding", NeurIPS 2020, arXiv 2002.08619. Checked against the authors' code, ShawnXYang/AT_HE
(``CIFAR-10/he.py`` HELoss, ``CIFAR-10/losses.py`` pgd_loss with loss='pgd_he',
``CIFAR-10/models/wideresnet.py`` use_FNandWN, ``CIFAR-10/train_adv_cifar10.py`` and the README's
PGD-AT+HE command). Only the PGD-AT variant is implemented (the authors also code TRADES+HE, ALP+HE).

Head (``wrap_model``, "FN + WN"). ``model.classifier`` becomes a bias-free hypersphere head, still
named ``classifier``, so ``model(x)`` returns the cosines
    cos_j(x) = ⟨h/‖h‖, w_j/‖w_j‖⟩ ∈ [−1, 1],   h = model.forward_features(x)
(feature normalization, FN, and weight normalization, WN). Weights start U(−1/√d, 1/√d), PyTorch's
nn.Linear default, which is what the authors' WRN keeps for its bias-free fc.

Training loss (HELoss, CosFace-style additive margin; paper's PGD-AT+HE objective), on x_adv, train mode:
    L = (1/B) Σ_i −log( e^{s(cos_y − m)} / (e^{s(cos_y − m)} + Σ_{j≠y} e^{s·cos_j}) )
      = CE( s·(cos − m·e_y), y ),    s = 10, m = 0.2   (the README's PGD-AT+HE command)
Inner attack: the run's training attack (``ctx.attack``: ε, steps, step size, start; the common
protocol's PGD-10 at ε/4 from x + 0.001·N(0, 1), model in eval mode, input gradients only) on
Σ_i CE(s·cos_i, y_i), i.e. HELoss with margin 0, as the authors' pgd_loss (``criterion_loss(model(x_adv), y)``
with the default cm = 0). Their HELoss is a batch mean, ours a sum: PGD uses the gradient's sign only,
so the steps are the same. kind ``fgsm`` is one such step of size ε from x; ``torchattacks_pgd`` (which
cannot take this objective) and objectives other than "ce" are refused with a UsageError.

Inference (``logits``): the scale-1 cosines (``eval_scale`` = 1), as the authors' model returns them
and as their evaluation attacks them. Attack-scale caveat: training attacks s·cos (s = 10) but the
evaluation PGD runs cross-entropy on scale-1 logits. A scale changes no prediction, but it changes the
direction of CE's input gradient (at scale 1 the softmax over cosines in [−1, 1] is nearly uniform,
so the gradient pushes against the true class and all others alike rather than towards the runner-up),
and such a mismatch can overstate PGD robustness (the same warning as RoBal's README; in AT_HE issue #1
the TRADES+HE checkpoint is ahead of TRADES under APGD-CE but behind it under APGD-DLR). ``eval_scale`` changes the
attacked logits (not the predictions) for a sensitivity check; report a scale-free or margin attack
(CW, logit-scaled CE, AutoAttack) beside PGD.

Weight normalization, choice (``weight_norm``):
  * "project" (default, the authors' code): the forward first overwrites the weight with its
    L2-normalized rows (``weight.data = normalize(weight)``; here in place under no_grad), then
    computes h/‖h‖ · Wᵀ. This is a hard projection after each SGD step, not a reparametrization: the
    weight gradient is that of a plain linear layer at the unit rows (radial part included, no 1/‖w‖
    factor); momentum and weight decay act on those unit rows, and the next forward projects the
    result back (weight decay's uniform shrink is undone, so it has no effect on the head). Default
    because it reproduces the authors' training dynamics. One difference: the authors re-project on
    every forward; we project once after each change of the weight (an optimizer step, a checkpoint
    load; detected by the tensor's version counter), because re-normalizing unit rows is the
    identity only up to rounding (measured: last-bit changes, so two forwards of the same input
    differed). Side effect: a forward (also at inference) may modify the parameter.
  * "explicit": W/‖W‖ computed inside the forward (the parameter is never modified). Same forward
    values; the gradient is the tangential part scaled by 1/‖w_j‖, weight decay shrinks ‖w_j‖ and so
    raises the head's effective step over time, and momentum accumulates in the unnormalized space.
Both use F.normalize (norm clamped below at 1e-12), as the authors do: an all-zero feature vector (possible
with ReLU features) or weight row gives cosines of 0 instead of NaN.

Other choices and deviations from the authors' code:
  * The margin loss is computed as a cross-entropy of s·(cos − m·e_y) (log-sum-exp, out of place);
    their HELoss exponentiates directly (identical value; no overflow at |s·cos| ≤ 10 either way).
  * ``paper`` preset: WRN-34-10 with the authors' in-model input standardization (CIFAR-10 mean
    (0.4914, 0.4822, 0.4465), std (0.2471, 0.2435, 0.2616), their ``i_normalize``, expressed as
    ``model_args`` mean/std, so it needs 3-channel data), batch 128, SGD lr 0.1 momentum 0.9, weight
    decay 5e-4 (the README's PGD-AT+HE command; the argparse default is 2e-4, and its s default 15 is
    overridden to 10 by that command; an older README said s = 15), 77 epochs, crop+flip,
    PGD-10 at the absolute step 0.007 from x + 0.001·N(0, 1). Their lr is ×0.1 from 1-based epoch 75
    (×0.01 from 90, ×0.001 from 100): 0-based milestones [74, 89, 99]. ε stays 8/255 (they write
    0.031, the same number rounded) so every cell shares one threat model. They save every epoch; the
    benchmark evaluates the last one.
  * Under the common protocol (no preset) only s and m are HE's; model, optimizer, attack are the
    profile's, and no input standardization is added.

Observed here (not in the paper): on the CPU ``quick`` profile (small_cnn without BatchNorm, lr 0.05)
HE does not collapse, but the fresh unit-row head learns slowly: after 2 epochs the mean true-class
cosine was 0.34 and balanced clean / PGD-20 accuracy 57.9% / 47.7%, the two rarest classes still at 0
(the 8-epoch profile trains longer). On one fixed batch "explicit" lowered the loss faster than
"project" over 12 steps (ratio 0.39 vs 0.50): its initial rows have norm ≈ 0.58 < 1, so larger angular steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attacks import pgd
from benchmark.errors import UsageError

from .base import LossOut, Method, register_method
from .losses import one_hot
from .schedule import CIFAR_AT_MILESTONES

WEIGHT_NORMS = ("project", "explicit")


class HypersphereClassifier(nn.Module):
    """Bias-free cosine head ⟨h/‖h‖, w_j/‖w_j‖⟩ (HE's FN + WN); ``project`` overwrites the weight rows."""

    def __init__(self, in_features: int, out_features: int, weight_norm: str = "project", device=None, dtype=None):
        super().__init__()
        if weight_norm not in WEIGHT_NORMS:
            raise UsageError(f"he: weight_norm must be one of {', '.join(WEIGHT_NORMS)}; got {weight_norm!r}")
        self.in_features, self.out_features, self.weight_norm = in_features, out_features, weight_norm
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        self._projected_at: tuple[int, int] | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.weight_norm == "project":
            self._project()
            weight = self.weight
        else:
            weight = F.normalize(self.weight, dim=1)
        return F.linear(F.normalize(h, dim=1), weight)

    def _project(self) -> None:
        """weight ← its L2-normalized rows, in place, once after each change of the weight (an optimizer step,
        a load): the tensor's version counter says whether it changed since the last projection."""
        w = self.weight
        if (w.data_ptr(), w._version) != self._projected_at:
            with torch.no_grad():
                w.copy_(F.normalize(w, dim=1))
            self._projected_at = (w.data_ptr(), w._version)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight_norm={self.weight_norm}"


@register_method("he")
class HE(Method):
    summary = ("hypersphere head (normalized features and weights, no bias, logits = cos); "
               "CosFace margin CE at s = 10, m = 0.2 on PGD(CE of s·cos) examples")
    paper = "Pang, Yang, Dong, Xu, Zhu, Su, NeurIPS 2020, arXiv 2002.08619 (PGD-AT + HE, HELoss)"
    code = "ShawnXYang/AT_HE"
    graph_safe = True  # the weight projection is recorded in the step's first forward, as it runs eagerly
    defaults = {"scale": 10.0, "margin": 0.2, "eval_scale": 1.0, "weight_norm": "project"}
    presets = {
        "common": {},
        "paper": {
            "model": "wrn34_10",
            "model_args": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]},
            "batch_size": 128,
            "epochs": 77,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "milestones": CIFAR_AT_MILESTONES,  # the authors' 1-based epochs 75, 90, 100 (methods/schedule.py)
            "lr_gamma": 0.1,
            "schedule_unit": "epoch",
            "augment": "crop_flip",
            "eps": "8/255",
            "train_attack": {"kind": "pgd", "steps": 10, "step_size": 0.007, "start": "normal"},
            "method_args": {"scale": 10.0, "margin": 0.2},
        },
    }

    def __init__(self, **hparams):
        super().__init__(**hparams)
        h = self.hparams
        if not h["scale"] > 0 or not h["eval_scale"] > 0:
            raise UsageError(f"he: scale and eval_scale must be positive; got {h['scale']}, {h['eval_scale']}")
        if h["weight_norm"] not in WEIGHT_NORMS:
            raise UsageError(f"he: weight_norm must be one of {', '.join(WEIGHT_NORMS)}; got {h['weight_norm']!r}")

    def wrap_model(self, model: nn.Module) -> nn.Module:
        old = model.classifier
        weight = getattr(old, "weight", None)
        model.classifier = HypersphereClassifier(
            int(getattr(old, "in_features", model.feature_dim)), int(old.out_features), self.hparams["weight_norm"],
            device=None if weight is None else weight.device, dtype=None if weight is None else weight.dtype)
        return model

    def _attack_objective(self, cos: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Σ_i CE(s·cos_i, y_i): HELoss with margin 0, summed (PGD uses only the gradient's sign)."""
        return F.cross_entropy(self.hparams["scale"] * cos.float(), y, reduction="sum")

    def adversarial(self, model, x, y, ctx) -> torch.Tensor:
        spec = ctx.attack
        if spec.kind == "torchattacks_pgd" or getattr(spec, "loss", "ce") != "ce":
            raise UsageError(f"he: the training attack maximizes CE of s·cos with the built-in pgd/fgsm "
                             f"(got kind {spec.kind!r}, loss {getattr(spec, 'loss', 'ce')!r})")
        if spec.kind == "fgsm":
            return pgd(model, x, y, spec.eps, 1, spec.eps, start="none", loss_fn=self._attack_objective)
        return pgd(model, x, y, spec.eps, spec.steps, spec.step_size, start=spec.start, loss_fn=self._attack_objective)

    def loss(self, model, x, y, ctx) -> LossOut:
        x_adv = self.adversarial(model, x, y, ctx)
        cos = model(x_adv)  # train mode, scale-1 cosines
        s, m = self.hparams["scale"], self.hparams["margin"]
        z = s * (cos.float() - m * one_hot(y, cos.shape[1]))
        loss = F.cross_entropy(z, y)
        cos_y = cos.detach().float().gather(1, y[:, None]).mean()
        return LossOut(loss, cos, {"cos_y": cos_y})

    def logits(self, model, x) -> torch.Tensor:
        cos = model(x)
        return cos if self.hparams["eval_scale"] == 1 else self.hparams["eval_scale"] * cos
