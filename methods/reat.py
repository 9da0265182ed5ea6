"""REAT: Re-balancing Adversarial Training (Guanlin Li, Guowen Xu, Tianwei Zhang, arXiv 2307.10205; v1
"Adversarial Training Over Long-Tailed Distribution", v2 "Alleviating the Effect of Data Imbalance on
Adversarial Training"). Checked against the authors' code, GuanlinLee/REAT (``loss_functions.py``: BSL,
RBL, REAT; ``train.py``). The paper's full text was not readable offline, so the formulas below are the
code's, written out, not cited by equation number.

Two parts: RBL, a class-weighted inner maximization, and TAIL, a feature term added to the outer loss.

REAT as released equals AT-BSL plus its tail term. RBL weights each example's cross-entropy by a
positive factor w_{y_i}/Σ_j w_{y_j}, which scales that example's input gradient without changing its
sign, so a sign-gradient attack (PGD, FGSM) lands on the same x_adv as with plain CE (see the note
under Choices). The training examples are therefore AT-BSL's (plain-CE PGD; the authors start from
x + U[−ε, ε], AT-BSL from x + 0.001·N(0, 1)), the outer loss is AT-BSL's BSL, and what REAT adds is TAIL.

Inner maximization (RBL). With n_c the training count of class c and k_c the number of adversarial
examples PREDICTED as class c during the previous epoch (k_c = n_c in the first epoch):

    β_c = (n_c − 1)/n_c,   E_c = (1 − β_c^k_c)/(1 − β_c),   w_c = 1/(E_c + 1e-5),   w ← C·w/Σ_c w_c
    x_adv = PGD on Σ_i w_{y_i}·CE(f(x'_i), y_i) / Σ_i w_{y_i}     (PyTorch's weight= mean)

The attack's ε, start, steps and step size are the run's training attack (``ctx.attack``; common
protocol: PGD-10, step ε/4, start x + 0.001·N(0, 1), model in eval mode); only the objective changes.

Outer loss, model in train mode, on x_adv only (one forward: h = model.forward_features(x_adv),
z = model.classifier(h)):

    L    = BSL + TAIL,   BSL = CE(z + log n, y)                      (as ``at_bsl``)
    u_c  = sqrt(1/π_c),  π_c = n_c/Σn;  s_ij = −1 if y_j = y_i else +1;  W_ij = u_{y_i} + u_{y_j}
    p_i  = softmax(h_i) over the FEATURE dimensions (detached: the target), log q_j = log_softmax(h_j)
    KL_ijd = p_id·(log p_id − log q_jd);  A = the batch's examples of a tail class (|A| anchors)
    "mean" (default):  TAIL = 1/(|A|·B) Σ_{i∈A} K_i Σ_j s_ij W_ij,   K_i = 1/(B·D) Σ_j Σ_d KL_ijd
    "per_pair":        TAIL = 1/(|A|·B) Σ_{i∈A} Σ_j s_ij W_ij Σ_d KL_ijd
    TAIL = 0 when the batch holds no tail example.

Choices, and where they differ from the authors' code:
  * ``tail_reduction``: the authors write ``nn.KLDivLoss(size_average='none')``; that legacy argument is
    truthy, so PyTorch resolves it to reduction 'mean': each anchor's KL is averaged over all (j, d) to
    one scalar K_i BEFORE the per-pair sign and weight, which then only scale it by mean_j s_ij W_ij. The
    default "mean" is that code (the numbers it produced). "per_pair" is the structure the code appears
    to intend (KL summed over feature dims per pair, then signed and weighted per pair); it is about D
    times larger than "mean" and behaves differently. Both are vectorized: the authors' per-anchor
    Python loop builds B-long tensors per anchor; here K_i = (Σ_d p_id log p_id − p_i·mean_j log q_j)/D
    (exactly the same number) and the per-pair matrix is Σ_d p_id log p_id − p_i·log q_j, all B×B at once.
  * ``tail_classes``: "rank" (default): the tail is the C − 2⌊C/3⌋ − 1 classes with the fewest training
    examples (ties: the higher class index counts as rarer). "index": the authors' rule, classes
    c ≥ 2⌊C/3⌋ + 1 (C = 10: 7, 8, 9), which assumes the classes are sorted head to tail. The two agree
    whenever counts do not increase with the class index, as in CIFAR-LT and the benchmark's own
    long-tailed subsets; rank is the default because it is what the rule means on naturally imbalanced
    data, where the index order says nothing.
  * ``min_predicted``: a class no adversarial example was predicted as in an epoch has k_c = 0, so
    E_c = 0 and its weight is 1/1e-5 = 1e5 before normalization (all other weights → ~0). We clamp k_c
    below at ``min_predicted`` = 1, giving such a class the weight of a class predicted once (E_c = 1,
    the largest finite weight the formula gives); ``min_predicted: 0`` reproduces the authors' code.
  * E_c is computed as −n_c·expm1(k_c·log1p(−1/n_c)): the same number without the cancellation of 1 − β_c
    in float32 (relative error ~1e-7 here; the authors' numpy float32 formula is off by ~5e-5 at n_c = 5000).
  * Counting, as the authors: argmax of the train-mode outer logits of x_adv, by PREDICTED class, one
    count per training example. The counts accumulate on the device (``index_add_``, no host sync per
    step), roll over in ``on_epoch_end``, and both the finished and the running epoch's counts are in
    ``state_dict`` (lists of ints), so a resumed run uses the same weights.
  * Note (a property of the code, checked by a test, not a choice): in eval mode example i's input
    gradient is the positive factor w_{y_i}/Σ_j w_{y_j} times its own CE gradient, so a sign-gradient
    attack (PGD, FGSM) reaches the same x_adv as with plain CE, up to gradient entries that round to
    zero (measured: not one pixel differs on a test batch, even at the authors' 3.6e7:1 weight ratio).
    So as coded, RBL does not change the training examples, and the authors' numbers come from BSL +
    TAIL on plain-CE PGD examples. We keep RBL as written: it is their method, and an attack that is
    not sign-based would feel it.
  * BSL comes from ``losses`` (as in ``at_bsl``; τ = 1, fp32): a class with no training example is a
    UsageError rather than the authors' silent clamp of its count to 1 (our long-tailed subsets never hold one).
  * The authors' PGD starts from x + U[−ε, ε] without clamping to [0, 1] before the first step; ours
    (``attacks.random_start``) clamps. Their extra clean eval-mode forward per step is for logging only
    and is left out. BSL and TAIL are computed in fp32 from the (under bf16 autocast, bf16) logits and
    features.
  * Only the attack's objective needs a custom loss: a training attack of kind ``torchattacks_pgd``,
    which cannot take one, is refused with a UsageError.

Preset ``paper`` (train.py defaults): 80 epochs, batch 128 with the last partial batch kept (their
build_loader.py passes drop_last=False to the DataLoader, with mmcv's collate), SGD lr 0.1,
momentum 0.9, weight decay 5e-4, MultiStepLR milestones [60, 75] ×0.1 stepped after each (0-based)
epoch, which are our 0-based milestones unchanged (lr 0.01 from 0-based epoch 60), RandomCrop + flip,
training PGD-10 at step ε/4 (2/255 at their ε = 8/255) from x + U[−ε, ε]. The profile's ε and model
are kept (as ``at_bsl.paper``); the authors train ResNet-18 by default (WRN-34-10 with --arch wrn)
at ε = 8/255, on CIFAR-10-LT at imbalance ratio 50, and pick the epoch of best PGD-20 test
robustness, which the benchmark does not (it evaluates the last epoch). Their ``--beta 6.0`` is parsed
and never used.

Observed here (not in the paper): on the quick CPU profile (small_cnn, D = 100 features, 2 epochs) the
default TAIL term averaged 0.006-0.011 per epoch against a BSL of 1.5-2.0: with the authors' reduction,
TAIL is a small correction to AT-BSL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks import fgsm, pgd
from benchmark.errors import UsageError

from .base import LossOut, Method, register_method
from .losses import at_least_fp32, balanced_softmax_loss, log_prior

TAIL_RULES = ("rank", "index")
TAIL_REDUCTIONS = ("mean", "per_pair")


def effective_number_weights(class_counts: torch.Tensor, predicted: torch.Tensor,
                             min_predicted: float = 1.0) -> torch.Tensor:
    """RBL class weights w_c = 1/(E_c + 1e-5), E_c = (1 − β_c^k_c)/(1 − β_c), β_c = (n_c − 1)/n_c,
    normalized to sum C; k_c = ``predicted`` clamped below at ``min_predicted``."""
    n = class_counts.float()
    k = predicted.float().clamp_min(float(min_predicted))
    effective = torch.where(k > 0, -n * torch.expm1(k * torch.log1p(-1.0 / n)), torch.zeros_like(n))
    weights = 1.0 / (effective + 1e-5)
    return weights * (len(weights) / weights.sum())


def tail_mask(class_counts: torch.Tensor, rule: str = "rank") -> torch.Tensor:
    """Boolean [C]: the tail classes, the last C − 2⌊C/3⌋ − 1 by count rank or by class index."""
    num_classes = len(class_counts)
    first = num_classes // 3 * 2 + 1
    mask = torch.zeros(num_classes, dtype=torch.bool, device=class_counts.device)
    if rule == "index":
        mask[first:] = True
    else:  # head to tail; the stable sort puts the lower index first among equal counts
        order = torch.sort(class_counts.float(), descending=True, stable=True).indices
        mask[order[first:]] = True
    return mask


def tail_alignment(features: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor,
                   tail: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """REAT's TAIL term on penultimate features (softmax over feature dims), vectorized over anchors and pairs."""
    with torch.autocast(features.device.type, enabled=False):  # fp32 matmuls also inside a bf16 region
        log_q = F.log_softmax(features.float(), dim=1)  # [B, D], carries the gradient
        log_p = log_q.detach()  # the anchor's distribution is the (detached) target
        p = log_p.exp()
        same = y[:, None] == y[None, :]
        signed_weight = torch.where(same, -1.0, 1.0) * (class_weight[y][:, None] + class_weight[y][None, :])  # s·W
        neg_entropy = (p * log_p).sum(1)  # Σ_d p_id log p_id
        if reduction == "mean":  # the authors' code: one scalar KL per anchor, then the pair signs and weights
            k = (neg_entropy - p @ log_q.mean(0)) / features.shape[1]
            per_anchor = k * signed_weight.mean(1)
        else:  # per pair: KL(p_i ‖ q_j) summed over d, signed and weighted per pair
            per_anchor = ((neg_entropy[:, None] - p @ log_q.t()) * signed_weight).mean(1)
        anchors = tail[y]
        return (per_anchor * anchors).sum() / anchors.sum().clamp_min(1)


@register_method("reat")
class REAT(Method):
    summary = ("balanced softmax on PGD examples of an effective-number class-weighted attack, "
               "plus a tail-class feature-alignment term (TAIL); as released = AT-BSL + TAIL (positive "
               "per-example weights leave sign-PGD examples unchanged)")
    paper = "Li, Xu, Zhang, arXiv 2307.10205 (REAT: RBL inner loss, BSL + TAIL outer loss)"
    code = "GuanlinLee/REAT"
    graph_safe = True  # counts and weights on the device, updated in place at the epoch end
    defaults = {"tail_classes": "rank", "tail_reduction": "mean", "min_predicted": 1}
    presets = {
        "common": {},
        "paper": {
            "epochs": 80,
            "batch_size": 128,
            "drop_last": False,  # build_loader.py: DataLoader(..., drop_last=False)
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "milestones": [60, 75],  # 0-based, as the authors' MultiStepLR stepped after each epoch
            "lr_gamma": 0.1,
            "schedule_unit": "epoch",
            "augment": "crop_flip",
            "train_attack": {"kind": "pgd", "steps": 10, "step_size": "eps/4", "start": "uniform"},
        },
    }

    def __init__(self, **hparams):
        super().__init__(**hparams)
        h = self.hparams
        if h["tail_classes"] not in TAIL_RULES:
            raise UsageError(f"reat: tail_classes must be one of {', '.join(TAIL_RULES)}; got {h['tail_classes']!r}")
        if h["tail_reduction"] not in TAIL_REDUCTIONS:
            raise UsageError(f"reat: tail_reduction must be one of {', '.join(TAIL_REDUCTIONS)}; "
                             f"got {h['tail_reduction']!r}")
        if isinstance(h["min_predicted"], bool) or not isinstance(h["min_predicted"], (int, float)) \
                or not h["min_predicted"] >= 0:
            raise UsageError(f"reat: min_predicted must be a number >= 0; got {h['min_predicted']!r}")
        self._previous: torch.Tensor | None = None  # k_c: predictions per class in the last finished epoch
        self._running: torch.Tensor | None = None  # the same, accumulating over the current epoch
        self._constants: tuple | None = None  # (class_counts, log n, u, tail mask)
        self._weights: tuple | None = None  # (class_counts, RBL weights) for the current k

    def class_constants(self, class_counts: torch.Tensor):
        """log n, u_c = sqrt(1/π_c) and the tail mask, once per counts tensor (the check syncs with the host)."""
        if self._constants is None or self._constants[0] is not class_counts:
            log_n = log_prior(class_counts).to(class_counts.device)  # UsageError for an empty class
            counts = class_counts.float()
            u = (counts.sum() / counts).sqrt()
            self._constants = (class_counts, log_n, u, tail_mask(class_counts, self.hparams["tail_classes"]))
        return self._constants[1:]

    def rbl_weights(self, class_counts: torch.Tensor) -> torch.Tensor:
        """w_c for this epoch: k_c from the last finished epoch, n_c before any epoch has finished."""
        if self._weights is None or self._weights[0] is not class_counts:
            predicted = class_counts if self._previous is None else self._previous.to(class_counts.device)
            self._weights = (class_counts,
                             effective_number_weights(class_counts, predicted, self.hparams["min_predicted"]))
        return self._weights[1]

    def adversarial(self, model, x, y, ctx) -> torch.Tensor:
        """The training attack of ``ctx.attack`` on RBL, the class-weighted mean cross-entropy."""
        weight = self.rbl_weights(ctx.class_counts).to(x.device)

        def rbl(logits, target):
            logits = at_least_fp32(logits)
            return F.cross_entropy(logits, target, weight=weight.to(logits.dtype))

        spec = ctx.attack
        if spec.kind == "pgd":
            return pgd(model, x, y, spec.eps, spec.steps, spec.step_size, start=spec.start, loss_fn=rbl)
        if spec.kind == "fgsm":
            return fgsm(model, x, y, spec.eps, loss_fn=rbl)
        raise UsageError(f"reat: the RBL attack needs the built-in pgd or fgsm (got {spec.kind!r}, "
                         "which cannot take a class-weighted loss)")

    def loss(self, model, x, y, ctx) -> LossOut:
        log_n, u, tail = self.class_constants(ctx.class_counts)
        x_adv = self.adversarial(model, x, y, ctx)
        features = model.forward_features(x_adv)
        logits = model.classifier(features)
        bsl = balanced_softmax_loss(logits, y, log_n)
        tail_term = tail_alignment(features, y, u.to(y.device), tail.to(y.device), self.hparams["tail_reduction"])
        self._count_predictions(logits.detach().argmax(1), len(ctx.class_counts))
        return LossOut(bsl + tail_term, logits, {"bsl": bsl.detach(), "tail": tail_term.detach()})

    def _count_predictions(self, predicted: torch.Tensor, num_classes: int) -> None:
        if self._running is None:
            self._running = torch.zeros(num_classes, dtype=torch.long, device=predicted.device)
        elif self._running.device != predicted.device:
            self._running = self._running.to(predicted.device)
        self._running.index_add_(0, predicted, torch.ones_like(predicted))

    def on_epoch_end(self, ctx) -> None:
        """This epoch's prediction counts become next epoch's k_c. In place, as are the weights they give: a
        captured step (benchmark/cuda_graph.py) keeps reading the tensors it was recorded with."""
        if self._running is None:
            return
        if self._previous is None or self._previous.device != self._running.device:
            self._previous = self._running.clone()
        else:
            self._previous.copy_(self._running)
        self._running.zero_()
        if self._weights is not None:
            counts, weights = self._weights
            weights.copy_(effective_number_weights(counts, self._previous.to(counts.device),
                                                   self.hparams["min_predicted"]))

    def state_dict(self) -> dict:
        def as_list(t):
            return None if t is None else [int(v) for v in t.tolist()]

        return {"predicted_last_epoch": as_list(self._previous), "predicted_this_epoch": as_list(self._running)}

    def load_state_dict(self, state: dict) -> None:
        def as_tensor(values):
            return None if values is None else torch.tensor(values, dtype=torch.long)

        self._previous = as_tensor(state.get("predicted_last_epoch"))
        self._running = as_tensor(state.get("predicted_this_epoch"))
        self._weights = None
