"""Print, as a Markdown table, what the CLI answers to every bad configuration the tests try.

Each of ``tests/test_validation.py``'s BAD_CONFIGS is written over the quick profile into a YAML file and run
through ``python -m benchmark --dry-run`` in this process (validation runs before anything else); the table
gives what is wrong, the exit code and the one line printed. For closing notes and reviews:

    .venv/bin/python scripts/bad_input_table.py > bad_inputs.md
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmark.__main__ import main  # noqa: E402
from benchmark.config import load_profile  # noqa: E402
from test_validation import BAD_CONFIGS  # noqa: E402


def run(settings: dict, folder: Path) -> tuple[int, str]:
    profile = {**load_profile("quick"), **settings}
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))  # NaN and infinity as YAML's .nan and .inf
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["--profile", str(path), "--results", str(folder / "results"), "--dry-run"])
    return code, err.getvalue().strip()


def main_table() -> None:
    print("| what is wrong | exit | printed |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for what, settings, _ in BAD_CONFIGS:
            code, line = run(settings, Path(tmp))
            print(f"| {what} | {code} | `{line.replace('|', '/')}` |")


if __name__ == "__main__":
    main_table()
