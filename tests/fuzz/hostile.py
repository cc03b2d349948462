"""Hostile inputs for the fuzzer (fuzz_loop.py): exceptions raised on purpose, objects
whose ``fileno``, ``__eq__``, ``__hash__``, ``__del__`` or truth test misbehave, odd
buffers, protocols whose callbacks raise or re-enter the transport, plain callbacks."""

from __future__ import annotations

import array
import asyncio
import gc
import random

# Exceptions an action may end with, on either loop. Anything else (a PanicException, a
# SystemError, a KeyError from the loop's internals...) is a failure.
ALLOWED = (
    TypeError,
    ValueError,
    OSError,  # and its subclasses: timeouts, broken pipes, resets
    RuntimeError,
    AttributeError,
    OverflowError,
    MemoryError,
    BufferError,
    NotImplementedError,
    AssertionError,  # asyncio's pipe transports assert their arguments' types
    asyncio.CancelledError,
    asyncio.InvalidStateError,
)


class FuzzError(Exception):
    """Raised on purpose by a hostile object or callback."""


class FuzzInterrupt(KeyboardInterrupt):
    """A KeyboardInterrupt raised on purpose: it must escape ``run_until_complete``."""


class FuzzExit(SystemExit):
    """A SystemExit raised on purpose: it must escape ``run_until_complete``."""


OURS = (FuzzError, FuzzInterrupt, FuzzExit)
ESCAPING = (FuzzInterrupt, FuzzExit)


def allowed(exc):
    return isinstance(exc, ALLOWED + OURS) and type(exc).__name__ != "PanicException"


# -- hostile objects ---------------------------------------------------------------------


class Fileno:
    """An object whose fileno() returns or raises whatever it was given."""

    def __init__(self, result):
        self.result = result

    def fileno(self):
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result

    def __repr__(self):
        return f"Fileno({self.result!r})"


class Reentrant:
    """An object whose __eq__, __hash__ and __del__ call back into the loop."""

    def __init__(self, fuzz, rng, target=None):
        self.fuzz = fuzz
        self.mode = rng.choice(["call_soon", "stop", "close", "raise", "gc", "target", "none"])
        self.target = target
        self.value = rng.choice([0, 1, "x", ("127.0.0.1", 9)])

    def poke(self):
        loop = self.fuzz.loop
        if self.mode == "call_soon":
            loop.call_soon(lambda: None)
        elif self.mode == "stop":
            loop.stop()
        elif self.mode == "close":
            # Only while it runs (so it refuses): when a __del__ runs is an implementation
            # detail (ferroloop lets go of a handle's arguments once it ran, asyncio when
            # the handle goes), and a loop closed between two runs ends the phase early.
            if loop.is_running():
                loop.close()
        elif self.mode == "raise":
            raise FuzzError("hostile")
        elif self.mode == "gc":
            gc.collect()
        elif self.mode == "target" and self.target is not None:
            self.target.close()

    def __eq__(self, other):
        self.poke()
        return other == self.value

    def __hash__(self):
        self.poke()
        return hash(self.value)

    def __del__(self):
        self.poke()


class Truthy:
    """An object whose truth test raises."""

    def __bool__(self):
        raise FuzzError("truth")


def odd_buffer(rng, big=False):
    """A bytes-like (or not) object for writes."""
    n = rng.choice([0, 1, 7, 100, 4096, 65537])
    if big and rng.random() < 0.3:
        n = rng.choice([1 << 20, 3 << 20])
    kind = rng.randrange(11)
    if kind == 0:
        return bytes(n)
    if kind == 1:
        return bytearray(b"x" * n)
    if kind == 2:
        return memoryview(b"y" * n)
    if kind == 3:
        return memoryview(bytearray(n * 8)).cast("Q")
    if kind == 4:
        return array.array("i", range(n // 4 + 1))
    if kind == 5:
        return memoryview(b"z" * (2 * n + 2))[::2]  # not contiguous
    if kind == 6:
        return "text"
    if kind == 7:
        return [b"a", b"b"]
    if kind == 8:
        return None
    if kind == 9:
        return array.array("d", [1.5] * (n // 8 + 1))
    return memoryview(bytearray(n))[1:]


# -- protocols whose callbacks misbehave ------------------------------------------------


class FuzzProtocol(asyncio.Protocol):
    def __init__(self, fuzz, seed):
        self.fuzz = fuzz
        self.rng = random.Random(seed)
        self.transport = None

    def act(self, where):
        rng = self.rng
        r = rng.random()
        t = self.transport
        if r < 0.08:
            raise FuzzError(where)
        if r < 0.09:
            raise rng.choice([FuzzInterrupt, FuzzExit])(where)
        if r < 0.1 and where != "connection_lost":
            self.fuzz.loop.stop()
        elif r < 0.11:
            gc.collect()
        elif r < 0.3 and t is not None:
            op = rng.choice(["write", "close", "abort", "pause", "resume", "eof", "limits"])
            try:
                if op == "write":
                    t.write(b"w" * rng.choice([1, 100, 70000]))
                elif op == "close":
                    t.close()
                elif op == "abort":
                    t.abort()
                elif op == "pause":
                    t.pause_reading()
                elif op == "resume":
                    t.resume_reading()
                elif op == "eof":
                    t.write_eof()
                else:
                    t.set_write_buffer_limits(rng.choice([0, 1, 100, None]))
            except BaseException as exc:
                if isinstance(exc, ESCAPING) or not allowed(exc):
                    self.fuzz.check(f"protocol {where} {op}", exc)

    def connection_made(self, transport):
        self.transport = transport
        self.act("connection_made")

    def data_received(self, data):
        self.act("data_received")

    def eof_received(self):
        self.act("eof_received")
        return self.rng.choice([None, True, False, 1])

    def connection_lost(self, exc):
        self.act("connection_lost")

    def pause_writing(self):
        self.act("pause_writing")

    def resume_writing(self):
        self.act("resume_writing")


class FuzzBufferedProtocol(FuzzProtocol, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint):
        self.act("get_buffer")
        kind = self.rng.randrange(8)
        if kind == 0:
            return bytearray(0)
        if kind == 1:
            return bytes(10)
        if kind == 2:
            return memoryview(bytearray(64)).cast("I")
        if kind == 3:
            return array.array("i", [0] * 16)
        if kind == 4:
            return "nope"
        return bytearray(self.rng.choice([1, 100, 65536]))

    def buffer_updated(self, nbytes):
        self.act("buffer_updated")


class FuzzDatagramProtocol(FuzzProtocol, asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        self.act("datagram_received")

    def error_received(self, exc):
        self.act("error_received")


# -- callbacks ----------------------------------------------------------------------------
#
# Each action takes (fuzz, rng) and is either deterministic (its outcome is compared with
# asyncio's) or timing-dependent. `ACTIONS` maps a name to (function, deterministic, weight).


def cb_plain(*args):
    pass


def cb_raise(*args):
    raise FuzzError("callback")


def cb_interrupt(*args):
    raise FuzzInterrupt("callback")


def cb_exit(*args):
    raise FuzzExit("callback")
