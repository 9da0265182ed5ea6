"""Focal-loss PGD-AT: an example plugin that adds a training method without touching the harness.

Focal loss (Lin, Goyal, Girshick, He, Dollár, ICCV 2017, arXiv 1708.02002, Eq. 4) on PGD adversarial examples:

    L = −(1 − p_y)^γ · log p_y,   p = softmax(f(x_adv)),   γ = ``gamma`` (γ = 0 is PGD-AT's cross-entropy)

It down-weights the examples the model already gets right, which on long-tailed data are mostly head-class
ones. The inner maximisation is the cell's training attack (``self.adversarial``: plain cross-entropy PGD,
the common protocol's PGD-10), exactly as ``methods/at.py`` does; only the outer loss differs.

Compare it with the baselines in one command (the quick profile, on the embedded digits):

    .venv/bin/python -m benchmark --plugin examples/focal_at.py --methods at,at_bsl,focal_at

The plugin's source hash goes into the key of its cells, so editing this file makes new cells.
"""
from __future__ import annotations

import torch.nn.functional as F

from methods import LossOut, Method, register_method


@register_method("focal_at")
class FocalAT(Method):
    summary = "focal loss -(1 - p_y)^gamma log p_y on PGD adversarial examples (an example plugin)"
    paper = "Lin et al., ICCV 2017, arXiv 1708.02002, Eq. 4 (focal loss), on Madry et al.'s PGD-AT"
    code = "examples/focal_at.py"
    defaults = {"gamma": 2.0}

    def loss(self, model, x, y, ctx) -> LossOut:
        x_adv = self.adversarial(model, x, y, ctx)
        logits = model(x_adv)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        weight = (1 - log_p.exp()) ** float(self.hparams["gamma"])
        return LossOut((-weight * log_p).mean(), logits)
