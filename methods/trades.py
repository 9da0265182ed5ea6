"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, ICML 2019, arXiv 1901.08573), checked against the
authors' trades.py and train_trades_cifar10.py (yaodongyu/TRADES).

The paper's multi-class objective, min_f E{ L(f(X), Y) + β · max_{X' ∈ B(X, ε)} L(f(X), f(X')) } with
L = CE in the first term and KL in the second (as the authors' README states it; the paper's text was
not readable offline, so the equation is written out here rather than cited by number). With
p = softmax f(x) and q = softmax f(x_adv):

    L = CE(f(x), y) + β · (1/B) Σ_i KL(p_i ‖ q_i),   β = 6 (the authors' CIFAR-10 value, "β = 1/λ")
    x_adv = argmax_{‖x' − x‖∞ ≤ ε} Σ_i KL(p̂_i ‖ softmax f(x'_i))   (no labels)

The KL is summed over classes and averaged over the batch ("batchmean"; the authors' KLDivLoss with
size_average=False divided by the batch size), not the elementwise mean that would also divide by C.

Inner maximization: the run's training attack supplies ε, steps, step size and start (the common
protocol: 10 steps of ε/4 from x + 0.001·N(0, 1)); only the objective changes, to the summed KL above.
p̂ is the clean prediction in eval mode, computed once and held fixed. The authors' trades.py
recomputes f(x) inside every step, but in eval mode with frozen weights f(x) is the same number at
every step (no dropout, BatchNorm on running statistics), so computing it once is the same math.

The attack must start off x (any random start): at x' = x the KL is at its minimum, 0, and its
gradient vanishes, so PGD from x would not move; a training attack of kind fgsm or start "none" (or
the torchattacks bridge, which cannot take a custom loss) is refused with a UsageError.

Outer loss, model in train mode: both f(x) and f(x_adv) carry gradients (the clean target of the
KL is not detached, as in the authors' code).

Deviation from the authors' code: their outer pass runs the clean batch through the network twice
(once for CE, once for the KL target); we run it once. The value and the gradient are the same
(the two passes are identical without dropout), but BatchNorm running statistics are updated twice
per step with the clean batch there (clean, adversarial, clean) and once here (clean, adversarial).

Preset ``paper`` (train_trades_cifar10.py): WRN-34-10, batch 128, SGD lr 0.1 momentum 0.9, weight
decay 2e-4, 76 epochs, crop+flip augmentation, PGD-10 at step 0.007 from x + 0.001·N(0, 1), β = 6.
Their lr is ×0.1 from (1-based) epoch 75 on, and ×0.01 from 90, ×0.001 from 100 if trained longer; our
milestones are 0-based epoch indices, so that is [74, 89, 99] (in 76 epochs only the last two epochs,
75 and 76 in their count, run at 0.01). ε stays 8/255: the authors write 0.031, the same number rounded
(a 1.2% smaller ball), and one ε for every cell keeps the evaluation comparable across methods. The
step 0.007 is the authors' absolute number (not ε/4 = 0.0078). Evaluation attacks stay the profile's
(TRADES reports PGD-20 at step 0.003 from a uniform start, among others).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks import eval_mode, pgd
from benchmark.errors import UsageError

from .base import LossOut, Method, register_method
from .losses import at_least_fp32, kl_per_example
from .schedule import CIFAR_AT_MILESTONES


def kl_sum(adv_logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """Attack objective Σ_i KL(softmax(clean_i) ‖ softmax(adv_i)); ``pgd`` hands the clean logits over as its "y"."""
    return kl_per_example(clean_logits, adv_logits).sum()


@register_method("trades")
class TRADES(Method):
    summary = "clean CE + β·KL(p(x) ‖ p(x_adv)), x_adv maximizing that KL (no labels in the attack)"
    paper = "Zhang et al., ICML 2019, arXiv 1901.08573 (TRADES objective: CE + β·max KL)"
    code = "yaodongyu/TRADES"
    graph_safe = True  # KL attack and loss: no host read in a step
    defaults = {"beta": 6.0}
    presets = {
        "common": {},
        "paper": {
            "model": "wrn34_10",
            "epochs": 76,
            "batch_size": 128,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 2e-4,
            "milestones": CIFAR_AT_MILESTONES,  # their 1-based epochs 75, 90, 100 (methods/schedule.py)
            "lr_gamma": 0.1,
            "schedule_unit": "epoch",
            "augment": "crop_flip",
            "eps": "8/255",
            "train_attack": {"kind": "pgd", "steps": 10, "step_size": 0.007, "start": "normal"},
            "method_args": {"beta": 6.0},
        },
    }

    def adversarial(self, model, x, y, ctx) -> torch.Tensor:
        """x_adv maximizing the summed KL from the fixed eval-mode clean prediction; ``y`` is not used."""
        spec = ctx.attack
        if spec.kind != "pgd" or spec.start == "none":
            raise UsageError(f"trades: the KL attack needs the built-in pgd with a random start "
                             f"(got kind {spec.kind!r}, start {spec.start!r}): the KL is flat at x itself")
        with eval_mode(model), torch.no_grad():
            clean_logits = at_least_fp32(model(x))
        return pgd(model, x, clean_logits, spec.eps, spec.steps, spec.step_size, start=spec.start, loss_fn=kl_sum)

    def loss(self, model, x, y, ctx) -> LossOut:
        x_adv = self.adversarial(model, x, y, ctx)
        logits = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits.float(), y)
        robust = kl_per_example(logits, logits_adv).mean()  # Σ over classes, mean over the batch
        loss = natural + self.hparams["beta"] * robust
        return LossOut(loss, logits_adv, {"natural": natural.detach(), "robust": robust.detach()})
