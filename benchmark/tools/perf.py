"""``python -m benchmark.tools.perf`` (``make perf``): PGD-10 adversarial training speed, naive loop to captured step.

Every path runs in one process on the same data (seeded random uint8 images) from the same initial
weights. Each is built and warmed up first (untimed: cudnn autotuning, compilation, a graph's capture),
then timed in ``--windows`` windows of the same number of steps, interleaved: window w runs the paths
in an order rotated by w, so a clock boost, a thermal dip or a neighbour's load falls on all of them.
A path's images/s is the median over its windows, with the min and max beside it. On CUDA a window is
timed by two CUDA events read after one synchronize at the end, so timing adds no host sync.

* naive: the loop as reference implementations write it. fp32, NCHW, cudnn.benchmark off, a CPU
  DataLoader over the tensors (per image on the host: crop + flip and the float conversion), one
  host→device copy per batch, every attack step a full ``loss.backward()`` with the parameters
  requiring grad (``model.zero_grad()`` each step), ``loss.item()`` after every training step.
* fair: the same loop as a careful plain-PyTorch author writes it: input-only gradients in the attack
  (``torch.autograd.grad``), cudnn.benchmark on, pinned DataLoader memory with non-blocking copies, the
  loss left on the device. The ratio against it is what our harness adds beyond good habits.
* fast: the calls ``benchmark.train.train`` makes. Data resident on the device as uint8, batched
  crop + flip there, ``methods.create_method("at").loss`` (our PGD, input-only gradients) under the
  speed switches of ``benchmark.fastpath`` (channels_last, cudnn.benchmark, bf16 autocast), eager. With
  bf16 it is also timed in fp32 (``fast_fp32``), so the share of bf16 is visible.
* captured (CUDA): the whole step, attack included, in one CUDA graph (``benchmark.cuda_graph.CapturedStep``,
  capturable fused SGD); ``captured_check`` compares its per-step losses with the eager step's from the
  same weights on the same batches with no random attack start, so only the capture differs.
* fast_compiled, captured_compiled (``--compile``): the same with the model compiled by inductor.

On CUDA a path's peak memory is what it holds after its warm-up (weights, optimizer state, its copy of the
data, a graph's pool) plus the most any of its windows allocated on top (the paths coexist in one process,
so the device's own peak would count the others' weights).

FLOPs per image are counted, not guessed from a datasheet: ``FlopCounterMode`` on one forward in
eval mode gives F (convolutions and matmuls; elementwise ops are not counted). Forward-equivalents
per image of PGD-k AT: k attack steps of forward + input-only backward (≈ 1 + 1 F each), then one
forward + full backward (input and weight gradients, ≈ 1 + 2 F): 2k + 3, i.e. 23 F for PGD-10. Every
path is credited the same useful 23 F (the naive loop spends ≈ 3k + 3 = 33 F, its weight gradients in
the attack being wasted); ``counted_per_image`` gives the FlopCounterMode totals of one real step of the
naive, fair and fast steps as a check. Achieved TFLOP/s = useful FLOPs per image × images/s; % of peak
compares it with the dense peak of the precision the convolutions ran in (bf16, else TF32 where
cuDNN allows it, which PyTorch does by default) on a known device, else None. PGD-20 evaluation
(fp32, 41 F per image) is timed on the fast path's model, 10,000 images at batch 2,000 by default, and on
CUDA also with each full batch replaying one captured graph (``eval_pgd_captured``, capture included;
``benchmark.cuda_graph.CapturedAttack``), with the robust accuracy of both (they should agree).

Host syncs per training step of every registered method (``host_syncs``): one step after a warm-up step,
counted on a CUDA device by its sync debug mode (each synchronizing call warns), elsewhere by
``benchmark.cuda_graph.HostSyncs`` (the calls that would synchronize on CUDA); a method declared graph-safe
should show 0.

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
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable
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


# --- the training steps ------------------------------------------------------------------------------

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


def fair_step(model, optimizer, x, y, eps: float, step_size: float, steps: int) -> torch.Tensor:
    """One PGD-k AT step as a careful plain-PyTorch loop writes it: the same attack and update as
    ``naive_step``, but input-only gradients in the attack (``torch.autograd.grad``) and the loss left on
    the device (no ``.item()``)."""
    model.eval()
    x_adv = (x.detach() + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_()
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def fast_step(model, optimizer, method, ctx, xb, yb, amp: str, device) -> torch.Tensor:
    """One step exactly as ``benchmark.train.train`` runs it (the same function); the loss stays on the device."""
    return train_step(model, optimizer, method, ctx, xb, yb, autocast(amp, device)).loss.detach()


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _record(images: int, seconds: float, device, flops_per_image: float, precision: str, peaks, epoch_images: int,
            rate: float | None = None, peak_memory_mb: float | None = None, **extra) -> dict:
    rate = images / seconds if rate is None else rate
    achieved = flops_per_image * rate / 1e12
    peak = None if peaks is None else peaks.get(precision)
    if peak_memory_mb is None and device.type == "cuda":
        peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return {"images": images, "seconds": seconds, "images_per_s": rate, "epoch_seconds": epoch_images / rate,
            "peak_memory_mb": peak_memory_mb, "achieved_tflops": achieved, "precision": precision,
            "peak_tflops": peak, "percent_of_peak": None if peak is None else 100 * achieved / peak, **extra}


def _reset_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- the training paths, timed in interleaved windows ----------------------------------------------------

TRAINING_PATHS = ("naive", "fair", "fast", "fast_fp32", "fast_compiled", "captured", "captured_compiled")


class WindowTimer:
    """Seconds of each timed window. On CUDA two events per window, recorded on the current stream and read
    after one synchronize at the end, so timing adds no host sync inside or between windows; elsewhere
    ``time.perf_counter`` around the window (the CPU runs the work as it is issued)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self._open = None

    def start(self) -> None:
        if self.cuda:
            self._open = torch.cuda.Event(enable_timing=True)
            self._open.record()
        else:
            self._open = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.marks.append((self._open, end))
        else:
            self.marks.append(time.perf_counter() - self._open)

    def seconds(self) -> list[float]:
        if not self.cuda:
            return list(self.marks)
        torch.cuda.synchronize()
        return [begin.elapsed_time(end) / 1000.0 for begin, end in self.marks]


@dataclass
class TrainPath:
    """One way of running PGD-AT training steps, built once: ``step()`` trains on its next batch and returns
    (images, loss); ``cudnn_benchmark`` is the global switch set before each of its windows."""
    name: str
    step: Callable[[], tuple]
    precision: str
    cudnn_benchmark: bool
    settings: dict
    warmup_calls: int
    model: torch.nn.Module | None = None
    graph: dict | None = None  # the captured step's record (captures, replays, failures)
    losses: list = field(default_factory=list)
    resident_mb: float | None = None
    working_mb: list = field(default_factory=list)


def _host_batches(x, y, args, pin: bool):
    """Endless epochs of a reference DataLoader: per-image host transforms, shuffled by a seeded generator."""
    loader = torch.utils.data.DataLoader(
        HostImages(x, y, crop_flip=args.augment == "crop_flip"), batch_size=args.batch_size, shuffle=True,
        drop_last=True, num_workers=args.workers, pin_memory=pin, persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed))
    while True:
        yield from loader


def _device_batches(x_dev, y_dev, args, policy: str):
    """Endless epochs as ``benchmark.train.train`` draws them: uint8 data on the device, batched crop + flip."""
    generator = torch.Generator().manual_seed(args.seed)
    while True:
        for xb, yb in iterate_batches(x_dev, y_dev, args.batch_size, shuffle=True, drop_last=True,
                                      generator=generator):
            yield augment(to_float(xb), policy, generator), yb


def host_loop_path(name: str, initial, x, y, args, device) -> TrainPath:
    """A reference loop over a host DataLoader: ``naive`` (pageable memory, blocking copies, cudnn.benchmark
    off, ``naive_step``) or ``fair`` (on CUDA pinned memory, non-blocking copies and cudnn.benchmark; ``fair_step``)."""
    careful = name == "fair" and device.type == "cuda"
    step_fn = fair_step if name == "fair" else naive_step
    model, batches = copy.deepcopy(initial), _host_batches(x, y, args, pin=careful)
    optimizer = _optimizer(model)

    def step():
        xb, yb = next(batches)
        xb, yb = xb.to(device, non_blocking=careful), yb.to(device, non_blocking=careful)
        return len(yb), step_fn(model, optimizer, xb, yb, args.eps, args.eps / 4, args.steps)

    return TrainPath(name, step, conv_precision("none", device), careful,
                     {"workers": args.workers, "cudnn_benchmark": careful, "pinned": careful}, args.warmup_steps,
                     model)


def _at_context(y_dev, args, device, num_classes: int, start: str = "normal") -> TrainContext:
    return TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes,
                        class_counts=torch.bincount(y_dev, minlength=num_classes), attack=_train_attack(args, start),
                        device=device)


def fast_path(name: str, initial, x, y, args, device, speed: dict, num_classes: int) -> TrainPath:
    """The fast path with resolved ``speed`` settings (eager, or its model compiled when ``torch_compile``)."""
    model = prepare_model(copy.deepcopy(initial), speed).train()
    x_dev, y_dev = x.to(device), y.to(device)
    method, ctx, optimizer = create_method("at"), _at_context(y_dev, args, device, num_classes), _optimizer(model)
    batches = _device_batches(x_dev, y_dev, args, args.augment)

    def step():
        xb, yb = next(batches)
        return len(yb), fast_step(model, optimizer, method, ctx, xb, yb, speed["amp"], device)

    return TrainPath(name, step, conv_precision(speed["amp"], device), bool(speed["cudnn_benchmark"]), dict(speed),
                     args.warmup_steps, model)


def captured_path(name: str, initial, x, y, args, device, speed: dict, num_classes: int, start: str = "normal",
                  policy: str | None = None, capture: bool = True) -> TrainPath:
    """The whole step in one CUDA graph (``benchmark.cuda_graph.CapturedStep``, capturable SGD); with
    ``torch_compile`` the compiled model is warmed up eagerly first and its kernels captured. With
    ``capture=False`` the same step and optimizer run eagerly (the reference of ``captured_check``)."""
    model = prepare_model(copy.deepcopy(initial), speed).train()
    x_dev, y_dev = x.to(device), y.to(device)
    method, ctx = create_method("at"), _at_context(y_dev, args, device, num_classes, start)
    optimizer = capturable_sgd(model.parameters(), 0.1, 0.9, 5e-4, device)

    def eager(xb, yb):
        return train_step(model, optimizer, method, ctx, xb, yb, autocast(speed["amp"], device))

    captured = CapturedStep(model, optimizer, method, ctx, speed["amp"], eager, args.warmup_steps, args.batch_size) \
        if capture else eager
    batches = _device_batches(x_dev, y_dev, args, args.augment if policy is None else policy)

    def step():
        xb, yb = next(batches)
        return len(yb), captured(xb, yb).loss.detach().clone()  # the graph's output is overwritten by the next replay

    path = TrainPath(name, step, conv_precision(speed["amp"], device), bool(speed["cudnn_benchmark"]),
                     {**speed, "cuda_graphs": capture}, args.warmup_steps + 1, model)  # warm-ups, then the capture
    path.graph = getattr(captured, "record", None)
    return path


def build_paths(names, initial, x, y, args, device, speed: dict, num_classes: int) -> tuple[list, dict]:
    """The requested paths this device can run, and {path: why skipped} for the others."""
    compiled = {**speed, "torch_compile": True}
    builders = {
        "naive": lambda: host_loop_path("naive", initial, x, y, args, device),
        "fair": lambda: host_loop_path("fair", initial, x, y, args, device),
        "fast": lambda: fast_path("fast", initial, x, y, args, device, speed, num_classes),
        "fast_fp32": lambda: fast_path("fast_fp32", initial, x, y, args, device, {**speed, "amp": "none"},
                                       num_classes),
        "fast_compiled": lambda: fast_path("fast_compiled", initial, x, y, args, device, compiled, num_classes),
        "captured": lambda: captured_path("captured", initial, x, y, args, device, speed, num_classes),
        "captured_compiled": lambda: captured_path("captured_compiled", initial, x, y, args, device, compiled,
                                                   num_classes),
    }
    why_not = {}
    if speed["amp"] != "bf16":
        why_not["fast_fp32"] = "the fast path already runs in fp32"
    for name in ("captured", "captured_compiled"):
        if device.type != "cuda":
            why_not[name] = "needs CUDA (CUDA graphs)"
    paths, skipped = [], {}
    for name in names:
        if name in why_not:
            skipped[name] = why_not[name]
            continue
        _reset_memory(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        path = builders[name]()
        torch.backends.cudnn.benchmark = path.cudnn_benchmark
        for _ in range(path.warmup_calls):  # untimed: cudnn autotuning, compilation, the capture
            path.step()
        _sync(device)
        if before is not None:
            path.resident_mb = (torch.cuda.memory_allocated(device) - before) / 2**20
        paths.append(path)
    return paths, skipped


def time_paths(paths: list, args, device, flops: float, peaks) -> dict:
    """Each path's ``args.windows`` windows of ``args.steps_per_window`` steps, interleaved (window w runs
    the paths in an order rotated by w, so none always follows the same neighbour); images/s is the median
    over windows, with its min and max. On CUDA, peak memory is what the path holds after its warm-up
    (weights, optimizer state, its copy of the data, a graph's pool) plus the most its windows allocated."""
    timers = {path.name: WindowTimer(device) for path in paths}
    images = {path.name: 0 for path in paths}
    for window in range(args.windows):
        shift = window % len(paths)
        for path in paths[shift:] + paths[:shift]:
            torch.backends.cudnn.benchmark = path.cudnn_benchmark
            base = None
            if device.type == "cuda":
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            timers[path.name].start()
            for _ in range(args.steps_per_window):
                count, loss = path.step()
                path.losses.append(loss)
                images[path.name] += count
            timers[path.name].stop()
            if base is not None:
                path.working_mb.append((torch.cuda.max_memory_allocated(device) - base) / 2**20)
    out = {}
    for path in paths:
        seconds = timers[path.name].seconds()
        per_window = images[path.name] // args.windows
        rates = sorted(per_window / s for s in seconds)
        median = statistics.median(rates)
        memory = None if path.resident_mb is None else path.resident_mb + max(path.working_mb)
        losses = [float(loss) for loss in path.losses]
        out[path.name] = _record(
            images[path.name], sum(seconds), device, flops, path.precision, peaks, args.epoch_images, rate=median,
            peak_memory_mb=memory, images_per_s_min=rates[0], images_per_s_max=rates[-1],
            spread=(rates[-1] - rates[0]) / median, windows=len(seconds), window_seconds=seconds,
            resident_mb=path.resident_mb, mean_loss=sum(losses) / len(losses), settings=path.settings,
            **({"graph": path.graph} if path.graph is not None else {}))
    return out


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


def captured_check(initial, x, y, args, device, speed: dict, num_classes: int) -> dict:
    """Per-step losses of the eager and the captured step (both with capturable SGD) from the same weights on
    the same batches, no augmentation and no random attack start, so only the capture differs: the largest
    relative difference, and whether it is within 1e-4."""
    losses, graph = {}, None
    for capture in (False, True):
        path = captured_path("check", copy.deepcopy(initial), x, y, args, device, speed, num_classes, start="none",
                             policy="none", capture=capture)
        losses[capture] = torch.stack([path.step()[1].float() for _ in range(len(x) // args.batch_size)]).cpu()
        graph = path.graph
    eager, captured = losses[False], losses[True]
    diff = float(((captured - eager).abs() / eager.abs().clamp_min(1e-12)).max())
    return {"steps": len(eager), "max_relative_difference": diff, "matches": diff <= 1e-4, "tolerance": 1e-4,
            "eager_losses": eager.tolist(), "captured_losses": captured.tolist(), "graph": graph}


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
    for name in ("naive", "fair", "fast"):
        copy_ = copy.deepcopy(model)
        optimizer = _optimizer(copy_)
        counter = StepFlops()
        with counter:
            if name in ("naive", "fair"):
                (naive_step if name == "naive" else fair_step)(copy_, optimizer, x, y, args.eps, args.eps / 4,
                                                               args.steps)
            else:
                ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes,
                                   class_counts=torch.ones(num_classes, device=device), attack=_train_attack(args),
                                   device=device)
                fast_step(copy_.train(), optimizer, create_method("at"), ctx, x, y, "none", device)
        counted[name] = counter.total / len(x)
    return counted


# --- evaluation and AutoAttack ------------------------------------------------------------------------

def time_eval_pgd(model, method, x, y, args, device, peaks, capture: bool = False) -> dict:
    """Seconds for our PGD-20 evaluation (fp32, uniform start, step ε/4) through ``benchmark.evaluate.predict``;
    with ``capture`` (CUDA) each full batch replays one CUDA graph, the capture (an eager warm-up and the
    recording) timed with it, as every evaluation pays it once per attack."""
    inference = InferenceModel(model, method)
    spec = AttackSpec(kind="pgd", eps=args.eps, steps=args.eval_steps, step_size=args.eps / 4, start="uniform")
    x_dev, y_dev = x.to(device), y.to(device)
    warm = min(args.eval_batch_size, len(x))
    predict(inference, x_dev[:warm], y_dev[:warm], spec, args.eval_batch_size, device, torch.Generator().manual_seed(0))
    _reset_memory(device)
    _sync(device)
    started = time.perf_counter()
    preds, sanity = predict(inference, x_dev, y_dev, spec, args.eval_batch_size, device,
                            torch.Generator().manual_seed(0), capture=capture)
    _sync(device)
    seconds = time.perf_counter() - started
    flops = args.forward_flops * (2 * args.eval_steps + 1)  # k × (forward + input backward) + the re-scoring forward
    record = _record(len(x), seconds, device, flops, conv_precision("none", device), peaks, args.epoch_images)
    record.pop("epoch_seconds")
    record.update(attack=spec.to_dict(), forward_equivalents_per_image=2 * args.eval_steps + 1,
                  batch_size=args.eval_batch_size, robust_accuracy=float((preds == y.numpy()).mean()))
    if "cuda_graph" in sanity:
        record["cuda_graph"] = sanity["cuda_graph"]
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
    p.add_argument("--images", type=int,
                   help="timed training images per path, shared out over the windows (default 5120; tiny 48)")
    p.add_argument("--windows", type=int, help="interleaved timing windows per path, at least 3 (default 5; tiny 3)")
    p.add_argument("--paths", help=f"training paths to time, comma-separated (default all this device runs): "
                                   f"{', '.join(TRAINING_PATHS)}; the *_compiled ones only with --compile")
    p.add_argument("--warmup-steps", type=int, help="untimed steps per path (default 3, 5 with --compile; tiny 1)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps in training (default 10)")
    p.add_argument("--eps", type=float, default=8 / 255, help="L∞ radius (default 8/255); step size ε/4")
    p.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto",
                   help="fast path autocast (default auto: bf16 on CUDA, none on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="fast path channels_last (default: on for CUDA)")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                   help="fast path cudnn.benchmark (default: on for CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="also time the fast and the captured path with the model compiled (inductor)")
    p.add_argument("--no-fast-fp32", action="store_true", help="with bf16, skip timing the fast path in fp32 too")
    p.add_argument("--augment", choices=["crop_flip", "none"], default="crop_flip")
    p.add_argument("--workers", type=int, help="DataLoader workers of the naive and fair loops "
                                               "(default min(4, CPUs) on CUDA, else 0)")
    p.add_argument("--eval-images", type=int,
                   help="images for the PGD-20 evaluation timing (default 10000, a CIFAR test set; tiny 16)")
    p.add_argument("--eval-batch-size", type=int, help="evaluation batch (default 2000; tiny 16)")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--epoch-images", type=int, default=CIFAR10_LT_IR10_TRAIN,
                   help=f"epoch size the seconds per epoch are extrapolated to (default {CIFAR10_LT_IR10_TRAIN:,}: "
                        "CIFAR-10-LT, IR 10)")
    p.add_argument("--no-host-syncs", action="store_true", help="skip counting host syncs per method")
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
    defaults = {"model": ("small_cnn", "resnet18"), "batch_size": (16, 128), "images": (48, 5120),
                "windows": (3, 5), "warmup_steps": (1, 5 if args.compile else 3), "eval_images": (16, 10_000),
                "eval_batch_size": (16, 2000), "workers": (0, min(4, os.cpu_count() or 1))}
    for name, (small, large) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else large)
    if args.windows < 3:
        raise SystemExit("error: --windows must be at least 3 (each path reports the median and spread of its windows)")
    args.steps_per_window = args.images // (args.batch_size * args.windows)
    if args.steps_per_window < 1:
        raise SystemExit(f"error: --images must be at least one batch per window ({args.batch_size} x {args.windows})")
    wanted = TRAINING_PATHS if args.paths is None else [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(TRAINING_PATHS))
    if unknown:
        raise SystemExit(f"error: unknown path(s) {', '.join(unknown)}; choose from {', '.join(TRAINING_PATHS)}")
    if args.paths is None:
        wanted = [p for p in wanted if args.compile or not p.endswith("_compiled")]
        if args.no_fast_fp32:
            wanted = [p for p in wanted if p != "fast_fp32"]
    args.path_names = list(wanted)


def _ratio(out: dict, path: str, base: str) -> float | None:
    if path in out and base in out and "images_per_s" in out[path] and "images_per_s" in out[base]:
        return out[path]["images_per_s"] / out[base]["images_per_s"]
    return None


def run(args) -> dict:
    """Time the training paths in interleaved windows, then PGD-20 evaluation, as ``args`` says; return the
    JSON record."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    _fill_defaults(args, device)
    channels, size = (1, 28) if args.model == "small_cnn" else (3, 32)  # digits-shaped for the small CNN, else CIFAR
    model_args = {"width": 0.25, "drop_rate": 0.0} if args.model == "small_cnn" else {}
    num_classes = 10
    steps = args.warmup_steps + 1 + args.windows * args.steps_per_window  # + 1: a captured path's capture step
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
    speed = resolve_speed(_tri(args.channels_last), _tri(args.cudnn_benchmark), False, args.amp, device)
    timed = args.windows * args.steps_per_window * args.batch_size

    out = {
        "device": name, "device_family": family, "torch": torch.__version__, "cuda": torch.version.cuda,
        "settings": {"model": args.model, "model_args": model_args, "input_shape": [channels, size, size],
                     "num_classes": num_classes, "batch_size": args.batch_size, "timed_images": timed,
                     "windows": args.windows, "steps_per_window": args.steps_per_window,
                     "warmup_steps": args.warmup_steps, "attack": _train_attack(args).to_dict(),
                     "augment": args.augment, "epoch_images": args.epoch_images, "tiny": args.tiny, "seed": args.seed,
                     "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter"},
        "flops": {"forward_per_image": args.forward_flops, "forward_equivalents_per_image": equivalents,
                  "per_image": flops, "counted_per_image": counted,
                  "rule": f"PGD-{args.steps} AT: {args.steps} x (forward + input backward = 2 F) + forward + full "
                          f"backward (3 F) = {equivalents} F per image, for every path"},
        "peak_tflops": peaks,
    }
    paths, skipped = build_paths(args.path_names, initial, x, y, args, device, speed, num_classes)
    out["paths"] = [path.name for path in paths]
    out.update(time_paths(paths, args, device, flops, peaks))
    out.update({name: {"skipped": why} for name, why in skipped.items()})
    out["ratios"] = {path: {"vs_naive": _ratio(out, path, "naive"), "vs_fair": _ratio(out, path, "fair")}
                     for path in out["paths"]}
    out["speedup"] = _ratio(out, "fast", "naive")
    if "captured" in out["paths"]:
        out["captured_speedup"] = _ratio(out, "captured", "naive")
        out["captured_check"] = captured_check(initial, x, y, args, device, speed, num_classes)
    trained = next((path.model for path in paths if path.name == "fast"), None)
    del paths
    if not args.no_host_syncs:
        out["host_syncs"] = host_syncs_per_method(args, device)
    evaluated = initial if trained is None else trained
    out["eval_pgd"] = time_eval_pgd(evaluated, create_method("at"), x_eval, y_eval, args, device, peaks)
    if device.type == "cuda":
        out["eval_pgd_captured"] = time_eval_pgd(evaluated, create_method("at"), x_eval, y_eval, args, device, peaks,
                                                 capture=True)
        out["eval_captured_speedup"] = out["eval_pgd_captured"]["images_per_s"] / out["eval_pgd"]["images_per_s"]
    return out


def format_summary(out: dict) -> str:
    """A few fixed-width lines: one per timed path (median images/s over its windows, min–max), then the ratios."""
    lines = [f"{out['device']}  {out['settings']['model']}  batch {out['settings']['batch_size']}  "
             f"PGD-{out['settings']['attack']['steps']} AT  {out['flops']['per_image'] / 1e9:.2f} GFLOP/image  "
             f"{out['settings']['windows']} interleaved windows of {out['settings']['steps_per_window']} steps "
             f"({out['settings']['timer']})"
             + ("  (tiny CPU configuration: not a GPU number)" if out["settings"]["tiny"] else "")]
    lines.append(f"{'path':<18}{'images/s':>10}{'min-max':>16}{'s/epoch':>9}{'TFLOP/s':>9}{'% peak':>8}{'peak MB':>9}"
                 f"{'x naive':>8}{'x fair':>8}")
    for key in [*out.get("paths", []), "eval_pgd", "eval_pgd_captured"]:
        if key not in out:
            continue
        r = out[key]
        pct = "-" if r["percent_of_peak"] is None else f"{r['percent_of_peak']:.1f}"
        mem = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        epoch = f"{r['epoch_seconds']:.1f}" if "epoch_seconds" in r else "-"
        span = f"{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f}" if "images_per_s_min" in r else "-"
        ratios = out.get("ratios", {}).get(key, {})
        vs = [f"{ratios[k]:.2f}" if ratios.get(k) is not None else "-" for k in ("vs_naive", "vs_fair")]
        lines.append(f"{key:<18}{r['images_per_s']:>10.1f}{span:>16}{epoch:>9}{r['achieved_tflops']:>9.3f}{pct:>8}"
                     f"{mem:>9}{vs[0]:>8}{vs[1]:>8}")
    skipped = [f"{k} ({out[k]['skipped']})" for k in TRAINING_PATHS if k in out and "skipped" in out[k]]
    if skipped:
        lines.append("not timed: " + "; ".join(skipped))
    lines.append(f"s/epoch extrapolated to {out['settings']['epoch_images']:,} images; fast settings "
                 f"{out['fast']['settings'] if 'settings' in out.get('fast', {}) else '-'}")
    if "captured_check" in out:
        check = out["captured_check"]
        lines.append(f"captured vs eager loss over {check['steps']} steps: max rel. diff "
                     f"{check['max_relative_difference']:.1e} ({'matches' if check['matches'] else 'DIFFERS'} at "
                     f"{check['tolerance']:g})")
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
