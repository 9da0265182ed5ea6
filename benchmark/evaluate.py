"""Predictions on clean inputs and under each attack, with the checks users expect from an attack run.

Each attack's returned x_adv is re-scored by the same model (the reported robust prediction is that
of the returned input, never a by-product of the attack), and its maximal L∞ distance and pixel
range are recorded so a broken projection cannot pass unnoticed.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks import AttackSpec, run_attack
from .data.loader import to_float


class InferenceModel(torch.nn.Module):
    """The model as attacks see it: inputs in [0, 1] → the method's inference logits."""

    def __init__(self, model: torch.nn.Module, method):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.logits(self.model, x)


def predict(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec | None,
            batch_size: int, device: torch.device, generator: torch.Generator | None = None,
            desc: str | None = None) -> tuple[np.ndarray, dict]:
    """Predicted labels for x (uint8 or float in [0, 1]) clean or under ``attack``, plus sanity numbers."""
    preds, max_linf, lo, hi = [], 0.0, 1.0, 0.0
    was_training = model.training
    model.eval()
    batches = range(0, len(x), batch_size)
    for start in tqdm(batches, desc=desc, leave=False, disable=True if desc is None else None):
        xb = x[start:start + batch_size].to(device)
        xb = to_float(xb) if xb.dtype == torch.uint8 else xb.float()
        yb = y[start:start + batch_size].to(device)
        if attack is not None:
            x_adv = run_attack(attack, model, xb, yb, generator)
            max_linf = max(max_linf, float((x_adv - xb).abs().max()))
            lo, hi = min(lo, float(x_adv.min())), max(hi, float(x_adv.max()))
            xb = x_adv
        with torch.no_grad():
            preds.append(model(xb).argmax(dim=1).cpu())
    model.train(was_training)
    sanity = {"max_linf": max_linf, "min_pixel": lo, "max_pixel": hi} if attack is not None else {}
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64), sanity


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[AttackSpec],
             batch_size: int, device: torch.device, seed: int = 0, progress: bool = True) -> dict:
    """Clean and per-attack predictions on the same examples, with seconds and sanity records per attack."""
    predictions, records = {}, {}
    for attack in [None, *attacks]:
        name = "clean" if attack is None else attack.name
        generator = torch.Generator().manual_seed(seed)  # each attack's random start is reproducible
        started = time.perf_counter()
        pred, sanity = predict(model, x, y, attack, batch_size, device, generator,
                               desc=f"eval {name}" if progress else None)
        predictions[name] = pred
        records[name] = {"seconds": time.perf_counter() - started, **sanity,
                         "spec": attack.to_dict() if attack is not None else None}
        if attack is not None and sanity["max_linf"] > attack.eps + 1e-5:
            raise RuntimeError(f"attack {name} left the ε-ball: max L∞ {sanity['max_linf']:.6f} > ε {attack.eps:.6f}")
    return {"predictions": predictions, "records": records}
