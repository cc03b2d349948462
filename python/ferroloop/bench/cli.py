"""``python -m ferroloop bench``: options, contestant probing, and writing the report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from . import (
    chart,
    contestants,
    floor,
    http_keepalive,
    procstat,
    registry,
    report,
    runner,
    sock_echo,
    subproc,
    tls_echo,
    udp_echo,
)

#: What --loops accepts: the event loops, then the non-loop contestants.
_CONTESTANTS: tuple[str, ...] = contestants.KNOWN + contestants.VARIANTS + registry.NON_LOOPS


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--full",
        action="store_true",
        help="the full run (about 15 minutes on a quiet machine): every workload at every size, "
        "5 rounds, longer measurements; without it, a short run of a few minutes: 3 rounds, "
        "shorter measurements, 1 KiB sizes only",
    )
    # The short run was once `--quick`; it is the default now.
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        type=_names,
        metavar="NAME,...",
        help="run only these workloads or workload families (see --list)",
    )
    parser.add_argument(
        "--rounds", type=int, metavar="N", help="rounds per workload (default 3, --full 5)"
    )
    parser.add_argument(
        "--loops",
        type=_names,
        metavar="LOOP,...",
        help=f"contestants, from {', '.join(_CONTESTANTS)} (default: all that are "
        "installed; asyncio and ferroloop are always shown; floor is the Rust epoll server "
        "without Python, built with cargo, on the workloads that have one; ferroloop-metrics "
        "reads loop.metrics() every second, ferroloop-base is the build installed in "
        "$FERROLOOP_BENCH_BASELINE: both only when named)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="also write the markdown report here (e.g. docs/benchmarks.md); while the run goes "
        "on, the report so far is kept in PATH.partial",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write raw results as JSON (the results so far in PATH.partial during the run)",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        metavar="PATH",
        help="also draw the results as a chart, SVG or PNG by PATH's extension (needs "
        "matplotlib: pip install 'ferroloop[chart]')",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the workloads and what they measure, then exit"
    )
    parser.add_argument(
        "--selftest",
        action="store_true",
        help="check that the TCP echo, TLS echo, UDP echo and HTTP harnesses reject corrupting "
        "servers, then exit",
    )
    parser.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run ferroloop from where it is installed, not from a copy taken at the start "
        "(by default a rebuild during the run cannot mix versions)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any measurement ended in an error (not for 'unsupported')",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up on a measurement's processes after this long (default 60)",
    )


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)


class _PartialSaver:
    """Writes the report (and raw results) so far after every measurement, so a run that dies
    or is interrupted keeps what it measured: ``PATH.partial`` beside ``--output``/``--json``,
    else ``ferroloop-bench-partial.md`` in the temporary directory.  Removed once the final
    files are written."""

    def __init__(self, output: Path | None, raw: Path | None) -> None:
        self.results: runner.Results | None = None
        self.paths: list[tuple[Path, bool]] = []
        if output is not None:
            self.paths.append((output.with_name(output.name + ".partial"), False))
        if raw is not None:
            self.paths.append((raw.with_name(raw.name + ".partial"), True))
        if not self.paths:
            self.paths.append((Path(tempfile.gettempdir()) / "ferroloop-bench-partial.md", False))

    def where(self) -> str:
        return ", ".join(str(path) for path, _ in self.paths)

    def save(self, results: runner.Results) -> None:
        self.results = results
        for path, raw in self.paths:
            try:
                if raw:
                    _write(path, json.dumps(report.to_json(results), indent=1))
                else:
                    _write(path, report.markdown(results))
            except OSError as exc:  # a full disk must not end a long run
                _log(f"warning: could not save the results so far to {path}: {exc}")

    def discard(self) -> None:
        for path, _ in self.paths:
            with contextlib.suppress(OSError):
                path.unlink()


def _probe(names: list[str], explicit: bool) -> list[contestants.Availability]:
    found = []
    for name in names:
        availability = contestants.probe(name)
        if availability.available:
            _log(f"contestant {name}: {availability.version}")
        else:
            _log(f"contestant {name}: unavailable ({availability.detail.splitlines()[0]})")
        if availability.available or explicit or name in contestants.ALWAYS_SHOWN:
            found.append(availability)
    return found


def _settings(args: argparse.Namespace) -> registry.Settings:
    client_loop = "asyncio"
    for name in contestants.CLIENT_LOOPS:
        if name == "asyncio" or contestants.probe(name).available:
            client_loop = name
            break
    cpus = procstat.allowed_cpus()
    return registry.Settings(
        quick=not args.full, cpus=cpus[:2], timeout=args.timeout, client_loop=client_loop
    )


def main(args: argparse.Namespace) -> int:
    if args.list or args.selftest or not args.snapshot:
        return _main(args)
    with subproc.snapshot_package() as copy:
        _log(f"benchmarking a copy of ferroloop taken now, in {copy}")
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    if args.list:
        for w in registry.all_workloads():
            runs = "quick+default" if w.quick else "default" if w.default else "on request"
            extras = "".join(f", +{x}" for x in w.extras)
            print(f"{w.name:<18} [{w.family}, {runs}{extras}] {w.description}")
        return 0
    settings = _settings(args)
    if args.selftest:
        passed = [
            family.selftest(settings, _log)
            for family in (sock_echo, tls_echo, udp_echo, http_keepalive)
        ]
        return 0 if all(passed) else 1
    try:
        workloads = registry.select_workloads(args.only, not args.full)
    except KeyError as exc:
        _log(f"error: {exc.args[0]}")
        return 2
    unknown = [n for n in args.loops or () if n not in _CONTESTANTS]
    if unknown:
        _log(f"error: unknown loop(s) {', '.join(unknown)}; known: {', '.join(_CONTESTANTS)}")
        return 2
    loops = [n for n in args.loops or contestants.KNOWN if n not in registry.NON_LOOPS]
    available = _probe(loops, explicit=bool(args.loops))
    wants_floor = args.loops is None or registry.FLOOR in args.loops
    if wants_floor and any(w.runs(registry.FLOOR) for w in workloads):
        _log("contestant floor: building the floor server with cargo ...")
        availability = floor.build()
        _log(
            f"contestant floor: {availability.version}"
            if availability.available
            else f"contestant floor: unavailable ({availability.detail})"
        )
        if availability.available or args.loops:
            available.append(availability)
    names = [c.name for c in available if c.available]
    loop_names = [n for n in names if n not in registry.NON_LOOPS]
    baseline = next(
        (b for b in contestants.BASELINES if b in loop_names), loop_names[0] if loop_names else None
    )
    rounds = args.rounds or (5 if args.full else 3)
    plan = runner.Plan(
        workloads=workloads,
        contestants=available,
        baseline=baseline,
        rounds=rounds,
        settings=settings,
        attempts=3 if args.full else 2,
        ferroloop_revision=contestants.git_revision(),
    )
    _log(
        f"{len(workloads)} workloads x {len(names)} loops x {rounds} rounds; baseline {baseline}; "
        f"load generator on {settings.client_loop}; CPUs {list(settings.cpus)}"
    )
    fingerprint = contestants.ferroloop_fingerprint()
    saver = _PartialSaver(args.output, args.json)
    _log(f"results are saved as they are measured, in {saver.where()}")
    try:
        results = runner.run(plan, _log, on_measurement=saver.save)
    except KeyboardInterrupt:
        _log("interrupted: the results measured so far follow")
        if saver.results is not None:
            print(report.markdown(saver.results))
        _log(f"(kept in {saver.where()})")
        return 130
    if contestants.ferroloop_fingerprint() != fingerprint:
        if args.snapshot:
            _log("note: ferroloop was rebuilt or reinstalled during the run; the run used the copy")
        else:
            results.warnings.append(
                "ferroloop's files changed during the run (rebuilt?): its rounds may mix versions."
            )
            _log(f"warning: {results.warnings[-1]}")
    text = report.markdown(results)
    print(text, flush=True)
    if args.output:
        _write(args.output, text)
        _log(f"report written to {args.output}")
    if args.json:
        _write(args.json, json.dumps(report.to_json(results), indent=1))
        _log(f"raw results written to {args.json}")
    if args.chart:
        try:
            rows, baseline = chart.rows_from_results(results)
            chart.draw(rows, baseline, args.chart, report.system_info(results)["date"])
            _log(f"chart written to {args.chart}")
        except chart.ChartUnavailable as exc:
            _log(f"no chart: {exc}")
    saver.discard()
    _log(f"done in {results.seconds / 60:.1f} min")
    errors = [key for key in results.rounds if (f := results.failure(*key)) and f.status == "error"]
    if errors:
        _log("errors in: " + ", ".join(f"{w}/{c}" for w, c in errors))
    return 1 if errors and args.strict else 0
