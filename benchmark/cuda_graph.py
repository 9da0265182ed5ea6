"""One training step recorded as a CUDA graph and replayed per batch (issue #17), and the host-sync check it rests on.

Why: an eager PGD-10 step of a CIFAR ResNet-18 launches ~1,900 kernels, each costing the host more time than the
GPU spends on it; replaying a captured graph launches them all at once. What a capture needs:

* a step without host-dependent control flow (``Method.graph_safe``; :class:`HostSyncs` finds what breaks it),
  and one capture per value of ``Method.graph_phase`` (TAET's two stages);
* static inputs: each batch is copied into the buffers the graph reads; a batch of another shape (the last
  partial batch with ``drop_last: false``) runs eagerly;
* an optimizer whose step launches a fixed set of kernels and reads the learning rate from the device: SGD with
  ``fused=True`` and ``lr`` a device tensor, so a scheduler step (``fill_``) needs no re-capture;
* warm-up steps (real training steps, eager, on a side stream) before the capture, which build cuDNN's plans,
  the momentum buffers and a method's lazily made state; autocast without its weight-cast cache inside the graph.

The switch ``cuda_graphs: auto | true | false`` (default false) resolves in ``fastpath.resolve_cuda_graphs``: ``auto``
is on only on CUDA for a method declared graph-safe, ``true`` where it cannot run falls back to the eager step,
and the cell's cost record says what was asked, what ran and why (``cost["cuda_graphs"]``). Without CUDA no graph
runs, but the rest does: :class:`HostSyncs` finds calls a capture refuses, :class:`StepTrace` finds what a replay
would get wrong silently (tests/test_graph_safety.py), and the logic around the graph runs through a stand-in for
:class:`CudaGraphs` that reruns the recorded function (tests/test_captured_step.py).
"""
from __future__ import annotations

import contextlib
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .fastpath import graph_safety, resolve_cuda_graphs  # noqa: F401  (the switch's resolution lives with the others)

# aten ops whose result the host has to wait for: a scalar read (.item(), bool(t), int(t), float(t)), or an
# output whose size depends on the data
_SYNC_OPS = {
    "aten::_local_scalar_dense": "a scalar read (.item(), bool(), int() or float() of a tensor)",
    "aten::nonzero": "nonzero", "aten::bincount": "bincount", "aten::masked_select": "masked_select",
    "aten::unique_dim": "unique", "aten::_unique2": "unique", "aten::unique_consecutive": "unique",
    "aten::repeat_interleave": "repeat_interleave without output_size",
}


class HostSync(RuntimeError):
    """A host-synchronizing call inside a block that :class:`HostSyncs` guards with ``refuse=True``."""


def _caller() -> str:
    """file:line of the innermost frame outside torch and this module: where the sync was asked for."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        if "/torch/" not in name and not name.endswith("benchmark/cuda_graph.py"):
            return f"{name.rsplit('/', 2)[-2]}/{name.rsplit('/', 1)[-1]}:{frame.lineno} ({frame.name})"
    return "?"


class HostSyncs(TorchDispatchMode):
    """Counts, or refuses (``refuse=True``), every call in the block that makes the host wait for the device:
    scalar reads, data-dependent shapes (nonzero, bincount, boolean-mask indexing) and ``.tolist()``. On a CPU
    nothing waits, but the same calls would on CUDA and break a capture, so this is the CPU check of
    ``Method.graph_safe``. ``events`` lists each as "what at file:line"."""

    def __init__(self, refuse: bool = False):
        super().__init__()
        self.refuse = refuse
        self.events: list[str] = []
        self._patches = contextlib.ExitStack()

    def _found(self, what: str) -> None:
        event = f"{what} at {_caller()}"
        self.events.append(event)
        if self.refuse:
            raise HostSync(event)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = _SYNC_OPS.get(func._schema.name)
        if func._schema.name == "aten::repeat_interleave" and kwargs.get("output_size") is not None:
            what = None
        if func._schema.name == "aten::index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            what = "boolean-mask indexing"
        if what:
            self._found(what)
        return func(*args, **kwargs)

    def __enter__(self):
        tolist = torch.Tensor.tolist  # reads the data in C++, below the dispatcher: patched instead
        guard = self

        def checked_tolist(tensor, *args, **kwargs):
            guard._found(".tolist()")
            return tolist(tensor, *args, **kwargs)

        self._patches.enter_context(_patched(torch.Tensor, "tolist", checked_tolist))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patches.close()


class StepTrace(TorchDispatchMode):
    """What a replay of a captured step would run: every aten op of the block, with its Python constants, and
    for each tensor it reads that the block did not make, where that tensor lives. A CUDA graph bakes in both:
    a replay reruns the recorded kernels with the constants and addresses of the capture. So two steps of one
    graph phase that trace differently would train differently captured than eagerly: a constant computed in
    Python from the epoch or the step (frozen by the capture), a state tensor replaced instead of updated in
    place (a replay reads the old one), a tensor made from Python data inside the step (a replay re-reads a
    host buffer that is gone). On a CPU this is the check of ``Method.graph_safe`` that :class:`HostSyncs` is
    not: that one finds calls that cannot be captured, this one what a capture would get wrong silently.

    ``persistent`` names the tensors that live across steps (parameters, buffers, optimizer and method
    state): a read of one is recorded by name and address. A read of a tensor that is neither made in the block
    nor named is recorded by address, or by value for a 0-dim tensor (Python numbers reach the dispatcher as
    such: ``loss * w`` with a float ``w``). ``ops`` is the trace; :func:`trace_difference` compares two."""

    def __init__(self, persistent: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.named = {_storage(t): name for name, t in (persistent or {}).items()}
        self.made: set[int] = set()  # storages the block's own ops produced
        self.ops: list[tuple] = []

    def _describe(self, value):
        if isinstance(value, torch.Tensor):
            where = _storage(value)
            if where in self.made and where not in self.named:
                return ("made", tuple(value.shape), value.dtype)
            layout = (tuple(value.shape), tuple(value.stride()), value.storage_offset(), value.dtype)
            if where in self.named:
                return ("state", self.named[where], where, *layout)
            if value.dim() == 0:
                return ("constant", value.dtype, value.item())
            return ("outside", where, *layout)
        if isinstance(value, (list, tuple)):
            return type(value)(self._describe(v) for v in value)
        if isinstance(value, dict):
            return {k: self._describe(v) for k, v in value.items()}
        if value is None or isinstance(value, (bool, int, float, complex, str, torch.dtype, torch.device,
                                               torch.layout, torch.memory_format)):
            return value
        return type(value).__name__  # a generator, a profiler handle: not a constant of the kernels

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "profiler":  # optimizer.step's record_function markers launch no kernel
            self.ops.append((str(func), self._describe(args), self._describe(kwargs)))
        out = func(*args, **kwargs)
        for t in (out if isinstance(out, (list, tuple)) else [out]):
            if isinstance(t, torch.Tensor):
                self.made.add(_storage(t))
        return out


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def trace_difference(first: StepTrace, second: StepTrace) -> str | None:
    """None if the two steps ran the same ops on the same constants and state tensors, else the first
    difference, with the index of the op (what a replay of ``first`` would have got wrong in ``second``)."""
    for index, (a, b) in enumerate(zip(first.ops, second.ops)):
        if a != b:
            captured, eager = _first_difference(a, b)
            return f"op {index} ({a[0]}): captured {captured!r:.300}, eager runs {eager!r:.300}"
    if len(first.ops) != len(second.ops):
        return f"{len(first.ops)} ops captured, {len(second.ops)} run eagerly"
    return None


def _first_difference(a, b):
    """The innermost differing parts of two op descriptions (a tensor's description is reported whole)."""
    while isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and a \
            and a[0] not in ("made", "state", "constant", "outside"):
        a, b = next((p, q) for p, q in zip(a, b) if p != q)
    return a, b


@contextlib.contextmanager
def _patched(owner, name: str, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def capturable_sgd(params, lr: float, momentum: float, weight_decay: float, device) -> torch.optim.Optimizer:
    """SGD as the captured step needs it: one fused kernel per step, the learning rate a device tensor (a
    scheduler writes it in place). The same update as the eager loop's SGD, up to rounding."""
    return torch.optim.SGD(params, lr=torch.tensor(float(lr), device=device), momentum=momentum,
                           weight_decay=weight_decay, fused=True)


def _autocast(amp: str):
    """bf16 autocast without its weight-cast cache: cached casts made during the capture would not be redone
    by a replay, after the optimizer has changed the weights."""
    if amp == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


class CudaGraphs:
    """The CUDA side of a capture, apart so the CPU tests can run the logic around it (tests/test_captured_step.py
    puts in a stand-in that runs the recorded function instead of its kernels): a side stream for warm-up
    steps, and ``capture(fn) -> (replay, outputs)`` recording ``fn`` once as a graph whose replays rewrite
    ``outputs`` in place."""

    def __init__(self):
        self._side = None

    @contextlib.contextmanager
    def side_stream(self):
        if self._side is None:
            self._side = torch.cuda.Stream()
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            yield
        torch.cuda.current_stream().wait_stream(self._side)

    def capture(self, fn):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph.replay, out


class CapturedStep:
    """``step(xb, yb) -> LossOut`` with the semantics of ``benchmark.train.train_step``: warm-up steps first
    (eager, on a side stream), then one capture per graph phase, then a replay per batch. The returned LossOut
    holds the graph's static outputs: read them before the next step (the training loop does). A capture that
    fails (a sync the CPU check did not see) switches to the eager step for the rest of the run, and
    ``record`` says so."""

    def __init__(self, model, optimizer, method, ctx, amp: str, eager_step, warmup_steps: int = 3,
                 batch_size: int | None = None, backend: "CudaGraphs | None" = None):
        self.model, self.optimizer, self.method, self.ctx, self.amp = model, optimizer, method, ctx, amp
        self.eager_step, self.warmup_steps, self.batch_size = eager_step, warmup_steps, batch_size
        self.backend = backend or CudaGraphs()
        self.graphs: dict = {}  # phase -> (replay, static x, static y, static LossOut)
        self.warmed: dict = {}  # phase -> warm-up steps done
        self.record = {"captures": 0, "replays": 0, "eager_steps": 0, "failed": None}

    def _eager(self, xb, yb, side_stream: bool = False):
        self.record["eager_steps"] += 1
        if not side_stream:
            return self.eager_step(xb, yb)
        with self.backend.side_stream():
            return self.eager_step(xb, yb)

    def _capture(self, xb, yb):
        lr = self.optimizer.param_groups[0]["lr"]
        if not isinstance(lr, torch.Tensor):  # a float would be baked in: the schedule's steps would never reach it
            raise RuntimeError("the optimizer's lr is a float, not a device tensor (benchmark.cuda_graph.capturable_sgd)")
        static_x, static_y = xb.clone(), yb.clone()
        self.ctx.lr = lr  # the device tensor: read by the replays as the schedule writes it in place
        self.optimizer.zero_grad(set_to_none=True)  # the graph allocates the gradients in its own pool

        def step():
            with _autocast(self.amp):
                out = self.method.loss(self.model, static_x, static_y, self.ctx)
            out.loss.backward()
            self.optimizer.step()
            return out

        replay, out = self.backend.capture(step)
        self.record["captures"] += 1
        return replay, static_x, static_y, out

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor):
        if self.record["failed"] or (self.batch_size is not None and len(yb) != self.batch_size):
            return self._eager(xb, yb)  # after a failed capture, or a partial batch (never the one captured)
        phase = self.method.graph_phase(self.ctx)
        entry = self.graphs.get(phase)
        if entry is None:
            if self.warmed.get(phase, 0) < self.warmup_steps:
                self.warmed[phase] = self.warmed.get(phase, 0) + 1
                return self._eager(xb, yb, side_stream=True)
            try:
                entry = self.graphs[phase] = self._capture(xb, yb)
            except RuntimeError as err:  # e.g. "operation not permitted when stream is capturing"
                self.record["failed"] = f"capture failed in phase {phase!r}: {str(err).splitlines()[0][:200]}"
                self.optimizer.zero_grad(set_to_none=True)
                return self._eager(xb, yb)
        replay, static_x, static_y, out = entry
        if xb.shape != static_x.shape or yb.shape != static_y.shape:  # a partial last batch
            return self._eager(xb, yb)
        static_x.copy_(xb)
        static_y.copy_(yb)
        replay()
        self.ctx.step += 1
        self.record["replays"] += 1
        return out


class CapturedAttack:
    """Our PGD (any of its objectives) at the evaluation's batch shape, recorded once as a CUDA graph and replayed
    per batch: the evaluation's counterpart of :class:`CapturedStep`, on for a cell whose ``cuda_graphs`` runs.
    The random start is drawn eagerly, exactly as the eager attack draws it (per example, ``ExampleSeeds``),
    into a static buffer, and the K forward / input-gradient / projection steps replay on it. Only the first
    batch shape is captured (the last, partial batch runs eagerly); a capture that fails switches to the eager
    attack, and ``record`` (captures, replays, eager batches, failure) goes into the attack's sanity record."""

    def __init__(self, model: torch.nn.Module, spec, backend: "CudaGraphs | None" = None):
        self.model, self.spec, self.backend = model, spec, backend or CudaGraphs()
        self.entry = None  # (replay, static x, static start, static y, static output)
        self.record = {"captures": 0, "replays": 0, "eager_batches": 0, "failed": None}

    def _steps(self, x, start, y):
        from attacks.pgd import pgd

        spec = self.spec
        return pgd(self.model, x, y, spec.eps, spec.steps, spec.step_size, loss_fn=spec.loss_fn(), x_init=start)

    def _capture(self, x, start, y):
        static = (x.clone(), start.clone(), y.clone())
        with self.backend.side_stream():  # warm-up outside the capture: cuDNN's plans, lazily made buffers
            self._steps(*static)
        replay, out = self.backend.capture(lambda: self._steps(*static))
        self.record["captures"] += 1
        return (replay, *static, out)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, draws) -> torch.Tensor:
        from attacks.pgd import random_start

        x = x.detach().float()
        start = random_start(x, self.spec.eps, self.spec.start, draws)
        if self.entry is None and self.record["failed"] is None:  # only the first batch's shape is captured
            try:
                self.entry = self._capture(x, start, y)
            except RuntimeError as err:  # e.g. "operation not permitted when stream is capturing"
                self.record["failed"] = f"capture failed: {str(err).splitlines()[0][:200]}"
        if self.entry is None or x.shape != self.entry[1].shape or y.shape != self.entry[3].shape:
            self.record["eager_batches"] += 1
            return self._steps(x, start, y)
        replay, static_x, static_start, static_y, out = self.entry
        static_x.copy_(x)
        static_start.copy_(start)
        static_y.copy_(y)
        replay()
        self.record["replays"] += 1
        return out.clone()  # the next replay overwrites the static output
