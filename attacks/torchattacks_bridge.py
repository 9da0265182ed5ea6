"""Bridge to torchattacks, used as an independent cross-check of our own attacks.

torchattacks is imported lazily so that importing tailrobust never pays for it.
"""
from __future__ import annotations

import torch


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
