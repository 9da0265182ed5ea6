"""``python -m benchmark``: expand a profile into grid cells, run them, print per-class tables.

Bad input (unknown method, IR < 1, ε outside [0, 1], missing data, malformed profile) ends with
one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import OneLineParser, UsageError


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="quick", help="profile name (benchmark/profiles/*.yaml) or path (default: quick)")
    p.add_argument("--methods", type=_csv(str), help="comma-separated methods, optionally with a preset: at,taet.authors")
    p.add_argument("--irs", type=_csv(float), help="comma-separated imbalance ratios (n_max / n_min), e.g. 10,50,100")
    p.add_argument("--seeds", type=_csv(int), help="comma-separated training seeds")
    p.add_argument("--epochs", type=int, help="override the profile's epoch budget")
    p.add_argument("--eps", help="override ε (e.g. 8/255 or 0.1)")
    p.add_argument("--data-root", help="folder holding the datasets in torchvision's layout")
    p.add_argument("--download", action="store_true", default=None, help="download missing datasets (needs network)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", choices=["none", "bf16"], help="bf16 autocast for the model on CUDA")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--force", action="store_true", help="re-run finished cells (old results are moved aside)")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again (their files are moved "
                   "aside); without it a failed cell is skipped and reported")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status, run nothing")
    p.add_argument("--evaluate-only", action="store_true", help="train nothing: run the attacks that finished "
                   "cells lack (an attack added to the profile); unfinished cells are listed and skipped")
    p.add_argument("--no-wait-locked", action="store_true", help="do not wait at the end for cells that another "
                   "run holds locked: list them and exit 3")
    p.add_argument("--list-methods", action="store_true", help="list registered methods and their presets")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="load a plugin that registers methods, models, datasets or attacks: a .py file or an "
                   "importable module (repeatable; added to the profile's plugins)")
    p.add_argument("--log", action="append", default=[], metavar="TRACKER",
                   help="live tracking to tensorboard, mlflow or wandb (repeatable or a comma list; each needs "
                   "its extra: pip install 'tailrobust[tensorboard]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true", help="for logs: no progress bars, no per-cell tables; "
                   "one line per cell and the grid summary")
    p.add_argument("--devices", type=_csv(str), help="run one cell per device in parallel processes: 0,1,2,3 "
                   "(CUDA indices) or device names (cuda:0, cpu)")
    from .cluster.cli import add_arguments

    add_arguments(p)  # --executor ray|slurm and their flags
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the retry hint
    from .runner import DataFault

    try:
        return _run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DataFault as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # unwritable or full results folder, a file vanished: name it and the cause
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 1


def _run(args) -> int:
    from methods import describe_methods
    from .config import check_device_present, expand_grid, load_profile
    from .executors import make_executor, resolve_device, run_grid
    from .runner import check_grid_data
    from .plugins import load_plugins

    if args.list_methods:
        load_plugins(args.plugin)
        for line in describe_methods():
            print(line)
        return 0
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise UsageError(f"data root {args.data_root} does not exist or is not a folder")
    overrides = {"methods": args.methods, "imbalance_ratios": args.irs, "seeds": args.seeds, "epochs": args.epochs,
                 "eps": args.eps, "data_root": args.data_root, "download": args.download, "device": args.device,
                 "amp": args.amp, "trackers": args.log or None}
    profile = load_profile(args.profile)
    if args.plugin and isinstance(profile.get("plugins") or [], list):  # the profile's plugins, then these
        profile["plugins"] = [*(profile.get("plugins") or []), *args.plugin]
    cells = expand_grid(profile, overrides)
    from .cluster import cli as cluster_cli

    cluster = cluster_cli.make(args)
    if cluster is not None:
        return _run_cluster(args, cells, cluster, cluster_cli.plan_device(cluster, args))
    if "://" in args.results:
        raise UsageError(f"results {args.results}: a URL needs --executor ray or slurm (the local executors write "
                         "to a folder)")
    if args.dry_run:
        from .runner import find_trained_twin, plan_status

        for cfg in cells:
            plan = cfg.resolve()
            status = plan_status(plan, Path(args.results))
            twin = find_trained_twin(plan, Path(args.results)) if status == "new" and not args.force else None
            print(f"{status:<10} {cfg.key()}" + (f"  (evaluates the training of {twin.name})" if twin else ""))
        return 0
    if args.devices and args.device:
        raise UsageError("give either --device (one device for every cell) or --devices (one cell per device)")
    device = resolve_device(args.devices)  # each cell's plan: resolved once, here, for where it runs
    for name in sorted({cfg.device for cfg in cells} if not args.devices else set(make_executor(args.devices).devices)):
        check_device_present(name)  # before any folder exists: `--device cuda` without a GPU is one line
    check_results_folder(Path(args.results))
    plans = [cfg.resolve(device) for cfg in cells]
    if args.evaluate_only:
        from .runner import plan_status

        plans = evaluable_only(plans, lambda plan: plan_status(plan, Path(args.results)))
        if not plans:
            return 0
    check_grid_data(plans, Path(args.results), retry_failed=args.retry_failed, force=args.force)
    note_other_versions(Path(args.results), plans)
    out = run_grid(plans, Path(args.results), force=args.force, progress=not args.no_progress, quiet=args.quiet,
                   devices=args.devices, retry_failed=args.retry_failed, wait_locked=not args.no_wait_locked)
    return exit_code(args, out)


def exit_code(args, out: list[dict]) -> int:
    """1 (with the retry command) if a cell failed, 3 (naming the owners) if cells were left to another run's
    lock, else 0."""
    from .console import format_failed_summary
    from .executors import is_failed

    locked = [m for m in out if m.get("status") == "locked"]
    failed = [m for m in out if is_failed(m)]
    if failed:
        retry = " ".join(["python -m benchmark", *(argv_of(args)), "--retry-failed"])
        print(format_failed_summary(failed, retry), file=sys.stderr, flush=True)
        return 1
    if locked:
        from .cell_lock import describe as describe_owner

        print(f"{len(locked)} cell(s) not run here: locked by another run (" +
              "; ".join(f"{m['cell_key']}: {describe_owner(m['owner'])}" for m in locked)
              + "); run the same command again once it is done", file=sys.stderr, flush=True)
        return 3
    return 0


def _run_cluster(args, cells, cluster, device: str) -> int:
    """A grid on Ray or Slurm: plans resolved for the workers' device (not checked here), the data checked,
    then submitted; --dry-run lists each cell with what would be submitted for it."""
    from .cluster.storage import Store, is_url
    from .executors import run_grid
    from .runner import check_grid_data

    store = Store(args.results)
    if not is_url(args.results):
        check_results_folder(Path(args.results))
    plans = [cfg.resolve(device) for cfg in cells]
    if args.dry_run:
        for plan in plans:
            status = store.status(plan)
            runs = args.force or status in ("new", "resumable", "evaluate") or (status == "failed" and args.retry_failed)
            print(f"{status:<10} {plan.key}" + (f"  -> {cluster.describe_plan(plan)}" if runs else ""))
        return 0
    if args.evaluate_only:
        plans = evaluable_only(plans, store.status)
        if not plans:
            return 0
    check_grid_data(plans, Path(args.results) if not is_url(args.results) else Path(".tailrobust-remote"),
                    retry_failed=args.retry_failed, force=args.force)
    out = run_grid(plans, store, force=args.force, progress=False, quiet=args.quiet, retry_failed=args.retry_failed,
                   executor=cluster, wait_locked=not args.no_wait_locked)
    return exit_code(args, out)


def evaluable_only(plans, status_of) -> list:
    """--evaluate-only: the plans of finished cells that lack an attack; a line for the rest. ``status_of(plan)``:
    ``benchmark.runner.plan_status`` in the results folder, or a cluster store's ``status``."""
    statuses = {p.key: status_of(p) for p in plans}
    untrained = [p.key for p in plans if statuses[p.key] not in ("done", "evaluate")]
    todo = [p for p in plans if statuses[p.key] == "evaluate"]
    done = sum(1 for s in statuses.values() if s == "done")
    print(f"--evaluate-only: {len(todo)} cell(s) to evaluate, {done} already evaluated under every attack, "
          f"{len(untrained)} not trained (skipped; run without --evaluate-only to train them)"
          + (f": {', '.join(untrained[:5])}" + (" ..." if len(untrained) > 5 else "") if untrained else ""),
          flush=True)
    return todo


def note_other_versions(results: Path, plans) -> None:
    """One line for finished cells of the same configs made by another harness version (not reused)."""
    from . import __version__
    from .runner import cells_of_other_versions

    other = cells_of_other_versions(results, plans)
    if other:
        versions = sorted({v for _, v in other})
        print(f"note: {len(other)} finished cell(s) in {results} have the config of a cell of this grid but were made "
              f"by tailrobust {', '.join(versions)}; they are not reused (this version {__version__} runs them "
              f"anew; the report shows both): {', '.join(name for name, _ in other[:5])}"
              + (" ..." if len(other) > 5 else ""), file=sys.stderr, flush=True)


def argv_of(args) -> list[str]:
    """The command line that ran (for the retry hint), without --retry-failed and --force."""
    return [a for a in args.argv if a not in ("--retry-failed", "--force")]


def check_results_folder(results: Path) -> None:
    """The results folder is a folder (or can be made) and writable: a one-line UsageError otherwise.
    Nothing is created here; the grid makes the folder when its first cell starts."""
    import os

    existing = results
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UsageError(f"results folder {results}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"results folder {results}: {existing} is not writable")


if __name__ == "__main__":
    sys.exit(main())
