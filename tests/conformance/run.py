"""Run CPython's own asyncio test suite (test.test_asyncio) against ferroloop.

Usage (from the repository root, with the project's virtualenv)::

    python tests/conformance/run.py                      # default modules, ferroloop
    python tests/conformance/run.py --loop asyncio       # same machinery, stock loop: reference
    python tests/conformance/run.py --modules test_locks,test_queues -v
    python tests/conformance/run.py --check-ratchet      # CI: every ratchet id must still pass
    python tests/conformance/run.py --update-ratchet     # add newly passing ids to ratchet.txt
    python tests/conformance/run.py --modules all        # the whole suite

Each test module runs in its own subprocess (``_child.py``) under a watchdog. The child appends one
JSON line per event to a file; the parent follows that file, so it always knows which test is
running. A test that runs longer than ``--timeout-per-test`` is killed (its whole process group)
and recorded as ``hung``; a child that dies during a test (segfault, abort, ...) gets that test
recorded as ``crash``. Either way the rest of the module is resumed in a fresh subprocess, which
skips every test already run.

Outcomes per test: passed, failed, error, skipped, hung, crash, stdlib-leak (passed, but built a
stdlib loop somewhere, so it proved nothing about the loop under test) and not_applicable (listed
in not_applicable.txt or a not_applicable-*.txt beside it, for this Python: never run). See
README.md beside this file.

Exit status: with ``--check-ratchet``, 0 if every ratchet id (of the modules run) passed, else 1;
ids that the running Python's suite does not have are reported as absent and not checked.
Without it, 0 if no applicable test failed, errored, hung, crashed or leaked, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_child.py"
# not_applicable.txt (the shared classification of 3.11's suite) and not_applicable-<X.Y>.txt (the
# tests that later suites add); every file is read on every Python, see read_not_applicable().
NOT_APPLICABLE_GLOB = "not_applicable*.txt"
RATCHET_FILE = HERE / "ratchet.txt"
RESULTS_DIR = HERE / "results"  # git-ignored: child logs and fault tracebacks
SUITE_PACKAGE = "test.test_asyncio"

# Modules run by default (and by the ratchet check). Together about 1,200 applicable tests.
DEFAULT_MODULES = [
    "test_futures",
    "test_futures2",
    "test_tasks",
    "test_locks",
    "test_queues",
    "test_context",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_threads",
    "test_base_events",
    "test_sock_lowlevel",
    "test_events",
    "test_runners",
    "test_pep492",
]

OUTCOMES = [
    "passed",
    "failed",
    "error",
    "hung",
    "crash",
    "stdlib-leak",
    "skipped",
    "not_applicable",
]
# Outcomes of an applicable test that count against the loop.
BAD_OUTCOMES = ("failed", "error", "hung", "crash", "stdlib-leak")

RATCHET_HEADER = """\
# ferroloop conformance ratchet: ids of CPython test_asyncio tests known to pass on ferroloop.
# Sorted, one per line. `python tests/conformance/run.py --check-ratchet` fails if any of these
# does not pass; `--update-ratchet` adds newly passing ids and never removes any. Remove an id
# by hand only with a reason in the commit message. One list for every Python version: an id
# that the running Python's suite does not have is reported as absent there, and not checked.
"""

POLL_INTERVAL = 0.1  # seconds between looks at a running child


# --------------------------------------------------------------------------------------------
# Running one module
# --------------------------------------------------------------------------------------------


@dataclass
class ModuleResult:
    module: str
    tests: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (outcome, detail)
    order: list[str] = field(default_factory=list)  # all test ids of the module, in suite order
    notes: list[str] = field(default_factory=list)  # module-level problems, fixture errors
    only: set[str] | None = None  # run only these ids (a retry), or None for the whole module
    broken: bool = False  # the module could not be loaded or run at all
    attempts: int = 0
    duration: float = 0.0

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for outcome, _ in self.tests.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def pending(self, not_applicable: set[str]) -> list[str]:
        """Ids of the module still to run."""
        return [
            t
            for t in self.order
            if t not in self.tests
            and t not in not_applicable
            and (self.only is None or t in self.only)
        ]


class EventReader:
    """Follows a child's events file, returning complete JSON lines as they appear."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        events = []
        for line in lines:
            if line.strip():
                # A torn line can only come from a crash mid-write: ignore it.
                with contextlib.suppress(json.JSONDecodeError):
                    events.append(json.loads(line))
        return events


def file_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def run_module(
    module: str,
    loop: str,
    not_applicable: set[str],
    timeout: float,
    log_dir: Path,
    python: str,
    only: set[str] | None = None,
) -> ModuleResult:
    """Run one test module (or only the ids ``only`` of it) to completion, resuming after hung
    or crashed tests."""
    res = ModuleResult(module, only=only)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"conformance-{module}-") as tmp:
        tmp_path = Path(tmp)
        while True:
            res.attempts += 1
            progressed = run_attempt(res, loop, not_applicable, timeout, log_dir, tmp_path, python)
            if progressed is None:  # the module finished (or cannot run at all)
                break
            if not progressed:
                # The child died or hung outside any test without running a new one: resuming
                # would do the same again. Charge the remaining tests with it.
                why = res.notes[-1] if res.notes else "child made no progress"
                for test_id in res.pending(not_applicable):
                    res.tests[test_id] = ("error", f"not run: {why}")
                break
    # Tests of the plan that are not applicable were never run: record them as such.
    for test_id in res.order:
        if test_id in not_applicable and (only is None or test_id in only):
            res.tests[test_id] = ("not_applicable", "")
    res.duration = time.monotonic() - began
    return res


def run_attempt(
    res: ModuleResult,
    loop: str,
    not_applicable: set[str],
    timeout: float,
    log_dir: Path,
    tmp: Path,
    python: str,
) -> bool | None:
    """Run one child process over the tests of ``res.module`` not yet recorded.

    Returns None when the module is done, else whether the attempt ran at least one new test
    (the caller resumes in a fresh child if it did).
    """
    n = res.attempts
    name = f"{res.module}.{n}" if res.only is None else f"{res.module}.retry.{n}"
    events_file = tmp / f"{name}.events.jsonl"
    fault_file = log_dir / f"{name}.fault.txt"
    log_file = log_dir / f"{name}.log"
    skip_file = tmp / f"{name}.skip.txt"
    skip_file.write_text("".join(f"{t}\n" for t in sorted(not_applicable | set(res.tests))))
    fault_file.unlink(missing_ok=True)
    only_file = None
    if res.only is not None:
        only_file = tmp / f"{name}.only.txt"
        only_file.write_text("".join(f"{t}\n" for t in sorted(res.only)))

    cmd = [
        python,
        str(CHILD),
        "--loop", loop,
        "--module", res.module,
        "--events", str(events_file),
        "--skip-file", str(skip_file),
        "--fault-file", str(fault_file),
        *(["--only-file", str(only_file)] if only_file else []),
        # Dump stacks a little before the watchdog fires, so a hang comes with a traceback.
        "--hang-dump-after", str(max(timeout - 2.0, timeout * 0.9)),
    ]  # fmt: skip
    reader = EventReader(events_file)
    current: str | None = None  # id of the test in progress
    current_since = last_event = time.monotonic()
    new_results = 0
    done = False
    killed_for = None  # why the watchdog killed the child, if it did

    with open(log_file, "wb") as log:
        # A new session makes the child a process-group leader, so the watchdog can kill it
        # together with any subprocess a test started.
        proc = subprocess.Popen(
            cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        while True:
            exited = proc.poll() is not None
            now = time.monotonic()
            for ev in reader.read():
                last_event = now
                kind = ev["event"]
                if kind == "plan":
                    if not res.order:
                        res.order = list(ev["ids"])
                elif kind == "start":
                    current, current_since = ev["id"], now
                elif kind == "result":
                    res.tests[ev["id"]] = (ev["outcome"], ev.get("detail", ""))
                    new_results += 1
                    current = None
                elif kind == "fixture":
                    res.notes.append(
                        f"{ev['description']}: {ev['outcome']}: {last_line(ev.get('detail', ''))}"
                    )
                elif kind == "module_skipped":
                    res.notes.append(f"module skipped: {ev['reason']}")
                elif kind == "module_error":
                    # First line: the summary printed; the rest: the traceback, for --json.
                    res.notes.append(f"module error: {last_line(ev['detail'])}\n{ev['detail']}")
                    res.broken = True
                elif kind == "done":
                    done = True
            if exited:
                break
            if current is not None and now - current_since > timeout:
                killed_for = f"hung: still running after {timeout:g}s"
            elif current is None and now - last_event > timeout:
                killed_for = f"hung outside any test for {timeout:g}s"
            if killed_for:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                # Pick up any event written just before the kill.
                for ev in reader.read():
                    if ev["event"] == "result":
                        res.tests[ev["id"]] = (ev["outcome"], ev.get("detail", ""))
                        new_results += 1
                        current = None
                    elif ev["event"] == "start":
                        current = ev["id"]
                break
            time.sleep(POLL_INTERVAL)

    if done and not killed_for:
        return None
    if not res.order:
        # Died before listing its tests (import failure, missing loop module, ...).
        if not done:
            res.broken = True
            res.notes.append(
                f"child {describe_exit(proc.returncode)} before running any test; see {log_file}"
            )
        return None

    how = killed_for or describe_exit(proc.returncode)
    trace = file_tail(fault_file) or file_tail(log_file)
    if current is not None:
        outcome = "hung" if killed_for else "crash"
        res.tests[current] = (outcome, f"{how}\n{trace}".strip())
        new_results += 1
    else:
        res.notes.append(f"child {how} outside any test (attempt {res.attempts}); see {log_file}")
    if not res.pending(not_applicable):
        return None
    return new_results > 0


def last_line(detail: str) -> str:
    """The last non-empty line of a traceback: usually ``SomeError: message``."""
    lines = [line for line in detail.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


COLUMNS = [
    ("applicable", None),
    ("passed", "passed"),
    ("failed", "failed"),
    ("errors", "error"),
    ("hung", "hung"),
    ("crash", "crash"),
    ("leak", "stdlib-leak"),
    ("skipped", "skipped"),
    ("n/a", "not_applicable"),
]


def print_summary(results: list[ModuleResult], loop: str, elapsed: float, verbose: bool) -> None:
    width = max([len(r.module) for r in results] + [len("TOTAL")])
    header = f"{'module':<{width}} " + " ".join(f"{name:>8}" for name, _ in COLUMNS)
    header += f" {'time':>7}"
    print(f"\nCPython test_asyncio conformance, loop = {loop}")
    print(header)
    print("-" * len(header))
    totals = dict.fromkeys(OUTCOMES, 0)
    for r in results:
        counts = r.counts()
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        print(format_row(r.module, counts, width) + f" {r.duration:6.1f}s")
    print("-" * len(header))
    print(format_row("TOTAL", totals, width) + f" {elapsed:6.1f}s")

    bad = [
        (r.module, test_id, outcome, detail)
        for r in results
        for test_id, (outcome, detail) in sorted(r.tests.items())
        if outcome in BAD_OUTCOMES
    ]
    if bad:
        print(f"\nNot passing ({len(bad)}):")
        for _module, test_id, outcome, detail in bad:
            short = test_id.removeprefix(SUITE_PACKAGE + ".")
            print(f"  {outcome:<11} {short}")
            if verbose and detail:
                print(f"              -> {first_cause(outcome, detail)}")
    notes = [(r.module, note) for r in results for note in r.notes]
    if notes:
        print("\nModule notes:")
        for module, note in notes:
            first = note.strip().splitlines()[0] if note.strip() else note
            print(f"  {module}: {first}")


def format_row(name: str, counts: dict[str, int], width: int) -> str:
    applicable = sum(v for k, v in counts.items() if k != "not_applicable")
    cells = [applicable] + [counts.get(key, 0) for _, key in COLUMNS[1:]]
    return f"{name:<{width}} " + " ".join(f"{c:>8}" for c in cells)


def first_cause(outcome: str, detail: str) -> str:
    """One line saying why a test did not pass: the exception line of its traceback (with the
    function that raised it, when the exception has no message), or the first line of a
    hang/crash/leak report."""
    if outcome in ("hung", "crash", "stdlib-leak"):
        return detail.strip().splitlines()[0] if detail.strip() else outcome
    # A leak note may follow the traceback in parentheses: skip it.
    lines = [ln for ln in detail.strip().splitlines() if ln.strip() and not ln.startswith("(")]
    if not lines:
        return outcome
    cause = lines[-1].strip()
    if ":" not in cause:  # e.g. a bare "NotImplementedError": say where it came from
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', detail)
        if frames:
            path, line, func = frames[-1]
            cause += f" (raised in {func}, {Path(path).name}:{line})"
    return cause


def write_json(path: Path, results: list[ModuleResult], loop: str, elapsed: float) -> None:
    totals: dict[str, int] = {}
    for r in results:
        for key, value in r.counts().items():
            totals[key] = totals.get(key, 0) + value
    data = {
        "loop": loop,
        "python": sys.version.split()[0],
        "elapsed_seconds": round(elapsed, 1),
        "totals": totals,
        "modules": {
            r.module: {
                "duration_seconds": round(r.duration, 1),
                "attempts": r.attempts,
                "counts": r.counts(),
                "notes": r.notes,
                "tests": {
                    test_id: {"outcome": outcome, "detail": detail}
                    for test_id, (outcome, detail) in r.tests.items()
                },
            }
            for r in results
        },
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# Ratchet
# --------------------------------------------------------------------------------------------


def read_id_file(path: Path) -> set[str]:
    """Test ids from a file of lines ``id`` or ``id<TAB>reason``; ``#`` lines are comments."""
    ids = set()
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            ids.add(line.split("\t")[0].strip())
    return ids


# An entry of a not-applicable file: ``id`` or ``id [condition]``, then optionally ``<TAB>reason``.
NA_ENTRY = re.compile(r"^(?P<id>[\w.]+)(?:\s+\[(?P<cond>[^\]]*)\])?$")
# One clause of a condition: an operator and a version of one to three numbers, e.g. ``<3.12.2``.
NA_CLAUSE = re.compile(r"^(?P<op>>=|<=|==|!=|>|<)\s*(?P<version>\d+(?:\.\d+){0,2})$")
VERSION_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


def version_matches(condition: str, version: tuple[int, ...]) -> bool:
    """Whether ``version`` (``sys.version_info[:3]``) satisfies ``condition``: comma-separated
    clauses such as ``>=3.12`` or ``<3.12.2``, all of which must hold. Each clause compares only
    as many components as it names, so ``==3.12`` holds on every 3.12.x and ``<3.13`` on 3.12.9.
    """
    for clause in condition.split(","):
        match = NA_CLAUSE.match(clause.strip())
        if not match:
            raise ValueError(f"bad version clause {clause.strip()!r}")
        want = tuple(int(n) for n in match["version"].split("."))
        if not VERSION_OPS[match["op"]](tuple(version[: len(want)]), want):
            return False
    return True


def read_not_applicable(
    directory: Path = HERE, version: tuple[int, ...] = tuple(sys.version_info[:3])
) -> set[str]:
    """Ids of the tests not applicable on Python ``version``, from every not-applicable file.

    Each line is ``id<TAB>reason``, where ``id`` may be followed by a version condition in
    brackets (``test.test_asyncio.x.C.test_y [<3.13]``): the entry then applies only to the
    Pythons that satisfy it. An entry without one applies to every Python; an id that the running
    suite does not have is simply never matched.
    """
    ids = set()
    for path in sorted(directory.glob(NOT_APPLICABLE_GLOB)):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            entry = NA_ENTRY.match(line.split("\t")[0].strip())
            try:
                if entry is None:
                    raise ValueError("expected 'test_id' or 'test_id [condition]'")
                if entry["cond"] is None or version_matches(entry["cond"], version):
                    ids.add(entry["id"])
            except ValueError as exc:
                raise SystemExit(f"{path.name}:{lineno}: {exc}") from None
    return ids


def module_of(test_id: str) -> str:
    # test.test_asyncio.<module>.<Class>.<method>
    return test_id.split(".")[2]


def check_ratchet(
    ratchet: set[str], results: list[ModuleResult], retry, suite_modules: set[str]
) -> bool:
    """True if every ratchet id of the modules run that this Python can run passed.

    The ratchet is shared by every Python version, and suites differ: an id that the running
    interpreter's suite does not have (its module was run and did not list it, or the suite has no
    such module) is reported as absent in this Python, and one that a version-conditioned entry
    makes not applicable here is reported as such. Neither is checked. The ids of a module that
    could not be loaded at all are not absent: they did not pass.

    An id that did not pass is run once more, alone with the other such ids of its module, in a
    fresh child (``retry``: ids -> {id: outcome}); if it passes then, it is reported as flaky and
    does not fail the check, so that one unlucky timing does not break CI. It is listed, so that
    a flaky test is seen and fixed.
    """
    ran = {r.module: r for r in results}
    outcomes = {tid: oc for r in results for tid, (oc, _) in r.tests.items()}

    def absent(test_id: str) -> bool:
        module = module_of(test_id)
        if module not in suite_modules:
            return True
        r = ran[module]
        return not r.broken and bool(r.order) and test_id not in r.order

    relevant = sorted(
        t for t in ratchet if module_of(t) in ran or module_of(t) not in suite_modules
    )
    missing = [t for t in relevant if absent(t)]
    not_applicable = [t for t in relevant if outcomes.get(t) == "not_applicable"]
    # The suite skips some tests itself on some Pythons (3.14 made two test_ssl tests bigmem
    # tests, which run only under `-M`, and then in a subprocess of their own): nothing to check.
    suite_skipped = [t for t in relevant if outcomes.get(t) == "skipped"]
    unchecked = set(missing) | set(not_applicable) | set(suite_skipped)
    checked = [t for t in relevant if t not in unchecked]
    not_passing = [t for t in checked if outcomes.get(t) != "passed"]
    retried = retry(not_passing) if not_passing else {}
    flaky = [t for t in not_passing if retried.get(t) == "passed"]
    regressed = [t for t in not_passing if retried.get(t) != "passed"]
    python = sys.version.split()[0]
    print(
        f"\nRatchet: {len(checked) - len(regressed)}/{len(checked)} ids of the modules run "
        "still pass."
    )

    def listing(heading: str, ids: list[str], label) -> None:
        if ids:
            print(heading)
            for test_id in ids:
                print(f"  {label(test_id):<11} {test_id}")

    listing(
        f"Absent in this Python ({python}), not checked ({len(missing)}):",
        missing,
        lambda _: "absent",
    )
    listing(
        f"Not applicable in this Python ({python}), not checked ({len(not_applicable)}):",
        not_applicable,
        lambda _: "n/a",
    )
    listing(
        f"Skipped by the suite in this Python ({python}), not checked ({len(suite_skipped)}):",
        suite_skipped,
        lambda _: "skipped",
    )
    listing(
        f"Flaky ({len(flaky)}): did not pass at first, passed when run again:",
        flaky,
        lambda t: outcomes.get(t, "missing"),
    )
    listing(
        f"Ratchet FAILED; {len(regressed)} id(s) no longer pass (even when run again):",
        regressed,
        lambda t: outcomes.get(t, "not run"),
    )
    return not regressed


def update_ratchet(ratchet: set[str], results: list[ModuleResult]) -> None:
    """Add the ids that passed in this run. Nothing is ever removed: ids of other modules, and
    ids that only another Python version's suite has, stay."""
    passing = {tid for r in results for tid, (oc, _) in r.tests.items() if oc == "passed"}
    added = passing - ratchet
    RATCHET_FILE.write_text(RATCHET_HEADER + "".join(f"{t}\n" for t in sorted(ratchet | passing)))
    print(f"\nRatchet updated: {len(added)} id(s) added, {len(ratchet | passing)} in total.")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def all_modules() -> list[str]:
    import test.test_asyncio as suite

    return sorted(p.stem for p in Path(suite.__file__).parent.glob("test_*.py"))


def parse_modules(spec: str | None) -> list[str]:
    if not spec:
        # The running suite may lack a default module (3.10 has no test_taskgroups): the
        # ratchet check reports its ids as absent in this Python.
        known = set(all_modules())
        return [m for m in DEFAULT_MODULES if m in known]
    if spec == "all":
        return all_modules()
    names = []
    for name in spec.split(","):
        name = name.strip().removeprefix(SUITE_PACKAGE + ".")
        if name:
            names.append(name if name.startswith("test_") else "test_" + name)
    known = set(all_modules())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown test module(s): {', '.join(unknown)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run CPython's test_asyncio against ferroloop (or the stock loop).",
    )
    parser.add_argument(
        "--loop",
        default="ferroloop",
        choices=["ferroloop", "asyncio", "uvloop"],
        help="loop under test (asyncio: the stock loop, as reference; uvloop: to cross-check "
        "the runner against known figures)",
    )
    parser.add_argument(
        "--modules",
        help="comma-separated test modules (test_ prefix optional), or 'all'; "
        "default: the ratchet's modules",
    )
    parser.add_argument("--timeout-per-test", type=float, default=60.0, metavar="S")
    parser.add_argument("--jobs", type=int, default=2, metavar="N", help="modules in parallel")
    parser.add_argument("--check-ratchet", action="store_true")
    parser.add_argument("--update-ratchet", action="store_true")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write full results")
    parser.add_argument("-v", "--verbose", action="store_true", help="show why each test failed")
    args = parser.parse_args(argv)

    if args.update_ratchet and args.loop != "ferroloop":
        parser.error("--update-ratchet only makes sense with --loop ferroloop")
    modules = parse_modules(args.modules)
    not_applicable = read_not_applicable()
    log_dir = RESULTS_DIR / args.loop
    log_dir.mkdir(parents=True, exist_ok=True)

    # Biggest modules first, so that a long one does not start last and hold up the whole run.
    suite_dir = Path(__import__("test.test_asyncio").test_asyncio.__file__).parent
    schedule = sorted(modules, key=lambda m: -(suite_dir / f"{m}.py").stat().st_size)

    print(
        f"Running {len(modules)} module(s) against {args.loop}, {args.jobs} at a time, "
        f"timeout {args.timeout_per_test:g}s per test; logs in {log_dir}",
        flush=True,
    )
    began = time.monotonic()
    lock = threading.Lock()
    finished: dict[str, ModuleResult] = {}

    def job(module: str) -> ModuleResult:
        r = run_module(
            module, args.loop, not_applicable, args.timeout_per_test, log_dir, sys.executable
        )
        with lock:
            finished[module] = r
            c = r.counts()
            bad = sum(c[k] for k in BAD_OUTCOMES)
            print(
                f"[{len(finished)}/{len(modules)}] {module}: {c['passed']} passed, {bad} not "
                f"passing, {c['skipped']} skipped ({r.duration:.1f}s)",
                flush=True,
            )
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(job, schedule))
    elapsed = time.monotonic() - began
    results = [finished[m] for m in modules]

    print_summary(results, args.loop, elapsed, args.verbose)
    if args.json:
        write_json(args.json, results, args.loop, elapsed)

    status = 0
    if any(r.counts()[k] for r in results for k in BAD_OUTCOMES):
        status = 1
    broken = [r.module for r in results if r.broken]
    if broken:
        # Counted as nothing in the table, so say it loudly; always a failure.
        print(f"\nERROR: could not run {', '.join(broken)} (see the module notes above)")
    if args.check_ratchet:

        def retry(ids: list[str]) -> dict[str, str]:
            by_module: dict[str, set[str]] = {}
            for test_id in ids:
                by_module.setdefault(module_of(test_id), set()).add(test_id)
            print(f"\nRunning {len(ids)} ratchet id(s) that did not pass once more...", flush=True)
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                reruns = pool.map(
                    lambda item: run_module(
                        item[0], args.loop, not_applicable, args.timeout_per_test, log_dir,
                        sys.executable, only=item[1],
                    ),
                    by_module.items(),
                )  # fmt: skip
                return {tid: oc for r in reruns for tid, (oc, _) in r.tests.items()}

        ratchet = read_id_file(RATCHET_FILE) if RATCHET_FILE.exists() else set()
        status = 0 if check_ratchet(ratchet, results, retry, set(all_modules())) else 1
    if broken:
        status = 1
    if args.update_ratchet:
        ratchet = read_id_file(RATCHET_FILE) if RATCHET_FILE.exists() else set()
        update_ratchet(ratchet, results)
    return status


if __name__ == "__main__":
    sys.exit(main())
