"""Shared fixtures: a small real model trained once per session on the embedded MNIST digits."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny CPU kernels: two OpenMP threads gain little on such
    batches and spin against other processes when the 2 cores are shared (measured 3-25x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist5k():
    from benchmark.data import load_dataset

    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def clean_mnist_model(mnist5k):
    """A narrow SmallCNN trained for one clean epoch on the 4,000 embedded training digits (seed 0):
    accurate enough that attacks have something to break, not robust, and cheap on 2 cores."""
    from benchmark.data import iterate_batches, to_float
    from benchmark.models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for xb, yb in iterate_batches(mnist5k.x_train, mnist5k.y_train, 64, True, True, generator):
        loss = F.cross_entropy(model(to_float(xb)), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


# The files that take longest (minutes on 2 cores: subprocess chains, a Slurm or Ray cluster, whole grids), longest
# first. They run first, so that under `make test` (two xdist workers handing out files in this order,
# --no-loadscope-reorder) none of them starts last and runs alone at the end.
LONGEST_FILES = ("test_crash_safety.py", "test_cluster_slurm.py", "test_cluster_ray.py", "test_grid.py",
                 "test_failed_cells.py", "test_runner.py", "test_cli.py", "test_plugins.py", "test_cell_ownership.py",
                 "test_cluster_driver.py", "test_evaluate_external.py", "test_evaluate_many.py")


def _file_rank(item) -> int:
    name = item.path.name
    return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)


def pytest_collection_modifyitems(config, items):
    """The longest files first (a stable sort: the rest keep their order); slow tests (minutes on 2 cores) run
    only when asked: --runslow or RUN_SLOW=1."""
    items.sort(key=_file_rank)
    if config.getoption("--runslow") or os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (or RUN_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def finished_tiny(tmp_path_factory):
    """The tiny profile (tests/toys.py: one cell of PGD-AT, 2 epochs) run once per session through the CLI on
    one thread: ``(tmp, profile, results, cfg)``. Read-only: tests that change a cell copy ``results``."""
    import contextlib
    import io

    from benchmark.__main__ import main
    from benchmark.config import expand_grid, load_profile
    from toys import TINY_PROFILE

    tmp = tmp_path_factory.mktemp("finished_tiny")
    profile = tmp / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    results = tmp / "results"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--profile", str(profile), "--results", str(results), "--no-progress", "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    (cfg,) = expand_grid(load_profile(str(profile)))
    return tmp, profile, results, cfg


@pytest.fixture(scope="session")
def four_cell_local(tmp_path_factory):
    """The cluster tests' 4-cell grid (tests/cluster_grid.py) run once by the local executor on one thread, as
    their workers run: the metrics per cell that every executor must reproduce."""
    from cluster_grid import grid_plans, quiet_grid

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics, _ = quiet_grid(grid_plans(), tmp_path_factory.mktemp("four_cells") / "local")
    finally:
        torch.set_num_threads(before)
    return metrics
