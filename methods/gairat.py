"""GAIRAT: Geometry-aware Instance-reweighted Adversarial Training (Zhang J., Zhu, Niu, Han, Sugiyama,
Kankanhalli, ICLR 2021, arXiv 2010.01736). Checked against the authors' code,
zjfheart/Geometry-aware-Instance-reweighted-Adversarial-Training (``GAIRAT.py``, ``GAIR.py``,
``attack_generator.py`` GA_PGD). The paper's text was not readable offline; the formulas are the code's.

Caveat first: the authors report (issue #1 of their repository) that GAIRAT without extra unlabeled
data is NOT robust under AutoAttack: it resists PGD but not other attacks (suspected gradient masking /
overfitting to PGD). Its PGD numbers must be read beside AutoAttack or another strong attack.

Geometry value. The training PGD of K steps visits iterates x⁰ (the random start), x¹, …, x^K = x_adv;
κ_i = #{k ∈ 0..K−1 : argmax f(x_i^k) = y_i} counts the iterates, start included and x_adv excluded, at
which example i was still classified correctly (counting goes on after a first misclassification).
Small κ: the example sits close to the decision boundary (or on the wrong side), and weighs more:

    w_i^raw = (1 + tanh(Λ + 5·(⌊K/2⌋ − κ_i)/⌊K/2⌋)) / 2,   w_i = B·w_i^raw / Σ_j w_j^raw   (batch mean 1)
    L = (1/B) Σ_i w_i · CE(f(x_adv_i), y_i),   Λ = −1          (reweighting phase)
    L = (1/B) Σ_i CE(f(x_adv_i), y_i)                           (before the begin epoch: plain PGD-AT)

Choices, and where they differ from the authors' code:
  * The attack is this file's own PGD loop (``geometry_aware_pgd``): the arithmetic of ``attacks.pgd``
    (same start from ``attacks.random_start``, sign step, ``attacks.project_linf``, model in eval mode,
    parameters frozen), plus κ read off the logits of the forward pass each step already makes, so it
    gives attacks.pgd's x_adv for the same start noise (a test checks this) at no extra forward.
    ε, start, K and step size are the run's training attack (``ctx.attack``; the common protocol starts
    at x + 0.001·N(0, 1), the ``paper`` preset at the authors' x + U[−ε, ε] clamped to [0, 1]). It
    maximizes the summed CE; the authors' mean CE has the same sign gradient. κ stays on the device.
    Only the built-in pgd with K ≥ 2 steps can give κ (⌊K/2⌋ ≥ 1): fgsm, torchattacks_pgd and K < 2
    are refused with a UsageError.
  * (1 + tanh z)/2 is evaluated as sigmoid(2z), the same function, which stays positive in float32 for
    very negative Λ (where 1 + tanh z rounds to 0 and the normalization would divide 0 by 0). The
    weights are constants (κ is a count): no gradient flows through them. ``weight_function`` also offers
    the authors' other two: "sigmoid" (sigmoid of the same z) and "discrete" ((K + 1 − κ)/(K + 1)).
  * Begin epoch: the authors reweight when (0-based epoch + 1) ≥ begin_epoch = 60 of 120, i.e. from
    their 60th epoch, our 0-based epoch 59. We keep that comparison with begin_epoch = begin_fraction ×
    epochs (0.5, so 60 of 120 and the same 59 plain epochs as the authors; in the 8-epoch quick profile
    epochs 0–2 are plain, 3–7 reweighted). ``begin_epoch`` (1-based, their meaning) overrides it. The
    authors' begin epoch is an absolute 60 whatever the budget; a fraction scales with the profile.
  * Λ schedule: the authors' default "fixed": Λ = +∞ (every weight 1, i.e. plain mean CE) before its
    switch epoch and Λ = −1 after; with 120 epochs the switch is epoch 60, the begin epoch, so the
    phase rule above is exactly their schedule. (With < 110 epochs their switch moves to 30 but the
    reweighting still waits for begin_epoch, so it changes nothing there either.) The "linear" and
    "piecewise" Λ schedules of their code are not implemented.
  * The loss is computed in fp32 on the train-mode logits of x_adv; no clean term.

Preset ``paper`` (GAIRAT.py defaults): 120 epochs, batch 128 (torch DataLoader, so drop_last off),
SGD lr 0.1, momentum 0.9, weight decay 2e-4, RandomCrop + flip, training PGD-10 at step 0.007 from
x + U[−ε, ε], Λ = −1, Tanh, reweighting from 0.5 of the budget. ε = 8/255 (the authors write 0.031,
the same number rounded; one ε keeps cells comparable); the step 0.007 is their absolute number. Their
"piecewise" lr for ≥ 110 epochs is set per batch from lr_schedule(epoch + 1): 0.1 while (e+1)/E < 1/2,
0.01 below 3/4, 0.001 below 11/12, 0.0005 after, i.e. lr drops at 0-based epochs 59, 89 and 109
(milestones [59, 89, 109]). One MultiStepLR gamma cannot make the last drop ×0.5: with ×0.1 the last
11 epochs run at 1e-4 instead of their 5e-4 (a stated deviation). Their model, a Madry-style
WRN-32-10, is not in the model registry; the preset keeps the profile's model. They keep the epoch of
best PGD-20 test accuracy (bestpoint.pth.tar); the benchmark evaluates the last epoch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attacks import ce_sum, eval_mode, project_linf, random_start
from benchmark.errors import UsageError

from .base import LossOut, Method, register_method

WEIGHT_FUNCTIONS = ("tanh", "sigmoid", "discrete")


def geometry_aware_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                       step_size: float, start: str = "uniform",
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, κ): ``attacks.pgd``'s L∞ PGD on summed CE, and per example the number of iterates 0..K−1
    at which the model (eval mode) still predicted the label."""
    x = x.detach().float()
    x_adv = random_start(x, eps, start, generator)
    kappa = torch.zeros(len(x), dtype=torch.long, device=x.device)
    with eval_mode(model), torch.enable_grad():  # input-only gradients: no weight gradient is computed
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            kappa += logits.detach().argmax(1) == y
            (grad,) = torch.autograd.grad(ce_sum(logits, y), x_adv)
            x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach(), kappa


def gair_weights(kappa: torch.Tensor, steps: int, lam: float = -1.0, function: str = "tanh") -> torch.Tensor:
    """Per-example weights from geometry values κ ∈ [0, K], normalized to mean 1 over the batch."""
    kappa = kappa.float()
    if function == "discrete":
        raw = (steps + 1 - kappa) / (steps + 1)
    else:
        half = steps // 2
        z = lam + 5.0 * (half - kappa) / half
        raw = torch.sigmoid(2 * z) if function == "tanh" else torch.sigmoid(z)  # (1 + tanh z)/2 = sigmoid(2z)
    return raw * (len(raw) / raw.sum())


@register_method("gairat")
class GAIRAT(Method):
    summary = ("CE on PGD examples reweighted per example by its geometry value κ (PGD iterates still "
               "classified correctly), after a plain PGD-AT first half; its authors report it is not "
               "robust under AutoAttack (their issue #1)")
    paper = "Zhang J. et al., ICLR 2021, arXiv 2010.01736 (GAIRAT: geometry-aware instance-reweighted AT)"
    code = "zjfheart/Geometry-aware-Instance-reweighted-Adversarial-Training"
    graph_safe = True  # κ counted on the device; the reweighting switch is a graph phase
    defaults = {"Lambda": -1.0, "weight_function": "tanh", "begin_fraction": 0.5, "begin_epoch": None}
    presets = {
        "common": {},
        "paper": {
            "epochs": 120,
            "batch_size": 128,
            "drop_last": False,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 2e-4,
            "milestones": [59, 89, 109],  # 0-based; the last drop is ×0.1 here, ×0.5 in their code
            "lr_gamma": 0.1,
            "schedule_unit": "epoch",
            "augment": "crop_flip",
            "eps": "8/255",
            "train_attack": {"kind": "pgd", "steps": 10, "step_size": 0.007, "start": "uniform"},
            "method_args": {"Lambda": -1.0, "weight_function": "tanh", "begin_fraction": 0.5},
        },
    }

    def __init__(self, **hparams):
        super().__init__(**hparams)
        h = self.hparams
        if h["weight_function"] not in WEIGHT_FUNCTIONS:
            raise UsageError(f"gairat: weight_function must be one of {', '.join(WEIGHT_FUNCTIONS)}; "
                             f"got {h['weight_function']!r}")
        if isinstance(h["Lambda"], bool) or not isinstance(h["Lambda"], (int, float)) \
                or math.isnan(h["Lambda"]) or h["Lambda"] == -math.inf:
            raise UsageError(f"gairat: Lambda must be a number (or +inf for all weights 1); got {h['Lambda']!r}")
        if not 0 <= h["begin_fraction"] <= 1:
            raise UsageError(f"gairat: begin_fraction must lie in [0, 1]; got {h['begin_fraction']!r}")

    def begin_epoch(self, epochs: int) -> float:
        """The authors' 1-based begin epoch: ``begin_epoch`` if given, else ``begin_fraction`` × epochs."""
        if self.hparams["begin_epoch"] is not None:
            return float(self.hparams["begin_epoch"])
        return self.hparams["begin_fraction"] * epochs

    def reweighting(self, ctx) -> bool:
        return ctx.epoch + 1 >= self.begin_epoch(ctx.epochs)

    def graph_phase(self, ctx) -> str:
        return "reweighted" if self.reweighting(ctx) else "plain"

    def adversarial_with_kappa(self, model, x, y, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        spec = ctx.attack
        if spec.kind != "pgd" or spec.steps < 2:
            raise UsageError(f"gairat: the geometry value needs the built-in pgd with at least 2 steps "
                             f"(got kind {spec.kind!r}, {spec.steps} steps)")
        return geometry_aware_pgd(model, x, y, spec.eps, spec.steps, spec.step_size, start=spec.start)

    def adversarial(self, model, x, y, ctx) -> torch.Tensor:
        return self.adversarial_with_kappa(model, x, y, ctx)[0]

    def loss(self, model, x, y, ctx) -> LossOut:
        x_adv, kappa = self.adversarial_with_kappa(model, x, y, ctx)
        logits = model(x_adv)
        per_example = F.cross_entropy(logits.float(), y, reduction="none")
        if self.reweighting(ctx):
            h = self.hparams
            weights = gair_weights(kappa, ctx.attack.steps, h["Lambda"], h["weight_function"])
            loss = (weights * per_example).mean()
        else:
            loss = per_example.mean()
        return LossOut(loss, logits, {"kappa": kappa.float().mean()})
