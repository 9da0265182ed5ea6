"""Live tracking: a cell's training curves and final per-class metrics sent to TensorBoard, MLflow or W&B.

Trackers are optional extras (``pip install 'tailrobust[tensorboard]'``, ``[mlflow]``, ``[wandb]``), chosen with
``--log tensorboard,mlflow`` (the config's ``trackers``, outside the cell key: a tracker changes no number).
Each implements the small :class:`Tracker` protocol: ``start(cell_key, config, classes)`` logs the resolved
config and the key as parameters, ``log_epoch(record)`` receives each epoch's ``log.jsonl`` record after it is
written (loss, accuracies, per-class monitoring recall, learning rate, throughput), ``log_final(record)`` the
finished ``metrics.json`` (per-class recall under clean input and every attack), and ``close()``.

Where they write: TensorBoard event files in the cell's folder (``<cell>/tensorboard/``, so ``tensorboard
--logdir results`` shows every cell); MLflow to ``MLFLOW_TRACKING_URI`` if set, else a file store
``<results>/.mlruns`` (experiment ``MLFLOW_EXPERIMENT_NAME`` or ``tailrobust``; one run per cell, tagged with its
key, continued when the cell resumes); W&B offline into ``<results>/.wandb`` unless ``WANDB_MODE`` or
``WANDB_API_KEY`` says otherwise (project ``WANDB_PROJECT`` or ``tailrobust``). The two stores are dot-folders,
which the results store skips. A tracker that fails while the
cell runs is reported once and dropped: the results on disk are what counts.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from .errors import UsageError

# tracker name -> (the module it needs, the extra that installs it)
BACKENDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


class Tracker(Protocol):
    def start(self, cell_key: str, config: dict, classes: list[str]) -> None: ...
    def log_epoch(self, record: dict) -> None: ...
    def log_final(self, record: dict) -> None: ...
    def close(self) -> None: ...


def check_trackers(names: Iterable[str]) -> list[str]:
    """The tracker names, each known and with its package installed: a one-line UsageError otherwise (before
    anything runs). Accepts a list whose items may be comma lists (``["tensorboard,mlflow", "wandb"]``)."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for item in names:
        if not isinstance(item, str):
            raise UsageError(f"trackers: expected names ({', '.join(BACKENDS)}), got {item!r}")
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name not in BACKENDS:
                from difflib import get_close_matches

                close = get_close_matches(name, BACKENDS, n=1)
                raise UsageError(f"unknown tracker {name!r}; known trackers: {', '.join(BACKENDS)}"
                                 + (f"; did you mean {close[0]!r}?" if close else ""))
            module, extra = BACKENDS[name]
            if importlib.util.find_spec(module) is None:
                raise UsageError(f"--log {name} needs the {module} package: pip install 'tailrobust[{extra}]'")
            if name not in out:
                out.append(name)
    return out


# ------------------------------------------------------------------------------------------ what is logged
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _class_tag(classes: list[str], index: int) -> str:
    name = classes[index] if index < len(classes) else str(index)
    return f"{index:02d}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in str(name))}"


def epoch_scalars(record: dict, classes: list[str]) -> dict[str, float]:
    """One ``log.jsonl`` record as flat scalars: ``train/…`` (loss, acc, lr, images_per_s, seconds, the method's
    own numbers), ``monitor/…`` (clean and robust accuracy) and ``monitor_per_class/<attack>/<class>``."""
    out: dict[str, float] = {}
    seconds, examples = _number(record.get("seconds")), _number(record.get("examples"))
    if seconds and examples is not None:
        out["train/images_per_s"] = examples / seconds
    renames = {"loss": "train/loss", "train_acc": "train/acc", "lr": "train/lr", "seconds": "train/seconds",
               "selection_score": "selection/score", "peak_memory_mb": "train/peak_memory_mb"}
    for key, value in record.items():
        if key in ("epoch", "examples") or key.startswith("monitor_note"):
            continue
        if key.startswith("monitor_per_class_") and isinstance(value, list):
            attack = key[len("monitor_per_class_"):]
            for index, recall in enumerate(value):
                if _number(recall) is not None:
                    out[f"monitor_per_class/{attack}/{_class_tag(classes, index)}"] = float(recall)
        elif _number(value) is not None:
            if key.startswith("monitor_"):
                out[f"monitor/{key[len('monitor_'):]}"] = float(value)
            else:
                out[renames.get(key, f"train/{key}")] = float(value)
    return out


def final_scalars(record: dict) -> dict[str, float]:
    """A finished ``metrics.json`` as flat scalars per attack (clean included): ``final/<attack>/accuracy``,
    ``…/balanced`` (Balanced Robustness), ``…/worst_class_recall``, ``…/group/<group>`` and
    ``final_per_class/<attack>/<class>``."""
    classes = [str(c) for c in (record.get("data") or {}).get("classes", [])]
    out: dict[str, float] = {}
    for attack, summary in ((record.get("evaluation") or {}).get("attacks") or {}).items():
        if not isinstance(summary, dict):
            continue
        for key in ("accuracy", "balanced", "worst_class_recall", "examples"):
            if _number(summary.get(key)) is not None:
                out[f"final/{attack}/{key}"] = float(summary[key])
        for group, value in (summary.get("group_means") or {}).items():
            if _number(value) is not None:
                out[f"final/{attack}/group/{group}"] = float(value)
        for index, recall in enumerate(summary.get("per_class_recall") or []):
            if _number(recall) is not None:
                out[f"final_per_class/{attack}/{_class_tag(classes, index)}"] = float(recall)
    return out


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as ``a.b.c -> text`` parameters (lists and values as JSON text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


# ------------------------------------------------------------------------------------------------ backends
class TensorBoardTracker:
    """Event files in ``<cell>/tensorboard`` (torch's SummaryWriter): scalars per epoch, the config as text
    and as hparams (the cell key among them)."""

    def __init__(self, cell_dir: Path, results_dir: Path):
        self.logdir = Path(cell_dir) / "tensorboard"
        self.writer = None

    def start(self, cell_key: str, config: dict, classes: list[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.classes = classes
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.writer.add_text("cell_key", cell_key, 0)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, sort_keys=True, default=str) + "\n```", 0)
        self._params = {"cell_key": cell_key, **{k: v[:250] for k, v in flat_params(config).items()}}

    def log_epoch(self, record: dict) -> None:
        epoch = int(record.get("epoch", 0))
        for tag, value in epoch_scalars(record, self.classes).items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def log_final(self, record: dict) -> None:
        scalars = final_scalars(record)
        step = int((record.get("config") or {}).get("epochs", 1)) - 1
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        hparam_metrics = {f"hparam/{k}": v for k, v in scalars.items() if k.startswith("final/") and "/group/" not in k}
        self.writer.add_hparams(self._params, hparam_metrics, run_name="hparams")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowTracker:
    """One MLflow run per cell (tag ``cell_key``; a resumed cell continues its run): config and key as
    parameters, the config as ``config.json``, metrics per epoch (step = epoch) and the final per-class metrics."""

    def __init__(self, cell_dir: Path, results_dir: Path):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(results_dir).resolve() / ".mlruns").as_uri()
        self.uri, self.run_id, self.client = uri, None, None

    def start(self, cell_key: str, config: dict, classes: list[str]) -> None:
        from mlflow.entities import Param, RunStatus
        from mlflow.tracking import MlflowClient

        self.classes, self.client = classes, MlflowClient(tracking_uri=self.uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tailrobust")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        earlier = self.client.search_runs([experiment_id], f"tags.cell_key = '{cell_key}'", max_results=1)
        if earlier and earlier[0].info.status != RunStatus.to_string(RunStatus.FINISHED):
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(experiment_id, tags={"cell_key": cell_key, "mlflow.runName": cell_key})
        self.run_id = run.info.run_id
        params = [Param(k, v[:500]) for k, v in {"cell_key": cell_key, **flat_params(config)}.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, config, "config.json")

    def _log(self, scalars: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_epoch(self, record: dict) -> None:
        self._log(epoch_scalars(record, self.classes), int(record.get("epoch", 0)))

    def log_final(self, record: dict) -> None:
        self._log(final_scalars(record), int((record.get("config") or {}).get("epochs", 1)) - 1)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id = None

    def close(self) -> None:
        if self.client is not None and self.run_id is not None:  # stopped before the end: resumable
            self.client.set_terminated(self.run_id, "KILLED")


class WandbTracker:
    """A W&B run per cell (id from the cell key, so a resumed cell continues it); offline unless configured."""

    def __init__(self, cell_dir: Path, results_dir: Path):
        self.dir, self.run = Path(results_dir) / ".wandb", None

    def start(self, cell_key: str, config: dict, classes: list[str]) -> None:
        import hashlib

        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.classes = classes
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tailrobust"), name=cell_key,
                              id=hashlib.sha1(cell_key.encode()).hexdigest()[:16], resume="allow", mode=mode,
                              dir=str(self.dir), config={"cell_key": cell_key, **config}, reinit=True)

    def log_epoch(self, record: dict) -> None:
        self.run.log(epoch_scalars(record, self.classes), step=int(record.get("epoch", 0)))

    def log_final(self, record: dict) -> None:
        self.run.summary.update(final_scalars(record))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


FACTORIES: dict[str, Callable[[Path, Path], Tracker]] = {
    "tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


class Trackers:
    """The trackers of one cell, called together. They start at their first call (after the runner has set
    earlier files aside); a tracker that raises is reported once and dropped; ``finish(metrics)`` logs a
    finished record's numbers and passes it through."""

    def __init__(self, names: Iterable[str], cell_dir: Path, results_dir: Path, cell_key: str, config: dict,
                 classes: list):
        self.active = [(name, FACTORIES[name](Path(cell_dir), Path(results_dir))) for name in check_trackers(names)]
        self._start = (cell_key, config, [str(c) for c in classes])
        self._started = False

    def _each(self, method: str, *args) -> None:
        if not self._started and method != "close":
            self._started = True
            self._each("start", *self._start)
        for name, tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # a tracker never stops a cell: its results are on disk
                print(f"warning: tracker {name} failed in {method} ({type(err).__name__}: "
                      f"{(str(err).splitlines() or [''])[0]}); it is switched off for this cell", file=sys.stderr)
                self.active.remove((name, tracker))

    def log_epoch(self, record: dict) -> None:
        self._each("log_epoch", record)

    def finish(self, metrics: dict) -> dict:
        if metrics.get("status") == "complete":
            self._each("log_final", metrics)
        return metrics

    def close(self) -> None:
        if self._started:
            self._each("close")

    def __bool__(self) -> bool:
        return bool(self.active)
