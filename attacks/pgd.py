"""Our own L∞ attacks: FGSM and PGD, batched, AMP-safe, with the math in plain sight.

Every attack takes a model mapping inputs in [0, 1] to logits, runs it in eval mode (BatchNorm
uses running statistics, as in the AT-BSL/TRADES-family code), restores the mode it found,
and returns adversarial inputs that stay in [0, 1] and within ε of x. Gradients are taken with
respect to the input only (``torch.autograd.grad``), so no weight gradient is computed or accumulated:
the autograd engine runs only the backward nodes on the way to x_adv. Freezing the parameters as well
(``frozen_parameters``) saves no FLOP (counted: 20 forward-equivalents per 10-step attack either way) and
under bf16 autocast it disables the weight-cast cache (every forward re-casts every weight), so the
attacks leave the parameters as they are (issue #17).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F

from .spec import LibraryResult, register_attack

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
STARTS = ("none", "uniform", "uniform_one_sided", "normal")


def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy: each example's input gradient is independent of the batch size."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


def cw_margin_sum(logits: torch.Tensor, y: torch.Tensor, confidence: float = 50.0) -> torch.Tensor:
    """Carlini-Wagner margin objective as AT-BSL's evaluation maximizes it: Σ −max(z_y − max_{j≠y} z_j + κ, 0)."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return -(true - other + confidence).clamp(min=0).sum()


def scaled_ce_sum(logits: torch.Tensor, y: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """Cross-entropy of logits × scale: a PGD on it still moves when the logit scale saturates the softmax
    (AT-BSL's logit-scaling attack), so robustness that comes only from logit scale shows up."""
    return ce_sum(logits.float() * scale, y)


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Run the block with the model in eval mode and restore whatever mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def frozen_parameters(model: torch.nn.Module):
    """Stop parameters from requiring grad inside the block. The attacks no longer need it (input-only
    ``autograd.grad`` already skips weight gradients); kept for code outside the harness that uses it."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class ExampleSeeds:
    """Random starts drawn per example: example ``i``'s noise comes from its own generator, seeded by the
    attack seed and the example's index in the evaluated set, so a number never depends on how the
    examples were batched (an evaluation at batch 64 and at batch 2,000 attacks from the same points).
    Pass it where a ``torch.Generator`` goes; ``ids`` are the batch's example indices."""

    def __init__(self, seed: int, ids: torch.Tensor | list[int]):
        self.seed = int(seed)
        self.ids = [int(i) for i in ids]

    def draw(self, shape: torch.Size, normal: bool) -> torch.Tensor:
        if len(self.ids) != shape[0]:
            raise ValueError(f"{len(self.ids)} example seeds for a batch of {shape[0]}")
        out = torch.empty(shape)
        for row, index in enumerate(self.ids):
            # the CPU generator keeps 32 bits of a seed: distinct for every (seed, index < 1,000,003)
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**32)
            out[row] = torch.randn(shape[1:], generator=g) if normal else torch.rand(shape[1:], generator=g)
        return out


def _noise(x: torch.Tensor, generator, normal: bool) -> torch.Tensor:
    if isinstance(generator, ExampleSeeds):
        return generator.draw(x.shape, normal).to(x.device)
    draw = torch.randn if normal else torch.rand
    return draw(x.shape, generator=generator, device="cpu" if generator is not None else x.device).to(x.device)


def random_start(x: torch.Tensor, eps: float, kind: str, generator: torch.Generator | ExampleSeeds | None = None
                 ) -> torch.Tensor:
    """Initial point of PGD: x itself, x + U[-ε, ε] (Madry), x + ε·U[0, 1) (RoBal's code) or
    x + 0.001·N(0, 1) (TRADES/AT-BSL code). ``generator`` may be :class:`ExampleSeeds` (per-example draws)."""
    if kind == "none":
        return x.clone()
    if kind in ("uniform", "uniform_one_sided"):
        noise = _noise(x, generator, normal=False)
        noise = noise * eps if kind == "uniform_one_sided" else (noise * 2 - 1) * eps
    elif kind == "normal":
        noise = _noise(x, generator, normal=True) * 0.001
    else:
        raise ValueError(f"unknown PGD start {kind!r}; choose one of {', '.join(STARTS)}")
    return (x + noise).clamp(0.0, 1.0)


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection onto the ε-ball around x intersected with the image box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    start: str = "uniform",
    loss_fn: LossFn = ce_sum,
    generator: torch.Generator | None = None,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """L∞ PGD (Madry et al. 2018, Eq. 2): x ← Π_{B(x,ε)∩[0,1]}(x + α·sign ∇ₓ L(f(x), y)).

    ``loss_fn(logits, y)`` must return a scalar summed over the batch; TRADES-style attacks pass
    a KL against fixed clean probabilities here. δ and x_adv stay in fp32 even under autocast.
    ``x_init``: the starting point, drawn by the caller (``start`` and ``generator`` are then unused): a
    captured attack draws its start eagerly and replays only the steps.
    """
    x = x.detach().float()
    x_adv = random_start(x, eps, start, generator) if x_init is None else x_init.detach().float().clone()
    if steps <= 0:
        return x_adv
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss_fn: LossFn = ce_sum) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2015): one signed step of size ε from x."""
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, start="none", loss_fn=loss_fn)


# ---------------------------------------------------------------------------------------------------------------
# Registration: what each kind is (attacks.spec reads this), and its runner.

# PGD objectives: name -> (loss(logits, y, **param), param keyword, default param, prefix of the default attack name)
LOSSES = {
    "ce": (ce_sum, None, None, "pgd"),
    "cw": (cw_margin_sum, "confidence", 50.0, "cw"),  # CW-L∞ of AT-BSL's evaluation
    "scaled_ce": (scaled_ce_sum, "scale", 10.0, "lsa"),  # AT-BSL's logit-scaling attack (LSA)
}


def _pgd_label(spec) -> str:
    text = {"ce": f"PGD-{spec.steps}", "cw": f"CW-L∞ (PGD-{spec.steps})",
            "scaled_ce": f"LSA (PGD-{spec.steps})"}[spec.loss]
    return text + (", no random start" if spec.start == "none" else "")


@register_attack("fgsm", family="gradient", iterative=False, library="own", title="our FGSM, one step of ε",
                 label=lambda spec: "FGSM", name=lambda spec: "fgsm", batch_invariant=True)
def _run_fgsm(spec, model, x, y, generator=None, num_classes=None, seed=0) -> LibraryResult:
    return LibraryResult(fgsm(model, x, y, spec.eps), None)


@register_attack("pgd", family="gradient", iterative=True, library="own", title="our L∞ PGD",
                 takes=("steps", "step_size", "start", "loss"), objectives=LOSSES, label=_pgd_label,
                 name=lambda spec: f"{LOSSES[spec.loss][3]}{spec.steps}", batch_invariant=True)
def _run_pgd(spec, model, x, y, generator=None, num_classes=None, seed=0) -> LibraryResult:
    return LibraryResult(pgd(model, x, y, spec.eps, spec.steps, spec.step_size, start=spec.start,
                             loss_fn=spec.loss_fn(), generator=generator), None)
