"""Config: numbers as profiles write them, milestones, method presets and the precedence of settings."""
from __future__ import annotations

import re

import pytest

from benchmark.config import Config, expand_grid, parse_number
from benchmark.errors import UsageError


# --- parse_number ---------------------------------------------------------------------------------

def test_parse_number_reads_a_fraction_string_exactly():
    assert parse_number("8/255") == 8 / 255


def test_parse_number_passes_plain_numbers_through_as_floats():
    assert parse_number(0.1) == 0.1
    value = parse_number(2)
    assert value == 2.0 and isinstance(value, float)


def test_parse_number_reads_a_decimal_string():
    assert parse_number("0.25") == 0.25


def test_parse_number_divides_eps_for_eps_over_n():
    assert parse_number("eps/4", eps=0.1) == pytest.approx(0.025, rel=1e-12)
    assert parse_number("eps", eps=0.3) == 0.3


def test_parse_number_multiplies_eps_for_k_times_eps():
    assert parse_number("0.5*eps", eps=0.1) == pytest.approx(0.05, rel=1e-12)
    assert parse_number("2 * eps / 8", eps=0.1) == pytest.approx(0.025, rel=1e-12)  # spaces ignored


@pytest.mark.parametrize("text", ["abc", "eps4", "8//255", "1/0", "", "0.1.2"])
def test_parse_number_rejects_unreadable_strings_with_a_usage_error(text):
    with pytest.raises(UsageError, match="cannot read"):
        parse_number(text, eps=0.1)


def test_parse_number_rejects_booleans():
    with pytest.raises(UsageError, match="expected a number"):
        parse_number(True)


def test_parse_number_rejects_eps_relative_value_when_eps_is_undefined():
    with pytest.raises(UsageError, match="relative to eps"):
        parse_number("eps/4")


def test_parse_number_rejects_eps_over_zero_with_a_usage_error():
    with pytest.raises(UsageError, match="divides by zero"):
        parse_number("eps/0", eps=0.1)


# --- milestones -----------------------------------------------------------------------------------

def test_milestone_fractions_become_epoch_indices_of_the_budget():
    assert Config(epochs=100, milestones=[0.75, 0.9]).milestone_epochs() == [75, 90]


def test_whole_number_milestones_are_taken_as_epochs():
    assert Config(epochs=100, milestones=[30, 60]).milestone_epochs() == [30, 60]
    assert Config(epochs=10, milestones=[0.5, 8]).milestone_epochs() == [5, 8]


def test_default_schedule_and_selection_start_are_at_bsl_code_at_100_epochs_and_scale_with_the_budget():
    """AT-BSL's adjust_learning_rate: lr ×0.1 from its 1-based epochs 75, 90, 100, i.e. after 0-based 74, 89,
    99; its best-epoch rule scores 1-based epochs >= 75, i.e. from 0-based 74 (tests/test_schedules.py traces
    the learning rate of every epoch)."""
    assert Config(epochs=100).milestone_epochs() == [74, 89, 99]
    assert Config(epochs=100, selection="test_best").validate().selection_start_epoch() == 74
    assert Config(epochs=200).milestone_epochs() == [148, 178, 198]
    assert Config(epochs=8).milestone_epochs() == [6, 7, 8]  # the last is never reached in 8 epochs
    assert Config(epochs=8, selection="test_best").validate().selection_start_epoch() == 6
    assert Config(milestones=["74/100"], epochs=50).milestone_epochs() == [37]


# --- presets --------------------------------------------------------------------------------------

def test_taet_authors_preset_sets_eps_step_split_and_stage_one_fraction():
    (cfg,) = expand_grid({"methods": ["taet.authors"]})
    assert cfg.method == "taet.authors" and cfg.method_name == "taet" and cfg.method_preset == "authors"
    assert cfg.eps_value == pytest.approx(0.031)
    train = cfg.train_attack_spec()
    assert train.step_size == pytest.approx(0.003)
    assert train.steps == 10 and train.eps == pytest.approx(0.031)
    assert cfg.test_split == "longtail"
    assert cfg.method_args == {"ce_fraction": 0.4}
    # the profile's suite (here the default PGD-20 at the cell's ε) plus the notebook's test: torchattacks'
    # PGD-20 at 8/255, step 1/255, random start
    default, notebook = cfg.eval_attack_specs()
    assert (default.name, default.eps) == ("pgd20", pytest.approx(0.031))
    assert (notebook.name, notebook.kind, notebook.steps, notebook.start) == ("ta_pgd20_8_255", "torchattacks_pgd", 20, "uniform")
    assert notebook.eps == pytest.approx(8 / 255) and notebook.step_size == pytest.approx(1 / 255)


def test_a_preset_keeps_the_profiles_attack_suite_and_adds_its_own():
    profile = {"methods": ["taet.authors", "taet"], "eval_attacks": [{"kind": "fgsm"}, {"kind": "autoattack"}]}
    authors, common = expand_grid(profile)
    assert [s.name for s in authors.eval_attack_specs()] == ["fgsm", "aa", "ta_pgd20_8_255"]
    assert [s.name for s in common.eval_attack_specs()] == ["fgsm", "aa"]
    assert authors.eval_attack_specs()[1].eps == pytest.approx(0.031)  # the suite runs at the cell's ε


def test_worst_case_leaves_out_an_attack_at_another_eps():
    import numpy as np
    from benchmark.metrics import WORST_CASE, summarize_evaluation

    y = np.array([0, 1, 0, 1])
    predictions = {"clean": y.copy(), "pgd20": np.array([0, 1, 1, 1]), "ta_pgd20_8_255": np.array([1, 0, 1, 0])}
    summary = summarize_evaluation(y, predictions, 2, [3, 1], outside_worst_case=("ta_pgd20_8_255",))
    assert summary["attacks"][WORST_CASE]["over"] == ["clean", "pgd20"]
    assert summary["attacks"][WORST_CASE]["accuracy"] == 0.75
    assert summary["attacks"]["ta_pgd20_8_255"]["accuracy"] == 0.0  # still scored on its own


def test_at_madry_preset_sets_pgd7_uniform_start_and_weight_decay():
    (cfg,) = expand_grid({"methods": ["at.madry"], "eps": "8/255"})
    train = cfg.train_attack_spec()
    assert train.steps == 7
    assert train.start == "uniform"
    assert train.step_size == pytest.approx(2 / 255)
    assert cfg.weight_decay == 2e-4


def test_method_without_preset_keeps_the_common_protocol():
    (cfg,) = expand_grid({"methods": ["at"], "eps": "8/255"})
    train = cfg.train_attack_spec()
    assert (train.steps, train.start) == (10, "normal")
    assert cfg.weight_decay == 5e-4
    assert cfg.method_preset is None and cfg.method_args == {}


def test_preset_beats_profile_and_profile_beats_defaults():
    profile = {"methods": ["at", "at.madry"], "weight_decay": 1e-3}
    plain, madry = expand_grid(profile)
    assert plain.weight_decay == 1e-3
    assert madry.weight_decay == 2e-4


def test_cli_overrides_beat_profile_and_preset():
    profile = {"methods": ["taet.authors"], "epochs": 50}
    (cfg,) = expand_grid(profile, {"epochs": 3, "eps": "0.05"})
    assert cfg.epochs == 3  # CLI over profile
    assert cfg.eps_value == 0.05  # CLI over the preset's 0.031
    assert cfg.train_attack_spec().eps == 0.05
    assert cfg.train_attack_spec().step_size == pytest.approx(0.003)  # the preset's absolute step stays


def test_none_valued_overrides_leave_the_profile_alone():
    (cfg,) = expand_grid({"methods": ["at"], "epochs": 7}, {"epochs": None, "eps": None})
    assert cfg.epochs == 7


def test_profile_method_args_reach_only_the_named_method():
    profile = {"methods": ["at", "taet"], "method_args": {"taet": {"ce_fraction": 0.25}}}
    at, taet = expand_grid(profile)
    assert at.method == "at" and at.method_args == {}
    assert taet.method == "taet" and taet.method_args == {"ce_fraction": 0.25}


def test_preset_method_args_beat_profile_method_args():
    profile = {"methods": ["taet.authors"], "method_args": {"taet": {"ce_fraction": 0.25, "class_mean": "present"}}}
    (cfg,) = expand_grid(profile)
    assert cfg.method_args == {"ce_fraction": 0.4, "class_mean": "present"}


def test_grid_expands_methods_then_ratios_then_seeds():
    cells = expand_grid({"methods": ["at", "taet"], "imbalance_ratios": [10, 50], "seeds": [0, 1]})
    assert [(c.method, c.imbalance_ratio, c.seed) for c in cells] == [
        (m, float(ir), s) for m in ("at", "taet") for ir in (10, 50) for s in (0, 1)]
    assert len({c.key() for c in cells}) == 8


@pytest.mark.parametrize("profile, message", [
    ({"methods": ["nope"]}, "unknown method 'nope'; known methods: "),
    ({"methods": ["at.nope"]}, "no preset 'nope'"),
    ({"imbalance_ratios": [0.5]}, "imbalance ratio must be >= 1"),
    ({"eps": 1.5}, "eps must lie in"),
    ({"eps": -0.1}, "eps must lie in"),
    ({"test_split": "tail"}, "test_split must be one of"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"train_attack": {"kind": "pgd", "stepz": 3}}, "unknown attack field"),
    # names are checked against the registries, with their own message
    ({"dataset": "cifar11"}, "unknown dataset 'cifar11'; known datasets: "),
    ({"model": "resnet19"}, "unknown model 'resnet19'; known models: "),
    ({"eval_attacks": [{"kind": "pgdd"}]}, "unknown attack kind 'pgdd'; known attack kinds: "),
    ({"train_attack": {"kind": "reference_autoattack"}}, "kind 'autoattack' now runs the authors' AutoAttack"),
    ({"eval_attacks": [{"kind": "pgd", "steps": 3}, {"kind": "pgd", "steps": 3}]}, "share a name"),
])
def test_expand_grid_rejects_bad_settings_with_a_usage_error(profile, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        expand_grid(profile)


def test_eps_bounds_are_inclusive():
    assert expand_grid({"eps": 0})[0].eps_value == 0.0
    assert expand_grid({"eps": 1})[0].eps_value == 1.0


def test_nan_imbalance_ratio_is_rejected_with_a_usage_error():
    with pytest.raises(UsageError, match="imbalance ratio"):
        expand_grid({"imbalance_ratios": [float("nan")]})
