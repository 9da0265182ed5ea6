"""Every shipped profile loads and expands into valid cells; the paper-setting profiles hold their settings."""
import pytest
import torch

from benchmark.config import PROFILE_DIR, Config, expand_grid, load_profile
from benchmark.data import AUGMENTATIONS, DATASETS
from benchmark.data.datasets import NATURALLY_IMBALANCED
from benchmark.models import create_model, list_models

PROFILES = sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))
EPS_8 = 8 / 255


def test_the_paper_profiles_are_shipped():
    assert {"quick", "gpu-check", "cifar10-lt", "cifar100-lt", "tinyimagenet-lt", "dermamnist"} <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_and_expands(name):
    profile = load_profile(name)
    assert isinstance(profile.get("description"), str) and len(profile["description"].split()) >= 20
    cells = expand_grid(profile)
    assert cells and all(isinstance(cfg, Config) for cfg in cells)
    keys = [cfg.key() for cfg in cells]
    assert len(set(keys)) == len(keys)
    for cfg in cells:
        assert cfg.dataset in DATASETS and cfg.model in list_models() and cfg.augment in AUGMENTATIONS
        if cfg.dataset in NATURALLY_IMBALANCED:  # prepare_cell_data refuses any other ratio
            assert cfg.imbalance_ratio == 1 and cfg.test_split == "balanced"


def common_protocol(cfg: Config) -> None:
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (100, 128, 0.1, 0.9, 5e-4)
    assert cfg.milestone_epochs() == [74, 89, 99] and cfg.lr_gamma == 0.1 and cfg.drop_last  # AT-BSL's 75, 90, 100
    train = cfg.train_attack_spec()
    assert (train.kind, train.steps, train.start) == ("pgd", 10, "normal")
    assert train.step_size == pytest.approx(cfg.eps_value / 4)
    specs = {s.name: s for s in cfg.eval_attack_specs()}
    assert list(specs) == ["fgsm", "pgd20", "pgd20_nostart", "ta_pgd20_nostart", "cw20", "lsa20", "aa", "ta_aa"]
    pgd20 = specs["pgd20"]
    assert (pgd20.kind, pgd20.steps, pgd20.start) == ("pgd", 20, "uniform")
    for name in ("pgd20", "pgd20_nostart", "ta_pgd20_nostart", "cw20", "lsa20"):
        assert specs[name].step_size == pytest.approx(cfg.eps_value / 4) and specs[name].steps == 20
    # the cross-check pair starts from the same point, so a difference is a bug rather than noise
    assert specs["pgd20_nostart"].start == specs["ta_pgd20_nostart"].start == "none"
    assert (specs["cw20"].loss, specs["cw20"].loss_param) == ("cw", 50.0)
    assert (specs["lsa20"].loss, specs["lsa20"].loss_param) == ("scaled_ce", 10.0)
    # the authors' AutoAttack at its own budget on everything; torchattacks' at the same budget as a cross-check
    assert (specs["aa"].kind, specs["aa"].version, specs["aa"].steps, specs["aa"].per_class) == (
        "autoattack", "standard", 100, None)
    assert specs["aa"].label == "AutoAttack"
    assert (specs["ta_aa"].kind, specs["ta_aa"].steps, specs["ta_aa"].per_class) == ("torchattacks_autoattack", 100, 100)
    assert cfg.eval_batch_size == 500 and cfg.eval_per_class is None


@pytest.mark.parametrize("name, dataset", [("cifar10-lt", "cifar10"), ("cifar100-lt", "cifar100")])
def test_cifar_lt_profiles(name, dataset):
    cells = expand_grid(load_profile(name))
    assert [(cfg.method, cfg.imbalance_ratio, cfg.seed) for cfg in cells] == [
        (method, ir, 0) for method in ("at", "taet") for ir in (10.0, 50.0, 100.0)]
    for cfg in cells:
        assert (cfg.dataset, cfg.model, cfg.augment) == (dataset, "resnet18", "crop_flip")
        assert cfg.eps_value == pytest.approx(EPS_8)
        common_protocol(cfg)


def test_tinyimagenet_lt_profile_follows_at_bsl():
    cells = expand_grid(load_profile("tinyimagenet-lt"))
    assert [cfg.method for cfg in cells] == ["at", "at_bsl", "taet"]
    for cfg in cells:
        assert (cfg.dataset, cfg.model, cfg.augment) == ("tinyimagenet", "preact_resnet18", "randaugment_crop_flip")
        assert cfg.imbalance_ratio == 10 and cfg.eps_value == pytest.approx(EPS_8)
        common_protocol(cfg)


def test_dermamnist_profile_uses_the_natural_imbalance():
    cells = expand_grid(load_profile("dermamnist"))
    assert [cfg.method for cfg in cells] == ["at", "at_bsl", "taet"]
    for cfg in cells:
        assert (cfg.dataset, cfg.model, cfg.imbalance_ratio) == ("dermamnist", "resnet18", 1.0)
        assert cfg.eps_value == pytest.approx(2 / 255)
        common_protocol(cfg)


@pytest.mark.parametrize("name, size", [("tinyimagenet-lt", 64), ("dermamnist", 28)])
def test_profile_models_take_the_dataset_image_size(name, size):
    cfg = expand_grid(load_profile(name))[0]
    classes = {"tinyimagenet": 200, "dermamnist": 7}[cfg.dataset]
    torch.manual_seed(0)
    model = create_model(cfg.model, classes, 3, **cfg.model_args).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, classes)
