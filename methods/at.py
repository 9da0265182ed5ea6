"""PGD-AT (Madry et al., ICLR 2018, Eq. 2.1): min_θ E[max_{‖δ‖∞≤ε} CE(f(x+δ), y)].

The outer loss is cross-entropy on the adversarial examples only (no clean term). Default: PGD-AT
as the long-tail papers run it (AT-BSL's baseline protocol: PGD-10, step ε/4 = 2/255 at ε = 8/255,
start x + 0.001·N(0, 1), model in eval mode during the attack, train mode for the update).
Preset ``madry``: the paper's own attack (PGD-7, step 2/255, uniform start) and weight decay 2e-4.
Madry's released config trains with 10 steps and 80k iterations of batch 128 (~205 CIFAR epochs,
lr ×0.1 at 40k and 60k); the preset keeps the profile's epoch budget and lr schedule and says so here.
Madry's code also builds its training adversary on the ``Model(mode='train')`` graph, so its attack
runs with BatchNorm in training mode (``is_training=True``: the statistics of the batch being attacked,
and with ``updates_collections=None`` every attack step also updates the running averages). Here, as
for every method, the training attack runs the model in eval mode (running statistics, no update);
the preset does not change that. The two agree only for a model without BatchNorm.
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import LossOut, Method, register_method


@register_method("at")
class PGDAT(Method):
    summary = "cross-entropy on PGD adversarial examples only (the min-max baseline)"
    paper = "Madry et al., ICLR 2018, arXiv 1706.06083, Eq. 2.1"
    code = "MadryLab/cifar10_challenge"
    graph_safe = True  # PGD and CE: no host read in a step (tests/test_graph_safety.py)
    presets = {
        "common": {},
        "madry": {
            "train_attack": {"kind": "pgd", "steps": 7, "step_size": "eps/4", "start": "uniform"},
            "weight_decay": 2e-4,
        },
    }

    def loss(self, model, x, y, ctx) -> LossOut:
        x_adv = self.adversarial(model, x, y, ctx)
        logits = model(x_adv)
        return LossOut(F.cross_entropy(logits.float(), y), logits)
