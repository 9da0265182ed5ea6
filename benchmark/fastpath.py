"""Speed switches of the training loop: they change how fast a step runs, never the loss it computes.

* ``channels_last``: the model's weights (and so its activations) in NHWC layout, the layout cuDNN's
  tensor-core convolutions read without transposing; the batch itself stays NCHW, and the first
  convolution converts it (the same one copy a pre-hook would make).
* ``cudnn_benchmark``: cuDNN times its convolution algorithms once per input shape and keeps the
  fastest. A global flag of the process, so ``prepare_model`` sets it for every cell, on or off.
* ``torch_compile``: ``nn.Module.compile()`` in place (state-dict keys and checkpoints unchanged).
  Off by default: the attack runs the model in eval mode, training in train mode, monitoring under
  no_grad, so one model compiles into several graphs;
  the first steps of a run pay for that, and a model copied with ``copy.deepcopy`` (LAS-AT's
  look-ahead) has not been tried compiled. Inductor's on-disk caches (FX graphs, AOTAutograd, Triton
  kernels) go to ``<results>/.cache/inductor`` (``compile_cache``), shared by every cell of the grid, so
  a grid compiles each (model, batch, dtype) once and later cells load the kernels; the cell's cost
  record counts the cache's hits and misses (``cost["compile"]``).

* ``cuda_graphs``: the whole training step recorded once as a CUDA graph and replayed per batch
  (``benchmark/cuda_graph.py``). Default ``false``; ``auto`` is on only on CUDA and only for a method that
  declares its step graph-safe (``Method.graph_safe``), and ``true`` where that does not hold runs the eager
  step, the cell's cost record saying why (``cost["cuda_graphs"]``). In the key only when it runs, so every
  eager cell keeps the key it had before the switch existed. Not yet measured on a GPU: off by default.

Config writes each switch as ``auto``, ``true`` or ``false``; ``auto`` is on exactly when the run
is on CUDA. ``resolve_speed`` turns the written values into what runs, and ``Config.resolved()``
records that, so the cell key hashes what ran (a CPU and a GPU run of one profile are different
cells) and ``auto`` and an explicit ``true`` on a GPU are the same cell. ``amp`` may be ``auto``
too (bf16 on CUDA, none elsewhere); its default stays ``none``. bf16 runs only on CUDA: on a CPU
``amp: bf16`` is recorded as written and runs fp32, as it always did.

The rest of the fast path was already in the loop and is not switched (checked for issue #7):
data resident on the device as uint8 with batched crop + flip there (the policy augmentations
RandAugment/AutoAugment run per image on the CPU, see ``transforms.policy_per_image``); attack
steps take input-only gradients (``torch.autograd.grad`` with respect to x_adv; the parameters are no
longer frozen around it: that saved no FLOP and disabled bf16 autocast's weight-cast cache); δ and
x_adv stay fp32 under autocast and every loss is taken on fp32 logits; BatchNorm keeps fp32
weights and running statistics under bf16 autocast; evaluation never autocasts (fp32, TF32
convolutions where cuDNN allows them).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import UsageError

SPEED_SWITCHES = ("channels_last", "cudnn_benchmark")  # written auto | true | false
COMPILE_CACHE = Path(".cache") / "inductor"  # under the results folder
# The user's own cache folder, if they chose one before the first compile (inductor writes its default into
# the environment when it first compiles, so this is read at import, before any compile of this process).
_USER_COMPILE_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
SWITCH_WORDS = {"auto": "auto", "true": True, "false": False}


def runs_on_cuda(device) -> bool:
    """Whether a run on ``device`` ("auto", "cpu", "cuda:1", or a torch.device) will be on a CUDA GPU."""
    name = str(device)
    return (name == "auto" or name.startswith("cuda")) and torch.cuda.is_available()


def parse_switch(value, name: str):
    """``"auto"``, True or False from what a profile or a CLI may write (true/false also as strings)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in SWITCH_WORDS:
        return SWITCH_WORDS[value.strip().lower()]
    raise UsageError(f"{name} must be auto, true or false; got {value!r}")


def resolve_amp(amp: str, device) -> str:
    """``auto`` as bf16 on CUDA and none elsewhere; an explicit mode as written."""
    if amp == "auto":
        return "bf16" if runs_on_cuda(device) else "none"
    return amp


def graph_safety(method) -> tuple[bool, str | None]:
    """(graph-safe?, why not) as a method (instance or class) declares it (``Method.graph_safe``)."""
    safe = bool(getattr(method, "graph_safe", False))
    return safe, None if safe else str(getattr(method, "graph_unsafe_reason", "") or "not declared graph-safe")


def resolve_cuda_graphs(requested, device, method) -> dict:
    """What ``cuda_graphs`` does for ``method`` on ``device``: ``{"requested", "used", "why"}``. ``auto`` and
    ``true`` both need CUDA and a graph-safe method; without either the step runs eagerly and ``why`` says
    which was missing (None when the graph runs)."""
    requested = parse_switch(requested, "cuda_graphs")
    if requested is False:
        return {"requested": False, "used": False, "why": "cuda_graphs: false"}
    safe, reason = graph_safety(method)
    if not runs_on_cuda(device):
        why = f"no CUDA device for a run on {device}: eager step"
    elif not safe:
        why = f"method {getattr(method, 'name', '?')} is not graph-safe ({reason}): eager step"
    else:
        return {"requested": requested, "used": True, "why": None}
    return {"requested": requested, "used": False, "why": why}


def resolve_speed(channels_last, cudnn_benchmark, torch_compile, amp: str, device, cuda_graphs=False,
                  method=None) -> dict:
    """The speed settings that run on ``device``: concrete bools and an AMP mode, never ``auto``.
    ``method`` (a Method class or instance) decides whether ``cuda_graphs`` can run."""
    cuda = runs_on_cuda(device)
    out = {}
    for name, value in (("channels_last", channels_last), ("cudnn_benchmark", cudnn_benchmark)):
        value = parse_switch(value, name)
        out[name] = cuda if value == "auto" else value
    if not isinstance(torch_compile, bool):
        raise UsageError(f"torch_compile must be true or false; got {torch_compile!r}")
    out["torch_compile"] = torch_compile
    out["amp"] = resolve_amp(amp, device)
    out["cuda_graphs"] = resolve_cuda_graphs(cuda_graphs, device, method)["used"]
    return out


def speed_of(cfg, device=None) -> dict:
    """``resolve_speed`` for a Config, on ``device`` (default: the device the config names)."""
    from methods import get_method  # lazily: methods import benchmark.errors, whose package holds this module

    return resolve_speed(cfg.channels_last, cfg.cudnn_benchmark, cfg.torch_compile, cfg.amp,
                         cfg.device if device is None else device, cfg.cuda_graphs, get_method(cfg.method_name))


def prepare_model(model: torch.nn.Module, speed: dict) -> torch.nn.Module:
    """Apply resolved speed settings to a model already on its device (in place; returns it)."""
    torch.backends.cudnn.benchmark = bool(speed["cudnn_benchmark"])  # global: set for every cell, on or off
    if speed["channels_last"]:
        model.to(memory_format=torch.channels_last)  # 4-D weights only; others are left as they are
    if speed["torch_compile"]:
        model.compile()
    return model


def compile_cache(results: Path) -> Callable[[], dict]:
    """Point inductor's on-disk caches at ``results/.cache/inductor`` (unless the user set
    ``TORCHINDUCTOR_CACHE_DIR``) and return a probe: call it after training for the FX-graph cache's hits
    and misses since now, with the folder, for the cost record. Dynamo's in-memory state is reset first, so
    a cell compiles the same whether it is the first of its process or the fortieth (its recompile limit
    would otherwise send later models to eager) and its kernels come from the disk cache."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    folder = _USER_COMPILE_CACHE or str(Path(results).resolve() / COMPILE_CACHE)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder  # read by inductor at each compile
    before = dict(counters["inductor"])

    def probe() -> dict:
        now = counters["inductor"]
        return {"cache_dir": folder, "chosen_by": "user" if _USER_COMPILE_CACHE else "harness",
                "fx_graph_cache_hits": now["fxgraph_cache_hit"] - before.get("fxgraph_cache_hit", 0),
                "fx_graph_cache_misses": now["fxgraph_cache_miss"] - before.get("fxgraph_cache_miss", 0)}

    return probe


def autocast(amp: str, device: torch.device):
    """bf16 autocast around the model on CUDA (weights, BatchNorm statistics, δ and x_adv stay fp32);
    a no-op on other devices and for ``none``."""
    if amp == "bf16" and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
