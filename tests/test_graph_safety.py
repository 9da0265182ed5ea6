"""Graph-safety declarations (issue #17): a method declared graph-safe makes no host-synchronizing call in a
training step (after a warm-up step has built its lazy state), in every graph phase; an unsafe one says why.

The check is ``benchmark.cuda_graph.HostSyncs``: scalar reads (.item(), bool(), int(), float() of a tensor),
nonzero, bincount, boolean-mask indexing, .tolist() and the other data-dependent shapes. On a CPU none of them
waits, but on CUDA each would stall the step and break its capture.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from attacks import AttackSpec
from benchmark.cuda_graph import HostSync, HostSyncs, StepTrace, graph_safety, trace_difference
from benchmark.models import create_model
from benchmark.train import train_step
from methods import LossOut, Method, TrainContext, create_method, get_method, list_methods
from toys import state_tensors

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 4  # TAET: stage 1 in epochs 0-1, HARL from 2; GAIRAT: reweighting from epoch 1
COUNTS = [int(40 * 10 ** (-c / 9)) for c in range(10)]  # IR 10
CHEAP = {"adt": {"steps": 2, "samples": 2}}  # the same code path at a fraction of its 7 × 5 inner forwards


def _ctx(epoch: int, step: int) -> TrainContext:
    attack = AttackSpec(kind="pgd", eps=0.1, steps=2, step_size=0.025, start="normal", name="train")
    return TrainContext(epoch=epoch, epochs=EPOCHS, step=step, num_classes=10, class_counts=torch.tensor(COUNTS),
                        attack=attack)


def _batch(n: int = 24):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10


def syncs_per_phase(name: str) -> dict:
    """{graph phase: host-sync events of one guarded step after one unguarded warm-up step}, over every epoch."""
    torch.manual_seed(0)
    method = create_method(name, **CHEAP.get(name, {}))
    model = method.wrap_model(create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = _batch()
    ctx = _ctx(0, 0)
    found = {}
    for epoch in range(EPOCHS):
        ctx.epoch = epoch
        method.on_epoch_start(ctx)
        train_step(model, optimizer, method, ctx, x, y, contextlib.nullcontext())  # warm-up: lazy state
        with HostSyncs() as guard:
            out = train_step(model, optimizer, method, ctx, x, y, contextlib.nullcontext())
        assert torch.isfinite(out.loss)
        found.setdefault(method.graph_phase(ctx), []).extend(guard.events)
        method.on_epoch_end(ctx)
    return found


@pytest.mark.parametrize("name", list_methods())
def test_every_method_declares_its_graph_safety_and_an_unsafe_one_says_why(name):
    cls = get_method(name)
    assert any("graph_safe" in vars(k) for k in cls.__mro__[:-2] if k is not Method), \
        f"{name} does not declare graph_safe itself (the base class's False is not a declaration)"
    safe, why = graph_safety(cls)
    assert isinstance(cls.graph_safe, bool)
    if not safe:
        assert why and len(why) > 20 and "not declared" not in why, f"{name}: unsafe without a reason"


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).graph_safe])
def test_a_graph_safe_method_makes_no_host_sync_in_a_step_in_any_phase(name):
    found = syncs_per_phase(name)
    assert found, name
    assert all(events == [] for events in found.values()), f"{name} is declared graph-safe but syncs: {found}"


def test_the_methods_that_stay_eager_are_the_ones_with_host_control_flow():
    unsafe = {n for n in list_methods() if not get_method(n).graph_safe}
    assert unsafe == {"las_at"}, unsafe
    events = [e for phase in syncs_per_phase("las_at").values() for e in phase]
    assert any("las_at.py" in e for e in events), events  # its per-example policy rounds and early stop


def test_taet_and_gairat_have_one_graph_phase_per_stage():
    assert set(syncs_per_phase("taet")) == {"clean", "harl"}
    assert set(syncs_per_phase("gairat")) == {"plain", "reweighted"}


class _Syncing(Method):
    """A step that makes one host-synchronizing call of the kind named by ``how``."""

    graph_safe = True
    how = "item"

    def loss(self, model, x, y, ctx):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        per_class = torch.zeros(10).index_add(0, y, torch.ones(len(y)))
        call = {"item": lambda: loss.item(), "bool": lambda: bool(loss > 0), "int": lambda: int(y[0]),
                "float": lambda: float(loss.detach()), "tolist": lambda: y.tolist(), "nonzero": lambda: torch.nonzero(y),
                "method_nonzero": lambda: y.nonzero(), "bincount": lambda: torch.bincount(y, minlength=10),
                "method_bincount": lambda: y.bincount(), "mask": lambda: per_class[per_class > 0]}[self.how]
        call()
        return LossOut(loss, logits)


@pytest.mark.parametrize("how", ["item", "bool", "int", "float", "tolist", "nonzero", "method_nonzero", "bincount",
                                 "method_bincount", "mask"])
def test_the_check_refuses_each_kind_of_host_sync_and_names_where(how):
    method = _Syncing()
    method.how = how
    model = create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _batch(8)
    with pytest.raises(HostSync, match=r"test_graph_safety.py:\d+"):
        with HostSyncs(refuse=True):
            train_step(model, optimizer, method, _ctx(0, 0), x, y, contextlib.nullcontext())
    train_step(model, optimizer, method, _ctx(0, 0), x, y, contextlib.nullcontext())  # unguarded: runs
    assert torch.Tensor.tolist(torch.tensor([1])) == [1]  # the patch is gone after the block


def test_reat_keeps_its_state_tensors_in_place_across_an_epoch_end():
    """A replayed graph reads the tensors it was captured with: REAT's prediction counts and class weights
    must be updated in place at the epoch end, not replaced."""
    method = create_method("reat")
    model = create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _batch()
    ctx = _ctx(0, 0)
    train_step(model, optimizer, method, ctx, x, y, contextlib.nullcontext())
    running, weights = method._running, method.rbl_weights(ctx.class_counts)
    counted = running.clone()
    method.on_epoch_end(ctx)
    train_step(model, optimizer, method, ctx, x, y, contextlib.nullcontext())
    assert method._running is running and method.rbl_weights(ctx.class_counts) is weights
    assert torch.equal(method._previous, counted)  # last epoch's counts rolled over
    fresh = create_method("reat")
    fresh._previous = counted.clone()
    assert torch.equal(weights, fresh.rbl_weights(ctx.class_counts))  # the weights those counts give


# --- replay equivalence: what a capture would get wrong silently --------------------------------------------

def _persistent(model, optimizer, method, ctx, x, y) -> dict:
    """The tensors a captured step reads across replays: weights, buffers, optimizer and method state, the
    static batch."""
    return {**state_tensors(model, optimizer, method), "ctx.class_counts": ctx.class_counts, "x": x, "y": y}


def replay_differences(method: Method, epochs: int = EPOCHS) -> dict:
    """{graph phase: [differences]}: each phase's first traced step (after one warm-up step, as the captured step
    warms up before it records) is what a capture would replay; every later step of that phase, in the same epoch
    and after epoch ends, is compared with it."""
    torch.manual_seed(0)
    model = method.wrap_model(create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = _batch()
    ctx = _ctx(0, 0)
    captured, found = {}, {}

    def traced_step():
        with StepTrace(_persistent(model, optimizer, method, ctx, x, y)) as trace:
            train_step(model, optimizer, method, ctx, x, y, contextlib.nullcontext())
        return trace

    for epoch in range(epochs):
        ctx.epoch = epoch
        method.on_epoch_start(ctx)
        phase = method.graph_phase(ctx)
        if phase not in captured:
            train_step(model, optimizer, method, ctx, x, y, contextlib.nullcontext())  # warm-up: lazy state
            captured[phase] = traced_step()
        differences = found.setdefault(phase, [])
        for _ in range(2):
            difference = trace_difference(captured[phase], traced_step())
            if difference:
                differences.append(f"epoch {epoch}: {difference}")
        method.on_epoch_end(ctx)
    return found


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).graph_safe])
def test_a_graph_safe_method_replays_as_recorded_across_steps_and_epoch_ends(name):
    """Every step of a phase runs the ops its capture recorded, on the same constants and the same state
    tensors: no Python value that changes with the step or epoch, no state replaced instead of updated."""
    found = replay_differences(create_method(name, **CHEAP.get(name, {})))
    assert found and all(differences == [] for differences in found.values()), f"{name}: {found}"


class _EpochRamp(Method):
    """A step whose loss weight is a Python float computed from the epoch: a capture freezes it."""

    graph_safe = True

    def loss(self, model, x, y, ctx):
        logits = model(x)
        return LossOut(F.cross_entropy(logits, y) * (1.0 + ctx.epoch / 10), logits)


class _ReplacedState(Method):
    """State replaced at the epoch end (a new tensor, not written in place): a replay reads the old one."""

    graph_safe = True

    def __init__(self):
        super().__init__()
        self.weight = torch.ones(10)

    def loss(self, model, x, y, ctx):
        logits = model(x)
        return LossOut(F.cross_entropy(logits, y, weight=self.weight), logits)

    def on_epoch_end(self, ctx):
        self.weight = self.weight * 0.5


class _PythonData(Method):
    """A tensor built from Python data inside the step: a replay re-reads a host buffer that is gone."""

    graph_safe = True

    def loss(self, model, x, y, ctx):
        logits = model(x)
        weight = torch.tensor([1.0] * 9 + [2.0])
        return LossOut(F.cross_entropy(logits, y, weight=weight), logits)


@pytest.mark.parametrize("broken, where, what", [
    (_EpochRamp, "epoch 1", "1.1"), (_ReplacedState, "epoch 1", "method.weight"), (_PythonData, "epoch 0", "outside")])
def test_the_replay_check_finds_a_frozen_constant_a_replaced_state_and_python_data(broken, where, what):
    found = replay_differences(broken(), epochs=2)
    differences = found[None]
    assert differences and differences[0].startswith(where) and what in differences[0], differences
    assert replay_differences(Method(), epochs=2) == {None: []}  # plain CE replays as recorded
