"""AutoAttack through torchattacks (and the reference package when installed), attack subsets,
resumable evaluation, and the audit checks that involve AutoAttack."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from attacks import AttackSpec, run_attack_reported
from benchmark.audit import build_audit, order_checks
from benchmark.config import AttackConfig
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


def test_autoattack_specs_get_readable_names_and_record_no_step_settings():
    assert AttackSpec("autoattack", EPS).name == "aa"
    assert AttackSpec("autoattack", EPS, version="apgd-ce").name == "aa_apgd_ce"
    assert AttackSpec("reference_autoattack", EPS).name == "ref_aa"
    spec = AttackConfig(kind="autoattack", per_class=5).resolve(EPS)
    assert (spec.steps, spec.step_size, spec.start, spec.per_class) == (0, 0.0, "none", 5)


def test_bad_autoattack_version_or_subset_is_a_one_line_usage_error():
    with pytest.raises(UsageError, match="AutoAttack version"):
        AttackConfig(kind="autoattack", version="fast").resolve(EPS)
    with pytest.raises(UsageError, match="per_class"):
        AttackConfig(kind="autoattack", per_class=0).resolve(EPS)


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


@pytest.mark.skipif(importlib.util.find_spec("pyautoattack") is None,
                    reason="the reference AutoAttack (pip install pyautoattack) is optional and not installed")
def test_reference_autoattack_apgd_ce_agrees_with_torchattacks_on_digits(clean_mnist_model, digits):
    x, y = digits
    ours = run_attack_reported(AttackSpec("autoattack", EPS, version="apgd-ce"), clean_mnist_model, x, y,
                               num_classes=10, seed=0)
    ref = run_attack_reported(AttackSpec("reference_autoattack", EPS, version="apgd-ce"), clean_mnist_model, x, y,
                              num_classes=10, seed=0)
    assert (ref.x_adv - x).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        ref_robust = int((clean_mnist_model(ref.x_adv).argmax(1) == y).sum())
        ta_robust = int((clean_mnist_model(ours.x_adv).argmax(1) == y).sum())
    assert ref.reported_robust == ref_robust
    assert abs(ref_robust - ta_robust) <= 2  # 40 digits, independent random starts


def test_an_attack_with_per_class_runs_on_a_stratified_subset_and_is_scored_there(clean_mnist_model, digits):
    x, y = digits
    specs = [AttackSpec("fgsm", EPS), AttackSpec("autoattack", EPS, version="apgd-ce", per_class=2)]
    out = evaluate(clean_mnist_model, x, y, specs, 16, torch.device("cpu"), progress=False, num_classes=10)
    aa = out["predictions"]["aa_apgd_ce"]
    assert (aa >= 0).sum() == 20 and out["records"]["aa_apgd_ce"]["examples"] == 20
    assert np.bincount(y.numpy()[aa >= 0], minlength=10).tolist() == [2] * 10
    summary = summarize_evaluation(y.numpy(), out["predictions"], 10, [10] * 10)
    assert summary["attacks"]["aa_apgd_ce"]["examples"] == 20
    assert summary["attacks"]["fgsm"]["examples"] == 40
    # worst case over everything on the 20 common examples; over clean + FGSM on all 40
    assert summary["attacks"][WORST_CASE]["examples"] == 20
    assert summary["attacks"][WORST_CASE]["over"] == ["clean", "fgsm", "aa_apgd_ce"]
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
