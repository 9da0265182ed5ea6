"""The speed switches: how they resolve into the cell key, and that they leave a training step's math alone."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from attacks import AttackSpec, pgd
from benchmark.config import Config
from benchmark.data import load_dataset, to_float
from benchmark.errors import UsageError
from benchmark.fastpath import prepare_model, resolve_speed
from benchmark.models import create_model
from benchmark.train import train
from methods import TrainContext, create_method
from toys import tiny_cell

pytestmark = pytest.mark.usefixtures("one_thread")

PLAIN = {"channels_last": False, "cudnn_benchmark": False, "torch_compile": False}
SPEED_KEYS = ("channels_last", "cudnn_benchmark", "torch_compile", "amp")
ATTACK = AttackSpec(kind="pgd", eps=0.1, steps=10, step_size=0.025, start="normal", name="train")
# bf16 vs fp32, one PGD-10 AT/TAET step of a fresh small CNN on 64 digits (CPU autocast, 4 batches measured):
BF16_LOSS_RTOL = 1e-2  # bf16 keeps 8 mantissa bits (2^-8 ≈ 4e-3 per rounding); measured relative error ≤ 7e-4
BF16_GRAD_COSINE = 0.8  # weight gradient direction; measured 0.88-0.97: the batch gradient of an untrained model
#                         is a small sum of per-example terms that mostly cancel, so its rounding error is large


def _speed(cfg: Config) -> dict:
    return {k: cfg.resolved()[k] for k in SPEED_KEYS}


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """``resolved()`` as a CUDA machine sees it (nothing runs on the device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# --- resolution and the cell key --------------------------------------------------------------------

def test_defaults_resolve_to_the_plain_path_without_cuda(no_cuda):
    cfg = Config().validate()
    assert (cfg.channels_last, cfg.cudnn_benchmark, cfg.torch_compile, cfg.amp) == ("auto", "auto", False, "none")
    assert _speed(cfg) == {**PLAIN, "amp": "none"}
    assert _speed(Config(amp="auto").validate())["amp"] == "none"


def test_auto_turns_the_switches_on_for_a_cuda_run(fake_cuda):
    assert _speed(Config().validate()) == {"channels_last": True, "cudnn_benchmark": True, "torch_compile": False,
                                           "amp": "none"}
    assert _speed(Config(amp="auto").validate())["amp"] == "bf16"
    assert _speed(Config(device="cuda:1").validate())["channels_last"] is True
    assert _speed(Config(device="cpu", amp="auto").validate()) == {**PLAIN, "amp": "none"}


def test_resolved_values_are_concrete_and_written_values_are_canonical(no_cuda):
    cfg = Config(channels_last="TRUE", cudnn_benchmark="false", torch_compile=True).validate()
    assert (cfg.channels_last, cfg.cudnn_benchmark) == (True, False)
    resolved = cfg.resolved()
    assert all(isinstance(resolved[k], bool) for k in ("channels_last", "cudnn_benchmark", "torch_compile"))
    assert resolved["amp"] in ("none", "bf16")
    json.dumps(resolved)  # what config.yaml and metrics.json hold


@pytest.mark.parametrize("changes", [{"channels_last": True}, {"cudnn_benchmark": True}, {"torch_compile": True},
                                     {"amp": "bf16"}], ids=lambda c: ",".join(c))
def test_a_speed_switch_changes_the_cell_key(no_cuda, changes):
    assert Config(**changes).validate().key() != Config().validate().key()


def test_auto_names_the_same_cell_as_the_value_it_resolves_to(no_cuda, monkeypatch):
    assert Config(channels_last="auto", amp="auto").validate().key() == \
        Config(channels_last=False, amp="none").validate().key()
    cpu_key = Config().validate().key()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Config().validate().key() == Config(channels_last=True, cudnn_benchmark=True).validate().key()
    assert Config().validate().key() != cpu_key, "a CUDA run with the switches on is another cell than a CPU run"


@pytest.mark.parametrize("changes, word", [({"channels_last": "maybe"}, "channels_last"),
                                           ({"cudnn_benchmark": 1}, "cudnn_benchmark"),
                                           ({"torch_compile": "yes"}, "torch_compile"),
                                           ({"amp": "fp16"}, "amp")])
def test_bad_switch_values_are_usage_errors(changes, word):
    with pytest.raises(UsageError, match=word):
        Config(**changes).validate()


def test_resolve_speed_needs_no_config():
    assert resolve_speed("auto", True, False, "auto", "cpu") == {"channels_last": False, "cudnn_benchmark": True,
                                                                 "torch_compile": False, "amp": "none",
                                                                 "cuda_graphs": False}


# --- cuda_graphs ----------------------------------------------------------------------------------

def test_cuda_graphs_defaults_to_false_and_false_leaves_the_cell_key_as_it_was(no_cuda):
    from benchmark.cell import _identity

    cfg = Config().validate()
    assert cfg.cuda_graphs is False and cfg.resolved()["cuda_graphs"] is False
    assert "cuda_graphs" not in _identity(cfg.resolved())  # every eager cell keeps the key it had before
    assert Config(cuda_graphs="auto").validate().key() == cfg.key()  # auto off CUDA: the eager step


@pytest.mark.parametrize("method_name, requested, used", [("at", "auto", True), ("taet", True, True),
                                                          ("at", False, False), ("las_at", "auto", False),
                                                          ("las_at", True, False)])
def test_cuda_graphs_runs_only_on_cuda_for_a_graph_safe_method(fake_cuda, method_name, requested, used):
    cfg = Config(method=method_name, cuda_graphs=requested).validate()
    assert cfg.resolved()["cuda_graphs"] is used and cfg.resolve().speed["cuda_graphs"] is used
    plain = Config(method=method_name).validate()
    assert (cfg.key() != plain.key()) == used  # in the key when it runs


def test_cuda_graphs_says_why_it_falls_back():
    from benchmark.fastpath import resolve_cuda_graphs
    from methods import get_method

    assert resolve_cuda_graphs("false", "cuda", get_method("at")) == {"requested": False, "used": False,
                                                                      "why": "cuda_graphs: false"}
    on_cpu = resolve_cuda_graphs(True, "cpu", get_method("at"))
    assert on_cpu["used"] is False and on_cpu["requested"] is True and "no CUDA" in on_cpu["why"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        unsafe = resolve_cuda_graphs("auto", "cuda:0", get_method("las_at"))
        assert unsafe["used"] is False and "las_at is not graph-safe" in unsafe["why"] and "item" in unsafe["why"]
        assert resolve_cuda_graphs("auto", "cuda:0", get_method("reat"))["used"] is True
    with pytest.raises(UsageError, match="cuda_graphs must be auto, true or false"):
        resolve_cuda_graphs("yes please", "cpu", get_method("at"))


def test_cuda_graphs_true_on_a_cpu_trains_the_eager_step_and_records_why(tmp_path, no_cuda):
    data = tiny_cell(128)
    logs, costs = [], []
    for requested in (False, True):
        cfg = Config(method="at", model="small_cnn", model_args={"width": 0.25}, epochs=1, batch_size=64, eps=0.1,
                     device="cpu", monitor_per_class=1, cuda_graphs=requested,
                     train_attack={"kind": "pgd", "steps": 2, "step_size": "eps/4", "start": "normal"},
                     monitor_attack={"kind": "pgd", "steps": 1, "step_size": "eps/4", "start": "uniform"}).validate()
        torch.manual_seed(0)
        folder = tmp_path / str(requested)
        folder.mkdir()
        costs.append(train(cfg.resolve(), data, create_method("at"), create_model(cfg.model, 10, 1, **cfg.model_args),
                           folder, torch.device("cpu"), progress=False))
        logs.append(json.loads((folder / "log.jsonl").read_text()))
    assert costs[0]["cuda_graphs"] == {"requested": False, "used": False, "why": "cuda_graphs: false"}
    assert costs[1]["cuda_graphs"]["requested"] is True and costs[1]["cuda_graphs"]["used"] is False
    assert "no CUDA" in costs[1]["cuda_graphs"]["why"]
    assert logs[0]["loss"] == logs[1]["loss"]  # the same eager step ran


# --- the same math ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    data = load_dataset("mnist5k")
    generator = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.y_train), generator=generator)[:64]
    return to_float(data.x_train[idx]), data.y_train[idx]


def _step(model, method_name, x, y, amp=None):
    """One training step's loss and weight gradient (flattened), torch seeded for the attack's start."""
    method = create_method(method_name, **({"ce_epochs": 0} if method_name == "taet" else {}))
    ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=10, class_counts=torch.ones(10), attack=ATTACK)
    torch.manual_seed(1)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else torch.autocast("cpu", enabled=False)
    with context:
        out = method.loss(model, x, y, ctx)
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    return out.loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("method_name", ["at", "taet"])
def test_channels_last_step_gives_the_plain_loss_on_cpu(digits, method_name):
    torch.manual_seed(0)
    plain = create_model("small_cnn", 10, 1, width=0.5)
    fast = prepare_model(copy.deepcopy(plain), {**PLAIN, "channels_last": True})
    assert fast.conv_layers[2].weight.is_contiguous(memory_format=torch.channels_last)
    loss_plain, grad_plain = _step(plain, method_name, *digits)
    loss_fast, grad_fast = _step(fast, method_name, *digits)
    assert abs(loss_fast.item() - loss_plain.item()) <= 1e-5
    assert torch.allclose(grad_fast, grad_plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method_name", ["at", "taet"])
def test_train_with_channels_last_logs_the_plain_loss_on_cpu(tmp_path, method_name):
    """Through the real loop: one step (64 digits, batch 64), channels_last on vs off, same seed. Over more
    steps the two drift apart slowly (5e-5 after a second step here): PGD's sign(∇) turns a last-bit
    difference of a gradient near zero into a whole step for that pixel."""
    data = tiny_cell(64)
    losses = []
    for on in (False, True):
        cfg = Config(method=method_name, method_args={"ce_epochs": 0} if method_name == "taet" else {},
                     model="small_cnn", model_args={"width": 0.5}, epochs=1, batch_size=64, eps=0.1, device="cpu",
                     train_attack={"kind": "pgd", "steps": 10, "step_size": "eps/4", "start": "normal"},
                     monitor_attack={"kind": "pgd", "steps": 1, "step_size": "eps/4", "start": "uniform"},
                     monitor_per_class=1, channels_last=on).validate()
        torch.manual_seed(cfg.seed)
        method = create_method(cfg.method, **cfg.method_args)
        model = method.wrap_model(create_model(cfg.model, 10, 1, **cfg.model_args))
        (tmp_path / str(on)).mkdir()
        train(cfg.resolve(), data, method, model, tmp_path / str(on), torch.device("cpu"), progress=False)
        assert model.conv_layers[2].weight.is_contiguous(memory_format=torch.channels_last) == on
        losses.append(json.loads((tmp_path / str(on) / "log.jsonl").read_text())["loss"])
    assert abs(losses[1] - losses[0]) <= 1e-5


def _cpu_bf16_autocast_works() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    except RuntimeError:
        return False


@pytest.mark.skipif(not _cpu_bf16_autocast_works(), reason="this torch build has no bf16 autocast on the CPU")
@pytest.mark.parametrize("method_name", ["at", "taet"])
def test_bf16_step_stays_within_its_stated_tolerance(digits, method_name):
    """CPU bf16 autocast stands in for CUDA's: same dtype rules, same model and attack code."""
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=0.5)
    loss32, grad32 = _step(copy.deepcopy(model), method_name, *digits)
    loss16, grad16 = _step(copy.deepcopy(model), method_name, *digits, amp="bf16")
    assert abs(loss16.item() - loss32.item()) <= BF16_LOSS_RTOL * abs(loss32.item())
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) >= BF16_GRAD_COSINE


@pytest.mark.skipif(not _cpu_bf16_autocast_works(), reason="this torch build has no bf16 autocast on the CPU")
def test_under_autocast_the_attack_stays_fp32_and_batchnorm_keeps_fp32_statistics(digits):
    x, y = digits
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x[:2]).dtype == torch.bfloat16, "autocast is active"
        x_adv = pgd(model, x[:8], y[:8], eps=0.1, steps=2, step_size=0.025, start="normal")
    assert x_adv.dtype == torch.float32 and (x_adv - x[:8]).abs().max() <= 0.1 + 1e-6
    resnet = create_model("resnet18", 10, 3).train()
    before = resnet.bn1.running_mean.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        resnet(torch.rand(2, 3, 32, 32))
    assert resnet.bn1.running_mean.dtype == torch.float32 and resnet.bn1.weight.dtype == torch.float32
    assert not torch.equal(resnet.bn1.running_mean, before)


# --- on a GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("switches", [{"channels_last": True, "cudnn_benchmark": True},
                                      {"channels_last": True, "cudnn_benchmark": True, "torch_compile": True}],
                         ids=["channels_last+benchmark", "compiled"])
def test_fast_switches_on_cuda_train_close_to_the_plain_path(tmp_path, switches):
    """cuDNN picks other algorithms under these switches, and sign(∇) in PGD turns last-bit differences
    into a different pixel now and then: the loss agrees loosely, not bit for bit."""
    data = tiny_cell(256)
    losses = []
    for name, speed in (("plain", {"channels_last": False, "cudnn_benchmark": False}), ("fast", switches)):
        cfg = Config(method="at", model="small_cnn", model_args={"width": 0.5}, epochs=1, batch_size=64, eps=0.1,
                     device="cuda", monitor_per_class=1, **speed).validate()
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, 10, 1, **cfg.model_args)
        (tmp_path / name).mkdir()
        cost = train(cfg.resolve(), data, create_method("at"), model, tmp_path / name, torch.device("cuda"),
                     progress=False)
        assert cost["device"].startswith("cuda")
        losses.append(json.loads((tmp_path / name / "log.jsonl").read_text())["loss"])
    assert abs(losses[1] - losses[0]) <= 1e-2 * abs(losses[0])
    torch.backends.cudnn.benchmark = False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method_name", ["at", "taet", "reat"])
def test_captured_step_trains_like_the_eager_step_on_cuda(tmp_path, method_name):
    """Two epochs with cuda_graphs on and off from the same seed: the graph ran (captures, replays) and the
    logged losses agree to fused SGD's rounding and PGD's sign flips."""
    data = tiny_cell(512)
    logs, costs = [], []
    for on in (False, True):
        cfg = Config(method=method_name, method_args={"ce_epochs": 1} if method_name == "taet" else {},
                     model="small_cnn", model_args={"width": 0.5}, epochs=2, batch_size=64, eps=0.1,
                     device="cuda", monitor_per_class=1, cuda_graphs=on).validate()
        torch.manual_seed(cfg.seed)
        method = create_method(cfg.method, **cfg.method_args)
        model = method.wrap_model(create_model(cfg.model, 10, 1, **cfg.model_args))
        (tmp_path / str(on)).mkdir()
        costs.append(train(cfg.resolve(), data, method, model, tmp_path / str(on), torch.device("cuda"),
                           progress=False))
        logs.append([json.loads(line) for line in (tmp_path / str(on) / "log.jsonl").read_text().splitlines()])
    graph = costs[1]["cuda_graphs"]
    assert graph["used"] is True and graph["failed"] is None and graph["captures"] >= 1 and graph["replays"] > 0
    for eager, captured in zip(*logs):
        assert abs(captured["loss"] - eager["loss"]) <= 1e-2 * abs(eager["loss"])


# --- compiled kernels (CPU inductor) ----------------------------------------------------------------

@pytest.mark.slow  # inductor compiles two graphs of the small CNN: ~80 s on 2 shared cores (--runslow)
def test_compiled_step_gives_the_eager_loss_and_compiles_once_per_mode():
    """The inductor-compiled model (as ``torch_compile: true`` compiles it) gives the eager step's loss within
    1e-5 over three PGD-AT steps, and the attack's eval-mode forwards and the update's train-mode forward
    compile one graph each: no recompile when the model switches mode at every step."""
    import contextlib

    from torch._inductor.compile_fx import compile_fx

    from benchmark.train import train_step

    compiled_graphs = []

    def counting_inductor(graph_module, example_inputs):
        compiled_graphs.append(graph_module)
        return compile_fx(graph_module, example_inputs)

    torch._dynamo.reset()
    torch.manual_seed(0)
    initial = create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28, generator=g), torch.arange(16) % 10
    attack = AttackSpec(kind="pgd", eps=0.1, steps=2, step_size=0.025, start="none", name="train")

    def losses(model, counts):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=10, class_counts=torch.ones(10), attack=ATTACK)
        ctx.attack = attack
        method = create_method("at")
        out = []
        for _ in range(3):
            out.append(train_step(model.train(), optimizer, method, ctx, x, y, contextlib.nullcontext()).loss.item())
            counts.append(len(compiled_graphs))
        return out

    eager = losses(copy.deepcopy(initial), [])
    model = copy.deepcopy(initial)
    model.compile(backend=counting_inductor)
    counts = []
    compiled = losses(model, counts)
    torch._dynamo.reset()
    assert max(abs(a - b) for a, b in zip(eager, compiled)) <= 1e-5, (eager, compiled)
    assert counts == [2, 2, 2], counts  # eval (attack) and train (update) graphs on the first step, then none
