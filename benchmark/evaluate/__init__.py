"""Predictions on clean inputs and under each attack, with the checks users expect from an attack run.

Each attack's returned x_adv is re-scored by the same model (the reported robust prediction is that
of the returned input, never a by-product of the attack), and its maximal L∞ distance and pixel
range are recorded so a broken projection cannot pass unnoticed. ``python -m benchmark.evaluate``
(this package's ``__main__``) evaluates a checkpoint trained elsewhere (benchmark.evaluate_external).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks import AUTOATTACKS, AttackSpec, run_attack_reported
from attacks.spec import LibraryResult
from attacks.pgd import ExampleSeeds
from ..data.loader import stratified_subset, to_float
from ..atomic import save_npz_atomic
from ..cell import ownership_problem


class InferenceModel(torch.nn.Module):
    """The model as attacks see it: inputs in [0, 1] → the method's inference logits."""

    def __init__(self, model: torch.nn.Module, method):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.logits(self.model, x)


def _load_progress(path: Path | None, attack: AttackSpec, n: int, owner: dict | None = None) -> dict | None:
    """Partial predictions of an interrupted attack run, if they belong to this attack on these examples
    (and, with ``owner``, to this cell and config); otherwise the attack starts over, with a warning."""
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
        meta = json.loads(str(state.pop("meta")))
        if not isinstance(meta, dict):
            raise ValueError("meta is not a mapping")
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
        print(f"warning: {path}: unreadable evaluation progress ({type(err).__name__}); the attack starts over",
              file=sys.stderr, flush=True)
        return None
    if owner is not None:
        problem = ownership_problem(meta, owner["cell_key"], owner["config_hash"], str(path))
        if problem:
            print(f"warning: {problem}: refused, the attack starts over", file=sys.stderr, flush=True)
            return None
    if meta.get("spec") != attack.to_dict() or meta.get("examples") != n:
        return None
    return {"meta": meta, **state}


class EvaluationOutOfMemory(RuntimeError):
    """The device ran out of memory at an evaluation batch that cannot be made smaller here: one image, or an
    attack whose random draws depend on the batch (a smaller batch would change its numbers and its key)."""

    def __init__(self, attack: AttackSpec | None, size: int, invariant: bool):
        name = "the clean pass" if attack is None else f"attack {attack.name or attack.kind}"
        why = "even at batch 1" if invariant else \
            "and its numbers depend on the batch, so it is not retried smaller: lower eval_batch_size"
        super().__init__(f"out of device memory in {name} at evaluation batch {size} {why}")


def _predict_batch(model, x, y, start, size, attack, generator, seed, example_ids, num_classes, device, meta,
                   preds, captured=None) -> int:
    """Predictions for x[start:start + size] (attacked when ``attack``, by ``captured`` when given) written into
    ``preds``; ``meta``'s sanity numbers updated. Returns the number of examples done."""
    xb = x[start:start + size].to(device)
    xb = to_float(xb) if xb.dtype == torch.uint8 else xb.float()
    yb = y[start:start + size].to(device)
    if attack is not None:
        draws = generator
        if attack.metadata.get("batch_invariant"):
            ids = example_ids[start:start + len(yb)] if example_ids is not None else range(start, start + len(yb))
            draws = ExampleSeeds(seed, ids)
        if captured is not None:
            result = LibraryResult(captured(xb, yb, draws), None)
            meta["cuda_graph"] = captured.record
        else:
            result = run_attack_reported(attack, model, xb, yb, draws, num_classes, seed)
        x_adv = result.x_adv
        linf, low, high = float((x_adv - xb).abs().max()), float(x_adv.min()), float(x_adv.max())
        if result.reported_robust is not None:
            meta["reported_robust"] = (meta["reported_robust"] or 0) + result.reported_robust
        if result.cascade is not None:
            meta["cascade"] = _add_cascade(meta["cascade"], result.cascade)
        meta["max_linf"], meta["min_pixel"] = max(meta["max_linf"], linf), min(meta["min_pixel"], low)
        meta["max_pixel"] = max(meta["max_pixel"], high)
        xb = x_adv
    with torch.no_grad():  # re-score: the robust prediction is the model's label for the returned input
        preds[start:start + len(yb)] = model(xb).argmax(dim=1).cpu().numpy()
    return len(yb)


def predict(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec | None,
            batch_size: int, device: torch.device, generator: torch.Generator | None = None,
            desc: str | None = None, num_classes: int | None = None, seed: int = 0,
            progress_path: Path | None = None, owner: dict | None = None,
            example_ids: torch.Tensor | None = None, progress_every_s: float = 0.0,
            capture: bool = False) -> tuple[np.ndarray, dict]:
    """Predicted labels for x (uint8 or float in [0, 1]) clean or under ``attack``, plus sanity numbers.

    With ``progress_path`` the predictions so far (and the random generator's state) are saved after a
    batch at most every ``progress_every_s`` seconds (0: after every batch), and a re-started call
    continues where the last save stopped: a long AutoAttack evaluation loses at most one batch or
    that many seconds. ``owner`` (cell key and config hash) is stored with them and
    checked on resume, so progress copied from another cell is never continued.

    An attack registered ``batch_invariant`` draws each example's random start from its own generator,
    seeded by ``seed`` and the example's index (``example_ids``, default 0..n-1: pass the indices in the
    full evaluated set when x is a subset of it), so the batch size never changes a prediction. Such an
    attack (and the clean pass) that runs out of device memory retries the batch halved, down to what fits
    (``batch_halvings``, ``batch_size_used`` in the sanity record); any other raises EvaluationOutOfMemory.

    ``capture``: on CUDA, our PGD replays one CUDA graph per full batch (``benchmark.cuda_graph.CapturedAttack``;
    ``cuda_graph`` in the sanity record) when there are at least two full batches to replay it on.
    """
    n = len(x)
    preds = np.full(n, -1, dtype=np.int64)
    meta = {"spec": attack.to_dict() if attack is not None else None, "examples": n, "done": 0, "seconds": 0.0,
            "max_linf": 0.0, "min_pixel": 1.0, "max_pixel": 0.0, "reported_robust": None, "cascade": None}
    meta.update(owner or {})
    previous = _load_progress(progress_path, attack, n, owner) if attack is not None else None
    if previous is not None:
        meta, preds = previous["meta"], previous["preds"]
        if generator is not None and "generator" in previous:
            generator.set_state(torch.from_numpy(previous["generator"]))
    was_training = model.training
    model.eval()
    invariant = attack is None or bool(attack.metadata.get("batch_invariant"))
    size, start, last_saved = batch_size, meta["done"], time.monotonic()
    captured = None
    if capture and attack is not None and attack.kind == "pgd" and torch.device(device).type == "cuda" \
            and n - start >= 2 * batch_size:
        from ..cuda_graph import CapturedAttack

        captured = CapturedAttack(model, attack)
    bar = tqdm(total=n, initial=start, unit="img", desc=desc, leave=False, disable=True if desc is None else None)
    while start < n:
        started = time.perf_counter()
        try:
            count = _predict_batch(model, x, y, start, size, attack, generator, seed, example_ids, num_classes,
                                   device, meta, preds, captured)
        except torch.OutOfMemoryError:
            if not invariant or size == 1:
                raise EvaluationOutOfMemory(attack, size, invariant) from None
            captured = None  # a graph of the batch that did not fit is not replayed
            size = max(1, size // 2)  # the numbers do not depend on the batch: retry this batch halved
            meta["batch_halvings"] = meta.get("batch_halvings", 0) + 1
            torch.cuda.empty_cache()
            continue
        start += count
        meta["done"], meta["seconds"] = start, meta["seconds"] + time.perf_counter() - started
        meta["batch_size_used"] = size
        bar.update(count)
        if progress_path is not None and meta["done"] < n and time.monotonic() - last_saved >= progress_every_s:
            last_saved = time.monotonic()
            extra = {"generator": generator.get_state().numpy()} if generator is not None else {}
            save_npz_atomic(progress_path, preds=preds, meta=np.array(json.dumps(meta)), **extra)
    bar.close()
    model.train(was_training)
    if attack is None:
        return preds, {}
    sanity = {k: meta[k] for k in ("max_linf", "min_pixel", "max_pixel")}
    sanity["resumed"] = previous is not None
    if meta.get("batch_halvings"):
        sanity.update(batch_halvings=meta["batch_halvings"], batch_size_used=meta["batch_size_used"])
    if meta.get("cuda_graph") is not None:
        sanity["cuda_graph"] = meta["cuda_graph"]
    if attack.kind in AUTOATTACKS:
        rescored = int((preds == y.numpy()).sum())
        sanity.update(reported_robust=meta["reported_robust"], rescored_robust=rescored,
                      rescore_matches=meta["reported_robust"] in (None, rescored), cascade=meta["cascade"])
    return preds, sanity


def _add_cascade(total: dict | None, batch: dict) -> dict:
    """AutoAttack's per-stage robust counts per class, summed over evaluation batches."""
    if total is None:
        return batch
    add = lambda a, b: [i + j for i, j in zip(a, b)]  # noqa: E731
    return {"stages": total["stages"],
            "robust_per_class": [add(a, b) for a, b in zip(total["robust_per_class"], batch["robust_per_class"])],
            "examples_per_class": add(total["examples_per_class"], batch["examples_per_class"]),
            "stage_seconds": add(total.get("stage_seconds", []), batch.get("stage_seconds", []))}


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[AttackSpec],
             batch_size: int, device: torch.device, seed: int = 0, progress: bool = True,
             num_classes: int | None = None, progress_dir: Path | None = None, owner: dict | None = None,
             progress_every_s: float = 0.0, capture: bool = False) -> dict:
    """Clean and per-attack predictions on the same examples, with seconds and sanity records per attack.

    An attack with ``per_class`` runs on a fixed class-stratified subset of x (seed 0, the same for every
    method); its prediction is -1 on the examples it did not attack. With ``progress_dir`` every attack
    keeps its partial predictions there, so an interrupted evaluation resumes. ``capture`` (a cell whose
    ``cuda_graphs`` runs, on CUDA): our PGD attacks replay a CUDA graph per batch (``CapturedAttack``).
    """
    num_classes = int(y.max()) + 1 if num_classes is None and len(y) else num_classes
    predictions, records = {}, {}
    train_mode_calls = [0]  # forward passes made while any module was in training mode (BatchNorm, dropout)

    modules = list(model.modules())

    def count_train_mode(_module, _inputs):
        if any(m.training for m in modules):
            train_mode_calls[0] += 1

    hook = model.register_forward_pre_hook(count_train_mode)
    try:
        _evaluate_each(model, x, y, attacks, batch_size, device, seed, progress, num_classes, progress_dir,
                       predictions, records, train_mode_calls, owner, progress_every_s, capture)
    finally:
        hook.remove()
    return {"predictions": predictions, "records": records}


def _evaluate_each(model, x, y, attacks, batch_size, device, seed, progress, num_classes, progress_dir,
                   predictions, records, train_mode_calls, owner=None, progress_every_s: float = 0.0,
                   capture: bool = False) -> None:
    for attack in [None, *attacks]:
        calls_before = train_mode_calls[0]
        name = "clean" if attack is None else attack.name
        generator = torch.Generator().manual_seed(seed)  # each attack's random start is reproducible
        started = time.perf_counter()
        if attack is not None and attack.per_class is not None:
            idx = stratified_subset(y, attack.per_class, seed=0)
        else:
            idx = np.arange(len(y))
        t = torch.as_tensor(idx)
        path = None if progress_dir is None or attack is None else Path(progress_dir) / f"{name}.npz"
        pred, sanity = predict(model, x[t], y[t], attack, batch_size, device, generator,
                               desc=f"eval {name}" if progress else None, num_classes=num_classes, seed=seed,
                               progress_path=path, owner=owner, example_ids=t, progress_every_s=progress_every_s,
                               capture=capture)
        full = np.full(len(y), -1, dtype=np.int64)
        full[idx] = pred
        predictions[name] = full
        records[name] = {"seconds": time.perf_counter() - started, **sanity, "examples": int(len(idx)),
                         "spec": attack.to_dict() if attack is not None else None,
                         "label": attack.label if attack is not None else "Clean",
                         "description": attack.description if attack is not None else "clean inputs, no attack"}
        records[name]["forward_calls_in_train_mode"] = train_mode_calls[0] - calls_before
        if attack is not None:
            records[name]["seed"] = seed
            records[name]["eval_key"] = attack.evaluation_key(seed, batch_size)
            records[name]["batch_invariant"] = bool(attack.metadata.get("batch_invariant"))
        if attack is not None and sanity["max_linf"] > attack.eps + 1e-5:
            raise RuntimeError(f"attack {name} left the ε-ball: max L∞ {sanity['max_linf']:.6f} > ε {attack.eps:.6f}")

