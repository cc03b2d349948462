"""The event loops being compared, and how a benchmark process creates and runs one.

Contestants are named by strings so they can be passed to child processes:

* ``asyncio``   -- the standard library's selector loop (``asyncio.SelectorEventLoop``)
* ``uvloop``    -- ``uvloop.new_event_loop()``
* ``ferroloop`` -- ``ferroloop.new_event_loop()``
* ``rloop``     -- ``rloop.new_event_loop()``

and two variants of ferroloop, run only when ``--loops`` names them, for before/after
comparisons within one run:

* ``ferroloop-metrics`` -- ferroloop with ``loop.metrics()`` read every second (or every
  ``FERROLOOP_BENCH_METRICS`` seconds), what a monitoring reader costs;
* ``ferroloop-base``    -- another build of ferroloop, installed in the directory
  ``FERROLOOP_BENCH_BASELINE`` names (``pip install --no-deps --target DIR WHEEL``), e.g. the
  last release or the commit before a change.

Availability is probed once per run in a child process (:func:`probe`), so a loop whose import
crashes the interpreter is reported as unavailable instead of taking the harness down.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import subprocess
import sys
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import subproc

KNOWN: tuple[str, ...] = ("asyncio", "uvloop", "ferroloop", "rloop")
#: Variants of ferroloop, run only when asked for by name (see the module's docstring).
VARIANTS: tuple[str, ...] = ("ferroloop-metrics", "ferroloop-base")
BASELINE_ENV = "FERROLOOP_BENCH_BASELINE"
#: Contestants shown even when unavailable (others are silently left out when missing).
ALWAYS_SHOWN: tuple[str, ...] = ("asyncio", "ferroloop")
#: Baselines for ratios, in order of preference.
BASELINES: tuple[str, ...] = ("uvloop", "asyncio")
#: The loop the load generators run on: the first of these that is available.
CLIENT_LOOPS: tuple[str, ...] = ("uvloop", "asyncio")


def import_ferroloop(baseline: bool = False) -> Any:
    """Import the real ``ferroloop`` package (with ``baseline``, the one in the directory
    ``FERROLOOP_BENCH_BASELINE`` names).

    Benchmark children import ``ferroloop.bench`` through a placeholder package so that children
    of other contestants never load ferroloop's extension module (see ``_child.py``); the real
    package is imported only here.  A child runs one contestant, so the baseline's package can
    take the name: ``ferroloop.bench``'s modules, already imported, stay this run's.
    """
    module = sys.modules.get("ferroloop")
    if baseline:
        directory = os.environ.get(BASELINE_ENV)
        if not directory or not os.path.isdir(os.path.join(directory, "ferroloop")):
            raise NotImplementedError(
                f"{BASELINE_ENV} must name a directory holding a ferroloop package "
                "(pip install --no-deps --target DIR WHEEL)"
            )
        sys.path.insert(0, os.path.abspath(directory))
    elif module is None or not getattr(module, "__bench_stub__", False):
        return importlib.import_module("ferroloop")
    if module is not None:
        del sys.modules["ferroloop"]
    try:
        return importlib.import_module("ferroloop")
    except BaseException:
        if module is not None:
            sys.modules["ferroloop"] = module
        raise


def git_revision() -> str | None:
    """Short commit (and "+dirty") of the source tree ferroloop runs from, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}{'+dirty' if dirty else ''}" if rev else None


def ferroloop_fingerprint() -> float:
    """Latest modification time of ferroloop's own files (its code, not this suite's).

    Compared before and after a run, it tells whether ferroloop was rebuilt meanwhile, which
    would mix two versions in one table.
    """
    package = Path(__file__).resolve().parent.parent
    stamps = []
    try:
        for path in package.iterdir():
            if path.suffix in (".py", ".so", ".pyd"):
                stamps.append(path.stat().st_mtime)
    except OSError:  # being replaced (pip install) right now: it changed
        return float("nan")
    return max(stamps, default=0.0)


def _module(name: str) -> Any:
    if name == "asyncio":
        return asyncio
    if name in ("ferroloop", "ferroloop-metrics"):
        return import_ferroloop()
    if name == "ferroloop-base":
        return import_ferroloop(baseline=True)
    if name in KNOWN:
        return importlib.import_module(name)
    raise ValueError(f"unknown contestant {name!r}; known: {', '.join(KNOWN + VARIANTS)}")


#: ``FERROLOOP_BENCH_METRICS=SECONDS`` (e.g. ``1``): every ferroloop loop made here reads
#: ``loop.metrics()`` every SECONDS while it runs, to measure what reading metrics costs; the
#: ``ferroloop-metrics`` contestant does so every second unless this says otherwise.
METRICS_ENV = "FERROLOOP_BENCH_METRICS"


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Create a fresh event loop of contestant ``name``."""
    if name == "asyncio":
        return asyncio.SelectorEventLoop()
    loop = _module(name).new_event_loop()
    period = float(os.environ.get(METRICS_ENV) or (1 if name == "ferroloop-metrics" else 0))
    if name in ("ferroloop", "ferroloop-metrics") and period > 0:
        _read_metrics(loop, period, loop.metrics())
    return loop


def _read_metrics(loop: Any, period: float, previous: Any) -> None:
    # What a monitoring reader does: a snapshot and the utilization since the last one.
    snapshot = loop.metrics()
    snapshot.utilization(since=previous)
    loop.call_later(period, _read_metrics, loop, period, snapshot)


def version(name: str) -> str:
    """Version string of contestant ``name`` (Python's version for asyncio)."""
    if name == "asyncio":
        return sys.version.split()[0]
    module = _module(name)
    found = getattr(module, "__version__", None)
    if not found:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            found = dist_version(name)
        except PackageNotFoundError:
            found = "?"
    profile = getattr(module, "BUILD_PROFILE", None)  # ferroloop: "release" or "debug"
    return f"{found} ({profile} build)" if profile else str(found)


def is_unsupported(exc: BaseException, loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Whether ``exc`` means "the loop lacks this feature" rather than a failure."""
    if isinstance(exc, NotImplementedError):
        return True
    if isinstance(exc, AttributeError) and loop is not None:
        return getattr(exc, "obj", None) is loop
    return False


def describe_exception(exc: BaseException) -> str:
    """``Type: message (in function)``, naming the innermost Python function that raised."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        # importlib's frames (frozen or not) say nothing about the failure
        if not frame.filename.startswith("<") and "importlib" not in frame.filename
    ]
    if frames:
        text += f" (in {frames[-1].name})"
    return text


class LoopFailure(RuntimeError):
    """An exception reached the loop's exception handler during a benchmark."""


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on ``loop``, failing fast on unhandled loop errors.

    Errors raised in plain callbacks do not propagate to the coroutine; they reach the loop's
    exception handler.  We install one that aborts the run, so a broken loop yields an error
    instead of a hang.
    """
    asyncio.set_event_loop(loop)
    task = loop.create_task(coro)
    errors: list[dict] = []

    def handler(_loop: asyncio.AbstractEventLoop, context: dict) -> None:
        errors.append(context)
        if not task.done():
            task.cancel()

    with contextlib.suppress(NotImplementedError):
        loop.set_exception_handler(handler)
    try:
        result = loop.run_until_complete(task)
    except asyncio.CancelledError:
        if not errors:
            raise
        result = None
    if errors:
        context = errors[0]
        exc = context.get("exception")
        if exc is not None and is_unsupported(exc, loop):
            raise exc
        raise LoopFailure(f"{context.get('message')}: {exc!r}") from exc
    return result


def close(loop: asyncio.AbstractEventLoop) -> None:
    """Close ``loop`` after shutting down async generators."""
    with contextlib.suppress(NotImplementedError):
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    asyncio.set_event_loop(None)


async def _trivial() -> str:
    await asyncio.sleep(0)
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(fut.set_result, "ok")
    return await fut


def probe_child(name: str) -> dict:
    """Child-process side of :func:`probe`: create a loop and run a trivial coroutine."""
    loop = new_loop(name)
    try:
        if not isinstance(loop, asyncio.AbstractEventLoop):
            raise TypeError(f"{type(loop).__name__} is not an asyncio.AbstractEventLoop")
        run(loop, _trivial())
    finally:
        close(loop)
    return {"status": "ok", "version": version(name), "loop_type": type(loop).__qualname__}


@dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    version: str = ""
    detail: str = ""


def probe(name: str, timeout: float = 30.0) -> Availability:
    """Check in a fresh process whether contestant ``name`` can run a trivial coroutine."""
    try:
        result = subproc.run_child("contestants", "probe_child", {"name": name}, timeout)
    except subproc.ChildFailed as exc:
        return Availability(name, False, detail=str(exc))
    if result.get("status") != "ok":
        return Availability(name, False, detail=result.get("detail", "probe failed"))
    return Availability(name, True, version=result.get("version", "?"))
