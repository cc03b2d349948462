"""Random, reproducible sequences of event-loop and transport calls (``make fuzz``).

Each seed drives one child interpreter (under ``faulthandler``, with a time limit) through
phases of random actions on one loop: callbacks and timers with hostile arguments, readers
and writers on bad file descriptors, ``sock_*`` on closed, blocking and non-socket objects,
TCP and UDP endpoints on loopback whose protocols raise or re-enter the loop, transport
calls with odd buffers in random orders, ``call_soon_threadsafe`` from threads, objects
whose ``__eq__``/``__hash__``/``__del__``/``fileno`` misbehave, ``stop``/``close`` and
``gc.collect()`` at random points.

A seed fails when its child crashes (a signal, a fatal error), hangs (the time limit), or
sees a ``PanicException`` or an exception of a type asyncio never raises there (anywhere:
an action, the exception handler, an unraisable exception, a thread). Each seed also runs
on stdlib asyncio, and the outcomes (OK or the exception's class) of the *deterministic*
actions, those whose result no timing decides, must be the same on both loops; actions
whose outcome depends on timing (I/O, threads) are only checked for crashes and exception
types.

Usage::

    python tests/fuzz/fuzz_loop.py --count 200 --jobs 2      # seeds from a random start
    python tests/fuzz/fuzz_loop.py --start 0 --count 20      # a fixed set
    python tests/fuzz/fuzz_loop.py --seconds 1800 --jobs 2   # for half an hour
    python tests/fuzz/fuzz_loop.py --seed 1234 -v            # one seed, in this process

A failure prints the seed and the command that reproduces it.
"""

import argparse
import asyncio
import concurrent.futures
import contextlib
import faulthandler
import gc
import json
import logging
import math
import os
import random
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings

from actions import ACTIONS, NAMES, WEIGHTS, act_closed_loop_calls
from hostile import ESCAPING, allowed

HERE = os.path.abspath(__file__)


def simple(value):
    """Whether a result is compared as it is (numbers, flags, short strings)."""
    if isinstance(value, (list, tuple)):
        return all(simple(v) for v in value)
    return value is None or (isinstance(value, (bool, int, str)) and len(repr(value)) < 100)


# -- the child: one seed --------------------------------------------------------------------


class Fuzz:
    """The state of one seed's run: its loop, what the actions made, what was seen."""

    def __init__(self, seed, kind, verbose=False):
        self.seed = seed
        self.kind = kind
        self.verbose = verbose
        self.trace = []  # (step, action, outcome) of the deterministic actions
        self.failures = []  # descriptions of unexpected exceptions
        self.loop = None
        self.phase = 0
        self.step = 0
        self.handles = []
        self.transports = []
        self.servers = []
        self.sockets = []  # sockets and pipe ends this run owns (closed at the end)
        self.pipes = []  # (read fd, write fd) with maybe a reader on the read end
        self.threads = []
        self.tasks = []
        self.escapes = 0
        self.stale = False  # see check_stale
        # Set by an action whose outcome asyncio leaves to chance this time: not compared.
        self.loose = False
        # Whether inputs that hit open items of issue 10 are compared (--known).
        self.known = False

    # -- bookkeeping

    def log(self, msg):
        if self.verbose:
            print(f"[{self.phase}.{self.step}] {msg}", file=sys.stderr, flush=True)

    def fail(self, where, exc):
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.failures.append(f"{where}: {type(exc).__name__}: {exc}\n{text}")
        print(f"UNEXPECTED in {where}:\n{text}", file=sys.stderr, flush=True)

    def check(self, where, exc):
        if exc is not None and not allowed(exc):
            self.fail(where, exc)

    def outcome(self, name, exc, deterministic, result=None):
        out = "OK" if exc is None else type(exc).__name__
        if exc is None and simple(result):
            out += f" {result!r}"
        self.log(f"{name}: {out}{'' if deterministic else ' (timing)'} {exc or ''}")
        if deterministic and not self.loose:
            if self.stale:
                out = "STALE " + out
            self.trace.append((self.phase, self.step, name, out))
        self.check(name, exc)

    def new_loop(self):
        if self.kind == "ferroloop":
            import ferroloop

            loop = ferroloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        loop.set_exception_handler(self.exception_handler)
        self.loop = loop
        self.stale = False
        return loop

    def check_stale(self):
        """On asyncio: whether its selector holds a key for a closed fd. asyncio leaves
        one behind when an fd is closed while registered (its pipe transports can even
        register a pipe after closing it); the number's next owner then gets answers that
        depend on that history (FileNotFoundError, or a registration that silently does
        nothing), so the loop's later outcomes are not compared."""
        selector = getattr(self.loop, "_selector", None)
        if self.kind != "asyncio" or self.stale or selector is None:
            return
        for key in list(selector.get_map().values()):
            try:
                os.fstat(key.fd)
            except OSError:
                self.stale = True
                self.log(f"asyncio's selector kept fd {key.fd} after it was closed")
                return

    def exception_handler(self, loop, context):
        exc = context.get("exception")
        self.log(f"exception handler: {context.get('message')!r} {type(exc).__name__}")
        if exc is not None:
            self.check(f"exception handler ({context.get('message')})", exc)

    # -- helpers for actions

    def own(self, obj):
        self.sockets.append(obj)
        return obj

    def socketpair(self, blocking=False):
        a, b = socket.socketpair()
        a.setblocking(blocking)
        b.setblocking(False)
        return self.own(a), self.own(b)

    def when(self, value):
        """A deadline or delay as given to the loop under test. asyncio's heap breaks on a
        NaN (its comparisons are all false: later timers can be stuck behind it), so its
        reference run gets what ferroloop makes of one: due at once."""
        if self.kind == "asyncio" and isinstance(value, float) and math.isnan(value):
            return -math.inf
        return value

    def pick(self, rng, seq):
        return seq[rng.randrange(len(seq))] if seq else None


async def run_action(f, name, rng):
    fn, det, _ = ACTIONS[name]
    exc = result = None
    f.loose = False
    f.check_stale()
    try:
        result = fn(f, rng)
        if asyncio.iscoroutine(result):
            result = await result
    except GeneratorExit:
        raise  # the driver is being closed
    except BaseException as e:
        exc = e
    f.check_stale()
    f.outcome(name, exc, det, result)
    del exc


async def driver(f, steps):
    for i in range(steps):
        f.step = i
        rng = random.Random(f"{f.seed}/{f.phase}/{i}")
        name = rng.choices(NAMES, WEIGHTS)[0]
        await run_action(f, name, rng)


def run_phase(f, steps):
    loop = f.loop
    task = loop.create_task(driver(f, steps))
    while not task.done():
        try:
            loop.run_until_complete(task)
        except ESCAPING:
            f.escapes += 1  # a callback's KeyboardInterrupt/SystemExit: run again
        except RuntimeError as exc:
            if loop.is_closed():
                # A hostile __del__ closed it between two runs.
                f.log(f"loop closed: {exc}")
                return
            # stop() was called
        except BaseException as exc:
            f.fail("run_until_complete (escaped the loop)", exc)
            return
        if f.escapes > 10_000:
            f.fail("run_phase", RuntimeError("too many escapes"))
            return
    if task.exception() is not None:
        f.fail("driver", task.exception())


def close_everything(f, rng):
    for t in f.transports:
        try:
            t.abort() if rng.random() < 0.5 else t.close()
        except BaseException as exc:
            f.check("cleanup transport", exc)
    for s in f.servers:
        s.close()
    f.transports.clear()
    f.servers.clear()


def cleanup_loop(f, rng):
    """Ends a phase: settles (or not), then closes the loop."""
    loop = f.loop
    if rng.random() < 0.7:
        close_everything(f, rng)
        for _ in range(3):
            try:
                loop.run_until_complete(asyncio.sleep(0))
            except BaseException as exc:
                if not isinstance(exc, (*ESCAPING, RuntimeError)):
                    f.fail("settling", exc)
    for t in f.tasks:
        t.cancel()
    f.tasks.clear()
    try:
        loop.close()
    except BaseException as exc:
        f.check("loop.close", exc)
    # What the closed loop answers is deterministic.
    for i in range(3):
        f.step = 10_000 + i
        exc = None
        try:
            act_closed_loop_calls(f, random.Random(f"{f.seed}/{f.phase}/closed/{i}"))
        except BaseException as e:
            exc = e
        f.outcome("closed_loop_call", exc, True)
    close_everything(f, rng)  # transports of a closed loop: must not crash either


def run_seed(seed, kind, steps, verbose=False, known=False):
    f = Fuzz(seed, kind, verbose)
    f.known = known
    rng = random.Random(f"{seed}")
    warnings.simplefilter("ignore")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)

    def unraisable(u):
        f.log(f"unraisable: {type(u.exc_value).__name__}: {u.exc_value}")
        if u.exc_value is not None:
            f.check(f"unraisable ({u.err_msg})", u.exc_value)

    def thread_hook(a):
        f.check("thread", a.exc_value)

    sys.unraisablehook = unraisable
    threading.excepthook = thread_hook
    phases = rng.randrange(1, 4)
    for phase in range(phases):
        f.phase = phase
        f.new_loop()
        run_phase(f, max(1, steps // phases))
        cleanup_loop(f, rng)
        for t in f.threads:
            t.join()
        f.threads.clear()
        f.handles.clear()
        for p in f.pipes:
            for fd in p:
                if fd >= 0:
                    os.close(fd)
        f.pipes.clear()
        gc.collect()
    for s in f.sockets:
        with contextlib.suppress(OSError):
            s.close()
    f.sockets.clear()
    f.loop = None
    gc.collect()
    return f


def child_main(args):
    faulthandler.enable()
    # Dump every thread's stack and die just before the parent's limit.
    faulthandler.dump_traceback_later(max(1, args.timeout - 2), exit=True)
    f = run_seed(args.seed, args.loop, args.steps, args.verbose, args.known)
    faulthandler.cancel_dump_traceback_later()
    out = {"trace": f.trace, "failures": f.failures, "escapes": f.escapes}
    sys.stdout.write("FUZZ-RESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()
    # Skip interpreter teardown only if it would be the thing that hangs: no, run it.
    return 0


# -- the parent: many seeds ---------------------------------------------------------------


def run_child(seed, kind, steps, timeout, known):
    cmd = [
        sys.executable,
        "-X",
        "faulthandler",
        HERE,
        "--seed",
        str(seed),
        "--loop",
        kind,
        "--steps",
        str(steps),
        "--timeout",
        str(timeout),
        *(["--known"] if known else []),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return {"status": "hang", "stderr": err or ""}
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("FUZZ-RESULT "):
            result = json.loads(line[len("FUZZ-RESULT ") :])
    status = "ok"
    if proc.returncode != 0 or result is None:
        hung = "Timeout (" in proc.stderr  # faulthandler's dump_traceback_later
        status = "hang" if hung else f"crash (exit status {proc.returncode})"
    elif "PanicException" in proc.stderr or "panicked at" in proc.stderr:
        status = "panic"
    elif result["failures"]:
        status = "unexpected exception"
    return {"status": status, "stderr": proc.stderr, "result": result}


def compare(seed, steps, timeout, known):
    """Runs one seed on ferroloop (and asyncio); returns a failure description or None."""
    fl = run_child(seed, "ferroloop", steps, timeout, known)
    if fl["status"] != "ok":
        return fl["status"], tail(fl["stderr"])
    ref = run_child(seed, "asyncio", steps, timeout, known)
    if ref["result"] is None:
        # asyncio itself crashed or hung on this seed: nothing to compare with.
        print(f"note: seed {seed}: the asyncio reference run: {ref['status']}", flush=True)
        return None
    if ref["status"] != "ok":
        # asyncio's own bugs (3.12+ selector transports: IndexError in
        # _adjust_leftover_buffer after writelines of non-byte buffers): not ferroloop's.
        print(f"note: seed {seed}: the asyncio reference run: {ref['status']}", flush=True)
    a = [tuple(x) for x in fl["result"]["trace"]]
    b = [tuple(x) for x in ref["result"]["trace"]]
    if len(a) != len(b):
        return "divergence", f"trace lengths: ferroloop {len(a)}, asyncio {len(b)}"
    for x, y in zip(a, b, strict=True):
        if x != y and not y[3].startswith("STALE") and "FileNotFoundError" not in y[3]:
            # (FileNotFoundError: asyncio's selector kept a stale key, see check_stale)
            return "divergence", f"ferroloop {x} vs asyncio {y}"
    return None


def tail(text, lines=80):
    return "\n".join(line[:300] for line in text.splitlines()[-lines:])


def parent_main(args):
    start = args.start
    if start is None:
        start = int.from_bytes(os.urandom(3), "big") * 1000
    deadline = time.monotonic() + args.seconds if args.seconds else None
    count = args.count if args.count is not None else (None if deadline else 20)
    print(
        f"fuzz: seeds from {start}, {args.jobs} job(s), {args.steps} steps each, "
        f"{f'for {args.seconds:.0f} s' if deadline else f'{count} seeds'}",
        flush=True,
    )
    failures = []
    ran = []
    next_seed = start

    def seeds():
        nonlocal next_seed
        while (count is None or next_seed < start + count) and (
            deadline is None or time.monotonic() < deadline
        ):
            yield next_seed
            next_seed += 1

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        running = {}
        it = seeds()
        for seed in it:
            running[pool.submit(compare, seed, args.steps, args.timeout, args.known)] = seed
            if len(running) >= args.jobs:
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for fut in done:
                    s = running.pop(fut)
                    ran.append(s)
                    report(fut.result(), s, args, failures)
        for fut in concurrent.futures.as_completed(running):
            s = running[fut]
            ran.append(s)
            report(fut.result(), s, args, failures)
    ran.sort()
    rng_desc = f"{ran[0]}..{ran[-1]}" if ran else "none"
    print(f"fuzz: ran {len(ran)} seeds ({rng_desc}); {len(failures)} failed", flush=True)
    for seed, status in failures:
        print(f"  seed {seed}: {status}")
    return 1 if failures else 0


def report(res, seed, args, failures):
    if res is None:
        if args.verbose:
            print(f"seed {seed}: ok", flush=True)
        return
    status, detail = res
    failures.append((seed, status))
    print(
        f"\nFAIL seed {seed}: {status}\n{detail}\n"
        f"reproduce: {sys.executable} -X faulthandler {os.path.relpath(HERE)} "
        f"--seed {seed} --steps {args.steps}{' --known' if args.known else ''} -v\n",
        flush=True,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, help="run one seed in this process (the child)")
    p.add_argument("--loop", choices=["ferroloop", "asyncio"], default="ferroloop")
    p.add_argument("--start", type=int, help="first seed (default: random)")
    p.add_argument("--count", type=int, help="number of seeds (default 20, or unbounded)")
    p.add_argument("--seconds", type=float, help="run seeds until this many seconds passed")
    p.add_argument("--jobs", type=int, default=1, help="seeds run in parallel")
    p.add_argument("--steps", type=int, default=120, help="actions per seed")
    p.add_argument("--timeout", type=float, default=60, help="time limit per child run")
    p.add_argument(
        "--known", action="store_true", help="also compare inputs of open issues (issue 10 #17)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.seed is not None:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
