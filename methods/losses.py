"""Loss pieces shared by several methods (TRADES, MART, RoBal all use the clean-vs-adversarial KL)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 (from bf16 under autocast), or as it is when already float64: the tests run a float64
    copy of a model through the same code, where no sign of a gradient depends on the machine's rounding."""
    return t if t.dtype == torch.float64 else t.float()


def kl_per_example(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) ‖ softmax(adv)) summed over classes, one value per example (fp32, or float64)."""
    log_p = F.log_softmax(at_least_fp32(clean_logits), dim=1)
    log_q = F.log_softmax(at_least_fp32(adv_logits), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)
