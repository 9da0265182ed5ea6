"""Which epoch's model is evaluated: the final one (default, as RoBal reports), the best on a validation
split carved from the training data, or, labelled "test-selected", AT-BSL's rule.

- ``final``: no choice is made; the model after the last epoch is evaluated.
- ``val_best``: after each epoch from ``select_from`` on, Balanced Robustness under the monitoring attack
  (PGD-10 by default) on a class-stratified validation split carved from the long-tailed training subset
  (``val_fraction`` of each class, at least one image; the carved indices are recorded and the class-aware
  losses see the counts actually trained on). Balanced, not plain, robust accuracy: on a long-tailed
  validation split plain accuracy would pick the epoch that suits the head classes.
- ``test_best``: AT-BSL's released code keeps the epoch with the best PGD-20 accuracy on the *test* set
  from epoch 75 (of 100) on. It is offered only to reproduce their numbers and is always labelled
  "test-selected": choosing on the test set makes the reported number optimistic.

The best model so far is saved atomically beside the checkpoint, so a resumed run keeps its choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attacks import AttackSpec
from .evaluate import predict
from .atomic import load_torch_plain, save_torch_atomic
from .cell import ForeignCellFile, ownership_problem

BEST = "best.pt"
LABELS = {"final": "final epoch", "val_best": "validation-selected", "test_best": "test-selected"}


def balanced_recall(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in y."""
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


@dataclass
class Selector:
    """Scores each epoch under the configured rule and keeps the best model on disk."""

    rule: str
    start_epoch: int
    attack: AttackSpec | None
    x: torch.Tensor | None
    y: torch.Tensor | None
    metric: str
    batch_size: int
    best_path: Path | None  # None for the final rule (nothing is saved)
    best_epoch: int | None = None
    best_score: float | None = None
    owner: dict | None = None  # {"cell_key", "config_hash"} stored with the best model and checked on restore

    @classmethod
    def final(cls, epochs: int, batch_size: int) -> "Selector":
        """No choice: the model after the last epoch is evaluated."""
        return cls("final", epochs - 1, None, None, None, "none", batch_size, None)

    def observe(self, epoch: int, inference: torch.nn.Module, model: torch.nn.Module, method,
                device: torch.device) -> float | None:
        """Score this epoch (if the rule applies from here on) and save the model if it is the best so far."""
        if self.rule == "final" or epoch < self.start_epoch:
            return None
        pred, _ = predict(inference, self.x, self.y, self.attack, self.batch_size, device,
                          torch.Generator().manual_seed(0))
        y = self.y.numpy()
        score = balanced_recall(y, pred) if self.metric.startswith("balanced") else float((pred == y).mean())
        if self.best_score is None or score > self.best_score:  # ties keep the earlier epoch
            self.best_epoch, self.best_score = epoch, score
            save_torch_atomic(self.best_path, {"model": model.state_dict(), "method": method.state_dict(),
                                               "epoch": epoch, "score": score, **(self.owner or {})})
        return score

    def state_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]

    def restore_best(self, model: torch.nn.Module, method, device: torch.device) -> None:
        """Load the selected epoch's weights (and method state) into the model before evaluation."""
        if self.rule == "final" or self.best_epoch is None:
            return
        state = load_torch_plain(self.best_path, map_location=device)  # plain tensors only: never runs code
        if self.owner is not None:
            problem = ownership_problem(state, self.owner["cell_key"], self.owner["config_hash"],
                                        str(self.best_path))
            if problem:
                raise ForeignCellFile(f"{problem}: refused")
        if state.get("epoch") != self.best_epoch:
            raise ForeignCellFile(f"{self.best_path} holds epoch {state.get('epoch')}, but the selection chose "
                                  f"epoch {self.best_epoch}: refused")
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])

    def record(self, epochs: int) -> dict:
        """What metrics.json says about the choice."""
        return {"rule": self.rule, "label": LABELS[self.rule], "metric": self.metric,
                "attack": self.attack.name if self.attack is not None else None,
                "from_epoch": self.start_epoch if self.rule != "final" else None,
                "epoch": self.best_epoch if self.rule != "final" else epochs - 1,
                "score": self.best_score}
