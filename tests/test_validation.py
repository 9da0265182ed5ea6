"""Bad input ends in one line and nothing half-made (issue 14, item 5).

Every bad configuration is refused by the validator (``expand_grid`` → ``Config.validate``) with the
project's one error type, before any folder exists; the CLI prints it as one line and exits 2. Runtime
faults (results folder that is a file or unwritable) are one line too. A property test throws random
mappings at the validator: it only ever accepts or raises ``UsageError``.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from benchmark.__main__ import main
from benchmark.config import CONFIG_FIELDS, GRID_FIELDS, Config, expand_grid, load_profile
from benchmark.errors import UsageError
from attacks.spec import PROFILE_FIELDS

QUICK = load_profile("quick")

# (what is wrong, settings over the quick profile, a piece of the one-line message)
BAD_CONFIGS = [
    # names: registry keys, never paths; did-you-mean where one is close
    ("unknown method", {"methods": ["att"]}, "did you mean 'at'"),
    ("unknown method preset", {"methods": ["at.nope"]}, "preset"),
    ("unknown dataset", {"dataset": "cifar11"}, "unknown dataset"),
    ("dataset as a path", {"dataset": "../../x"}, "unknown dataset '../../x'"),
    ("unknown model", {"model": "resnet19"}, "unknown model"),
    ("model as a path", {"model": "../../../x"}, "unknown model '../../../x'"),
    ("unknown attack kind", {"eval_attacks": [{"kind": "pgdd"}]}, "did you mean 'pgd'"),
    ("unknown attack field", {"eval_attacks": [{"kind": "pgd", "stepz": 3}]}, "did you mean 'steps'"),
    ("unknown eval start", {"eval_attacks": [{"kind": "pgd", "start": "unifrom"}]}, "did you mean 'uniform'"),
    ("unknown train start", {"train_attack": {"kind": "pgd", "start": "gauss"}}, "unknown start"),
    ("unknown monitor start", {"monitor_attack": {"kind": "pgd", "start": "x"}}, "monitor_attack"),
    ("unknown method hyperparameter", {"methods": ["trades"], "method_args": {"trades": {"betaa": 6}}}, "did you mean 'beta'"),
    ("unknown model argument", {"model_args": {"widht": 0.25}}, "did you mean 'width'"),
    ("unknown augment", {"augment": "flipp"}, "augment"),
    ("unknown test split", {"test_split": "lt"}, "test_split"),
    ("unknown selection", {"selection": "best"}, "selection"),
    ("unknown amp", {"amp": "fp8"}, "amp"),
    ("unknown cuda_graphs", {"cuda_graphs": "sometimes"}, "cuda_graphs must be auto, true or false"),
    ("checkpoint interval negative", {"checkpoint_every_s": -5}, "checkpoint_every_s"),
    ("progress interval not a number", {"progress_every_s": "often"}, "progress_every_s"),
    # values out of range
    ("IR below 1", {"imbalance_ratios": [0.5]}, "imbalance ratio"),
    ("IR NaN", {"imbalance_ratios": [float("nan")]}, "imbalance ratio"),
    ("eps negative", {"eps": -0.1}, "eps"),
    ("eps above 1", {"eps": 2}, "eps"),
    ("eps not a number", {"eps": "eight/255"}, "eps"),
    ("attack steps 0", {"train_attack": {"kind": "pgd", "steps": 0}}, "steps must be >= 1"),
    ("attack steps negative", {"eval_attacks": [{"kind": "torchattacks_pgd", "steps": -1}]}, "steps must be >= 1"),
    ("step size negative", {"eval_attacks": [{"kind": "pgd", "step_size": -0.01}]}, "step_size"),
    ("step size 0", {"eval_attacks": [{"kind": "pgd", "step_size": 0}]}, "step_size"),
    ("attack per_class 0", {"eval_attacks": [{"kind": "pgd", "per_class": 0}]}, "per_class"),
    ("epochs 0", {"epochs": 0}, "epochs"),
    ("batch 0", {"batch_size": 0}, "batch_size"),
    ("eval batch 0", {"eval_batch_size": 0}, "eval_batch_size"),
    ("seed negative", {"seeds": [-1]}, "seed must be >= 0"),
    ("subset seed negative", {"subset_seed": -3}, "subset_seed"),
    ("seed not an integer", {"seeds": [1.5]}, "seed"),
    ("lr negative", {"lr": -0.1}, "lr must be"),
    ("lr zero", {"lr": 0}, "lr must be"),
    ("lr infinite", {"lr": float("inf")}, "lr must be"),
    ("lr NaN", {"lr": float("nan")}, "lr must be"),
    ("lr_gamma negative", {"lr_gamma": -0.1}, "lr_gamma"),
    ("lr_gamma zero", {"lr_gamma": 0}, "lr_gamma"),
    ("lr_gamma above 1", {"lr_gamma": 2}, "lr_gamma"),
    ("momentum negative", {"momentum": -0.9}, "momentum"),
    ("weight decay negative", {"weight_decay": -5e-4}, "weight_decay"),
    ("monitor per class 0", {"monitor_per_class": 0}, "monitor_per_class"),
    ("eval per class 0", {"eval_per_class": 0}, "eval_per_class"),
    ("milestone negative", {"milestones": [-1]}, "milestones"),
    ("val fraction 1", {"val_fraction": 1.0}, "val_fraction"),
    ("bool for a number", {"epochs": True}, "epochs"),
    # devices
    ("device not a name", {"device": "gpu"}, "not a device name"),
    ("device garbage", {"device": "cuda:x"}, "not a device name"),
    # shape of the settings
    ("attack not a mapping", {"eval_attacks": ["pgd"]}, "mapping"),
    ("eval attacks not a list", {"eval_attacks": {"kind": "pgd"}}, "eval_attacks"),
    ("method args not a mapping", {"method_args": [1]}, "method_args"),
]


@pytest.mark.parametrize("what, settings_, message", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_one_usage_error(what, settings_, message):
    with pytest.raises(UsageError) as err:
        for cfg in expand_grid({**QUICK, **settings_}):
            cfg.resolve("cpu")
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_unknown_profile_key_says_did_you_mean(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(UsageError, match="did you mean 'epochs'"):
        load_profile(str(path))


def test_eps_zero_keeps_its_zero_step_size():
    """ε = 0 (clean training) gives step ε/4 = 0: not a bad step size."""
    assert expand_grid({**QUICK, "eps": 0})[0].eps_value == 0.0


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("args, message", [
    (["--device", "gpu"], "not a device name"),
    (["--device", "cuda:7"], "cuda"),
    (["--devices", "cuda:0,cuda:9"], "cuda"),
    (["--epochs", "0"], "epochs"),
    (["--seeds", "-1"], "seed"),
    (["--methods", "../../x"], "unknown method"),
    (["--eps", "2"], "eps"),
], ids=["bad-device", "absent-cuda", "absent-devices", "epochs0", "seed-neg", "method-path", "eps2"])
def test_cli_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, args, message):
    import torch
    if "cuda" in message and torch.cuda.device_count() >= 10:
        pytest.skip("this machine has that many GPUs")
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    code = main(["--profile", "quick", "--results", str(results), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err
    assert _files(tmp_path) == [], "nothing may be created for bad input"


def test_cli_path_names_write_nothing_outside_the_results_folder(tmp_path, monkeypatch, capsys):
    """``dataset: ../../x`` is an unknown registry key, refused before anything is written anywhere."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    for key in ("dataset", "model"):
        profile = work / f"{key}.yaml"
        profile.write_text(f"{key}: ../../x\nepochs: 1\n")
        monkeypatch.chdir(work)
        code = main(["--profile", str(profile), "--results", "results", "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and f"unknown {key} '../../x'" in err
    assert _files(tmp_path) == ["a", "a/b", "a/b/dataset.yaml", "a/b/model.yaml"]


def test_cli_results_path_that_is_a_file_is_one_line(tmp_path, capsys):
    results = tmp_path / "results"
    results.write_text("not a folder")
    code = main(["--profile", "quick", "--results", str(results), "--no-progress", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a folder" in err and str(results) in err and "\n" not in err, err
    assert results.read_text() == "not a folder"


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root writes anywhere")
def test_cli_unwritable_results_folder_is_one_line(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o500)
    try:
        code = main(["--profile", "quick", "--results", str(results), "--no-progress", "--epochs", "1"])
    finally:
        results.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not writable" in err and str(results) in err and "\n" not in err, err
    assert list(results.iterdir()) == []


def test_cli_non_utf8_profile_is_one_line(tmp_path, capsys):
    profile = tmp_path / "p.yaml"
    profile.write_bytes(b"epochs: 1\ndescription: \xff\xfe\n")
    code = main(["--profile", str(profile), "--results", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(profile) in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


# ---- the property: random mappings are accepted or refused with UsageError, nothing else --------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from(["pgd", "fgsm", "at", "trades", "mnist5k", "small_cnn", "eps/4", "8/255", "cpu",
                                      "cuda", "auto", "uniform", "none", "../../x", "", "nan", "balanced"]),
                     st.text(max_size=6))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from([*sorted(PROFILE_FIELDS), "at", "trades", "width", "x"]), inner, max_size=3)),
    max_leaves=6)
_fields = st.sampled_from(sorted(CONFIG_FIELDS | set(GRID_FIELDS)))
_keys = st.one_of(_fields, _fields, _fields, st.text(max_size=5))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(_keys, _values, max_size=5))
def test_validator_only_accepts_or_raises_usage_error(settings_):
    try:
        cells = expand_grid({**QUICK, **settings_})
        for cfg in cells:
            cfg.resolve("cpu")
    except UsageError as err:
        assert "\n" not in str(err)
        return
    for cfg in cells:  # what the validator accepts is in range
        assert cfg.epochs >= 1 and cfg.batch_size >= 1 and cfg.seed >= 0 and math.isfinite(cfg.lr) and cfg.lr > 0
        assert 0 < cfg.lr_gamma <= 1 and 0 <= cfg.eps_value <= 1 and cfg.imbalance_ratio >= 1
        assert isinstance(cfg, Config)
