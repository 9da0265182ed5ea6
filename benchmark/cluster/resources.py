"""What one cell asks a cluster for: CPUs, a (fractional) share of a GPU, memory and a time limit.

The defaults come from the model a profile trains; ``--num-cpus``, ``--num-gpus``, ``--slurm-mem``,
``--slurm-time`` override them. The GPU shares below are REASONED, NOT MEASURED (no GPU was available
when they were written): a cell's GPU memory is the model's activations for one batch of PGD (batch ×
attack steps never held at once: one forward/backward at a time) plus weights and optimizer state.

- ``small_cnn`` (quick profile, 28×28 digits, batch 64): well under 1 GiB and far from saturating an
  SM array, so four cells share one GPU (``num_gpus: 0.25``); they are then bound by the host CPUs that
  feed them, hence 2 CPUs each.
- ``resnet18`` (CIFAR-10/100-LT, DermaMNIST at 28×28, batch 128): about 3-5 GiB in bf16 and enough
  kernels to keep a large GPU busy about half the time, so two per GPU (``0.5``).
- ``preact_resnet18`` (Tiny-ImageNet-LT, 64×64): 4× the activations of 32×32 and compute-bound, one per GPU.
- anything else: one GPU per cell.

On a CPU-only cluster give ``--num-gpus 0`` (and ``--device cpu``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import UsageError
from ..plan import Plan

PACKING = {  # model -> (GPU share per cell, CPUs per cell, memory GiB, time limit minutes): reasoned, not measured
    "small_cnn": (0.25, 2, 4, 60),
    "resnet18": (0.5, 4, 16, 24 * 60),
    "preact_resnet18": (1.0, 6, 24, 48 * 60),
}
DEFAULT = (1.0, 4, 16, 24 * 60)


@dataclass(frozen=True)
class Resources:
    num_gpus: float
    num_cpus: int
    mem_gb: int
    time_min: int

    @classmethod
    def for_plan(cls, plan: Plan) -> "Resources":
        gpus, cpus, mem, minutes = PACKING.get(plan.model, DEFAULT)
        if str(plan.device).startswith("cpu"):
            gpus = 0.0
        return cls(gpus, cpus, mem, minutes)

    def override(self, num_gpus=None, num_cpus=None, mem_gb=None, time_min=None) -> "Resources":
        new = replace(self, **{k: v for k, v in dict(num_gpus=num_gpus, num_cpus=num_cpus, mem_gb=mem_gb,
                                                       time_min=time_min).items() if v is not None})
        if new.num_gpus < 0 or (new.num_gpus > 1 and new.num_gpus != int(new.num_gpus)):
            raise UsageError(f"--num-gpus {new.num_gpus:g}: give 0, a share of one GPU (0 < x <= 1) or a whole number")
        if new.num_cpus < 1 or new.mem_gb < 1 or new.time_min < 1:
            raise UsageError("--num-cpus, --slurm-mem and --slurm-time must be at least 1")
        return new


def parse_time(text: str) -> int:
    """Slurm's time formats (minutes, ``H:MM:SS``, ``D-HH:MM``) as whole minutes."""
    try:
        days, _, rest = text.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if len(parts) == 1:
            minutes = parts[0] if not days else parts[0] * 60  # "2-12" is days-hours
        elif len(parts) == 2:
            minutes = parts[0] * 60 + parts[1] if days else parts[0] + (parts[1] > 0)
        else:
            minutes = parts[0] * 60 + parts[1] + (parts[2] > 0)
        minutes += int(days or 0) * 24 * 60
    except ValueError:
        raise UsageError(f"--slurm-time {text!r}: give minutes, H:MM:SS or D-HH:MM") from None
    if minutes < 1:
        raise UsageError(f"--slurm-time {text!r}: at least one minute")
    return minutes
