"""Loss pieces shared by several methods (TRADES, MART, RoBal use the clean-vs-adversarial KL; AT-BSL and REAT
the balanced softmax loss)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.errors import UsageError


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 (from bf16 under autocast), or as it is when already float64: the tests run a float64
    copy of a model through the same code, where no sign of a gradient depends on the machine's rounding."""
    return t if t.dtype == torch.float64 else t.float()


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``F.one_hot(y, num_classes).to(dtype)``, the same 0/1 values, without its range check, which reads y's
    min and max on the host off CUDA: a step that uses this makes no host sync (``Method.graph_safe``)."""
    return torch.zeros(len(y), num_classes, dtype=dtype, device=y.device).scatter_(1, y[:, None], 1)


def kl_per_example(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) ‖ softmax(adv)) summed over classes, one value per example (fp32, or float64)."""
    log_p = F.log_softmax(at_least_fp32(clean_logits), dim=1)
    log_q = F.log_softmax(at_least_fp32(adv_logits), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def log_prior(class_counts: torch.Tensor) -> torch.Tensor:
    """log n_c as fp32 (the balanced softmax's prior: AT-BSL, REAT), after checking that every class has at
    least one training example."""
    counts = torch.as_tensor(class_counts).float()
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        raise UsageError(f"class(es) {', '.join(map(str, empty))} have no training examples; "
                         "the balanced softmax needs log n_c > -inf for every class")
    return counts.log()


def balanced_softmax_loss(logits: torch.Tensor, y: torch.Tensor, log_n: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of CE(z + log n, y): cross-entropy with the log class counts added to every row."""
    shifted = logits.float() + log_n.to(logits.device)  # [B, C] + [C] broadcasts over the batch
    return F.cross_entropy(shifted, y)
