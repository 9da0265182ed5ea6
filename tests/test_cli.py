"""``python -m benchmark`` as a user runs it: bad input ends with one line on stderr and exit code 2,
never a traceback; ``--list-methods`` and ``--dry-run`` report without running anything.

The cases the CLI promises to handle run as real subprocesses (the test interpreter, cwd = the
repository). Importing torch costs ~2 s of CPU per process, so the module launches them together,
three at a time, and each test checks its own result; further cases go through ``main()``
in-process. Bad-input cases also pass ``--dry-run``: if validation ever stopped catching one, the
test fails on exit code 0 instead of training for minutes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmark.config import expand_grid, load_profile
from toys import TINY_PROFILE

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable  # the interpreter running the tests (the venv's under `make test`)


# Profiles that are broken in one way each (file name -> text).
BROKEN_PROFILES = {
    "invalid_yaml.yaml": "dataset: [mnist5k\nepochs: 2\n",
    "a_list.yaml": "- dataset\n- epochs\n",
    "unknown_setting.yaml": TINY_PROFILE + "epochz: 3\n",
    # Bad values (each once ended in a traceback).
    "epochs_not_a_number.yaml": TINY_PROFILE.replace("epochs: 2", "epochs: abc"),
    "ratio_not_a_number.yaml": TINY_PROFILE.replace("imbalance_ratios: [10]", "imbalance_ratios: [abc]"),
    "milestones_not_a_list.yaml": TINY_PROFILE + "milestones: 5\n",
    "step_eps_over_zero.yaml": TINY_PROFILE.replace("steps: 2, step_size: eps/4, start: normal",
                                                    "steps: 2, step_size: eps/0, start: normal"),
}

# case id -> (extra CLI arguments, text the single stderr line must contain). "{tmp}" is the profile folder.
BAD_INPUT = {
    "unknown_method": (["--methods", "nope"], "unknown method 'nope'; known methods: "),
    "ir_below_one": (["--irs", "0.5"], "imbalance ratio must be >= 1"),
    "eps_above_one": (["--eps", "2"], "eps must lie in [0, 1]"),
    "missing_data_root": (["--data-root", "/nonexistent"], "data root /nonexistent does not exist"),
    "invalid_yaml": (["--profile", "{tmp}/invalid_yaml.yaml"], "is not valid YAML at line"),
    "yaml_list_not_mapping": (["--profile", "{tmp}/a_list.yaml"], "must be a mapping of settings, got list"),
    "unknown_setting": (["--profile", "{tmp}/unknown_setting.yaml"], "unknown setting(s) epochz"),
    "unknown_preset": (["--methods", "taet.nope"], "method taet has no preset 'nope' (known presets: authors, common)"),
    "unknown_profile_name": (["--profile", "no_such_profile"], "profile 'no_such_profile' not found (known profiles: "),
}

# More bad input, checked in-process through main() (a subprocess costs ~2 s of torch import each):
# main() must return 2 and print one line, where an escaping exception would be the CLI's traceback.
MORE_BAD_INPUT = {
    "unknown_method_among_known": (["--methods", "at,bogus"], "unknown method 'bogus'"),
    "eps_below_zero": (["--eps=-0.5"], "eps must lie in [0, 1]"),
    "eps_unreadable": (["--eps", "abc"], "cannot read 'abc' as a number"),
    "ir_zero": (["--irs", "10,0"], "imbalance ratio must be >= 1"),
    "epochs_zero": (["--epochs", "0"], "epochs must be >= 1"),
    "missing_profile_path": (["--profile", "{tmp}/absent.yaml"], "absent.yaml' not found"),
    "profile_epochs_not_a_number": (["--profile", "{tmp}/epochs_not_a_number.yaml"], "epochs: expected int, got 'abc'"),
    "profile_ratio_not_a_number": (["--profile", "{tmp}/ratio_not_a_number.yaml"], "imbalance_ratio: expected float"),
    "profile_milestones_not_a_list": (["--profile", "{tmp}/milestones_not_a_list.yaml"], "milestones: expected list"),
    "profile_step_size_eps_over_zero": (["--profile", "{tmp}/step_eps_over_zero.yaml"], "'eps/0' divides by zero"),
}

GOOD_INPUT = {
    "list_methods": ["--list-methods"],
    "dry_run_grid": ["--methods", "at,taet", "--irs", "10,20", "--dry-run"],
}


def _write_profiles(folder: Path) -> None:
    (folder / "tiny.yaml").write_text(TINY_PROFILE)
    for name, text in BROKEN_PROFILES.items():
        (folder / name).write_text(text)


def _base_args(folder: Path) -> list[str]:
    return ["--profile", str(folder / "tiny.yaml"), "--results", str(folder / "results"), "--no-progress"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run every CLI case once (concurrently) and return {case id: CompletedProcess} plus the paths used."""
    tmp = tmp_path_factory.mktemp("cli")
    _write_profiles(tmp)
    base = ["-m", "benchmark", *_base_args(tmp)]
    commands = {}
    for case, (extra, _) in BAD_INPUT.items():
        commands[case] = base + ["--dry-run"] + [a.replace("{tmp}", str(tmp)) for a in extra]
    for case, extra in GOOD_INPUT.items():
        commands[case] = base + extra
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}

    def run(args):
        return subprocess.run([PYTHON, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(commands, pool.map(run, commands.values())))
    return {"runs": done, "profile": tmp / "tiny.yaml", "results": tmp / "results"}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_stderr_line_and_no_traceback(cli, case):
    proc = cli["runs"][case]
    expected = BAD_INPUT[case][1]
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ")
    assert expected in lines[0]
    assert proc.stdout == ""  # nothing listed, nothing run
    if case == "unknown_profile_name":
        assert "quick" in lines[0].split("known profiles: ", 1)[1]


@pytest.mark.parametrize("case", list(MORE_BAD_INPUT))
def test_more_bad_input_makes_main_return_2_with_one_stderr_line(tmp_path, capsys, case):
    from benchmark.__main__ import main

    _write_profiles(tmp_path)
    extra, expected = MORE_BAD_INPUT[case]
    code = main(_base_args(tmp_path) + ["--dry-run"] + [a.replace("{tmp}", str(tmp_path)) for a in extra])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]


def test_list_methods_exits_0_and_lists_methods_with_their_presets(cli):
    proc = cli["runs"]["list_methods"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert {"at", "taet"} <= set(lines)
    assert "presets: common, madry" in lines["at"]
    assert "Madry et al., ICLR 2018" in lines["at"]
    assert "presets: authors, common" in lines["taet"]
    assert "CVPR 2025" in lines["taet"]


def test_dry_run_lists_one_new_line_per_cell_and_runs_nothing(cli):
    proc = cli["runs"]["dry_run_grid"]
    assert proc.returncode == 0, proc.stderr
    expected = [cfg.key() for cfg in expand_grid(load_profile(str(cli["profile"])),
                                                 {"methods": ["at", "taet"], "imbalance_ratios": [10.0, 20.0]})]
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert [row[0] for row in rows] == ["new"] * 4
    assert [row[1] for row in rows] == expected
    assert len(set(expected)) == 4
    assert [k.split("-")[1:3] for k in expected] == [["ir10", "at"], ["ir20", "at"], ["ir10", "taet"], ["ir20", "taet"]]
    assert not cli["results"].exists()  # a dry run writes nothing
