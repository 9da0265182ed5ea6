"""``python -m benchmark.report``: build the HTML report (leaderboards, per-class tables, figures, exports).

Bad input (missing results folder, unknown attack, an --out folder that is not a report) ends with one
line on stderr and exit code 2. An empty results folder gives a page that says so.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import OneLineParser, UsageError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmark.report", description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results", help="results folder, one sub-folder per cell (default: results)")
    p.add_argument("--out", default="reports", help="site folder to (re)write (default: reports)")
    p.add_argument("--attack", help="attack of the per-class tables (default: pgd20, else the first PGD)")
    p.add_argument("--tail-only", action="store_true", help="per-class tables show only the tail classes")
    poster = p.add_mutually_exclusive_group()
    poster.add_argument("--poster", dest="poster", action="store_true", default=None,
                        help="show the TAET poster's CIFAR-10-LT block beside every leaderboard "
                             "(default: only beside CIFAR-10 leaderboards)")
    poster.add_argument("--no-poster", dest="poster", action="store_false", help="never show the poster's block")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .site import build_report

        index = build_report(args.results, args.out, attack=args.attack, tail_only=args.tail_only,
                             poster=args.poster)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
