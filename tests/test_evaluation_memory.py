"""Evaluation at a large batch: a batch that runs out of device memory is retried halved when the attack's
numbers do not depend on the batch (per-example random starts), and refused in one line when they do; on
CUDA our PGD replays one captured graph per batch and gives the eager attack's predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import AttackSpec
from benchmark.evaluate import EvaluationOutOfMemory, predict
from benchmark.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


class FitsAtMost(torch.nn.Module):
    """The model, but a forward on more than ``limit`` images raises the error CUDA raises when memory runs out."""

    def __init__(self, model, limit: int):
        super().__init__()
        self.model, self.limit, self.refused = model, limit, 0

    def forward(self, x):
        if len(x) > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (test: {len(x)} > {self.limit} images)")
        return self.model(x)


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0).eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(40, 1, 28, 28, generator=g), torch.arange(40) % 10


def test_a_batch_that_does_not_fit_is_halved_and_gives_the_same_predictions(digits):
    model, x, y = digits
    spec = AttackSpec(kind="pgd", eps=0.1, steps=3, step_size=0.025, start="uniform")
    fitted, fitted_sanity = predict(model, x, y, spec, 8, torch.device("cpu"), seed=3)
    small = FitsAtMost(model, limit=10)
    halved, sanity = predict(small, x, y, spec, 40, torch.device("cpu"), seed=3)
    assert np.array_equal(halved, fitted)
    assert small.refused == 2 and sanity["batch_halvings"] == 2 and sanity["batch_size_used"] == 10  # 40 → 20 → 10
    assert "batch_halvings" not in fitted_sanity  # a batch that fits records nothing extra
    clean, _ = predict(FitsAtMost(model, limit=10), x, y, None, 40, torch.device("cpu"))
    assert np.array_equal(clean, predict(model, x, y, None, 40, torch.device("cpu"))[0])


def test_an_attack_whose_numbers_depend_on_the_batch_is_not_retried_smaller(digits):
    pytest.importorskip("torchattacks")
    model, x, y = digits
    spec = AttackSpec(kind="torchattacks_pgd", eps=0.1, steps=2, step_size=0.025, start="uniform")
    assert not spec.metadata.get("batch_invariant")
    with pytest.raises(EvaluationOutOfMemory) as err:
        predict(FitsAtMost(model, limit=10), x, y, spec, 40, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert str(err.value) == (f"out of device memory in attack {spec.name} at evaluation batch 40 and its numbers "
                              "depend on the batch, so it is not retried smaller: lower eval_batch_size")


def test_capture_asked_on_a_cpu_runs_the_eager_attack_and_records_no_graph(digits):
    model, x, y = digits
    spec = AttackSpec(kind="pgd", eps=0.1, steps=3, step_size=0.025, start="uniform")
    eager, eager_sanity = predict(model, x, y, spec, 8, torch.device("cpu"), seed=3)
    asked, sanity = predict(model, x, y, spec, 8, torch.device("cpu"), seed=3, capture=True)
    assert np.array_equal(asked, eager) and "cuda_graph" not in sanity and sanity == eager_sanity


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graphs)")
def test_a_captured_pgd_replays_per_full_batch_and_gives_the_eager_predictions(digits):
    model, x, y = digits
    model = model.cuda()
    x, y = torch.cat([x] * 3)[:100], torch.cat([y] * 3)[:100]  # 3 full batches of 32 and a partial one of 4
    spec = AttackSpec(kind="pgd", eps=0.1, steps=5, step_size=0.025, start="uniform")
    eager, _ = predict(model, x, y, spec, 32, torch.device("cuda"), seed=3)
    captured, sanity = predict(model, x, y, spec, 32, torch.device("cuda"), seed=3, capture=True)
    assert sanity["cuda_graph"] == {"captures": 1, "replays": 3, "eager_batches": 1, "failed": None}
    assert sanity["max_linf"] <= 0.1 + 1e-6
    assert (captured == eager).mean() >= 0.95  # a graph replaying stale buffers would agree on ~10%
