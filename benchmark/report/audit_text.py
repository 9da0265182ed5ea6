"""The cell page's audit as sentences, one per check, each with a mark: ok (green), warn (amber), fail (red).

``metrics.json``'s ``audit`` block (benchmark/audit.py) is data: lists of comparisons and maps of attack
name to result, which printed as raw JSON (``[]``, ``{"fgsm": true}``) tell a reader nothing. Each check
becomes a sentence that says what was compared and what came out; a check that did not run says so
(amber: nothing was verified), and a field this report does not know is shown as recorded (amber).
``flags`` is listed above the sentences as the audit's own summary and is not repeated here.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass

from .tables import Cell, Column, Table, attack_label

OK, WARN, FAIL = "ok", "warn", "fail"
RESULT_WORDS = {OK: "pass", WARN: "check", FAIL: "fail"}
KNOWN = {"attack_agreement", "autoattack_agreement", "order_checks", "order_tolerance", "within_budget",
         "zero_gradient_fraction", "rescored", "rescoring", "forward_calls_in_train_mode",
         "model_mode_during_attacks", "flags"}
ZERO_GRADIENT_FAIL = 0.05  # the audit's own flag threshold (benchmark/audit.py)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    sentence: str


def _classes(indices, names: list[str]) -> str:
    shown = [str(names[i]) if isinstance(i, int) and 0 <= i < len(names) else str(i) for i in indices]
    return ", ".join(shown)


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, numbers.Real) else "?"


def audit_checks(audit: dict, labels: dict[str, str] | None = None, classes: list[str] | None = None) -> list[Check]:
    """One Check per comparison in ``audit``; ``labels`` names attacks, ``classes`` names class indices."""
    audit = audit if isinstance(audit, dict) else {}
    names, classes = labels or {}, classes or []

    def name(attack) -> str:
        return attack_label(str(attack), names)

    out: list[Check] = []
    agreement = audit.get("attack_agreement")
    if isinstance(agreement, list):
        if not agreement:
            out.append(Check("PGD cross-check", WARN, "No torchattacks PGD ran beside ours from the same start, so "
                                                      "our PGD was not cross-checked in this cell."))
        for a in agreement:
            pair = f"{name(a.get('ours'))} (ours) and {name(a.get('torchattacks'))}"
            n, flagged = int(a.get("disagreements") or 0), a.get("flagged_classes") or []
            if flagged:
                out.append(Check("PGD cross-check", FAIL, f"{pair} disagree on more than one example in classes "
                                                          f"{_classes(flagged, classes)} ({n} examples in all)."))
            elif n:
                out.append(Check("PGD cross-check", WARN, f"{pair} disagree on {n} example{'s' if n != 1 else ''}, "
                                                          "no class on more than one."))
            else:
                out.append(Check("PGD cross-check", OK, f"{pair} agree on every example."))
    tolerance = audit.get("order_tolerance")
    tol = f" (tolerance {100 * tolerance:.0f} points)" if isinstance(tolerance, numbers.Real) else ""
    for o in audit.get("order_checks") or []:
        strong, weak = name(o.get("stronger")), name(o.get("weaker"))
        accs = f"{_pct(o.get('stronger_acc'))} against {_pct(o.get('weaker_acc'))}"
        on = f" on {o['examples']} examples" if isinstance(o.get("examples"), int) else ""
        if not o.get("ok", False):
            out.append(Check("Attack strength", FAIL, f"{strong} leaves more examples correct than the weaker "
                                                      f"{weak}{tol}: {accs}{on}."))
        elif isinstance(o.get("stronger_acc"), numbers.Real) and isinstance(o.get("weaker_acc"), numbers.Real) \
                and o["stronger_acc"] > o["weaker_acc"]:
            out.append(Check("Attack strength", WARN, f"{strong} is slightly weaker than {weak}, within the "
                                                      f"tolerance{tol}: {accs}{on}."))
        else:
            out.append(Check("Attack strength", OK, f"{strong} is at least as strong as {weak}: {accs}{on}."))
    aa = audit.get("autoattack_agreement")
    for a in aa if isinstance(aa, list) else []:
        pair = f"{name(a.get('torchattacks'))} against the reference {name(a.get('reference'))}"
        weaker, n = a.get("library_weaker_classes") or [], int(a.get("disagreements") or 0)
        accs = f"robust {_pct(a.get('torchattacks_acc'))} against {_pct(a.get('reference_acc'))}"
        if weaker:
            out.append(Check("AutoAttack cross-check", FAIL, f"{pair}: the library found fewer "
                                                             f"adversarial examples in classes "
                                                             f"{_classes(weaker, classes)} ({accs})."))
        elif n:
            out.append(Check("AutoAttack cross-check", WARN, f"{pair}: they differ on {n} examples, "
                                                             f"never with the library weaker in a class ({accs})."))
        else:
            out.append(Check("AutoAttack cross-check", OK, f"{pair}: same examples broken ({accs})."))
    rescoring = audit.get("rescoring")
    if isinstance(rescoring, dict) and rescoring:
        bad = {k: r for k, r in rescoring.items() if not (isinstance(r, dict) and r.get("matches"))}
        if bad:
            out += [Check("Re-scoring", FAIL, f"{name(k)} reported {r.get('reported_robust')} robust examples; "
                                              f"re-scoring the inputs it returned gives {r.get('rescored_robust')}.")
                    for k, r in bad.items()]
        else:
            out.append(Check("Re-scoring", OK, "Re-scoring the inputs " + ", ".join(name(k) for k in rescoring)
                             + " returned gives the robust counts the attacks reported."))
    elif isinstance(audit.get("rescored"), str):
        out.append(Check("Re-scoring", OK, audit["rescored"][0].upper() + audit["rescored"][1:] + "."))
    budget = audit.get("within_budget")
    if isinstance(budget, dict) and budget:
        outside = [name(k) for k, ok in budget.items() if not ok]
        out.append(Check("Threat model", FAIL, f"{', '.join(outside)} left the ε-ball or the [0, 1] pixel range.")
                   if outside else Check("Threat model", OK, f"All {len(budget)} attacks stayed inside the ε-ball "
                                                             "and the [0, 1] pixel range."))
    zero = audit.get("zero_gradient_fraction")
    if isinstance(zero, numbers.Real):
        status = OK if zero == 0 else WARN if zero <= ZERO_GRADIENT_FAIL else FAIL
        text = ("No test example has a zero input gradient (no sign of gradient masking)." if zero == 0 else
                f"{100 * zero:.1f}% of test examples have a zero input gradient"
                + (" (above 5%: gradient masking or a saturated softmax; trust black-box attacks more)."
                   if status == FAIL else " (a few; above 5% would suggest gradient masking)."))
        out.append(Check("Gradients", status, text))
    train_mode = audit.get("forward_calls_in_train_mode")
    if isinstance(train_mode, dict) and train_mode:
        wrong = {k: v for k, v in train_mode.items() if v}
        out.append(Check("Model mode", FAIL, "; ".join(f"{name(k)} ran {v} forward passes in training mode"
                                                       for k, v in wrong.items()) + ".")
                   if wrong else Check("Model mode", OK, "Every attack ran the model in evaluation mode."))
    elif isinstance(audit.get("model_mode_during_attacks"), str):
        mode = audit["model_mode_during_attacks"]
        out.append(Check("Model mode", OK if mode == "eval" else FAIL, f"The model was in {mode} mode during "
                                                                       "the attacks."))
    for key in audit:
        if key not in KNOWN:
            out.append(Check(key, WARN, f"Recorded, not read by this report: {key} = "
                                        f"{json.dumps(audit[key], default=str)}."))
    return out


def audit_table(slug: str, audit: dict, labels: dict[str, str] | None = None,
                classes: list[str] | None = None):
    """The checks as a table (Check | Result | Finding): the page marks Result green, amber or red; the
    exports carry the same words."""
    checks = audit_checks(audit, labels, classes)
    body = [[Cell(c.name, c.name), Cell(RESULT_WORDS[c.status], c.status, status=c.status),
             Cell(c.sentence, c.sentence)] for c in checks]
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    notes = [f"{counts[OK]} passed, {counts[WARN]} to check, {counts[FAIL]} failed. pass: the check ran and "
             "holds; check: it did not run, or holds only within its tolerance; fail: see the audit flags."]
    return Table(slug, "Audit", [Column("check", "Check", numeric=False), Column("result", "Result", numeric=False),
                                 Column("finding", "Finding", numeric=False)], body, notes if checks else [],
                 kind="record")
