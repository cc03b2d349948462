"""Command line of ferroloop: ``python -m ferroloop COMMAND``.

Commands:

* ``bench`` -- run the side-by-side benchmark suite (stdlib asyncio, uvloop, ferroloop, rloop);
  see ``python -m ferroloop bench --help`` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop",
        description="ferroloop: a drop-in asyncio event loop written in Rust.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser(
        "bench",
        help="run the benchmark suite against asyncio, uvloop (and rloop) side by side",
        description=(
            "Run ferroloop's benchmark suite: every workload for every installed loop, in fresh "
            "processes, rounds interleaved; prints progress to stderr and a markdown table to "
            "stdout."
        ),
    )
    from .bench.cli import add_arguments

    add_arguments(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench.cli import main as bench_main

        return bench_main(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
