"""A cell's resolved plan: what one grid cell runs, every number spelled out, built once and passed down.

``Config.resolve(device)`` builds it in the runner (or the grid's entry point); the training loop, model
selection, the evaluation and the executors receive it and never call back into the configuration. It
holds the resolved attack specs, milestone epochs, the selection start epoch, the speed switches as they
run on the device, the method's hyperparameters, the cell key and the resolved record that
``config.yaml`` and ``metrics.json`` keep, beside the plain fields the loop reads.

This module names the vocabularies the plan is made of (selection rules, test splits, AMP modes,
schedule units), so the configuration validates against them without importing the code that runs them.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from methods.base import split_method_tag

SELECTIONS = ("final", "val_best", "test_best")
TEST_SPLITS = ("balanced", "longtail")
AMP_MODES = ("none", "bf16", "auto")  # auto: bf16 on CUDA, none elsewhere (the plan records which)
SCHEDULE_UNITS = ("epoch", "iteration")


@dataclass(frozen=True)
class Plan:
    """One cell, resolved for the device it runs on. Frozen: build a new one, never change it."""

    key: str  # the cell key: results/<key>
    config: dict  # the configuration as written (Config.to_dict()): what a checkpoint stores
    resolved: dict  # every number that runs (Config.resolved()): what config.yaml and metrics.json record
    # data
    dataset: str
    data_root: str | None
    download: bool
    imbalance_ratio: float
    subset_seed: int
    test_split: str
    augment: str
    # model and method
    model: str
    model_args: dict
    method: str  # with its preset tag, e.g. "taet.authors"
    method_args: dict  # as written (create_method adds the defaults)
    method_hparams: dict  # defaults and arguments together
    seed: int
    # optimisation
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    milestone_epochs: tuple[int, ...]
    lr_gamma: float
    schedule_unit: str
    drop_last: bool
    # threat model
    eps: float
    train_attack: Any  # AttackSpec
    eval_attacks: tuple  # AttackSpec, ...
    monitor_attack: Any  # AttackSpec
    eval_batch_size: int
    eval_per_class: int | None
    monitor_per_class: int
    monitor_every: int
    # model selection
    selection: str
    selection_start_epoch: int | None  # None for "final"
    val_fraction: float
    # hardware
    device: str  # as written: auto, cpu, cuda:1 (a location, not part of the key)
    speed: dict  # channels_last, cudnn_benchmark, torch_compile, amp, cuda_graphs as they run on the device
    # how often progress is saved, seconds (0: every epoch / batch); not in the key
    checkpoint_every_s: float = 60.0
    progress_every_s: float = 5.0

    @property
    def method_name(self) -> str:
        return split_method_tag(self.method)[0]

    @property
    def method_preset(self) -> str | None:
        return split_method_tag(self.method)[1]

    @property
    def plugins(self) -> tuple[str, ...]:
        """Plugin files/modules this cell's process loads first (``benchmark.plugins.load_plugins``)."""
        return tuple(self.config.get("plugins") or ())

    @property
    def trackers(self) -> tuple[str, ...]:
        """Live trackers (``benchmark.tracking``) the cell reports to; outside the key."""
        return tuple(self.config.get("trackers") or ())

    def record(self) -> dict:
        """A copy of the resolved configuration, to write into a cell's files."""
        return copy.deepcopy(self.resolved)

    def at(self, device: str) -> "Plan":
        """The same cell on another device of the same type (``cuda:0`` → ``cuda:1``): the device is a
        location, so the key and the speed switches stay; another device type would change both."""
        if _device_type(device) != _device_type(self.device):
            raise ValueError(f"plan {self.key} was resolved for {self.device}; {device} is another device type")
        return dataclasses.replace(self, device=str(device), config={**self.config, "device": str(device)},
                                   resolved={**self.resolved, "device": str(device)})


def _device_type(device: str) -> str:
    name = str(device)
    return "auto" if name == "auto" else name.split(":", 1)[0]
