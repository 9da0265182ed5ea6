"""AutoAttack as its authors define it (pyautoattack) and torchattacks' rebuilt at the same budgets:
the budgets that actually run, the survivor cascade, attack subsets, resumable evaluation, and the
audit checks that involve AutoAttack."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import AttackSpec, run_attack_reported
from attacks.autoattack import REFERENCE_ITERATIONS, STAGES, autoattack, target_classes
from benchmark.audit import autoattack_agreement, build_audit, order_checks
from benchmark.data import to_float
from benchmark.errors import UsageError
from benchmark.evaluate import evaluate, predict
from benchmark.metrics import WORST_CASE, WORST_CASE_ALL_EXAMPLES, summarize_evaluation
from toys import ToyLinear

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.1


@pytest.fixture(scope="module")
def digits(mnist5k):
    """Four test digits per class (40), the clean fixture model's inputs."""
    from benchmark.data.loader import stratified_subset

    idx = torch.as_tensor(stratified_subset(mnist5k.y_test, 4, seed=1))
    return to_float(mnist5k.x_test[idx]), mnist5k.y_test[idx]


def test_autoattack_specs_get_readable_names_and_labels_that_say_what_ran():
    standard = AttackSpec("autoattack", EPS)
    assert (standard.name, standard.label, standard.steps) == ("aa", "AutoAttack", REFERENCE_ITERATIONS)
    assert AttackSpec("torchattacks_autoattack", EPS).name == "ta_aa"
    assert AttackSpec("torchattacks_autoattack", EPS).label == "AutoAttack (torchattacks)"
    first_stage = AttackSpec("autoattack", EPS, version="apgd-ce")
    assert (first_stage.name, first_stage.label) == ("apgd_ce", "APGD-CE")
    spec = AttackSpec.from_profile(dict(kind="autoattack", per_class=5), EPS)
    assert (spec.steps, spec.step_size, spec.start, spec.per_class) == (100, 0.0, "none", 5)


def test_a_cheaper_autoattack_is_named_and_labelled_as_reduced():
    cheap = AttackSpec.from_profile(dict(kind="autoattack", steps=10), EPS)
    assert cheap.name == "aa_it10" and cheap.reduced
    assert cheap.label == "AutoAttack (10 it., reduced)"
    assert AttackSpec.from_profile(dict(kind="autoattack", version="apgd-ce", steps=10), EPS).name == "apgd_ce_it10"
    for spec in [cheap, AttackSpec("autoattack", EPS, version="apgd-ce"), AttackSpec("torchattacks_autoattack", EPS)]:
        assert spec.label != "AutoAttack"  # only the reference at its full budget carries the plain name


def test_bad_autoattack_version_or_subset_is_a_one_line_usage_error():
    with pytest.raises(UsageError, match="AutoAttack version"):
        AttackSpec.from_profile(dict(kind="autoattack", version="fast"), EPS)
    with pytest.raises(UsageError, match="per_class"):
        AttackSpec.from_profile(dict(kind="autoattack", per_class=0), EPS)
    with pytest.raises(UsageError, match="now runs the authors' AutoAttack"):
        AttackSpec.from_profile(dict(kind="reference_autoattack"), EPS)
    with pytest.raises(UsageError, match="iterations"):
        AttackSpec.from_profile(dict(kind="autoattack", steps=-1), EPS)


def test_target_classes_are_nine_or_all_other_classes_when_fewer():
    assert [target_classes(c) for c in (4, 5, 10, 100, 200)] == [3, 4, 9, 9, 9]


class _WideMargin(torch.nn.Module):
    """Ten classes, logits 10·(x̄ + class offset): the label's logit leads by ≥ 10, so no input in a tiny
    ε-ball is ever misclassified and every stage runs its whole budget on every example."""

    def __init__(self):
        super().__init__()
        self.register_buffer("offset", torch.arange(10, dtype=torch.float32))
        self.grad_calls, self.plain_calls = 0, 0

    def forward(self, x):
        if x.requires_grad:
            self.grad_calls += 1
        else:
            self.plain_calls += 1
        mean = x.flatten(1).mean(1, keepdim=True)
        return 10 * (mean * torch.linspace(-1, 1, 10) - (self.offset - 9).abs())


@pytest.mark.parametrize("library", ["reference", "torchattacks"])
def test_each_stage_runs_the_reference_budget(library):
    """Forward passes counted per stage on a model nothing can fool: APGD-CE makes one input gradient per
    iteration (100, plus its initial point), APGD-T and FAB-T 100 per target class for 9 targets, and
    Square one forward pass per query (5,000). torchattacks' own AutoAttack would make 10 per target."""
    x = torch.full((2, 1, 2, 2), 0.5)
    y = torch.tensor([9, 9])
    counts = {}
    for stage in STAGES["standard"]:
        model = _WideMargin()
        from attacks import autoattack as aa_module

        stages = (aa_module._reference_stages(model, 1e-3, "standard", 10, 0, REFERENCE_ITERATIONS, x.device)
                  if library == "reference" else
                  aa_module._torchattacks_stages(model, 1e-3, "standard", 10, 0, REFERENCE_ITERATIONS))
        run = dict(stages)[stage]
        with torch.no_grad():
            assert (model(x).argmax(1) == y).all()
        model.grad_calls = model.plain_calls = 0
        adv, _ = run(x.clone(), y.clone())
        counts[stage] = (model.grad_calls, model.plain_calls)
        assert (model(adv).argmax(1) == y).all()
    grads = {stage: c[0] for stage, c in counts.items()}
    assert 100 <= grads["apgd-ce"] <= 110
    assert 9 * 100 <= grads["apgd-t"] <= 9 * 110
    assert 9 * 100 <= grads["fab-t"] <= 9 * 2 * 110  # FAB: one gradient step per iteration (+ its own checks)
    assert grads["square"] <= 10 and 5000 <= counts["square"][1] <= 5100  # black box: queries only


def _linear_five_class_problem():
    """A linear 5-class model on 2×2 inputs, labels its own clean predictions: at ε 0.05 APGD-CE breaks
    some examples and leaves others to the later stages (a cascade with work in more than one stage)."""
    torch.manual_seed(0)
    x = torch.rand(24, 1, 2, 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_the_stage_cascade_is_monotone_and_equals_one_call_of_the_authors_package():
    from pyautoattack import AutoAttack

    model, x, y = _linear_five_class_problem()
    eps = 0.05
    result = autoattack(model, x, y, eps, "standard", 5, seed=0)
    cascade = result.cascade
    assert cascade["stages"] == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    totals = np.array(cascade["robust_per_class"])
    assert (np.diff(totals, axis=0) <= 0).all()  # no class gains robust examples along the cascade
    assert totals[0].sum() == 24 > totals[1].sum() > totals[-1].sum() > 0  # work before and after APGD-CE
    with torch.no_grad():
        rescored = model(result.x_adv).argmax(1) == y
    assert totals[-1].sum() == result.reported_robust == int(rescored.sum())
    assert (result.x_adv - x).abs().max() <= eps + 1e-6
    # the same attacks in one run of the package's own cascade leave exactly the same examples robust
    adversary = AutoAttack(model, norm="Linf", eps=eps, seed=0, device=x.device, version="standard")
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = 4
    adversary.verbose = False
    x_ref, y_ref = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    assert torch.equal(y_ref == y, rescored)


def test_audit_flags_a_class_where_torchattacks_finds_fewer_adversarial_examples():
    y = np.array([0, 0, 1, 1, 2, 2])
    specs = {s.name: s for s in [AttackSpec("autoattack", EPS), AttackSpec("torchattacks_autoattack", EPS)]}
    predictions = {"aa": np.array([1, 0, 0, 1, 2, 0]), "ta_aa": np.array([0, 0, 0, 1, 2, 0])}
    (check,) = autoattack_agreement(y, predictions, specs, 3)
    assert check["adversarial_per_class"] == {"reference": [1, 1, 1], "torchattacks": [0, 1, 1]}
    assert check["library_weaker_classes"] == [0] and check["disagreements"] == 1
    records = {name: {"max_linf": EPS, "min_pixel": 0.0, "max_pixel": 1.0} for name in specs}
    audit = build_audit(y, {"clean": y, **predictions}, list(specs.values()), records, 3, 0.0)
    assert any("ta_aa found fewer adversarial examples than aa in classes [0]" in f for f in audit["flags"])
    same = autoattack_agreement(y, {"aa": predictions["aa"], "ta_aa": predictions["aa"]}, specs, 3)
    assert same[0]["library_weaker_classes"] == []


def test_autoattack_needs_the_number_of_classes():
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match="num_classes"):
        run_attack_reported(AttackSpec("autoattack", EPS), ToyLinear(), x, torch.tensor([0, 1]))


def test_standard_autoattack_needs_four_classes_and_says_so():
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match="at least 4 classes"):
        run_attack_reported(AttackSpec("autoattack", EPS), ToyLinear(), x, torch.tensor([0, 1]), num_classes=3)


def test_standard_autoattack_runs_on_a_five_class_model_and_its_report_matches_rescoring():
    # torchattacks' default n_classes=10 would target classes a 5-class model does not have
    torch.manual_seed(0)
    x = torch.rand(12, 1, 2, 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5))
    y = model(x).argmax(1)  # all clean-correct, so the attack has work to do
    result = run_attack_reported(AttackSpec("autoattack", 0.2), model, x, y, num_classes=5, seed=0)
    assert (result.x_adv - x).abs().max() <= 0.2 + 1e-6
    assert 0 <= result.x_adv.min() and result.x_adv.max() <= 1
    rescored = int((model(result.x_adv).argmax(1) == y).sum())
    assert result.reported_robust == rescored
    assert rescored < 12  # ε = 0.2 on a linear model with 4 inputs: some labels flip


def test_apgd_ce_stage_is_in_the_ball_reproducible_and_not_weaker_than_pgd20(clean_mnist_model, digits):
    x, y = digits
    spec = AttackSpec("autoattack", EPS, version="apgd-ce")
    first = run_attack_reported(spec, clean_mnist_model, x, y, num_classes=10, seed=0).x_adv
    second = run_attack_reported(spec, clean_mnist_model, x, y, num_classes=10, seed=0).x_adv
    assert torch.equal(first, second)  # the seed is passed, not taken from the clock
    assert (first - x).abs().max() <= EPS + 1e-6
    pgd20 = run_attack_reported(AttackSpec("pgd", EPS, 20, EPS / 4, "uniform"), clean_mnist_model, x, y,
                                torch.Generator().manual_seed(0)).x_adv
    with torch.no_grad():
        aa_acc = (clean_mnist_model(first).argmax(1) == y).float().mean()
        pgd_acc = (clean_mnist_model(pgd20).argmax(1) == y).float().mean()
        clean_acc = (clean_mnist_model(x).argmax(1) == y).float().mean()
    assert aa_acc < clean_acc
    assert aa_acc <= pgd_acc + 0.05


@pytest.mark.slow
def test_standard_autoattack_on_digits_is_not_weaker_than_its_first_stage(clean_mnist_model, digits):
    x, y = digits
    full = run_attack_reported(AttackSpec("autoattack", EPS), clean_mnist_model, x, y, num_classes=10, seed=0)
    stage = run_attack_reported(AttackSpec("autoattack", EPS, version="apgd-ce"), clean_mnist_model, x, y,
                                num_classes=10, seed=0)
    with torch.no_grad():
        full_acc = int((clean_mnist_model(full.x_adv).argmax(1) == y).sum())
        stage_acc = int((clean_mnist_model(stage.x_adv).argmax(1) == y).sum())
    assert full.reported_robust == full_acc
    assert full_acc <= stage_acc


def test_torchattacks_apgd_ce_at_the_reference_budget_agrees_with_the_reference_on_digits(clean_mnist_model, digits):
    x, y = digits
    ref = run_attack_reported(AttackSpec("autoattack", EPS, version="apgd-ce"), clean_mnist_model, x, y,
                              num_classes=10, seed=0)
    ta = run_attack_reported(AttackSpec("torchattacks_autoattack", EPS, version="apgd-ce"), clean_mnist_model, x, y,
                             num_classes=10, seed=0)
    assert (ta.x_adv - x).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        ref_robust = int((clean_mnist_model(ref.x_adv).argmax(1) == y).sum())
        ta_robust = int((clean_mnist_model(ta.x_adv).argmax(1) == y).sum())
    assert ref.reported_robust == ref_robust and ta.reported_robust == ta_robust
    assert abs(ref_robust - ta_robust) <= 2  # 40 digits, independently coded random starts


def test_an_attack_with_per_class_runs_on_a_stratified_subset_and_is_scored_there(clean_mnist_model, digits):
    x, y = digits
    specs = [AttackSpec("fgsm", EPS), AttackSpec("autoattack", EPS, version="apgd-ce", per_class=2)]
    out = evaluate(clean_mnist_model, x, y, specs, 16, torch.device("cpu"), progress=False, num_classes=10)
    aa = out["predictions"]["apgd_ce"]
    assert (aa >= 0).sum() == 20 and out["records"]["apgd_ce"]["examples"] == 20
    cascade = out["records"]["apgd_ce"]["cascade"]  # summed over the two evaluation batches of 16 and 4
    assert cascade["stages"] == ["clean", "apgd-ce"] and cascade["examples_per_class"] == [2] * 10
    assert sum(cascade["robust_per_class"][-1]) == int((aa[aa >= 0] == y.numpy()[aa >= 0]).sum())
    assert out["records"]["apgd_ce"]["label"] == "APGD-CE"
    assert out["records"]["apgd_ce"]["description"].startswith("autoattack (the authors' AutoAttack")
    assert "version apgd-ce" in out["records"]["apgd_ce"]["description"] and "2 examples per class" in out["records"]["apgd_ce"]["description"]
    assert np.bincount(y.numpy()[aa >= 0], minlength=10).tolist() == [2] * 10
    summary = summarize_evaluation(y.numpy(), out["predictions"], 10, [10] * 10)
    assert summary["attacks"]["apgd_ce"]["examples"] == 20
    assert summary["attacks"]["fgsm"]["examples"] == 40
    # worst case over everything on the 20 common examples; over clean + FGSM on all 40
    assert summary["attacks"][WORST_CASE]["examples"] == 20
    assert summary["attacks"][WORST_CASE]["over"] == ["clean", "fgsm", "apgd_ce"]
    assert summary["attacks"][WORST_CASE_ALL_EXAMPLES]["examples"] == 40
    assert summary["attacks"][WORST_CASE_ALL_EXAMPLES]["over"] == ["clean", "fgsm"]


def test_worst_case_on_a_subset_counts_an_example_only_if_every_attack_leaves_it_correct():
    y = np.array([0, 1, 2, 0])
    predictions = {"clean": np.array([0, 1, 2, 0]), "a": np.array([0, 0, 2, 0]), "b": np.array([-1, 1, 1, -1])}
    summary = summarize_evaluation(y, predictions, 3, [5, 3, 2])
    # common examples 1 and 2: example 1 broken by a, example 2 broken by b
    assert summary["attacks"][WORST_CASE]["accuracy"] == 0.0
    assert summary["attacks"][WORST_CASE_ALL_EXAMPLES]["accuracy"] == 0.75  # clean + a on all four


def test_an_interrupted_attack_resumes_from_its_saved_batches_with_identical_predictions(
        clean_mnist_model, digits, tmp_path, monkeypatch):
    import benchmark.evaluate as evaluate_module

    x, y = digits
    spec = AttackSpec("pgd", EPS, 3, EPS / 4, "uniform")  # a random start: resuming must restore the generator
    device = torch.device("cpu")
    reference, _ = predict(clean_mnist_model, x, y, spec, 8, device, torch.Generator().manual_seed(0))
    path = tmp_path / "pgd3.npz"
    real, calls = evaluate_module.run_attack_reported, []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "run_attack_reported", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        predict(clean_mnist_model, x, y, spec, 8, device, torch.Generator().manual_seed(0), progress_path=path)
    monkeypatch.setattr(evaluate_module, "run_attack_reported", real)
    resumed, sanity = predict(clean_mnist_model, x, y, spec, 8, device, torch.Generator().manual_seed(0),
                              progress_path=path)
    assert sanity["resumed"] is True
    assert np.array_equal(resumed, reference)


def test_saved_progress_of_a_different_attack_is_ignored(clean_mnist_model, digits, tmp_path):
    x, y = digits
    device, path = torch.device("cpu"), tmp_path / "progress.npz"
    fgsm, _ = predict(clean_mnist_model, x[:16], y[:16], AttackSpec("fgsm", EPS), 8, device, progress_path=path)
    other = AttackSpec("fgsm", EPS / 2)
    _, sanity = predict(clean_mnist_model, x, y, other, 8, device, progress_path=path)
    assert sanity["resumed"] is False


def test_order_check_flags_autoattack_above_pgd_on_their_common_examples():
    y = np.array([0, 1, 2, 3])
    specs = {s.name: s for s in [AttackSpec("pgd", EPS, 20, EPS / 4), AttackSpec("autoattack", EPS, per_class=1)]}
    predictions = {"pgd20": np.array([1, 1, 0, 0]), "aa": np.array([0, -1, 2, -1])}
    (check,) = order_checks(y, predictions, specs)
    assert (check["stronger"], check["weaker"], check["examples"]) == ("aa", "pgd20", 2)
    assert check["stronger_acc"] == 1.0 and check["weaker_acc"] == 0.0 and check["ok"] is False


def test_audit_flags_a_library_report_that_rescoring_contradicts():
    y = np.array([0, 1])
    spec = AttackSpec("autoattack", EPS)
    records = {"aa": {"max_linf": EPS, "min_pixel": 0.0, "max_pixel": 1.0, "reported_robust": 2,
                      "rescored_robust": 1, "rescore_matches": False}}
    audit = build_audit(y, {"clean": y, "aa": np.array([0, 0])}, [spec], records, 2, 0.0)
    assert audit["rescoring"]["aa"] == {"reported_robust": 2, "rescored_robust": 1, "matches": False}
    assert any("re-scoring" in flag for flag in audit["flags"])


class _SwitchesToTrainingDuringAttacks(torch.nn.Module):
    """A model that (like a broken attack wrapper) puts itself in training mode when asked for an input
    gradient: the evaluation must notice the forward passes that ran that way."""

    def __init__(self):
        super().__init__()
        self.linear = ToyLinear()

    def forward(self, x):
        if x.requires_grad:
            self.train()
        return self.linear(x)


def test_forward_passes_in_training_mode_during_an_attack_are_counted_and_flagged():
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model = _SwitchesToTrainingDuringAttacks()
    spec = AttackSpec("pgd", EPS, 3, EPS / 4, "none")
    out = evaluate(model, x, y, [spec], 6, torch.device("cpu"), progress=False, num_classes=3)
    assert out["records"]["clean"]["forward_calls_in_train_mode"] == 0
    assert out["records"]["pgd3"]["forward_calls_in_train_mode"] >= 2  # every step after the first
    audit = build_audit(y.numpy(), out["predictions"], [spec], out["records"], 3, 0.0)
    assert audit["forward_calls_in_train_mode"]["clean"] == 0
    assert any("training mode" in flag for flag in audit["flags"])


def test_the_torchattacks_cross_check_and_other_eps_attacks_stay_out_of_the_worst_case():
    from benchmark.runner import outside_worst_case

    specs = [AttackSpec("pgd", EPS, 20, EPS / 4), AttackSpec("autoattack", EPS, per_class=5),
             AttackSpec("torchattacks_autoattack", EPS, per_class=2), AttackSpec("pgd", 2 * EPS, 20, EPS / 2, name="big")]
    assert outside_worst_case(specs, EPS) == ("ta_aa", "big")
    y = np.arange(4) % 2
    predictions = {"clean": y.copy(), "aa": np.array([0, 1, 0, 0]), "ta_aa": np.array([0, -1, -1, -1]),
                   "big": 1 - y}
    summary = summarize_evaluation(y, predictions, 2, [3, 1], outside_worst_case(specs, EPS))
    assert summary["attacks"][WORST_CASE]["examples"] == 4  # not the cross-check's single example
    assert summary["attacks"][WORST_CASE]["accuracy"] == 0.75
