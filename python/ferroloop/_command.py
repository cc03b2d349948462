"""``python -m ferroloop run``: run an unmodified program with every asyncio loop a ferroloop loop.

``run script.py ARGS``, ``run -m package.module ARGS`` and ``run -c CODE ARGS`` behave as
``python script.py ARGS``, ``python -m package.module ARGS`` and ``python -c CODE ARGS`` do
(``sys.argv``, ``sys.path[0]``, the ``__main__`` module, exit status, tracebacks, signals), except
that every event loop asyncio creates is a ferroloop loop:

* the event-loop policy is replaced before the program starts
  (``_policy.use_ferroloop_for_every_new_loop``), so ``asyncio.run``, ``asyncio.Runner``,
  ``asyncio.new_event_loop`` and ``asyncio.get_event_loop`` (where the Python version still
  creates a loop there) make ferroloop loops, without asyncio's policy deprecation warnings on
  3.14+;
* libraries that build their loop without asking asyncio's policy are adapted when they are
  imported (:data:`_LIBRARY_DEFAULTS`): uvicorn's default ``--loop auto``.

An explicit choice of the program still wins: a ``loop_factory`` it passes, a policy it sets,
``uvicorn --loop uvloop``.  ``--print-loop`` reports on stderr the class of each event loop that
starts running, so a user can check.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.abc
import importlib.machinery
import io
import os
import runpy
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import _policy

USAGE = """\
usage: python -m ferroloop run [--print-loop] (SCRIPT | -m MODULE | -c CODE) [ARGS ...]

Run a Python program unchanged, as `python SCRIPT ARGS`, `python -m MODULE ARGS` or
`python -c CODE ARGS` would, with every asyncio event loop it creates being a ferroloop loop.

options:
  --print-loop  report on stderr the class of each event loop that starts running
  -h, --help    show this help and exit
"""


# --------------------------------------------------------------------------- installing the loop


def _uvicorn_auto(module: types.ModuleType) -> None:
    """uvicorn's ``--loop auto`` (its default) picks uvloop, else ``asyncio.SelectorEventLoop``,
    without asking the policy: make it pick ferroloop."""
    from ._loop import new_event_loop

    def auto_loop_factory(use_subprocess: bool = False) -> Callable[[], asyncio.AbstractEventLoop]:
        return new_event_loop

    module.auto_loop_factory = auto_loop_factory  # type: ignore[attr-defined]


#: Modules of libraries whose default loop bypasses asyncio's policy, and how to adapt each
#: right after it is imported.
_LIBRARY_DEFAULTS: dict[str, Callable[[types.ModuleType], None]] = {
    "uvicorn.loops.auto": _uvicorn_auto,
}


class _AdaptingLoader(importlib.abc.Loader):
    """Runs a module's own loader, then adapts the module (see :data:`_LIBRARY_DEFAULTS`)."""

    def __init__(self, loader: importlib.abc.Loader, adapt: Callable[[types.ModuleType], None]):
        self._loader = loader
        self._adapt = adapt

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._adapt(module)


class _LibraryFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`_LIBRARY_DEFAULTS` as the other finders do, and wraps their
    loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        adapt = _LIBRARY_DEFAULTS.get(fullname)
        if adapt is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _AdaptingLoader(spec.loader, adapt)
                return spec
        return None


def _adapt_libraries() -> None:
    for name, adapt in _LIBRARY_DEFAULTS.items():
        module = sys.modules.get(name)
        if module is not None:
            adapt(module)
    sys.meta_path.insert(0, _LibraryFinder())


# --------------------------------------------------------------------------- --print-loop


def _report_running_loops() -> None:
    """Print the class of each event loop when it starts running (once per class).

    Loops set themselves as the running loop through ``asyncio._set_running_loop`` (ferroloop)
    or ``asyncio.events._set_running_loop`` (asyncio's own); both are wrapped.
    """
    from asyncio import events

    seen: set[type] = set()

    def wrap(original: Callable[[Any], None]) -> Callable[[Any], None]:
        def _set_running_loop(loop: Any) -> None:
            if loop is not None and type(loop) not in seen:
                seen.add(type(loop))
                cls = type(loop)
                name = "ferroloop.Loop" if cls.__module__ == "ferroloop._loop" else None
                name = name or f"{cls.__module__}.{cls.__qualname__}"
                print(f"ferroloop run: event loop {name} is running", file=sys.stderr, flush=True)
            original(loop)

        return _set_running_loop

    wrapped = wrap(events._set_running_loop)
    events._set_running_loop = wrapped
    asyncio._set_running_loop = wrapped


# --------------------------------------------------------------------------- running the program


def _user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without its leading frames of runpy and of this command."""
    ours = {
        os.path.normcase(os.path.abspath(path))
        for path in (__file__, os.path.join(os.path.dirname(__file__), "__main__.py"))
    }
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        runpy_frame = filename in ("<frozen runpy>", runpy.__file__)
        if not runpy_frame and os.path.normcase(os.path.abspath(filename)) not in ours:
            break
        tb = tb.tb_next
    return tb


def _install_excepthook() -> None:
    """Tracebacks of uncaught exceptions start at the program's code, as under ``python``."""
    if sys.excepthook is not sys.__excepthook__:
        return
    default = sys.__excepthook__

    def excepthook(
        kind: type[BaseException], value: BaseException, tb: types.TracebackType | None
    ) -> None:
        trimmed = _user_frames(tb)
        if trimmed is not None and trimmed is not tb:
            # The default hook prints the exception's own __traceback__ when it has one.
            if value.__traceback__ is tb:
                value.__traceback__ = trimmed
            tb = trimmed
        default(kind, value, tb)

    sys.excepthook = excepthook


def _fresh_main(**attributes: Any) -> dict[str, Any]:
    """Replace ``sys.modules["__main__"]`` (this command's) with an empty module; its dict."""
    main = types.ModuleType("__main__")
    main.__dict__.update(attributes)
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main.__dict__


def _run_code(code: str, args: list[str]) -> None:
    sys.argv = ["-c", *args]
    if sys.path and not getattr(sys.flags, "safe_path", False):
        sys.path[0] = ""
    namespace = _fresh_main(__loader__=importlib.machinery.BuiltinImporter, __spec__=None)
    namespace["__annotations__"] = {}
    exec(compile(code, "<string>", "exec", dont_inherit=True), namespace)


def _run_module(module: str, args: list[str]) -> None:
    # sys.path[0] is already the current directory, as under `python -m` (this command was
    # started with `python -m ferroloop`).
    sys.argv = [module, *args]
    _fresh_main()
    run_as_main = getattr(runpy, "_run_module_as_main", None)
    if run_as_main is not None:  # what `python -m` itself runs: argv[0] becomes the file
        run_as_main(module, alter_argv=True)
    else:  # pragma: no cover - every CPython has it
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def _run_script(script: str, args: list[str]) -> None:
    sys.argv = [script, *args]
    if os.path.isdir(script) or not os.path.isfile(script) or _is_zipfile(script):
        # A directory or zip file with __main__.py (or a missing file: runpy says so).
        if not os.path.exists(script):
            _fail(f"can't open file {os.path.abspath(script)!r}: No such file or directory", 2)
        runpy.run_path(script, run_name="__main__")
        return
    path = os.path.abspath(script)
    if sys.path and not getattr(sys.flags, "safe_path", False):
        sys.path[0] = os.path.dirname(os.path.realpath(script))
    with io.open_code(path) as source_file:
        source = source_file.read()
    namespace = _fresh_main(
        __file__=path,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __spec__=None,
    )
    exec(compile(source, path, "exec", dont_inherit=True), namespace)


def _is_zipfile(path: str) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _fail(message: str, status: int) -> NoReturn:
    print(f"python -m ferroloop run: {message}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: list[str]) -> None:
    """Parse ``run``'s arguments and run the program; returns only if the program does."""
    print_loop = False
    index = 0
    while index < len(argv) and argv[index] in ("--print-loop", "-h", "--help"):
        if argv[index] == "--print-loop":
            print_loop = True
        else:
            print(USAGE, end="")
            raise SystemExit(0)
        index += 1
    rest = argv[index:]
    if not rest:
        print(USAGE, end="", file=sys.stderr)
        raise SystemExit(2)
    if rest[0] in ("-m", "-c"):
        if len(rest) < 2:
            _fail(f"argument expected for the {rest[0]} option", 2)
        kind, target, args = rest[0], rest[1], rest[2:]
    elif rest[0].startswith("-") and rest[0] != "-":
        _fail(f"unknown option {rest[0]!r} (options go before the program)", 2)
    else:
        kind, target, args = "script", rest[0], rest[1:]

    _policy.use_ferroloop_for_every_new_loop()
    _adapt_libraries()
    if print_loop:
        _report_running_loops()
    _install_excepthook()
    if kind == "-m":
        _run_module(target, args)
    elif kind == "-c":
        _run_code(target, args)
    else:
        _run_script(target, args)
