"""Loss pieces shared by several methods (TRADES, MART, RoBal all use the clean-vs-adversarial KL)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_per_example(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) ‖ softmax(adv)) summed over classes, one value per example (fp32)."""
    log_p = F.log_softmax(clean_logits.float(), dim=1)
    log_q = F.log_softmax(adv_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)
