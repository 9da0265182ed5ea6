"""Plugins: a user's file, module or installed entry point registers methods, models, datasets and attack kinds with
the built-ins' decorators; the plugin's source hash keys the cells that use it (built-in cells keep their keys);
bad plugins are one line; examples/focal_at.py runs against at and at_bsl in one command, in worker processes,
and lands on one leaderboard with them."""
from __future__ import annotations

import contextlib
import io
import json
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark.__main__ import main
from benchmark.cell import cell_key
from benchmark.config import PROFILE_DIR, Config, expand_grid, load_profile
from benchmark.errors import UsageError
from benchmark.plugins import load_plugins, loaded_plugins, source_hash, unload_plugins
from methods import get_method, list_methods, method_metadata
from toys import TINY_PROFILE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "focal_at.py"

PLUGIN = '''
import torch
import torch.nn.functional as F
from attacks import register_attack
from attacks.spec import LibraryResult
from benchmark.data.datasets import ImageDataset, register_dataset
from benchmark.models import Classifier, register_model
from methods import LossOut, Method, register_method


@register_method("plug_ce")
class PlugCE(Method):
    summary = "clean cross-entropy from a plugin"
    defaults = {"scale": SCALE}

    def loss(self, model, x, y, ctx):
        logits = model(x)
        return LossOut(F.cross_entropy(logits.float(), y) * self.hparams["scale"], logits)


class Tiny(Classifier):
    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
        self.classifier = torch.nn.Linear(16 * in_channels, num_classes)
        self.feature_dim = 16 * in_channels

    def _forward_backbone(self, x):
        return self.body(x)


@register_model("plug_tiny")
def plug_tiny(num_classes, in_channels=3):
    return Tiny(num_classes, in_channels)


@register_dataset("plug_noise", classes=3, image_shape=(1, 8, 8), embedded=True)
def plug_noise(root, download):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    return ImageDataset("plug_noise", torch.randint(0, 256, (60, 1, 8, 8), dtype=torch.uint8, generator=g), y,
                        torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(30) % 3,
                        ["a", "b", "c"])


def _identity(spec, model, x, y, generator, num_classes, seed):
    return LibraryResult(x.clone(), None)


register_attack("plug_none", _identity, family="gradient", iterative=False, library="plugin", title="no attack",
                label=lambda spec: "none", name=lambda spec: "plug_none")
'''


@pytest.fixture(autouse=True)
def forget_plugins():
    """Every test starts and ends with the built-ins only (a registered plugin entry would leak into others)."""
    unload_plugins()
    yield
    unload_plugins()


def _write_plugin(path: Path, scale: float = 1.0) -> Path:
    path.write_text(PLUGIN.replace("SCALE", repr(scale)))
    return path


def _main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _profile_keys() -> dict[str, str]:
    return {f"{p.stem}/{c.method}/{c.imbalance_ratio:g}/{c.seed}": c.key()
            for p in sorted(PROFILE_DIR.glob("*.yaml")) for c in expand_grid(load_profile(str(p)))}


def test_built_in_cells_keep_their_keys_with_plugins_loaded_and_trackers_set(tmp_path):
    before = _profile_keys()
    load_plugins([str(_write_plugin(tmp_path / "plug.py")), str(EXAMPLE)])
    assert _profile_keys() == before  # a loaded plugin changes no built-in cell's key
    cfg = expand_grid(load_profile("quick"), {"trackers": ["tensorboard"], "plugins": [str(EXAMPLE)]})[0]
    resolved = cfg.resolved()
    assert cfg.trackers == ["tensorboard"] and "plugin_sources" not in resolved
    assert cfg.key() == before[f"quick/{cfg.method}/{cfg.imbalance_ratio:g}/{cfg.seed}"]
    without = {k: v for k, v in resolved.items() if k not in ("plugins", "trackers")}
    assert cell_key(without) == cfg.key()  # the two new fields are outside the key, not merely empty


def test_a_plugin_file_registers_a_method_model_dataset_and_attack_marked_with_its_source_hash(tmp_path):
    path = _write_plugin(tmp_path / "plug.py")
    (plugin,) = load_plugins([str(path)])
    assert plugin.registered == {"method": ["plug_ce"], "model": ["plug_tiny"], "dataset": ["plug_noise"],
                                 "attack kind": ["plug_none"]}
    assert "plug_ce" in list_methods() and get_method("plug_ce").defaults == {"scale": 1.0}
    assert method_metadata("plug_ce")["plugin"] == {"name": "plug", "sha256": plugin.sha256}
    assert plugin.sha256 == source_hash(sys.modules[plugin.module]) and len(plugin.sha256) == 64
    assert load_plugins([str(path)]) == [plugin] and len(loaded_plugins()) == 1  # loading twice is a no-op


def test_the_plugin_source_hash_is_in_the_key_of_every_cell_using_it(tmp_path):
    path = _write_plugin(tmp_path / "plug.py")
    settings = dict(method="plug_ce", model="plug_tiny", dataset="plug_noise", plugins=[str(path)], epochs=1,
                    eval_attacks=[{"kind": "plug_none"}])
    cfg = Config(**settings).validate()
    (plugin,) = loaded_plugins()
    assert cfg.resolved()["plugin_sources"] == {"plug": plugin.sha256}
    first = cfg.key()
    # an evaluation attack's plugin goes into that attack's evaluation key, not the training key
    spec = cfg.eval_attack_specs()[0]
    assert json.dumps(spec.metadata["plugin"]) and spec.evaluation_key(0, 8)

    unload_plugins()
    _write_plugin(path, scale=2.0)  # the researcher edits the plugin: new code, new cells
    edited = Config(**settings).validate()
    assert edited.key() != first and edited.resolved()["plugin_sources"]["plug"] != plugin.sha256
    only_model = Config(method="at", model="plug_tiny", plugins=[str(path)]).validate()
    assert set(only_model.resolved()["plugin_sources"]) == {"plug"}  # a plugin's model alone keys it too


def test_a_module_name_and_an_installed_entry_point_load_as_plugins(tmp_path, monkeypatch):
    (tmp_path / "lab_methods.py").write_text(EXAMPLE.read_text())
    (tmp_path / "lab_models.py").write_text(PLUGIN.replace("SCALE", "1.0").replace('"plug_', '"ep_'))
    dist = tmp_path / "lab_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tailrobust.plugins]\nlab = lab_models\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (plugin,) = load_plugins(["lab_methods"])
    assert plugin.registered == {"method": ["focal_at"]} and plugin.name == "lab_methods"
    assert {"ep_ce", "ep_tiny"} <= set(list_methods()) | {"ep_tiny"} and "ep_ce" in list_methods()
    assert method_metadata("ep_ce")["plugin"]["name"] == "lab"  # the entry point's name
    for name in ("lab_methods", "lab_models"):
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize("source, message", [
    ("x = 1\nraise RuntimeError('no GPU here')\n", r"plugin .*broken\.py failed to load: RuntimeError: no GPU here \(line 2\)"),
    ("from methods import Method, register_method\n@register_method('at')\nclass Again(Method):\n    pass\n",
     r"plugin .*broken\.py: method 'at' is already registered"),
    ("def broken(:\n", r"plugin .*broken\.py failed to load: SyntaxError"),
])
def test_a_broken_plugin_is_one_line_exit_2_before_anything_runs(tmp_path, source, message):
    (tmp_path / "broken.py").write_text(source)
    code, _, err = _main("--plugin", str(tmp_path / "broken.py"), "--results", str(tmp_path / "r"), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: plugin")
    with pytest.raises(UsageError, match=message):
        load_plugins([str(tmp_path / "broken.py")])
    assert not (tmp_path / "r").exists()


def test_a_missing_plugin_is_one_line(tmp_path):
    for spec, message in ((str(tmp_path / "nope.py"), "no such file"), ("no_such_module_x", "neither a file nor")):
        code, _, err = _main("--plugin", spec, "--dry-run")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_example_plugin_is_compared_with_at_and_at_bsl_in_one_command_on_one_leaderboard(tmp_path):
    """The README's command on the tiny CPU profile, on two worker processes (each loads the plugin itself)."""
    from benchmark.report.tables import groups_of, leaderboard
    from benchmark.store import load_results

    profile, results = tmp_path / "tiny.yaml", tmp_path / "results"
    profile.write_text(TINY_PROFILE.replace("eval_per_class: 20", "eval_per_class: 10"))
    code, out, err = _main("--profile", str(profile), "--results", str(results), "--plugin", str(EXAMPLE),
                           "--methods", "at,at_bsl,focal_at", "--irs", "50", "--epochs", "1", "--devices", "cpu,cpu",
                           "--quiet")
    assert code == 0, err
    folders = sorted(p.name for p in results.iterdir() if not p.name.startswith("."))
    assert [f.split("-")[2] for f in folders] == ["at", "at_bsl", "focal_at"]
    focal = json.loads((results / folders[2] / "metrics.json").read_text())
    assert focal["method"]["name"] == "focal_at" and focal["method"]["hparams"] == {"gamma": 2.0}
    assert focal["config"]["plugin_sources"] == {"focal_at": load_plugins([str(EXAMPLE)])[0].sha256}
    assert "plugin_sources" not in json.loads((results / folders[0] / "metrics.json").read_text())["config"]

    store = load_results(results)
    (group,) = groups_of(store.cells)
    table = leaderboard(store, group, {})
    method = [c.key for c in table.columns].index("method")
    assert sorted(row[method].text.split(" ")[0] for row in table.rows) == ["at", "at_bsl", "focal_at"]
