"""``python -m benchmark.tools.perf`` (``make perf``): PGD-10 adversarial training speed, naive loop vs our fast path.

Both paths run in one process on the same data (seeded random uint8 images) from the same initial
weights, over the same number of timed images; warm-up steps run first and are not timed.

* naive: the loop as reference implementations write it. fp32, NCHW, cudnn.benchmark off, a CPU
  DataLoader over the tensors (per image on the host: crop + flip and the float conversion), one
  host→device copy per batch, every attack step a full ``loss.backward()`` with the parameters
  requiring grad (``model.zero_grad()`` each step), ``loss.item()`` after every training step.
* fast: the calls ``benchmark.train.train`` makes. Data resident on the device as uint8, batched
  crop + flip there, ``methods.create_method("at").loss`` (our PGD, input-only gradients) under the
  speed switches of ``benchmark.fastpath`` (channels_last, cudnn.benchmark, bf16 autocast,
  torch.compile), the loss summed on the device. With bf16 the fast path is also timed in fp32
  (``fast_fp32``), so the share of bf16 is visible.

FLOPs per image are counted, not guessed from a datasheet: ``FlopCounterMode`` on one forward in
eval mode gives F (convolutions and matmuls; elementwise ops are not counted). Forward-equivalents
per image of PGD-k AT: k attack steps of forward + input-only backward (≈ 1 + 1 F each), then one
forward + full backward (input and weight gradients, ≈ 1 + 2 F): 2k + 3, i.e. 23 F for PGD-10. Both
paths are credited the same useful 23 F (the naive loop spends ≈ 3k + 3 = 33 F, its weight
gradients in the attack being wasted); ``counted_per_image`` gives the FlopCounterMode totals of one
real step of each path as a check. Achieved TFLOP/s = useful FLOPs per image × images/s; % of peak
compares it with the dense peak of the precision the convolutions ran in (bf16, else TF32 where
cuDNN allows it, which PyTorch does by default) on a known device, else None. PGD-20 evaluation
(fp32, 41 F per image) is timed on the fast path's model.

Host syncs per training step of every registered method (``host_syncs``): one step after a warm-up step,
counted on a CUDA device by its sync debug mode (each synchronizing call warns), elsewhere by
``benchmark.cuda_graph.HostSyncs`` (the calls that would synchronize on CUDA); a method declared graph-safe
should show 0. On CUDA the captured step (``benchmark.cuda_graph.CapturedStep``, fused SGD) is timed too
(``captured``), and ``captured_check`` compares its per-step losses with the eager step's from the same
weights on the same batches, with no random attack start (``start: none``), so only the capture differs.

On a machine without CUDA (or with ``--tiny``) it runs a tiny configuration (a narrow small_cnn on
1×28×28 images, a few batches) so that tests cover the code path in seconds; its numbers say
nothing about a GPU. ``--autoattack-from CELL`` instead times the reference AutoAttack on a trained
cell's model (what ``benchmark.tools.gpu_check`` runs).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from attacks import AttackSpec
from methods import TrainContext, create_method
from benchmark.data.loader import iterate_batches, stratified_subset, to_float
from benchmark.data.transforms import augment
from benchmark.evaluate import InferenceModel, predict
from benchmark.fastpath import autocast, prepare_model, resolve_speed
from benchmark.models import create_model
from benchmark.atomic import load_torch_plain
from benchmark.cuda_graph import CapturedStep, HostSyncs, capturable_sgd
from benchmark.train import train_step
from methods import list_methods

CIFAR10_LT_IR10_TRAIN = 20_431  # training images of CIFAR-10-LT at IR 10 (5000 · 10^(-c/9), floored, summed)
# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, by the precision the convolutions run in.
PEAK_TFLOPS = {
    "H100 SXM": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # H200 SXM: H100 SXM's compute, more memory
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},  # SXM4 and PCIe, 40 and 80 GB alike
}


def device_family(name: str) -> str | None:
    """Key of PEAK_TFLOPS for a CUDA device name ("NVIDIA H100 80GB HBM3" → "H100 SXM"), None if unknown."""
    if "NVL" in name:  # H100 NVL / H200 NVL run other clocks and power limits: not in the table
        return None
    if "H200" in name:
        return "H200"
    if "H100" in name:
        if "PCIe" in name or "PCIE" in name:
            return "H100 PCIe"
        return "H100 SXM" if ("HBM3" in name or "SXM" in name) else None
    if "A100" in name:
        return "A100"
    return None


def conv_precision(amp: str, device: torch.device) -> str:
    """The precision the convolutions of a run compute in: bf16 under autocast, else TF32 where cuDNN allows it."""
    if device.type == "cuda" and amp == "bf16":
        return "bf16"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the two training loops ---------------------------------------------------------------------------

class HostImages(torch.utils.data.Dataset):
    """A TensorDataset with a per-image host transform, as ``ToTensor`` + ``RandomCrop(padding=4)`` +
    ``RandomHorizontalFlip`` in a reference DataLoader (global RNG, per worker)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, crop_flip: bool, padding: int = 4):
        self.x, self.y, self.crop_flip, self.padding = x, y, crop_flip, padding

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        image = self.x[i].float() / 255.0
        if self.crop_flip:
            _, height, width = image.shape
            padded = F.pad(image, (self.padding,) * 4)
            row, col = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
            image = padded[:, row:row + height, col:col + width]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return image, self.y[i]


def naive_step(model, optimizer, x, y, eps: float, step_size: float, steps: int) -> float:
    """One PGD-k AT step as reference code writes it (full backward in every attack step, ``.item()``)."""
    model.eval()
    x_adv = (x.detach() + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_()
        loss = F.cross_entropy(model(x_adv), y)
        model.zero_grad()
        loss.backward()
        x_adv = x_adv.detach() + step_size * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def fast_step(model, optimizer, method, ctx, xb, yb, amp: str, device) -> torch.Tensor:
    """One step exactly as ``benchmark.train.train`` runs it (the same function); the loss stays on the device."""
    return train_step(model, optimizer, method, ctx, xb, yb, autocast(amp, device)).loss.detach()


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _record(images: int, seconds: float, device, flops_per_image: float, precision: str, peaks, epoch_images: int,
            **extra) -> dict:
    rate = images / seconds
    achieved = flops_per_image * rate / 1e12
    peak = None if peaks is None else peaks.get(precision)
    return {"images": images, "seconds": seconds, "images_per_s": rate, "epoch_seconds": epoch_images / rate,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "achieved_tflops": achieved, "precision": precision, "peak_tflops": peak,
            "percent_of_peak": None if peak is None else 100 * achieved / peak, **extra}


def _reset_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_naive(model, x, y, args, device, flops, peaks) -> dict:
    """Images/s of the naive loop: DataLoader on the host, a blocking copy per batch, fp32."""
    torch.backends.cudnn.benchmark = False
    _reset_memory(device)
    loader = torch.utils.data.DataLoader(
        HostImages(x, y, crop_flip=args.augment == "crop_flip"), batch_size=args.batch_size, shuffle=True,
        drop_last=True, num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed))
    optimizer = _optimizer(model)
    losses, images, started = [], 0, None
    for i, (xb, yb) in enumerate(loader):
        if i == args.warmup_steps:
            _sync(device)
            started = time.perf_counter()
        xb, yb = xb.to(device), yb.to(device)
        losses.append(naive_step(model, optimizer, xb, yb, args.eps, args.eps / 4, args.steps))
        if started is not None:
            images += len(yb)
    _sync(device)
    seconds = time.perf_counter() - started
    return _record(images, seconds, device, flops, conv_precision("none", device), peaks, args.epoch_images,
                   mean_loss=sum(losses) / len(losses), workers=args.workers)


def time_fast(model, x, y, args, device, speed: dict, flops, peaks, num_classes: int) -> tuple[dict, torch.nn.Module]:
    """Images/s of the fast path with resolved ``speed`` settings; returns the trained model too."""
    _reset_memory(device)
    prepare_model(model, speed)
    x_dev, y_dev = x.to(device), y.to(device)
    method = create_method("at")
    ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes,
                       class_counts=torch.bincount(y_dev, minlength=num_classes), attack=_train_attack(args),
                       device=device)
    optimizer = _optimizer(model)
    generator = torch.Generator().manual_seed(args.seed)  # shuffling and augmentation, as train() draws them
    model.train()
    loss_sum = torch.zeros((), device=device)
    images, started = 0, None
    for i, (xb, yb) in enumerate(iterate_batches(x_dev, y_dev, args.batch_size, shuffle=True, drop_last=True,
                                                 generator=generator)):
        if i == args.warmup_steps:
            _sync(device)
            started = time.perf_counter()
        xb = augment(to_float(xb), args.augment, generator)
        loss = fast_step(model, optimizer, method, ctx, xb, yb, speed["amp"], device)
        if started is not None:
            loss_sum += loss * len(yb)
            images += len(yb)
    _sync(device)
    seconds = time.perf_counter() - started
    record = _record(images, seconds, device, flops, conv_precision(speed["amp"], device), peaks, args.epoch_images,
                     mean_loss=float(loss_sum) / images, settings=dict(speed))
    return record, model


def _train_attack(args, start: str = "normal") -> AttackSpec:
    return AttackSpec(kind="pgd", eps=args.eps, steps=args.steps, step_size=args.eps / 4, start=start, name="train")


# --- host syncs and the captured step -------------------------------------------------------------------

def count_host_syncs(step, device) -> tuple[int, list[str]]:
    """Host synchronizations while ``step()`` runs: CUDA's sync debug mode on a CUDA device (each
    synchronizing call warns), ``HostSyncs`` elsewhere. Returns (count, what they were)."""
    if device.type != "cuda":
        with HostSyncs() as guard:
            step()
        return len(guard.events), guard.events
    import warnings

    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    return len(found), found


def host_syncs_per_method(args, device, num_classes: int = 10) -> dict:
    """{method: {"graph_safe", "syncs", "calls"}}: one training step of each registered method (a narrow
    small_cnn on a 16-image batch, PGD-2), counted after one warm-up step that builds lazy state."""
    from methods import get_method

    out = {}
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(16, 1, 28, 28, generator=gen).to(device)
    y = (torch.arange(16) % num_classes).to(device)
    counts = torch.tensor([int(40 * 10 ** (-c / (num_classes - 1))) for c in range(num_classes)], device=device)
    attack = AttackSpec(kind="pgd", eps=args.eps, steps=2, step_size=args.eps / 4, start="normal", name="train")
    for name in list_methods():
        torch.manual_seed(args.seed)
        method = create_method(name)
        model = method.wrap_model(create_model("small_cnn", num_classes, 1, width=0.25, drop_rate=0.0)).to(device)
        optimizer = _optimizer(model)
        ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes, class_counts=counts, attack=attack,
                           device=device)

        def step():
            train_step(model.train(), optimizer, method, ctx, x, y, autocast("none", device))

        step()  # warm-up: lazily built state, cached class terms
        n, calls = count_host_syncs(step, device)
        out[name] = {"graph_safe": bool(get_method(name).graph_safe), "syncs": n, "calls": sorted(set(calls))[:5]}
    return out


def _captured_loop(model, x, y, args, device, speed: dict, num_classes: int, start: str, policy: str,
                   captured: bool, timed_from: int):
    """PGD-AT steps with capturable SGD, eager or captured; (per-step losses, images timed, seconds, record)."""
    prepare_model(model, speed)
    x_dev, y_dev = x.to(device), y.to(device)
    method = create_method("at")
    ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes,
                       class_counts=torch.bincount(y_dev, minlength=num_classes), attack=_train_attack(args, start),
                       device=device)
    optimizer = capturable_sgd(model.parameters(), 0.1, 0.9, 5e-4, device)

    def eager(xb, yb):
        return train_step(model, optimizer, method, ctx, xb, yb, autocast(speed["amp"], device))

    step = CapturedStep(model, optimizer, method, ctx, speed["amp"], eager, args.warmup_steps, args.batch_size) \
        if captured else eager
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    losses, images, started = [], 0, None
    for i, (xb, yb) in enumerate(iterate_batches(x_dev, y_dev, args.batch_size, shuffle=True, drop_last=True,
                                                 generator=generator)):
        if i == timed_from:
            _sync(device)
            started = time.perf_counter()
        xb = augment(to_float(xb), policy, generator)
        losses.append(step(xb, yb).loss.detach().clone())
        if started is not None:
            images += len(yb)
    _sync(device)
    seconds = time.perf_counter() - started if started is not None else 0.0
    return torch.stack(losses).float().cpu(), images, seconds, getattr(step, "record", None)


def time_captured(model, x, y, args, device, speed: dict, flops, peaks, num_classes: int) -> dict:
    """Images/s of the captured step (timed after the warm-up steps and the capture)."""
    _reset_memory(device)
    losses, images, seconds, record = _captured_loop(model, x, y, args, device, speed, num_classes, "normal",
                                                     args.augment, True, args.warmup_steps + 1)
    out = _record(images, seconds, device, flops, conv_precision(speed["amp"], device), peaks, args.epoch_images,
                  mean_loss=float(losses[args.warmup_steps + 1:].mean()), settings={**speed, "cuda_graphs": True})
    out["graph"] = record
    return out


def captured_check(initial, x, y, args, device, speed: dict, num_classes: int) -> dict:
    """Per-step losses of the eager and the captured step from the same weights on the same batches, no
    augmentation and no random attack start: the largest relative difference, and whether it is within 1e-4."""
    eager, _, _, _ = _captured_loop(copy.deepcopy(initial), x, y, args, device, speed, num_classes, "none", "none",
                                    False, 0)
    captured, _, _, record = _captured_loop(copy.deepcopy(initial), x, y, args, device, speed, num_classes, "none",
                                            "none", True, 0)
    diff = float(((captured - eager).abs() / eager.abs().clamp_min(1e-12)).max())
    return {"steps": len(eager), "max_relative_difference": diff, "matches": diff <= 1e-4, "tolerance": 1e-4,
            "eager_losses": eager.tolist(), "captured_losses": captured.tolist(), "graph": record}


# --- FLOPs --------------------------------------------------------------------------------------------

def forward_flops_per_image(model, x: torch.Tensor) -> float:
    """FLOPs of one eval-mode forward per image, counted by FlopCounterMode (convolutions, matmuls)."""
    model = copy.deepcopy(model).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / len(x)


class StepFlops(TorchDispatchMode):
    """FlopCounterMode's per-op formulas (``flop_registry``) without its module tracker, whose backward
    hooks refuse ``torch.autograd.grad`` with respect to a leaf input (the PGD step's x_adv)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def counted_step_flops(model, x, y, args, device, num_classes: int) -> dict:
    """FLOPs per image of one real training step of each path, counted op by op (a check on 2k + 3)."""
    counted = {}
    for name in ("naive", "fast"):
        copy_ = copy.deepcopy(model)
        optimizer = _optimizer(copy_)
        counter = StepFlops()
        with counter:
            if name == "naive":
                naive_step(copy_, optimizer, x, y, args.eps, args.eps / 4, args.steps)
            else:
                ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes,
                                   class_counts=torch.ones(num_classes, device=device), attack=_train_attack(args),
                                   device=device)
                fast_step(copy_.train(), optimizer, create_method("at"), ctx, x, y, "none", device)
        counted[name] = counter.total / len(x)
    return counted


# --- evaluation and AutoAttack ------------------------------------------------------------------------

def time_eval_pgd(model, method, x, y, args, device, peaks) -> dict:
    """Seconds for our PGD-20 evaluation (fp32, uniform start, step ε/4) through ``benchmark.evaluate.predict``."""
    inference = InferenceModel(model, method)
    spec = AttackSpec(kind="pgd", eps=args.eps, steps=args.eval_steps, step_size=args.eps / 4, start="uniform")
    x_dev, y_dev = x.to(device), y.to(device)
    warm = min(args.eval_batch_size, len(x))
    predict(inference, x_dev[:warm], y_dev[:warm], spec, args.eval_batch_size, device, torch.Generator().manual_seed(0))
    _reset_memory(device)
    _sync(device)
    started = time.perf_counter()
    predict(inference, x_dev, y_dev, spec, args.eval_batch_size, device, torch.Generator().manual_seed(0))
    _sync(device)
    seconds = time.perf_counter() - started
    flops = args.forward_flops * (2 * args.eval_steps + 1)  # k × (forward + input backward) + the re-scoring forward
    record = _record(len(x), seconds, device, flops, conv_precision("none", device), peaks, args.epoch_images)
    record.pop("epoch_seconds")
    record.update(attack=spec.to_dict(), forward_equivalents_per_image=2 * args.eval_steps + 1)
    return record


def time_autoattack(model, x: torch.Tensor, y: torch.Tensor, eps: float, device, n_classes: int = 10, seed: int = 0,
                    version: str = "standard") -> dict:
    """Seconds for the reference AutoAttack through ``attacks.autoattack`` (``n_classes`` and ``seed`` set
    explicitly) on float inputs in [0, 1], with clean and robust accuracy of the returned inputs and the
    seconds and survivors of each stage (on a non-robust model the cascade stops after APGD-CE, so only
    a robust model times the real cost)."""
    import pyautoattack

    from attacks.autoattack import autoattack

    model.eval()
    x, y = x.to(device).float(), y.to(device)
    _sync(device)
    started = time.perf_counter()
    result = autoattack(model, x, y, eps, version, n_classes, seed)
    _sync(device)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
        robust = (model(result.x_adv).argmax(1) == y).float().mean()
    return {"images": len(x), "seconds": seconds, "images_per_s": len(x) / seconds, "version": version,
            "n_classes": n_classes, "seed": seed, "eps": eps, "clean_accuracy": float(clean),
            "robust_accuracy": float(robust), "library_reported_robust": result.reported_robust,
            "max_linf": float((result.x_adv - x).abs().max()), "pyautoattack": pyautoattack.__version__,
            "stages": result.cascade["stages"], "stage_seconds": result.cascade["stage_seconds"],
            "robust_after_stage": [sum(c) for c in result.cascade["robust_per_class"]]}


def load_cell_model(cell_dir: Path, device, data_root: str | None = None):
    """A finished or resumable cell's model as attacks see it (inputs in [0, 1] → inference logits), with
    its config, data and trained epochs, rebuilt from ``checkpoint.pt``."""
    from benchmark.config import Config
    from benchmark.data.prepare import prepare_cell_data

    state = load_torch_plain(Path(cell_dir) / "checkpoint.pt", map_location=device)  # plain tensors only
    cfg = Config(**state["config"])
    if data_root is not None:
        cfg.data_root = data_root
    data = prepare_cell_data(cfg)
    method = create_method(cfg.method, **cfg.method_args)
    model = method.wrap_model(create_model(cfg.model, data.num_classes, data.in_channels, **cfg.model_args))
    model.load_state_dict(state["model"])
    return InferenceModel(model.to(device), method).eval(), cfg, data, state["epoch"] + 1


def autoattack_on_cell(cell_dir: Path, images: int, device, data_root: str | None = None) -> dict:
    """AutoAttack timing on a trained cell's checkpoint and a class-stratified test subset of its data."""
    model, cfg, data, epochs = load_cell_model(cell_dir, device, data_root)
    idx = torch.as_tensor(stratified_subset(data.y_test, max(1, images // data.num_classes), seed=0))
    x, y = to_float(data.x_test[idx]), data.y_test[idx]
    record = time_autoattack(model, x, y, cfg.eps_value, device, n_classes=data.num_classes, seed=0)
    return {"cell": Path(cell_dir).name, "trained_epochs": epochs, **record}


# --- the command --------------------------------------------------------------------------------------

def _tri(value):
    return "auto" if value is None else value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark.tools.perf", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model name (default: resnet18; tiny: small_cnn)")
    p.add_argument("--batch-size", type=int, help="default 128 (tiny 16)")
    p.add_argument("--images", type=int, help="timed training images per path (default 5120; tiny 32)")
    p.add_argument("--warmup-steps", type=int, help="untimed steps before timing (default 3, 5 with --compile; tiny 1)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps in training (default 10)")
    p.add_argument("--eps", type=float, default=8 / 255, help="L∞ radius (default 8/255); step size ε/4")
    p.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto",
                   help="fast path autocast (default auto: bf16 on CUDA, none on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="fast path channels_last (default: on for CUDA)")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                   help="fast path cudnn.benchmark (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="fast path torch.compile (off by default)")
    p.add_argument("--no-fast-fp32", action="store_true", help="with bf16, skip timing the fast path in fp32 too")
    p.add_argument("--augment", choices=["crop_flip", "none"], default="crop_flip")
    p.add_argument("--workers", type=int, help="naive DataLoader workers (default min(4, CPUs) on CUDA, else 0)")
    p.add_argument("--eval-images", type=int, help="images for the PGD-20 evaluation timing (default 1000; tiny 16)")
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--epoch-images", type=int, default=CIFAR10_LT_IR10_TRAIN,
                   help=f"epoch size the seconds per epoch are extrapolated to (default {CIFAR10_LT_IR10_TRAIN:,}: "
                        "CIFAR-10-LT, IR 10)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny CPU configuration (default when CUDA is absent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autoattack-from", metavar="CELL_DIR", help="time AutoAttack on this trained cell instead")
    p.add_argument("--autoattack-images", type=int, default=200)
    p.add_argument("--data-root", help="data root of the cell given to --autoattack-from")
    p.add_argument("--out", help="write the results as JSON here")
    return p


def _fill_defaults(args, device: torch.device) -> None:
    tiny = args.tiny or device.type != "cuda"
    args.tiny = tiny
    defaults = {"model": ("small_cnn", "resnet18"), "batch_size": (16, 128), "images": (32, 5120),
                "warmup_steps": (1, 5 if args.compile else 3), "eval_images": (16, 1000),
                "workers": (0, min(4, os.cpu_count() or 1))}
    for name, (small, large) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else large)
    if args.images < args.batch_size:
        raise SystemExit("error: --images must be at least one batch (--batch-size)")


def run(args) -> dict:
    """Time naive and fast training and PGD-20 evaluation as ``args`` says; return the JSON record."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    _fill_defaults(args, device)
    channels, size = (1, 28) if args.model == "small_cnn" else (3, 32)  # digits-shaped for the small CNN, else CIFAR
    model_args = {"width": 0.25, "drop_rate": 0.0} if args.model == "small_cnn" else {}
    num_classes = 10
    steps = args.warmup_steps + args.images // args.batch_size
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, 256, (steps * args.batch_size, channels, size, size), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, num_classes, (len(x),), generator=gen)
    x_eval = torch.randint(0, 256, (args.eval_images, channels, size, size), generator=gen, dtype=torch.uint8)
    y_eval = torch.randint(0, num_classes, (len(x_eval),), generator=gen)
    torch.manual_seed(args.seed)
    initial = create_model(args.model, num_classes, channels, **model_args).to(device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    family = device_family(name) if device.type == "cuda" else None
    peaks = PEAK_TFLOPS.get(family) if family else None
    args.forward_flops = forward_flops_per_image(initial, to_float(x[:8]).to(device))
    equivalents = 2 * args.steps + 3
    flops = args.forward_flops * equivalents
    counted = counted_step_flops(initial, to_float(x[:8]).to(device), y[:8].to(device), args, device, num_classes)
    speed = resolve_speed(_tri(args.channels_last), _tri(args.cudnn_benchmark), args.compile, args.amp, device)

    out = {
        "device": name, "device_family": family, "torch": torch.__version__, "cuda": torch.version.cuda,
        "settings": {"model": args.model, "model_args": model_args, "input_shape": [channels, size, size],
                     "num_classes": num_classes, "batch_size": args.batch_size, "timed_images": args.images,
                     "warmup_steps": args.warmup_steps, "attack": _train_attack(args).to_dict(),
                     "augment": args.augment, "epoch_images": args.epoch_images, "tiny": args.tiny, "seed": args.seed},
        "flops": {"forward_per_image": args.forward_flops, "forward_equivalents_per_image": equivalents,
                  "per_image": flops, "counted_per_image": counted,
                  "rule": f"PGD-{args.steps} AT: {args.steps} x (forward + input backward = 2 F) + forward + full "
                          f"backward (3 F) = {equivalents} F per image, for both paths"},
        "peak_tflops": peaks,
    }
    out["naive"] = time_naive(copy.deepcopy(initial), x, y, args, device, flops, peaks)
    out["fast"], fast_model = time_fast(copy.deepcopy(initial), x, y, args, device, speed, flops, peaks, num_classes)
    if speed["amp"] == "bf16" and not args.no_fast_fp32:
        out["fast_fp32"], _ = time_fast(copy.deepcopy(initial), x, y, args, device, {**speed, "amp": "none"}, flops,
                                        peaks, num_classes)
    out["speedup"] = out["fast"]["images_per_s"] / out["naive"]["images_per_s"]
    if device.type == "cuda":
        out["captured"] = time_captured(copy.deepcopy(initial), x, y, args, device, speed, flops, peaks, num_classes)
        out["captured_speedup"] = out["captured"]["images_per_s"] / out["naive"]["images_per_s"]
        out["captured_check"] = captured_check(initial, x, y, args, device, speed, num_classes)
    else:
        out["captured"] = {"skipped": "needs CUDA (CUDA graphs)"}
    out["host_syncs"] = host_syncs_per_method(args, device)
    out["eval_pgd"] = time_eval_pgd(fast_model, create_method("at"), x_eval, y_eval, args, device, peaks)
    return out


def format_summary(out: dict) -> str:
    """A few fixed-width lines: one per timed path, then the ratio."""
    lines = [f"{out['device']}  {out['settings']['model']}  batch {out['settings']['batch_size']}  "
             f"PGD-{out['settings']['attack']['steps']} AT  {out['flops']['per_image'] / 1e9:.2f} GFLOP/image"
             + ("  (tiny CPU configuration: not a GPU number)" if out["settings"]["tiny"] else "")]
    lines.append(f"{'path':<12}{'images/s':>10}{'s/epoch':>10}{'TFLOP/s':>9}{'% peak':>8}{'peak MB':>9}")
    for key in ("naive", "fast", "fast_fp32", "captured", "eval_pgd"):
        if key not in out or "skipped" in out[key]:
            continue
        r = out[key]
        pct = "-" if r["percent_of_peak"] is None else f"{r['percent_of_peak']:.1f}"
        mem = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        epoch = f"{r['epoch_seconds']:.1f}" if "epoch_seconds" in r else "-"
        lines.append(f"{key:<12}{r['images_per_s']:>10.1f}{epoch:>10}{r['achieved_tflops']:>9.3f}{pct:>8}{mem:>9}")
    lines.append(f"fast / naive = {out['speedup']:.2f}x  (s/epoch extrapolated to {out['settings']['epoch_images']:,} "
                 f"images; fast settings {out['fast']['settings']})")
    if "captured_check" in out:
        check = out["captured_check"]
        lines.append(f"captured / naive = {out['captured_speedup']:.2f}x; captured vs eager loss over {check['steps']} "
                     f"steps: max rel. diff {check['max_relative_difference']:.1e} "
                     f"({'matches' if check['matches'] else 'DIFFERS'} at {check['tolerance']:g})")
    syncs = out.get("host_syncs", {})
    if syncs:
        safe = ", ".join(f"{n} {r['syncs']}" for n, r in syncs.items() if r["graph_safe"])
        unsafe = ", ".join(f"{n} {r['syncs']}" for n, r in syncs.items() if not r["graph_safe"])
        lines.append(f"host syncs per step ({'CUDA sync debug mode' if out['device'] != 'cpu' else 'counted on CPU'}): "
                     f"graph-safe: {safe}; eager: {unsafe or '-'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.autoattack_from:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
            else torch.device(args.device)
        out = autoattack_on_cell(Path(args.autoattack_from), args.autoattack_images, device, args.data_root)
        print(json.dumps(out, indent=2))
    else:
        out = run(args)
        print(format_summary(out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
