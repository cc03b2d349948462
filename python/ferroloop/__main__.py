"""Command line of ferroloop: ``python -m ferroloop COMMAND``.

Commands:

* ``run`` -- run a program (``SCRIPT``, ``-m MODULE`` or ``-c CODE``) unchanged with every
  asyncio event loop it creates being a ferroloop loop; see ``python -m ferroloop run --help``.
* ``bench`` -- run the side-by-side benchmark suite (stdlib asyncio, uvloop, ferroloop, rloop);
  see ``python -m ferroloop bench --help`` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import sys


def _version() -> str:
    from . import BUILD_PROFILE, __version__

    python = f"{sys.implementation.name} {sys.version.split()[0]}"
    return f"ferroloop {__version__} ({BUILD_PROFILE} build, {python})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop",
        description="ferroloop: a drop-in asyncio event loop written in Rust.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "run",
        add_help=False,
        help="run a program (SCRIPT, -m MODULE or -c CODE) unchanged, on ferroloop",
    )
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
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "run":
        # Parsed by hand: everything after the program belongs to the program.
        from ._command import main as run_main

        run_main(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench.cli import main as bench_main

        return bench_main(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
