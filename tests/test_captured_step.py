"""The logic around the CUDA-graph capture, run on a CPU (issue #17): warm-up steps, one capture per graph phase,
static batch buffers, replays, partial batches, the learning-rate tensor the schedule writes in place, resume.

No CUDA graph can run here, so ``benchmark.cuda_graph.CudaGraphs`` is replaced by :class:`RerunGraphs`, which
does what a capture and a replay do to the run's state without recording kernels: a capture runs the step's
Python once and leaves the weights, buffers, optimizer and method state and the RNG as they were (a capture
launches nothing); a replay runs the recorded function again and writes its results into the captured outputs.
A replay that read the wrong batch, a batch trained twice or never, a step count off by one, or a schedule that
never reached the captured optimizer would make the captured run differ from the eager one. What only a real
graph can get wrong (constants and addresses baked into the kernels) is tests/test_graph_safety.py's replay
check; the real graph is tests/test_fastpath.py's CUDA test."""
from __future__ import annotations

import inspect
import json

import pytest
import torch

from attacks import AttackSpec
from attacks.pgd import ExampleSeeds, pgd, random_start
from benchmark import cuda_graph
from benchmark import train as train_module
from benchmark.config import Config
from benchmark.cuda_graph import CapturedAttack, CapturedStep, capturable_sgd
from benchmark.data import load_dataset, to_float
from benchmark.models import create_model
from methods import create_method
from toys import state_tensors, tiny_cell

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 4  # TAET: its clean stage in epochs 0-1, HARL from epoch 2: two graph phases


class RerunGraphs:
    """``CudaGraphs`` for a CPU: see the module docstring. ``state()`` gives the tensors a capture must not change;
    ``fresh()`` runs before each run of the function (a graph writes the gradients afresh, never accumulates)."""

    def __init__(self, state=lambda: [], fresh=lambda: None):
        self.state, self.fresh = state, fresh

    def side_stream(self):
        import contextlib

        return contextlib.nullcontext()

    def capture(self, fn):
        saved = [(t, t.detach().clone()) for t in self.state()]
        rng = torch.get_rng_state()
        self.fresh()
        out = fn()
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
        torch.set_rng_state(rng)

        def replay():
            self.fresh()
            new = fn()
            with torch.no_grad():
                for old, fresh in zip(_outputs(out), _outputs(new)):
                    old.copy_(fresh)

        return replay, out


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [out.loss, *([out.logits] if out.logits is not None else []), *out.stats.values()]


def _rerun_graphs(step: CapturedStep) -> RerunGraphs:
    def state():
        return list(state_tensors(step.model, step.optimizer, step.method).values())

    def fresh():
        for p in step.model.parameters():
            p.grad = None
    return RerunGraphs(state, fresh)


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    """train() with cuda_graphs taken as running on the CPU: fused SGD with a tensor lr, the CapturedStep over
    RerunGraphs. ``warmup`` (a one-item list) sets the warm-up steps; a huge value keeps every step eager, which
    gives the same optimizer and loop as the captured run without any replay."""
    warmup = [3]
    monkeypatch.setattr(train_module, "resolve_cuda_graphs",
                        lambda requested, device, method: {"requested": True, "used": True, "why": None})
    real_init = CapturedStep.__init__

    def init(self, *args, **kwargs):
        bound = inspect.signature(real_init).bind(self, *args, **kwargs)
        bound.arguments["warmup_steps"] = warmup[0]
        real_init(*bound.args, **bound.kwargs)
        self.backend = _rerun_graphs(self)

    monkeypatch.setattr(cuda_graph.CapturedStep, "__init__", init)
    return warmup


def _config(**overrides) -> Config:
    # 44 examples at batch 8: 5 full batches and a partial one of 4 per epoch; the lr drops after epochs 1 and 2
    settings = dict(method="taet", model="small_cnn", model_args={"width": 0.25}, epochs=EPOCHS, batch_size=8,
                    drop_last=False, eps=0.1, device="cpu", monitor_per_class=1, milestones=[2, 3],
                    schedule_unit="epoch", checkpoint_every_s=0, cuda_graphs=True,
                    train_attack={"kind": "pgd", "steps": 2, "step_size": "eps/4", "start": "uniform"},
                    monitor_attack={"kind": "pgd", "steps": 1, "step_size": "eps/4", "start": "uniform"})
    return Config(**{**settings, **overrides}).validate()


def _train(cfg: Config, data, folder, crash_at_epoch: int | None = None):
    torch.manual_seed(0)
    method = create_method(cfg.method, **cfg.method_args)
    if crash_at_epoch is not None:
        real_start = method.on_epoch_start

        def on_epoch_start(ctx):
            if ctx.epoch == crash_at_epoch:
                raise KeyboardInterrupt("killed")
            real_start(ctx)
        method.on_epoch_start = on_epoch_start
    model = method.wrap_model(create_model(cfg.model, 10, 1, **cfg.model_args))
    folder.mkdir(parents=True, exist_ok=True)
    cost = train_module.train(cfg.resolve(), data, method, model, folder, torch.device("cpu"), progress=False)
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return model, cost, log


def _same_run(a, b):
    (model_a, _, log_a), (model_b, _, log_b) = a, b
    assert [r["lr"] for r in log_a] == [r["lr"] for r in log_b]
    for ra, rb in zip(log_a, log_b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6, abs=1e-7), (ra["epoch"], ra["loss"], rb["loss"])
    for pa, pb in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.allclose(pa.float(), pb.float(), rtol=0, atol=1e-6)


def test_the_captured_step_trains_as_the_eager_step_through_both_taet_stages_and_the_schedule(graphs_on_cpu,
                                                                                               tmp_path):
    data = tiny_cell(44)
    graphs_on_cpu[0] = 10**9
    eager = _train(_config(), data, tmp_path / "eager" / _config().key())
    graphs_on_cpu[0] = 3
    captured = _train(_config(), data, tmp_path / "captured" / _config().key())
    _same_run(eager, captured)
    assert [r["lr"] for r in captured[2]] == pytest.approx([0.1, 0.1, 0.01, 0.001])  # the schedule reached it
    record = captured[1]["cuda_graphs"]
    # per phase (2 epochs × 5 full batches): 3 warm-up steps, then the capture and 7 replays; 4 partial batches
    assert record == {"requested": True, "used": True, "why": None, "captures": 2, "replays": 14,
                      "eager_steps": 2 * 3 + EPOCHS, "failed": None}
    assert captured[1]["steps"] == eager[1]["steps"] == EPOCHS * 6
    assert eager[1]["cuda_graphs"]["replays"] == 0


def test_a_resumed_captured_run_captures_again_and_ends_where_an_uninterrupted_one_ends(graphs_on_cpu, tmp_path):
    data = tiny_cell(44)
    key = _config().key()
    whole = _train(_config(), data, tmp_path / "whole" / key)
    with pytest.raises(KeyboardInterrupt):
        _train(_config(), data, tmp_path / "resumed" / key, crash_at_epoch=3)  # after epoch 2 checkpointed
    resumed = _train(_config(), data, tmp_path / "resumed" / key)
    assert resumed[1]["resumed_from_epoch"] == 3
    _same_run(whole, resumed)
    assert resumed[1]["cuda_graphs"]["captures"] == 1  # only the HARL phase is left: warmed up and captured anew


def test_a_capture_needs_the_lr_as_a_tensor_and_falls_back_to_the_eager_step_with_the_reason(tmp_path):
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=0.25)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # a float lr: a graph would bake it in
    method = create_method("at")
    from methods import TrainContext

    ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=10, class_counts=torch.ones(10),
                       attack=AttackSpec(kind="pgd", eps=0.1, steps=1, step_size=0.025, start="uniform"))
    eager_calls = []

    def eager(xb, yb):
        eager_calls.append(len(yb))
        return train_module.train_step(model, optimizer, method, ctx, xb, yb, __import__("contextlib").nullcontext())

    step = CapturedStep(model, optimizer, method, ctx, "none", eager, warmup_steps=1, batch_size=4,
                        backend=RerunGraphs())
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    for _ in range(3):
        step(x, y)
    assert step.record["captures"] == 0 and step.record["replays"] == 0 and len(eager_calls) == 3
    assert "lr is a float" in step.record["failed"]


def test_capturable_sgd_makes_the_eager_updates_and_the_schedule_writes_its_lr_tensor_in_place():
    """The captured step's optimizer (fused SGD, lr a tensor the graph reads) against the eager loop's SGD under a
    MultiStepLR, across a state-dict round trip (a resume): equal updates up to fused rounding, and the lr stays
    one tensor whose value the scheduler changes."""
    torch.manual_seed(0)
    fused_model, plain_model = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    plain_model.load_state_dict(fused_model.state_dict())
    fused = capturable_sgd(fused_model.parameters(), 0.1, 0.9, 5e-4, torch.device("cpu"))
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedules = [torch.optim.lr_scheduler.MultiStepLR(o, [2, 4], 0.1) for o in (fused, plain)]
    lr = fused.param_groups[0]["lr"]
    x = torch.randn(16, 6)
    for step in range(6):
        if step == 3:  # a resume: a new optimizer and scheduler loaded from the state dicts
            state, schedule_state = fused.state_dict(), schedules[0].state_dict()
            fused = capturable_sgd(fused_model.parameters(), 0.1, 0.9, 5e-4, torch.device("cpu"))
            fused.load_state_dict(state)
            schedules[0] = torch.optim.lr_scheduler.MultiStepLR(fused, [2, 4], 0.1)
            schedules[0].load_state_dict(schedule_state)
            lr = fused.param_groups[0]["lr"]
        for model, optimizer, schedule in ((fused_model, fused, schedules[0]), (plain_model, plain, schedules[1])):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
            schedule.step()
        assert fused.param_groups[0]["lr"] is lr and isinstance(lr, torch.Tensor)
        assert float(lr) == pytest.approx(plain.param_groups[0]["lr"], rel=1e-6)
        for a, b in zip(fused_model.parameters(), plain_model.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(lr) == pytest.approx(0.001, rel=1e-6)


def test_a_captured_attack_gives_the_eager_attack_for_full_and_partial_batches(clean_mnist_model):
    """Evaluation's captured PGD: the start drawn eagerly per example, the steps replayed on the static buffers;
    the last, partial batch runs eagerly. Every batch equals the eager attack from the same per-example starts."""
    data = load_dataset("mnist5k")
    x, y = to_float(data.x_test[:40]), data.y_test[:40]
    spec = AttackSpec(kind="pgd", eps=0.1, steps=3, step_size=0.025, start="uniform", name="pgd3")
    attack = CapturedAttack(clean_mnist_model, spec, backend=RerunGraphs())
    for lo, hi in ((0, 16), (16, 32), (32, 40)):
        got = attack(x[lo:hi], y[lo:hi], ExampleSeeds(5, range(lo, hi)))
        start = random_start(x[lo:hi], spec.eps, spec.start, ExampleSeeds(5, range(lo, hi)))
        expected = pgd(clean_mnist_model, x[lo:hi], y[lo:hi], spec.eps, spec.steps, spec.step_size, x_init=start)
        assert torch.equal(got, expected), (lo, hi)
    assert attack.record == {"captures": 1, "replays": 2, "eager_batches": 1, "failed": None}


def test_perfs_captured_check_compares_replayed_losses_with_the_eager_ones(graphs_on_cpu):
    """``benchmark.tools.perf``'s check of the captured step (run by ``make gpu-check``) on its tiny configuration:
    the same weights, batches and deterministic start, eager and captured; with the stand-in the two agree
    exactly, and the record counts one capture and a replay for every step after the warm-up."""
    from benchmark.fastpath import resolve_speed
    from benchmark.tools.perf import build_parser, captured_check, _fill_defaults

    device = torch.device("cpu")
    args = build_parser().parse_args(["--tiny", "--device", "cpu", "--warmup-steps", "1"])
    _fill_defaults(args, device)
    graphs_on_cpu[0] = args.warmup_steps
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5 * args.batch_size, 1, 28, 28), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (len(x),), generator=gen)
    torch.manual_seed(0)
    initial = create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0)
    speed = resolve_speed(False, False, False, "none", device)
    check = captured_check(initial, x, y, args, device, speed, 10)
    assert check["steps"] == 5 and check["matches"] is True and check["max_relative_difference"] == 0.0
    assert check["graph"] == {"captures": 1, "replays": 4, "eager_steps": 1, "failed": None}
    assert len(set(check["eager_losses"])) > 1  # the weights moved: five distinct steps, not one repeated
