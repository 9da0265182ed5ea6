"""LAS-AT: Jia, Zhang, Wu, Wang, Cao, Wei, Cao, "LAS-AT: Adversarial Training with Learnable Attack Strategy",
CVPR 2022 (oral), arXiv 2203.06616. The LAS-PGD-AT variant, checked against the authors' code
(jiaxiaojunQAQ/LAS-AT, ``LAS_PGD_AT/LAS_AT_train_cifar10.py``, ``LAS_AT_train_cifar100.py``, ``StrategyNet.py``).

A strategy network P picks, per training example, the attack that generates its adversarial example; the
target model f is trained on those examples and P is trained by REINFORCE to pick attacks whose examples
are strong now (R1) and make f better after training on them (R2, R3).

Strategy network P (lives inside the method). A backbone from the model registry (``policy_model``,
default "resnet18" as the authors; "small_cnn" for the CPU profile, 1x28x28 or 3x32x32 inputs, its
``input_size`` taken from the batch) whose own classifier is replaced by the identity, and one linear
head per attack parameter on its pooled features: ε index, step-count index, step-size index. Input:
the clean batch. Per example i and head h, π_h(·|x_i) = softmax(head_h(features(x_i))), and an action
a_ih ~ π_h(·|x_i) is SAMPLED (not argmax), both when training f and when updating P.
The authors' fourth head, the attack type, has the single option IFGSM: its softmax is 1, log π ≡ 0,
so it adds nothing to the policy loss or its gradient. It is omitted (no unused 513-parameter head).

Action spaces, with ε the profile's ε (``ctx.attack.eps``) and the authors' choices in units of 1/255
at their ε = 8/255, rescaled so that the same choices mean the same multiples of ε:
    ε_i = k·ε/8,  k ∈ eps_choices       = {3, ..., 15}   (authors: {3..15}/255)
    α_i = k·ε/8,  k ∈ step_size_choices = {1, ..., 5}    (authors: {1..5}/255)
    K_i = k,      k ∈ steps_choices     = {3, ..., 14}   (unscaled)
(the README commands of LAS-PGD-AT on CIFAR-10; the argparse defaults are narrower, range(3, 15) etc.).
NOTE: LAS-AT TRAINS WITH PERTURBATIONS LARGER THAN THE EVALUATION ε, as its authors do: ε_i reaches
15/8·ε (15/255 at ε = 8/255; 0.1875 at the quick profile's 0.1) while evaluation attacks use ε.

Training attack (authors' Attack_policy_batch), target f in eval mode, parameters frozen:
    δ⁰ ~ U[−ε, ε] (the authors' fixed 8/255, scaled), then x + δ⁰ clipped to [0, 1];
    for t = 0 .. max_i K_i − 1:
        g = sign ∇_δ Σ_i CE(f(x_i + δ_i), y_i)
        δ_i ← clip(δ_i + 1[t < K_i]·α_i·g_i, −ε_i, ε_i),  then x_i + δ_i clipped to [0, 1]
An example whose K_i is exhausted stops moving (its δ is already inside both sets, so the projection
leaves it alone). δ⁰ is not projected to the ε_i-ball before the first step (as the authors'): every
K_i ≥ 1, so every returned δ_i lies in [−ε_i, ε_i]. The authors differentiate the batch-MEAN CE; we use
the sum, whose per-example gradient has the same sign (the step is sign-only), so the iterates agree.
The run's training-attack spec is read for ε only (its kind, steps, step size and start are not used).

Target loss, f in train mode (authors' LabelSmoothLoss), C classes, smoothing factor s:
    t_ic = s if c = y_i else (1 − s)/(C − 1);   L_T = −(1/B) Σ_i Σ_c t_ic · log softmax(f(x_adv_i))_c
s = ``label_smoothing``; None = the authors' rule: 0.7 for C ≤ 10 (their CIFAR-10 script), 0.6 above
(their CIFAR-100 script). Label smoothing is part of the method: a PGD-AT baseline without it is not an
ablation of the strategy network alone.

Strategy update (authors' train loop, every interval_num = 20 target iterations, on that iteration's
batch): at every 0-based global step with (ctx.step + 1) % policy_interval == 0 (the authors' 1-based
counter divisible by 20), before the target's own step:
    1. P in train mode; sample actions a_i for the batch; x_adv = attack(f, x, y; a).
    2. R1 = clamp((1/B) Σ_i CE(f(x_adv_i), y_i), 0, 10)            (f in eval mode, no gradient)
    3. f' = a deep COPY of f after one SGD step (lr = the loop's current lr, momentum 0.9 with a fresh
       buffer, weight decay 5e-4) on L_T(f'(x_adv)) in train mode. With a fresh buffer the first SGD step
       is θ' = θ − lr·(∇L_T + 5e-4·θ): the momentum has no effect, kept only to mirror the authors.
    4. R2 = clamp(4 · robust accuracy of f' on (x, y), −10, 10): PGD-10, ε, step ε/4 (authors 2/255),
       2 restarts from U[−ε, ε] (clipped to [0, 1]); within a restart only the examples f' still
       classifies correctly move (the authors' early stop); per example the restart with the larger CE
       is kept (ties: the later); accuracy of f' on that point. R3 = clamp(2 · clean accuracy of f', −10, 10).
    5. R = R1 + R2 + R3 (the authors' a = b = c = 1), a scalar for the batch, no baseline;
       L_P = −Σ_h (1/B) Σ_i log π_h(a_ih | x_i) · R;   ‖∇L_P‖ clipped to 1.0 (global norm);
       one step of SGD(lr 1e-4, no momentum, no weight decay) on P.
Then, at every step, the target's batch: P in eval mode, actions sampled from it (after the update on
update steps, so those steps attack twice, as the authors' loop does), x_adv = attack(f, x, y; a), and
L_T(f(x_adv)) is returned to the loop. f' is a separate module: f's parameters, gradients and BatchNorm
buffers are never touched by the update (f runs in eval mode for every attack and for R1).

Cost (per target step): one forward of P, up to max K_i = 14 forward+backward passes of f, one f forward
and backward; every 20 steps also a P forward+backward, a second attack, a deep copy of f with one SGD
step, and 2 × 10 PGD steps plus 2 forwards on the copy. The parameter count of P is in
``extra_parameters`` (0 until P is built at the first batch or by ``load_state_dict``) and in the
``policy_params`` stat.

Lookahead lr. The copy's SGD step needs the loop's current lr; ``TrainContext`` has no lr field, so it
is read as ``ctx.lr`` when the context carries it (benchmark/train.py sets ``ctx.lr`` before every
step), else from the hyperparameter ``lookahead_lr_fallback`` (0.1, the authors' initial lr). The value
used is recorded in the ``lookahead_lr`` stat.

Stats (tensors, epoch means in log.jsonl): eps_ratio = mean ε_i/ε, step_size_ratio = mean α_i/ε,
attack_steps = mean K_i of the target's batch; after the first update the latest reward, r1, r2, r3,
policy_loss and lookahead_lr (held between updates, so their epoch means are means over steps of the
latest values; the loop divides by every example of the epoch, so in the epoch of the first update they
are diluted by the steps before it); policy_params (constant).

State (``state_dict``, in every checkpoint): P's weights and buffers, P's optimizer, the number of
updates done, the input shape P was built for, the latest rewards. The loop restores ctx.step (which
schedules the updates) and the global RNG (which draws δ⁰ and the actions), so a resumed run continues
identically. P's initial weights come from the global RNG at the first batch.

Choices and deviations from the authors' code:
  * Attack-type head omitted (see above); ε and α choices rescaled with the profile ε (above).
  * The copy's reward attack runs the copy in EVAL mode, as every attack in this benchmark does. In the
    authors' code the copy is left in train mode during its PGD (BatchNorm on batch statistics, and
    its running statistics updated by 20 more forward passes); it is switched to eval mode only to
    score R2 and R3. Identical for networks without BatchNorm (the quick profile's small_cnn).
  * The authors' policy lr scheduler (MultiStepLR with the target's milestones counted in target
    iterations, but stepped once per policy update) never reaches a milestone within 110 epochs, so
    the policy lr is constant; we keep it constant and have no scheduler.
  * Attack objective summed rather than averaged over the batch (same sign, see above).
  * Nothing in LAS-AT is class-aware under long-tailed data; we add nothing.
  * The authors keep the checkpoint with the best PGD-10 test accuracy; the benchmark evaluates the
    last epoch.

Preset ``paper`` (CIFAR-10 LAS-PGD-AT): WRN-34-10, batch 128, no drop_last (their DataLoader default),
SGD lr 0.1 momentum 0.9 weight decay 5e-4, 110 epochs, lr ×0.1 at iterations 99/110 and 104/110 of the
total (MultiStepLR stepped per iteration), RandomCrop(32, 4) + flip, ε 8/255, policy ResNet-18.
Their seed is 0; here it is the grid's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

from attacks import eval_mode, frozen_parameters
from benchmark.errors import UsageError
from benchmark.models import create_model

from .base import LossOut, Method, register_method

HEADS = ("epsilon", "steps", "step_size")  # the authors' order after their attack-type head


def default_smoothing(num_classes: int) -> float:
    """The authors' label-smoothing factor: 0.7 in their CIFAR-10 script, 0.6 in their CIFAR-100 one."""
    return 0.7 if num_classes <= 10 else 0.6


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
    """−(1/B) Σ_i Σ_c t_ic log softmax(z_i)_c with t_ic = factor on y_i and (1 − factor)/(C − 1) elsewhere."""
    logits = logits.float()
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise UsageError("las_at: label smoothing needs at least 2 classes")
    off = (1.0 - factor) / (num_classes - 1)
    target = torch.full_like(logits, off)
    target.scatter_(1, y.view(-1, 1), factor)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def policy_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor,
                  steps: torch.Tensor, init_eps: float) -> torch.Tensor:
    """Per-example I-FGSM (the authors' Attack_policy_batch): start x + U[−init_eps, init_eps] in [0, 1], then
    max K_i signed steps on the summed CE, example i moving by α_i only while t < K_i, δ_i kept in
    [−ε_i, ε_i] and x + δ in [0, 1]. ``eps``, ``alpha``: [B] floats; ``steps``: [B] ints. Model in eval mode."""
    x = x.detach().float()
    view = (-1,) + (1,) * (x.dim() - 1)
    eps_b, alpha_b = eps.to(x).view(view), alpha.to(x).view(view)
    steps = steps.to(x.device)
    delta = (torch.rand_like(x) * 2 - 1) * init_eps
    delta = (x + delta).clamp(0.0, 1.0) - x
    rounds = int(steps.max().item()) if steps.numel() else 0
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        for t in range(rounds):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            active = (steps > t).to(x.dtype).view(view)
            delta = delta.detach() + active * alpha_b * grad.sign()
            delta = torch.max(torch.min(delta, eps_b), -eps_b)
            delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


def early_stop_pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
                            steps: int, restarts: int) -> torch.Tensor:
    """Robust accuracy as the authors' reward computes it (attack_pgd): per restart, start x + U[−ε, ε] in
    [0, 1]; each step moves only the examples still classified correctly (stop when none is); per example
    keep the restart whose final CE is largest (ties: the later); return the accuracy there (a 0-dim tensor).
    Model in eval mode, parameters frozen."""
    x = x.detach().float()
    best_delta = torch.zeros_like(x)
    best_loss = torch.zeros(len(y), device=x.device)
    with eval_mode(model), frozen_parameters(model):
        for _ in range(restarts):
            delta = (torch.rand_like(x) * 2 - 1) * eps
            delta = (x + delta).clamp(0.0, 1.0) - x
            with torch.enable_grad():
                for _ in range(steps):
                    delta.requires_grad_(True)
                    logits = model(x + delta).float()
                    correct = logits.argmax(1) == y
                    if not bool(correct.any()):
                        break
                    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), delta)
                    moving = correct.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
                    delta = delta.detach() + moving * step_size * grad.sign()
                    delta = delta.clamp(-eps, eps)
                    delta = (x + delta).clamp(0.0, 1.0) - x
            delta = delta.detach()
            with torch.no_grad():
                loss = F.cross_entropy(model(x + delta).float(), y, reduction="none")
            better = loss >= best_loss
            best_delta[better] = delta[better]
            best_loss = torch.max(best_loss, loss)
        with torch.no_grad():
            return (model(x + best_delta).argmax(1) == y).float().mean()


def lookahead_copy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, factor: float, lr: float,
                   momentum: float, weight_decay: float) -> nn.Module:
    """A deep copy of ``model`` after one SGD step (fresh momentum buffer) on the smoothed CE of x_adv in
    train mode. The original's parameters, gradients and buffers are untouched."""
    clone = copy.deepcopy(model)
    clone.zero_grad(set_to_none=True)
    clone.train()
    optimizer = torch.optim.SGD(clone.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    with torch.enable_grad():
        loss = smoothed_cross_entropy(clone(x_adv), y, factor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    optimizer.step()
    clone.zero_grad(set_to_none=True)
    return clone.eval()


class StrategyNet(nn.Module):
    """A registry backbone (its classifier replaced by the identity) plus one linear head per attack parameter."""

    def __init__(self, backbone: nn.Module, head_sizes: dict[str, int]):
        super().__init__()
        feature_dim = int(getattr(backbone, "feature_dim"))
        backbone.classifier = nn.Identity()
        self.backbone = backbone
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in head_sizes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.backbone.forward_features(x)
        return {name: head(h).float() for name, head in self.heads.items()}


@dataclass
class Actions:
    """Sampled attack parameters for one batch: choice indices and log π per head, and their values."""

    index: dict[str, torch.Tensor]  # [B] long per head
    log_prob: dict[str, torch.Tensor]  # [B] per head (carries gradients when sampled in train mode)
    eps: torch.Tensor  # [B] absolute ε_i
    step_size: torch.Tensor  # [B] absolute α_i
    steps: torch.Tensor  # [B] long K_i


def _check_choices(name: str, values, integer: bool) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise UsageError(f"las_at: {name} must be a non-empty list of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or (integer and int(v) != v):
            kind = "positive integers" if integer else "positive numbers"
            raise UsageError(f"las_at: {name} must hold {kind}, got {values!r}")
        out.append(int(v) if integer else float(v))
    return out


@register_method("las_at")
class LASAT(Method):
    summary = ("label-smoothed CE(x_adv) (0.7) with per-example ε, step size and step count sampled by a strategy "
               "network trained by REINFORCE (attack strength + lookahead robust/clean accuracy)")
    paper = "Jia et al., CVPR 2022 (oral), arXiv 2203.06616, LAS-PGD-AT (Eqs. for L_T, L_P and R = R1 + R2 + R3)"
    code = "jiaxiaojunQAQ/LAS-AT"
    graph_safe = False
    graph_unsafe_reason = ("per-example attack strategies sampled each step: the number of attack rounds is read "
                           "on the host (.item()), its reward PGD stops early on bool(tensor), and every "
                           "policy_interval steps it updates the policy through a deep copy of the model")
    defaults = {
        "policy_model": "resnet18",
        "policy_model_args": {},
        "eps_choices": list(range(3, 16)),  # × ε/8 (k/255 at ε = 8/255)
        "steps_choices": list(range(3, 15)),
        "step_size_choices": list(range(1, 6)),  # × ε/8
        "label_smoothing": None,  # None: 0.7 if C <= 10 else 0.6
        "policy_interval": 20,
        "policy_lr": 1e-4,
        "policy_grad_clip": 1.0,
        "r1_clip": 10.0,
        "r2_scale": 4.0,
        "r3_scale": 2.0,
        "reward_clip": 10.0,
        "reward_pgd_steps": 10,
        "reward_pgd_restarts": 2,
        "lookahead_momentum": 0.9,
        "lookahead_weight_decay": 5e-4,
        "lookahead_lr_fallback": 0.1,
    }
    presets = {
        "common": {},
        "paper": {
            "model": "wrn34_10",
            "epochs": 110,
            "batch_size": 128,
            "drop_last": False,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "milestones": ["99/110", "104/110"],
            "lr_gamma": 0.1,
            "schedule_unit": "iteration",
            "augment": "crop_flip",
            "eps": "8/255",
            "method_args": {"policy_model": "resnet18"},
        },
    }

    def __init__(self, **hparams):
        super().__init__(**hparams)
        h = self.hparams
        self.eps_choices = _check_choices("eps_choices", h["eps_choices"], integer=False)
        self.steps_choices = _check_choices("steps_choices", h["steps_choices"], integer=True)
        self.step_size_choices = _check_choices("step_size_choices", h["step_size_choices"], integer=False)
        if not isinstance(h["policy_model"], str) or not isinstance(h["policy_model_args"], dict):
            raise UsageError("las_at: policy_model must be a model name and policy_model_args a mapping")
        s = h["label_smoothing"]
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1):
            raise UsageError(f"las_at: label_smoothing must be None or in (0, 1], got {s!r}")
        interval = h["policy_interval"]
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise UsageError(f"las_at: policy_interval must be a positive integer, got {interval!r}")
        for name in ("reward_pgd_steps", "reward_pgd_restarts"):
            if isinstance(h[name], bool) or not isinstance(h[name], int) or h[name] < (1 if "restarts" in name else 0):
                raise UsageError(f"las_at: {name} must be a non-negative integer (restarts >= 1), got {h[name]!r}")
        for name in ("policy_lr", "policy_grad_clip", "lookahead_lr_fallback"):
            if isinstance(h[name], bool) or not isinstance(h[name], (int, float)) or not h[name] > 0:
                raise UsageError(f"las_at: {name} must be a positive number, got {h[name]!r}")
        self.policy: StrategyNet | None = None
        self.policy_optimizer: torch.optim.Optimizer | None = None
        self.input_shape: list[int] | None = None
        self.updates = 0
        self.last: dict[str, float] = {}
        self.extra_parameters = 0
        self._last_tensors: dict[str, torch.Tensor] | None = None

    # --- the strategy network -------------------------------------------------------------------------

    def build_policy(self, input_shape, device=None) -> StrategyNet:
        """Create P for inputs of shape [C, H, W] (and its optimizer); the global RNG draws its weights."""
        channels, height = int(input_shape[0]), int(input_shape[-1])
        name, args = self.hparams["policy_model"], dict(self.hparams["policy_model_args"])
        if name == "small_cnn" and "input_size" not in args:
            args["input_size"] = height
        backbone = create_model(name, 1, channels, **args)
        sizes = {"epsilon": len(self.eps_choices), "steps": len(self.steps_choices),
                 "step_size": len(self.step_size_choices)}
        self.policy = StrategyNet(backbone, sizes).to(device or "cpu")
        self.policy_optimizer = torch.optim.SGD(self.policy.parameters(), lr=self.hparams["policy_lr"])
        self.input_shape = [int(v) for v in input_shape]
        self.extra_parameters = sum(p.numel() for p in self.policy.parameters())
        return self.policy

    def _ensure_policy(self, x: torch.Tensor) -> StrategyNet:
        if self.policy is None:
            self.build_policy(list(x.shape[1:]), x.device)
        elif list(x.shape[1:]) != self.input_shape:
            raise UsageError(f"las_at: the strategy network was built for inputs {self.input_shape}, "
                             f"got {list(x.shape[1:])}")
        else:
            first = next(self.policy.parameters())
            if first.device != x.device:  # e.g. restored on another device: move P, keep its optimizer state
                state = self.policy_optimizer.state_dict()
                self.policy.to(x.device)
                self.policy_optimizer = torch.optim.SGD(self.policy.parameters(), lr=self.hparams["policy_lr"])
                self.policy_optimizer.load_state_dict(state)
        return self.policy

    def sample_actions(self, x: torch.Tensor, eps: float, train: bool) -> Actions:
        """Sample one action per head and example from P(x): train mode with gradients (for the update),
        or eval mode without (for the target's batch)."""
        policy = self._ensure_policy(x)
        policy.train(train)
        with torch.set_grad_enabled(train):
            logits = policy(x.float())
        index, log_prob = {}, {}
        for name in HEADS:
            dist = Categorical(logits=logits[name])
            a = dist.sample()
            index[name], log_prob[name] = a, dist.log_prob(a)
        unit = eps / 8.0
        eps_values = torch.tensor(self.eps_choices, device=x.device, dtype=torch.float32) * unit
        alpha_values = torch.tensor(self.step_size_choices, device=x.device, dtype=torch.float32) * unit
        step_values = torch.tensor(self.steps_choices, device=x.device, dtype=torch.long)
        return Actions(index, log_prob, eps_values[index["epsilon"]], alpha_values[index["step_size"]],
                       step_values[index["steps"]])

    def smoothing(self, num_classes: int) -> float:
        s = self.hparams["label_smoothing"]
        return default_smoothing(num_classes) if s is None else float(s)

    def attack(self, model, x, y, actions: Actions, ctx) -> torch.Tensor:
        return policy_attack(model, x, y, actions.eps, actions.step_size, actions.steps, init_eps=ctx.attack.eps)

    # --- the strategy update (REINFORCE) --------------------------------------------------------------

    def reward(self, model, x, y, x_adv, ctx) -> dict[str, torch.Tensor]:
        """R = R1 + R2 + R3 for the batch (0-dim tensors; see the module docstring)."""
        h = self.hparams
        with eval_mode(model), torch.no_grad():
            r1 = F.cross_entropy(model(x_adv).float(), y).clamp(0.0, h["r1_clip"])
        lr = getattr(ctx, "lr", None)
        lr = float(h["lookahead_lr_fallback"] if lr is None else lr)
        clone = lookahead_copy(model, x_adv, y, self.smoothing(ctx.num_classes), lr, h["lookahead_momentum"],
                               h["lookahead_weight_decay"])
        eps = ctx.attack.eps
        robust = early_stop_pgd_accuracy(clone, x, y, eps, eps / 4, h["reward_pgd_steps"], h["reward_pgd_restarts"])
        with torch.no_grad():
            clean = (clone(x.float()).argmax(1) == y).float().mean()
        del clone
        clip = h["reward_clip"]
        r2 = (h["r2_scale"] * robust).clamp(-clip, clip)
        r3 = (h["r3_scale"] * clean).clamp(-clip, clip)
        return {"reward": r1 + r2 + r3, "r1": r1, "r2": r2, "r3": r3,
                "lookahead_lr": torch.tensor(lr, device=x.device)}

    def update_policy(self, model, x, y, ctx) -> dict[str, torch.Tensor]:
        """One REINFORCE step of P on this batch; returns the reward terms and the policy loss."""
        actions = self.sample_actions(x, ctx.attack.eps, train=True)
        x_adv = self.attack(model, x, y, actions, ctx)
        terms = {k: v.detach().float() for k, v in self.reward(model, x, y, x_adv, ctx).items()}
        log_prob_sum = sum(actions.log_prob[name].mean() for name in HEADS)
        policy_loss = -log_prob_sum * terms["reward"]
        self.policy_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.hparams["policy_grad_clip"])
        self.policy_optimizer.step()
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.policy.eval()
        self.updates += 1
        terms["policy_loss"] = policy_loss.detach()
        self.last = {k: float(v) for k, v in terms.items()}
        self._last_tensors = terms
        return terms

    def is_update_step(self, step: int) -> bool:
        return (step + 1) % self.hparams["policy_interval"] == 0

    # --- Method interface -----------------------------------------------------------------------------

    def loss(self, model, x, y, ctx) -> LossOut:
        self._ensure_policy(x)
        if self.is_update_step(ctx.step):
            self.update_policy(model, x, y, ctx)
        actions = self.sample_actions(x, ctx.attack.eps, train=False)
        x_adv = self.attack(model, x, y, actions, ctx)
        logits = model(x_adv)
        loss = smoothed_cross_entropy(logits, y, self.smoothing(ctx.num_classes))
        eps = ctx.attack.eps
        stats = {
            "eps_ratio": actions.eps.mean() / eps if eps > 0 else actions.eps.mean(),
            "step_size_ratio": actions.step_size.mean() / eps if eps > 0 else actions.step_size.mean(),
            "attack_steps": actions.steps.float().mean(),
            "policy_params": torch.tensor(float(self.extra_parameters), dtype=torch.float64, device=x.device),
        }
        if self._last_tensors is not None:
            stats.update({k: v.to(x.device) for k, v in self._last_tensors.items()})
        return LossOut(loss, logits, stats)

    def state_dict(self) -> dict:
        if self.policy is None:
            return {"updates": self.updates}
        return {
            "policy": copy.deepcopy(self.policy.state_dict()),
            "policy_optimizer": copy.deepcopy(self.policy_optimizer.state_dict()),
            "input_shape": list(self.input_shape),
            "updates": self.updates,
            "last": dict(self.last),
        }

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))
        self.last = dict(state.get("last", {}))
        self._last_tensors = {k: torch.tensor(v) for k, v in self.last.items()} if self.last else None
        if state.get("policy") is None:
            self.policy, self.policy_optimizer, self.input_shape, self.extra_parameters = None, None, None, 0
            return
        device = next(iter(state["policy"].values())).device
        with torch.random.fork_rng(devices=[]):  # building P (on the CPU) must not move the run's RNG
            self.build_policy(state["input_shape"], device)
        self.policy.load_state_dict(state["policy"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
