"""Run ``python -m benchmark`` with a SIGKILL at a chosen moment (tests/test_crash_safety.py).

``python tests/sigkill_driver.py MOMENT:N -- CLI ARGS`` wraps one function of the harness so that its
N-th call kills this process with SIGKILL — no handler runs, no ``finally``, no flush: what a node
failure or the OOM killer does. ``none:0`` runs the grid without a kill. Moments:

- ``train_step``: before the N-th optimizer step;
- ``checkpoint_between``: at the N-th checkpoint, after the old one was moved to ``checkpoint.prev.pt``
  and before the new one is written;
- ``checkpoint_midwrite``: in the middle of writing the N-th checkpoint's temporary file;
- ``eval_progress``: right after the N-th save of an attack's partial predictions;
- ``before_record``: after ``predictions.npz``, before ``metrics.json`` (the last two writes of a cell).
"""
from __future__ import annotations

import os
import signal
import sys

import torch


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(real, n: int, before: bool = True):
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if before and calls[0] == n:
            _die()
        out = real(*args, **kwargs)
        if not before and calls[0] == n:
            _die()
        return out

    return wrapped


def install(moment: str, n: int) -> None:
    import benchmark.evaluate as evaluate_module
    import benchmark.runner as runner_module
    import benchmark.train as train_module

    if moment == "train_step":
        train_module.train_step = _counting(train_module.train_step, n)
    elif moment == "checkpoint_between":
        train_module.save_torch_atomic = _counting(train_module.save_torch_atomic, n)
    elif moment == "checkpoint_midwrite":
        real_save, calls = torch.save, [0]

        def half_save(obj, handle, *args, **kwargs):
            calls[0] += 1
            if calls[0] != n:
                return real_save(obj, handle, *args, **kwargs)
            import io

            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            _die()

        torch.save = half_save
    elif moment == "eval_progress":
        evaluate_module.save_npz_atomic = _counting(evaluate_module.save_npz_atomic, n, before=False)
    elif moment == "before_record":
        runner_module.write_record = _counting(runner_module.write_record, n)
    elif moment != "none":
        raise SystemExit(f"unknown moment {moment}")


if __name__ == "__main__":
    spec, sep, *cli = sys.argv[1:]
    assert sep == "--"
    moment, count = spec.split(":")
    torch.set_num_threads(1)
    install(moment, int(count))
    from benchmark.__main__ import main

    sys.exit(main(cli))
