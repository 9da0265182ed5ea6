"""``make bench`` passes its documented overrides through to the CLI, where the real parser reads them."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmark.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def bench_argv(*overrides: str) -> list[str]:
    """The argument list ``make bench`` would give ``python -m benchmark`` (make -n: nothing runs)."""
    out = subprocess.run(["make", "-n", "-s", "bench", *overrides], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    line = next(line for line in out.splitlines() if " -m benchmark " in f"{line} ")
    words = shlex.split(line)
    return words[words.index("benchmark") + 1:]


def test_epochs_eps_and_the_other_overrides_reach_the_cli():
    args = build_parser().parse_args(bench_argv(
        "EPOCHS=1", "EPS=8/255", "DATA_ROOT=/data/cifar", "DEVICE=cuda:1", "AMP=bf16", "METHODS=at,taet.authors",
        "IRS=10,50", "SEEDS=0,1", "PROFILE=cifar10-lt", "RESULTS=/tmp/res", "ARGS=--force --quiet"))
    assert args.epochs == 1 and args.eps == "8/255" and args.data_root == "/data/cifar"
    assert args.device == "cuda:1" and args.amp == "bf16" and args.profile == "cifar10-lt"
    assert args.methods == ["at", "taet.authors"] and args.irs == [10.0, 50.0] and args.seeds == [0, 1]
    assert args.results == "/tmp/res" and args.force and args.quiet


def test_without_overrides_the_profile_decides():
    args = build_parser().parse_args(bench_argv())
    assert args.profile == "quick" and args.results == "results"
    assert args.epochs is None and args.eps is None and args.data_root is None and args.device is None
