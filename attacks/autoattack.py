"""AutoAttack (Croce & Hein, ICML 2020) as its authors define it, and torchattacks' as a cross-check.

``kind: autoattack`` runs the authors' package (PyPI ``pyautoattack``, the packaged fra31 code) at its
standard settings: APGD-CE (100 iterations, 1 restart) → APGD-T (100 iterations, 9 target classes, or
C − 1 with fewer than 10 classes) → FAB-T (9 targets, 100 iterations) → Square (5,000 queries), each
stage only on the examples every earlier stage left correct (the survivor cascade of its
``run_standard_evaluation``). The cascade is driven here one stage at a time (each stage a call of the
package's own ``run_standard_evaluation`` with that stage alone), which runs the same attacks on the
same inputs as one call would, and lets us record each stage's robust count per class.

``kind: torchattacks_autoattack`` is torchattacks' AutoAttack rebuilt from its components with the
reference's budgets (its own ``AutoAttack`` class builds APGD, APGD-T and FAB with 10 iterations, and
targets C − 1 classes: torchattacks issue #196), driven through the same cascade.

Both always get the number of classes and a seed: the package's default seed is the clock. A version
other than ``standard`` or a budget below the reference (``iterations`` < 100) gets a name and label
that say so; nothing cheaper than the standard is ever labelled plain "AutoAttack".
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from .pgd import eval_mode
from .spec import LibraryResult, register_attack

VERSIONS = ("standard", "plus", "rand", "apgd-ce")
# the stages of each version, in the order the authors' package runs them (autoattack.py set_version)
STAGES = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
    "apgd-ce": ("apgd-ce",),  # the standard version's first stage alone (a cheap stand-in, named as such)
}
REFERENCE_ITERATIONS = 100  # APGD and FAB iterations of every version of the reference
REFERENCE_QUERIES = 5000  # Square's query budget in the reference
MAX_TARGETS = 9  # target classes of APGD-T and FAB-T in the reference


def target_classes(num_classes: int) -> int:
    """APGD-T / FAB-T target the 9 most likely wrong classes; a model with fewer has only C − 1 of them."""
    return max(1, min(MAX_TARGETS, num_classes - 1))


def check_classes(version: str, num_classes: int) -> None:
    """The targeted DLR loss of APGD-T divides by z_(1) − (z_(3) + z_(4))/2: it needs four classes."""
    if version != "apgd-ce" and num_classes < 4:
        raise ValueError(f"AutoAttack {version} needs at least 4 classes (its targeted DLR loss uses the "
                         f"4th-largest logit); this model has {num_classes}: use version apgd-ce")


# A stage maps (clean inputs, labels) of the surviving examples to (adversarial inputs, fooled mask or None);
# None: the stage reports nothing itself and the cascade classifies its inputs.
Stage = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def survivor_cascade(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, stages: list[tuple[str, Stage]],
                     num_classes: int) -> LibraryResult:
    """AutoAttack's protocol: each stage attacks (from the clean input) only the examples still robust.

    Returns the first adversarial input that fooled the model for each broken example (the clean input
    for the others), the final robust count, and the robust count per class after clean and each stage.
    """
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    x_adv = x.clone()
    counts, seconds = [torch.bincount(y[robust], minlength=num_classes).tolist()], []
    for _, stage in stages:
        started = time.perf_counter()
        idx = torch.nonzero(robust).flatten()
        if len(idx):  # the authors' cascade stops once nothing is left to attack
            adv, fooled = stage(x[idx].clone(), y[idx].clone())
            adv = adv.detach().to(x.device)
            if fooled is None:
                with torch.no_grad():
                    fooled = model(adv).argmax(1) != y[idx]
            fooled = fooled.to(x.device)
            x_adv[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
        counts.append(torch.bincount(y[robust], minlength=num_classes).tolist())
        seconds.append(time.perf_counter() - started)
    cascade = {"stages": ["clean", *(name for name, _ in stages)], "robust_per_class": counts,
               "examples_per_class": torch.bincount(y, minlength=num_classes).tolist(), "stage_seconds": seconds}
    return LibraryResult(x_adv, int(robust.sum()), cascade)


def _reference_stages(model: torch.nn.Module, eps: float, version: str, num_classes: int, seed: int,
                      iterations: int, device: torch.device) -> list[tuple[str, Stage]]:
    """Each stage of the authors' AutoAttack as one call of their ``run_standard_evaluation``."""
    import logging

    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT

    logging.getLogger("auto-attack").setLevel(logging.ERROR)  # its checks warn through this logger
    adversary = AutoAttack(model, norm="Linf", eps=eps, seed=seed, device=device,
                           version="standard" if version == "apgd-ce" else version)
    if iterations != REFERENCE_ITERATIONS:  # a reduced budget: rebuild the attacks (their schedules derive from n_iter)
        old = adversary.apgd
        adversary.apgd = APGDAttack(model, n_restarts=old.n_restarts, n_iter=iterations, eps=eps, norm="Linf",
                                    eot_iter=old.eot_iter, rho=old.thr_decr, seed=seed, device=device,
                                    logger=adversary.logger)
        adversary.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, n_iter=iterations, eps=eps, norm="Linf",
                                                      eot_iter=1, rho=.75, seed=seed, device=device,
                                                      logger=adversary.logger)
        adversary.fab = FABAttack_PT(model, n_restarts=adversary.fab.n_restarts, n_iter=iterations, eps=eps,
                                     seed=seed, norm="Linf", device=device)
    targets = target_classes(num_classes)  # its default of 9 assumes ≥ 10 classes
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    adversary.verbose = False

    def stage(name: str) -> Stage:
        def run(xs, ys):
            adversary.attacks_to_run = [name]
            x_adv, y_adv = adversary.run_standard_evaluation(xs, ys, batch_size=len(xs))
            return x_adv, y_adv.to(ys.device) != ys  # the package's own verdict on its returned inputs

        return run

    return [(name, stage(name)) for name in STAGES[version]]


def _torchattacks_stages(model: torch.nn.Module, eps: float, version: str, num_classes: int, seed: int,
                         iterations: int) -> list[tuple[str, Stage]]:
    """torchattacks' components with the reference's budgets (not its AutoAttack's 10 iterations)."""
    import torchattacks

    if version not in ("standard", "apgd-ce"):
        raise ValueError(f"torchattacks_autoattack builds the standard version (or its apgd-ce stage); "
                         f"got {version!r}")
    targets = target_classes(num_classes)
    apgd = torchattacks.APGD(model, norm="Linf", eps=eps, steps=iterations, n_restarts=1, seed=seed, loss="ce",
                             eot_iter=1, rho=.75)
    apgdt = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=iterations, n_restarts=1, seed=seed, eot_iter=1,
                               rho=.75, n_classes=num_classes)
    apgdt.n_target_classes = targets  # torchattacks targets all C − 1 other classes (99 on CIFAR-100)
    fab = torchattacks.FAB(model, norm="Linf", eps=eps, steps=iterations, n_restarts=1, multi_targeted=True,
                           n_classes=num_classes, seed=seed)
    fab.n_target_classes = targets
    square = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=REFERENCE_QUERIES, n_restarts=1, p_init=.8,
                                 seed=seed, resc_schedule=False)
    components = {"apgd-ce": apgd, "apgd-t": apgdt, "fab-t": fab, "square": square}
    return [(name, lambda xs, ys, a=components[name]: (a(xs, ys), None)) for name in STAGES[version]]


def autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str,
               num_classes: int, seed: int, library: str = "reference",
               iterations: int = REFERENCE_ITERATIONS) -> LibraryResult:
    """AutoAttack (L∞) on (x, y) in eval mode: ``library`` "reference" (the authors' package) or
    "torchattacks" (the cross-check), with the per-class survivor cascade recorded."""
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; choose one of {', '.join(VERSIONS)}")
    check_classes(version, num_classes)
    x = x.detach().float()
    with eval_mode(model):
        if library == "reference":
            try:
                stages = _reference_stages(model, eps, version, num_classes, seed, iterations, x.device)
            except ImportError:
                raise RuntimeError("the reference AutoAttack is not installed: pip install pyautoattack") from None
        elif library == "torchattacks":
            stages = _torchattacks_stages(model, eps, version, num_classes, seed, iterations)
        else:
            raise ValueError(f"unknown AutoAttack library {library!r}")
        return survivor_cascade(model, x, y, stages, num_classes)


# ---------------------------------------------------------------------------------------------------------------
# Registration: the authors' AutoAttack and torchattacks' cross-check at the same budgets.

def _check_spec(spec) -> dict:
    """Version and iterations of an AutoAttack spec; steps 0 becomes the reference's iterations."""
    if spec.version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {spec.version!r}; choose one of {', '.join(VERSIONS)}")
    if spec.steps < 0:
        raise ValueError(f"AutoAttack iterations (steps) must be >= 1, or 0 for the reference's "
                         f"{REFERENCE_ITERATIONS}; got {spec.steps}")
    if spec.kind == "torchattacks_autoattack" and spec.version not in ("standard", "apgd-ce"):
        raise ValueError(f"torchattacks_autoattack builds the standard version (or apgd-ce); got {spec.version!r}")
    return {"steps": REFERENCE_ITERATIONS} if spec.steps == 0 else {}


def _label(spec) -> str:
    """Only the reference at its full budget is plain "AutoAttack"; anything else says what it is."""
    text = {"standard": "AutoAttack", "plus": "AutoAttack+", "rand": "AutoAttack (rand)", "apgd-ce": "APGD-CE"}[spec.version]
    qualifiers = ["torchattacks"] if spec.kind == "torchattacks_autoattack" else []
    if spec.steps != REFERENCE_ITERATIONS:
        qualifiers.append(f"{spec.steps} it., reduced" if spec.reduced else f"{spec.steps} it.")
    return text + (f" ({', '.join(qualifiers)})" if qualifiers else "")


def _name(spec) -> str:
    base = {"standard": "aa", "apgd-ce": "apgd_ce"}.get(spec.version, f"aa_{spec.version}")
    base = base if spec.kind == "autoattack" else f"ta_{base}"
    return base if spec.steps == REFERENCE_ITERATIONS else f"{base}_it{spec.steps}"


def _runner(library: str):
    def run(spec, model, x, y, generator=None, num_classes=None, seed=0) -> LibraryResult:
        if num_classes is None:
            raise ValueError(f"{spec.name}: AutoAttack needs num_classes")
        return autoattack(model, x, y, spec.eps, spec.version, num_classes, seed, library, spec.steps)

    return run


_AUTOATTACK = dict(family="ensemble", iterative=True, takes=("version", "steps"), parameter_free=True,
                   check=_check_spec, label=_label, name=_name, autoattack=True,
                   reference_iterations=REFERENCE_ITERATIONS)
register_attack("autoattack", _runner("reference"), library="pyautoattack",
                title="the authors' AutoAttack, pyautoattack", **_AUTOATTACK)
register_attack("torchattacks_autoattack", _runner("torchattacks"), library="torchattacks",
                title="torchattacks' AutoAttack components, the reference's budgets unless reduced", cross_check_of="autoattack",
                **_AUTOATTACK)
