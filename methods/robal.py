"""RoBal: Wu, Liu, Huang, Wang, Lin, "Adversarial Robustness under Long-Tailed Distribution",
CVPR 2021 (oral), arXiv 2104.02703. Checked against the authors' code, wutong16/Adversarial_Long-Tail
(``methods/losses_inclass.py`` MultiMarginLoss, ``methods/train_modes.py`` add_reg_train,
``models/classifiers/basic_classifiers.py`` CosPlus / PostProc, the ``*_robal_N_*`` / ``*_robal_R_*`` configs).

Three pieces, two registered variants (``robal_n``, ``robal_r``):

Head (``wrap_model``). ``model.classifier`` becomes a scale-invariant cosine classifier
    g_c(x) = ⟨h/‖h‖, w_c/(‖w_c‖ + γ)⟩,   h = model.forward_features(x),  γ = 1/32,
at scale 1 (the authors' training config), so ``model(x)`` returns these scale-1 cosine logits and the
head is saved with the model in every checkpoint. Weights start U(−1/√d, 1/√d) as in the authors' code.

Training loss, with z = g(x_adv) and z_nat = g(x) (both forwards in train mode, both carry gradients):
    m_c  = m + τ_m·log(n_c / n_min) / s                         (margin, paper Eq. (8))
    u    = s·(z − m_y·e_y) + τ_b·log π,   π_c = n_c / N          (margin on the true class only; bias Eq. (10))
    L    = CE(u, y) + β·(1/B)·Σ_i KL(softmax z_nat,i ‖ softmax z_i)  (Eq. (9) plus the TRADES regularizer)
with s = 10, m = 0.1, β = 6 and no clean CE term (the authors' beta_nat = 0). The author states
(issue wutong16/Adversarial_Long-Tail#1) that MultiMarginLoss implements Eq. (9) with the margin of
Eq. (8) and the bias of Eq. (10), the bias using n_c/N. Note the margin GROWS with class frequency
(zero extra margin for the rarest class), the opposite direction from LDAM; we follow the code.
    RoBal-N: τ_b = 1.2, τ_m = 0.    RoBal-R: τ_b = 1.5, τ_m = 0.3.

Inner attack. The config's training attack (``ctx.attack``, model in eval mode) on plain cross-entropy of
``model(x)``, i.e. the scale-1 cosine logits: no margin, no bias, no post-hoc term (the authors'
adv_loss_opt is None). Under the common protocol that is the project's PGD-10 at ε/4 from x + 0.001·N(0, 1);
the ``paper`` preset gives the authors' attack (5 steps, x + ε·U[0, 1) one-sided start).

Inference (``logits``), the attacked model at evaluation:
    RoBal-N: 10·g(x) − 0.1·log π   (the authors' PostProc eval config: same weights, scale 10, post-hoc bias)
    RoBal-R: g(x)                  (its eval config is its training config: scale 1, no post-hoc term)
Attack-scale caveat (the authors' README and the fact sheet): a logit scale changes PGD's cross-entropy
gradients without changing predictions, and a scale mismatch between training and attack can produce
fake PGD robustness. RoBal-R is evaluated at scale 1 as the authors did; ``eval_scale`` changes it
(predictions unchanged, attacks not). Report AutoAttack or margin-based attacks beside PGD.

State. The class counts (hence π and the margins) come from ``ctx.class_counts`` (the subset actually
trained on) in ``on_epoch_start`` or the first ``loss`` call, and travel in ``state_dict`` (a list of
ints) so a resumed or reloaded run evaluates identically. ``logits`` before the counts are known raises
when the post-hoc term needs them (RoBal-N); RoBal-R's inference does not use them.

Choices and deviations from the authors' code:
  * Head bias: none (``bias`` is None, as nn.Linear(bias=False)); the authors' bias is a frozen zero
    parameter, the same function. Their unused moving average of normalized features (μ = 0.9) is not kept.
  * Feature normalization uses F.normalize (‖h‖ clamped below at 1e-12): identical to h/‖h‖ whenever
    ‖h‖ > 1e-12, and finite instead of NaN for an all-zero feature vector (possible with ReLU features).
  * The margin and bias are applied out of place (the authors' MultiMarginLoss scales and shifts its
    input tensor in place).
  * KL: we use log-softmax for both distributions (``losses.kl_per_example``); the authors take
    log(softmax(z_adv) + 1e-12) for the adversarial side. Scale-1 cosine logits lie in (−1, 1), so every
    probability is ≥ e^(−2)/C and the 1e-12 moves each log q by at most 1e-12·C·e² (< 1e-9 for C ≤ 100):
    immaterial.
  * Forwards: the authors run x_adv through the model twice in train mode (once for the margin loss,
    once for the KL); outputs are identical, only BatchNorm running statistics get one more update. We
    forward x_adv once, then x.
  * ``paper`` preset ε: 8/255 with step ε/4 = 2/255 (the benchmark's threat model, so cells stay
    comparable across methods); the authors' configs write 0.031 and 0.0078, the same numbers rounded.
    Their one-sided start is not clamped to [0, 1] before the first gradient step; ours
    (attacks.pgd.random_start) is.
  * ``paper`` preset schedule: lr 0.1, ×0.1 at the authors' (1-based) epochs 60 and 75, i.e. our 0-based
    milestones [59, 74]. The released ``adjust_learning_rate`` multiplies the optimizer's CURRENT lr by
    the cumulative decay every epoch, so the code as released compounds (×0.1 per epoch from epoch 60,
    ×0.01 per epoch from 75: lr ≈ 0 after epoch ~62). We implement the stated step schedule.
    Augmentation: crop_flip (their RandomCrop(32, 4) + flip); the seed (theirs: 1) is the grid's.
    The authors evaluate the last epoch (epoch80.pt), as the benchmark does.

Observed here (not in the paper): the cosine head passes gradients of size ~s/‖h‖ into the backbone. On
the CPU ``quick`` profile (small_cnn without BatchNorm, lr 0.1, momentum 0.9) the feature norm blows up
within the first ~10 steps and the net collapses to one predicted class; at lr 0.02 it trains (about 84%
clean test accuracy after 4 epochs on MNIST-5k IR 10 with a 3-step training attack). WRN-34-10, with
BatchNorm before its pooled features, is what the authors train at lr 0.1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UsageError

from .base import LossOut, Method, register_method
from .losses import kl_per_example, one_hot


class CosineClassifier(nn.Module):
    """Scale-invariant cosine head: scale·⟨h/‖h‖, w_c/(‖w_c‖ + γ)⟩, no bias (RoBal's CosPlus at bias=False)."""

    def __init__(self, in_features: int, out_features: int, gamma: float = 1 / 32, scale: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.gamma = float(gamma)
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def normalized_weight(self) -> torch.Tensor:
        return self.weight / (self.weight.norm(dim=1, keepdim=True) + self.gamma)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(h, dim=1, eps=1e-12) @ self.normalized_weight().t()
        return cos if self.scale == 1.0 else self.scale * cos

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gamma={self.gamma}, scale={self.scale}"


PAPER_PRESET = {
    "model": "wrn34_10",
    "batch_size": 64,
    "epochs": 80,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 2e-4,
    "milestones": [59, 74],  # the authors' 1-based epochs 60 and 75 (see the module docstring)
    "lr_gamma": 0.1,
    "schedule_unit": "epoch",
    "augment": "crop_flip",  # RandomCrop(32, padding 4) + horizontal flip, as the authors' loader
    "eps": "8/255",
    "train_attack": {"kind": "pgd", "steps": 5, "step_size": "eps/4", "start": "uniform_one_sided"},
}


class RoBal(Method):
    """Shared RoBal machinery; the variants differ only in their hyperparameters."""

    code = "wutong16/Adversarial_Long-Tail"
    graph_safe = True  # class terms built from the counts once, then cached on the device
    presets = {"common": {}, "paper": PAPER_PRESET}

    def __init__(self, **hparams):
        super().__init__(**hparams)
        h = self.hparams
        if not h["scale"] > 0 or not h["eval_scale"] > 0:
            raise UsageError(f"{self.name}: scale and eval_scale must be positive; got {h['scale']}, {h['eval_scale']}")
        if not h["gamma"] >= 0:
            raise UsageError(f"{self.name}: gamma must be >= 0; got {h['gamma']}")
        self._counts: list[int] | None = None
        self._cache: dict = {}

    # --- class counts (method state) ------------------------------------------------------------------

    def set_class_counts(self, counts) -> None:
        values = [int(round(float(c))) for c in (counts.tolist() if torch.is_tensor(counts) else counts)]
        if not values or min(values) < 1:
            raise UsageError(f"{self.name}: every class needs at least one training example (log π, log n_c/n_min); "
                             f"got class counts {values}")
        if values != self._counts:
            self._counts = values
            self._cache = {}

    @property
    def class_counts(self) -> list[int] | None:
        return None if self._counts is None else list(self._counts)

    def _class_terms(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π, m) as fp32 tensors on ``device``: m_c = m + τ_m·log(n_c/n_min)/s."""
        if self._counts is None:
            raise RuntimeError(f"{self.name}: class counts are unknown; they are set from the training context "
                               "(on_epoch_start or the first loss call) or restored by load_state_dict")
        key = str(device)
        if key not in self._cache:
            n = torch.tensor(self._counts, dtype=torch.float64)
            log_prior = torch.log(n / n.sum())
            h = self.hparams
            margin = h["margin"] + h["tau_m"] * torch.log(n / n.min()) / h["scale"]
            self._cache[key] = (log_prior.float().to(device), margin.float().to(device))
        return self._cache[key]

    # --- Method interface -----------------------------------------------------------------------------

    def wrap_model(self, model: nn.Module) -> nn.Module:
        old = model.classifier
        weight = getattr(old, "weight", None)
        model.classifier = CosineClassifier(
            int(getattr(old, "in_features", model.feature_dim)), int(old.out_features), gamma=self.hparams["gamma"],
            scale=1.0, device=None if weight is None else weight.device, dtype=None if weight is None else weight.dtype)
        return model

    def on_epoch_start(self, ctx) -> None:
        self.set_class_counts(ctx.class_counts)

    def margin_bias_logits(self, cos_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """s·(z − m_y·e_y) + τ_b·log π, computed out of place (the input tensor is left as it is)."""
        log_prior, margin = self._class_terms(cos_logits.device)
        z = cos_logits.float()
        shifted = z - one_hot(y, z.shape[1], z.dtype) * margin[y].unsqueeze(1)
        return self.hparams["scale"] * shifted + self.hparams["tau_b"] * log_prior

    def loss(self, model, x, y, ctx) -> LossOut:
        if self._counts is None:
            self.set_class_counts(ctx.class_counts)
        x_adv = self.adversarial(model, x, y, ctx)
        adv_cos = model(x_adv)
        nat_cos = model(x)
        adv_ce = F.cross_entropy(self.margin_bias_logits(adv_cos, y), y)
        kl = kl_per_example(nat_cos, adv_cos).mean()
        loss = adv_ce + self.hparams["kl_beta"] * kl
        return LossOut(loss, adv_cos, {"adv_ce": adv_ce.detach(), "kl": kl.detach()})

    def logits(self, model, x) -> torch.Tensor:
        cos = model(x)
        h = self.hparams
        out = cos if h["eval_scale"] == 1 else h["eval_scale"] * cos
        if h["tau_post"]:
            log_prior, _ = self._class_terms(cos.device)
            out = out - h["tau_post"] * log_prior.to(out.dtype)
        return out

    def state_dict(self) -> dict:
        return {"class_counts": self.class_counts}

    def load_state_dict(self, state: dict) -> None:
        counts = state.get("class_counts")
        if counts is None:
            self._counts, self._cache = None, {}
        else:
            self.set_class_counts(counts)


_COMMON = {"scale": 10.0, "margin": 0.1, "kl_beta": 6.0, "gamma": 0.03125}


@register_method("robal_n")
class RoBalN(RoBal):
    summary = ("cosine head; CE(x_adv) with class-aware bias 1.2·log π at scale 10 + 6·TRADES KL; "
               "inference 10·cos − 0.1·log π")
    paper = "Wu, Liu, Huang, Wang, Lin, CVPR 2021, arXiv 2104.02703, Eqs. (8)-(10), RoBal-N"
    defaults = {**_COMMON, "tau_b": 1.2, "tau_m": 0.0, "tau_post": 0.1, "eval_scale": 10.0}


@register_method("robal_r")
class RoBalR(RoBal):
    summary = ("cosine head; CE(x_adv) with frequency-growing margin (τ_m 0.3) and bias 1.5·log π at scale 10 "
               "+ 6·TRADES KL; inference scale-1 cosine")
    paper = "Wu, Liu, Huang, Wang, Lin, CVPR 2021, arXiv 2104.02703, Eqs. (8)-(10), RoBal-R"
    defaults = {**_COMMON, "tau_b": 1.5, "tau_m": 0.3, "tau_post": 0.0, "eval_scale": 1.0}
