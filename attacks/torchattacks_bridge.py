"""Bridge to torchattacks, used as an independent cross-check of our own attacks.

torchattacks is imported lazily so that importing tailrobust never pays for it.
"""
from __future__ import annotations

import torch

from .spec import LibraryResult, register_attack


def torchattacks_pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = False,
) -> torch.Tensor:
    """torchattacks' L∞ PGD with the given settings; the model is put in eval mode and restored.

    Without random start it starts from x exactly as our ``pgd(start="none")`` does, so the two
    should agree up to floating-point ties: a difference means a bug, not noise.
    """
    import torchattacks

    was_training = model.training
    model.eval()
    try:
        attack = torchattacks.PGD(model, eps=eps, alpha=step_size, steps=steps, random_start=random_start)
        return attack(x.detach().float(), y).detach()
    finally:
        model.train(was_training)


def torchattacks_version() -> str:
    import torchattacks

    return torchattacks.__version__


@register_attack("torchattacks_pgd", family="gradient", iterative=True, library="torchattacks",
                 title="torchattacks' L∞ PGD", takes=("steps", "step_size", "start"), cross_check_of="pgd",
                 start_text=lambda spec: "no random start" if spec.start == "none" else "torchattacks' uniform start",
                 label=lambda spec: f"PGD-{spec.steps} (torchattacks)" + (", no random start" if spec.start == "none" else ""),
                 name=lambda spec: f"torchattacks_pgd{spec.steps}")
def _run_torchattacks_pgd(spec, model, x, y, generator=None, num_classes=None, seed=0) -> LibraryResult:
    return LibraryResult(torchattacks_pgd(model, x, y, spec.eps, spec.steps, spec.step_size,
                                          random_start=spec.start != "none"), None)
