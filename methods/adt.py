"""ADT_EXP: Dong, Deng, Pang, Su, Zhu, "Adversarial Distributional Training for Robust Deep Learning",
NeurIPS 2020, arXiv 2002.05999, the explicit variant. Checked against the authors' code,
dongyp13/Adversarial-Distributional-Training (``adt_exp.py``: adt_loss, train, adjust_learning_rate).
The amortized variants (ADT_EXP-AM, ADT_IMP-AM: a generator network) are not implemented.

Objective: min_θ E_(x,y) [ max_p E_{δ~p(δ|x)} CE(f(x + δ), y) + λ·H(p(·|x)) ].
Distribution, per input and per pixel, parameters μ, v (shape of x, both initialized to 0):
    σ = softplus(v),   u = μ + σ·n,  n ~ N(0, I),   δ = ε·tanh(u),   x_adv = clamp(x + δ, 0, 1)
so |δ| < ε by construction (no projection, no random start). Entropy estimate of one sample (−log p(δ)
with the constants dropped, mean over all B·C·H·W elements, as the authors):
    H = mean( n²/2 + log(σ + 1e-8) + log(1 − tanh(u)² + 1e-8) )
Inner maximization, model in eval mode: ``steps`` = 7 updates of (μ, v), each over ``samples`` = 5 fresh
samples, minimizing J = −CE(f(x_adv), y) − λ·H (CE a batch mean), λ = 0.01. The authors use
Adam(lr 0.3, betas (0, 0)) and never zero its gradients, so the gradient G it sees at step k is the
sum of ∇J over ALL samples of steps 1..k, and with β1 = β2 = 0 Adam's update is
    (μ, v) ← (μ, v) − lr·G / (|G| + 1e-8)     (elementwise; = −lr·sign(G) up to Adam's ε)
which we write out (a test checks it against torch.optim.Adam and checks the accumulation).
Outer loss, train mode: one fresh sample x_adv from the learned (μ, v), detached;  L = CE(f(x_adv), y).

From the run's training attack only ε (``ctx.attack.eps``) is used: its kind, steps, step size and
start do not apply (the inner loop is the distributional one above, with its own hyperparameters
``steps``, ``samples``, ``lr``, ``lam``; defaults are the authors': 7, 5 (train() passes 5; adt_loss's
own default is 10), 0.3, 0.01).

Choices and deviations from the authors' code:
  * Input-only gradients: the attack takes gradients with respect to (μ, v) only, parameters frozen.
    The authors' ``loss.backward()`` also accumulates 35 stray gradients per batch into the classifier's
    parameters; their ``optimizer.zero_grad()`` inside adt_loss clears them before the outer backward,
    so the update is the same; we never compute them.
  * The Adam step is written out as above instead of instantiating torch.optim.Adam (the same
    arithmetic: exp_avg = G, exp_avg_sq = G², both bias corrections 1).
  * Samples are drawn and differentiated one at a time as in the authors' loop (peak memory of one
    batch); noise comes from the global torch RNG (the run's seed), through ``_noise`` (a test hook).
  * The CE inside the attack stays a batch mean, as theirs: unlike PGD, the update is not invariant
    to the objective's scale, because the CE is weighed against λ·H.
  * ``paper`` preset (adt_exp.py defaults): WRN-28-10, batch 64, SGD lr 0.1 momentum 0.9, weight decay
    2e-4, 76 epochs, crop+flip, no input standardization (their WRN has none). Their lr is ×0.1 from
    1-based epoch 75 (×0.01 from 90, ×0.001 from 100 if longer): 0-based milestones [74, 89, 99].
    ε 8/255 as theirs. The harness's drop_last (True) is kept; their loader keeps the last partial
    batch. They save checkpoints from epoch 71 on; the benchmark evaluates the last epoch.
  * Under the common protocol (no preset) only the ADT hyperparameters are ADT's; model, optimizer,
    ε and the evaluation are the profile's. Cost: steps·samples + 1 = 36 forward/backward passes per
    batch (PGD-10 AT: 11).
  * x_adv is a random draw, not a worst case: the training loss is stochastic given (μ, v); the stats
    record the mean σ of the learned distribution and the attack's last-step CE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks import eval_mode
from benchmark.errors import UsageError

from .base import LossOut, Method, register_method
from .schedule import CIFAR_AT_MILESTONES


@register_method("adt")
class ADT(Method):
    summary = ("CE on one sample of a learned per-pixel tanh-Gaussian perturbation distribution "
               "(7 signed-Adam steps, 5 samples each, entropy bonus λ = 0.01) — ADT_EXP")
    paper = "Dong, Deng, Pang, Su, Zhu, NeurIPS 2020, arXiv 2002.05999 (ADT_EXP)"
    code = "dongyp13/Adversarial-Distributional-Training"
    graph_safe = True  # fixed inner steps and samples, no host read (tests/test_graph_safety.py)
    defaults = {"steps": 7, "samples": 5, "lr": 0.3, "lam": 0.01}
    presets = {
        "common": {},
        "paper": {
            "model": "wrn28_10",
            "batch_size": 64,
            "epochs": 76,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 2e-4,
            "milestones": CIFAR_AT_MILESTONES,  # the authors' 1-based epochs 75, 90, 100 (methods/schedule.py)
            "lr_gamma": 0.1,
            "schedule_unit": "epoch",
            "augment": "crop_flip",
            "eps": "8/255",
            "method_args": {"steps": 7, "samples": 5, "lr": 0.3, "lam": 0.01},
        },
    }

    def __init__(self, **hparams):
        super().__init__(**hparams)
        h = self.hparams
        for key, low in (("steps", 0), ("samples", 1)):
            if isinstance(h[key], bool) or not isinstance(h[key], int) or h[key] < low:
                raise UsageError(f"adt: {key} must be an integer >= {low}; got {h[key]!r}")
        if not h["lr"] > 0 or not h["lam"] >= 0:
            raise UsageError(f"adt: lr must be > 0 and lam >= 0; got {h['lr']}, {h['lam']}")

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like)

    @staticmethod
    def sample(x, mu, v, eps, noise):
        """x_adv = clamp(x + ε·tanh(μ + softplus(v)·n), 0, 1) and the entropy estimate H of that draw."""
        sigma = F.softplus(v)
        a = torch.tanh(mu + sigma * noise)
        entropy = (noise.pow(2) / 2 + torch.log(sigma + 1e-8) + torch.log(1 - a.pow(2) + 1e-8)).mean()
        return (x + eps * a).clamp(0.0, 1.0), entropy

    def distribution(self, model, x, y, eps):
        """(μ, v, last-step CE) after the inner signed-Adam steps with accumulating gradients."""
        h = self.hparams
        x = x.detach().float()
        mu, v = torch.zeros_like(x), torch.zeros_like(x)
        g_mu, g_v = torch.zeros_like(x), torch.zeros_like(x)  # never reset: the authors' accumulation
        last_ce = torch.zeros((), device=x.device)
        with eval_mode(model), torch.enable_grad():  # gradients w.r.t. (μ, v) only: no weight gradient
            for _ in range(h["steps"]):
                mu.requires_grad_(True)
                v.requires_grad_(True)
                ce_sum = 0.0
                for _ in range(h["samples"]):
                    x_adv, entropy = self.sample(x, mu, v, eps, self._noise(x))
                    ce = F.cross_entropy(model(x_adv).float(), y)
                    d_mu, d_v = torch.autograd.grad(-ce - h["lam"] * entropy, (mu, v))
                    g_mu += d_mu
                    g_v += d_v
                    ce_sum = ce_sum + ce.detach()
                last_ce = ce_sum / h["samples"]
                mu = (mu.detach() - h["lr"] * g_mu / (g_mu.abs() + 1e-8))
                v = (v.detach() - h["lr"] * g_v / (g_v.abs() + 1e-8))
        return mu.detach(), v.detach(), last_ce

    def loss(self, model, x, y, ctx) -> LossOut:
        eps = ctx.attack.eps
        mu, v, attack_ce = self.distribution(model, x, y, eps)
        with torch.no_grad():
            x_adv, _ = self.sample(x.detach().float(), mu, v, eps, self._noise(x))
        logits = model(x_adv)  # train mode
        loss = F.cross_entropy(logits.float(), y)
        return LossOut(loss, logits, {"attack_ce": attack_ce, "sigma": F.softplus(v).mean()})
