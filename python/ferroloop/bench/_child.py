"""Entry point of every benchmark child process (run as a script, see ``subproc.py``).

Usage: ``python _child.py MODULE FUNCTION JSON-KWARGS``.

The child imports ``ferroloop.bench`` through a *placeholder* ``ferroloop`` package whose path is
this installation's package directory, without executing ``ferroloop/__init__.py``.  So the
children of asyncio, uvloop and the load generators never load ferroloop's extension module, and
the real package is imported only when the ferroloop contestant asks for it
(:func:`ferroloop.bench.contestants.import_ferroloop`).
"""

import importlib
import json
import os
import sys
import traceback
import types


def _install_placeholder() -> None:
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Make the directory holding this ferroloop package the first place imports look, and drop
    # this script's own directory, which Python put first on sys.path.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.path.insert(0, os.path.dirname(package_dir))
    placeholder = types.ModuleType("ferroloop")
    placeholder.__path__ = [package_dir]
    placeholder.__dict__["__bench_stub__"] = True
    sys.modules["ferroloop"] = placeholder


def main(argv: list[str]) -> int:
    module_name, function_name, raw_kwargs = argv
    if not module_name.isidentifier() or not function_name.isidentifier():
        raise SystemExit("bad module or function name")
    _install_placeholder()
    module = importlib.import_module(f"ferroloop.bench.{module_name}")
    contestants = importlib.import_module("ferroloop.bench.contestants")
    try:
        result = getattr(module, function_name)(**json.loads(raw_kwargs))
    except Exception as exc:
        status = "unsupported" if contestants.is_unsupported(exc) else "error"
        detail = contestants.describe_exception(exc)
        traceback.print_exc()
        result = {"status": status, "detail": detail}
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
