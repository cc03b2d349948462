"""Subprocesses: asyncio.create_subprocess_exec/_shell (asyncio.subprocess.Process) and the
protocol-level loop.subprocess_exec; exit codes, pipes, redirections, signals, timeouts,
cancellation, many children, argument errors."""

import asyncio
import contextlib
import errno
import os
import signal
import sys
from asyncio.subprocess import DEVNULL, PIPE, STDOUT

import pytest
from _netkit import MiB, payload, run

PY = (sys.executable, "-I", "-S", "-c")  # a quick-starting Python child

ECHO_STDIN = """
import sys
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(data)
sys.stderr.write(str(len(data)))
"""
BLOCK_ON_STDIN = "import sys; sys.stdin.buffer.read()"


async def python(code, *args, **kwargs):
    return await asyncio.create_subprocess_exec(*PY, code, *args, **kwargs)


# -- exit codes and data ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "returncode"),
    [
        ("pass", 0),
        ("raise SystemExit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    ],
    ids=["zero", "three", "killed"],
)
def test_exit_code(loop, code, returncode):
    async def main():
        proc = await python(code)
        assert proc.pid > 0
        assert proc.stdin is None and proc.stdout is None and proc.stderr is None
        assert await proc.wait() == returncode
        assert proc.returncode == returncode
        assert await proc.wait() == returncode  # again

    run(loop, main())


def test_communicate_large_stdin_and_stdout(loop):
    data = payload(4 * MiB)

    async def main():
        proc = await python(ECHO_STDIN, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(data)
        assert out == data
        assert err == str(len(data)).encode()
        assert proc.returncode == 0

    run(loop, main())


def test_stderr_separate_and_merged(loop):
    code = """
import sys
for stream, text in ((sys.stdout, "A"), (sys.stderr, "B"), (sys.stdout, "C")):
    stream.write(text)
    stream.flush()
"""

    async def main():
        proc = await python(code, stdout=PIPE, stderr=PIPE)
        assert await proc.communicate() == (b"AC", b"B")
        proc = await python(code, stdout=PIPE, stderr=STDOUT)
        assert proc.stderr is None
        assert await proc.communicate() == (b"ABC", None)
        assert proc.returncode == 0

    run(loop, main())


def test_devnull(loop):
    code = "import sys; print(len(sys.stdin.buffer.read())); print('e', file=sys.stderr)"

    async def main():
        proc = await python(code, stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL)
        assert proc.stdin is None and proc.stderr is None
        assert await proc.communicate() == (b"0\n", None)
        proc = await python(code, stdin=PIPE, stdout=DEVNULL, stderr=DEVNULL)
        assert proc.stdout is None
        assert await proc.communicate(b"ignored") == (None, None)
        assert proc.returncode == 0

    run(loop, main())


def test_stdout_to_a_file(loop, tmp_path):
    path = tmp_path / "out"
    data = payload(MiB)

    async def main():
        with open(path, "wb") as f:
            proc = await python(ECHO_STDIN, stdin=PIPE, stdout=f, stderr=PIPE)
            assert proc.stdout is None
            assert await proc.communicate(data) == (None, str(len(data)).encode())
        assert path.read_bytes() == data

    run(loop, main())


def test_cwd_and_env(loop, tmp_path):
    code = "import os; print(os.getcwd(), os.environ.get('FERRO_VAR'), len(os.environ), sep='\\n')"

    async def main():
        proc = await python(code, stdout=PIPE, cwd=tmp_path, env={"FERRO_VAR": "a value"})
        out, _ = await proc.communicate()
        cwd, var, count = out.decode().splitlines()
        assert os.path.realpath(cwd) == os.path.realpath(tmp_path)
        assert var == "a value"
        assert int(count) <= 2  # FERRO_VAR (and LC_CTYPE, which Python may set itself)

    run(loop, main())


def test_start_new_session(loop):
    code = "import os; print(os.getpid(), os.getsid(0), os.getpgid(0))"

    async def main():
        for new_session in (False, True):
            proc = await python(code, stdout=PIPE, start_new_session=new_session)
            pid, sid, pgid = map(int, (await proc.communicate())[0].split())
            assert pid == proc.pid
            if new_session:
                assert sid == pgid == pid
            else:
                assert sid == os.getsid(0) and pgid == os.getpgid(0)

    run(loop, main())


def test_pass_fds(loop):
    code = """
import os, sys
passed, not_passed = map(int, sys.argv[1:])
os.write(passed, b"through the passed fd")
try:
    os.write(not_passed, b"x")
except OSError as exc:
    print(exc.errno)
"""
    passed_r, passed_w = os.pipe()
    other_r, other_w = os.pipe()

    async def main():
        proc = await python(code, str(passed_w), str(other_w), stdout=PIPE, pass_fds=(passed_w,))
        return (await proc.communicate())[0]

    try:
        try:
            out = run(loop, main())
        finally:
            os.close(passed_w)
            os.close(other_w)
        assert int(out) == errno.EBADF  # only pass_fds are inherited
        assert os.read(passed_r, 100) == b"through the passed fd"
    finally:
        os.close(passed_r)
        os.close(other_r)


# -- signals, timeouts, cancellation ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "returncode"),
    [
        ("terminate", -signal.SIGTERM),
        ("kill", -signal.SIGKILL),
        ("send_signal", 42),
    ],
)
def test_signals(loop, method, returncode):
    code = """
import os, signal, sys
signal.signal(signal.SIGUSR1, lambda *_: os._exit(42))
print("ready", flush=True)
sys.stdin.buffer.read()
"""

    async def main():
        proc = await python(code, stdin=PIPE, stdout=PIPE)
        assert await proc.stdout.readline() == b"ready\n"
        if method == "send_signal":
            proc.send_signal(signal.SIGUSR1)
        else:
            getattr(proc, method)()
        assert await proc.wait() == returncode
        for call in (proc.terminate, proc.kill, lambda: proc.send_signal(signal.SIGUSR1)):
            if sys.version_info >= (3, 14):
                # 3.14's wait() returns as the child exits, maybe before the transport is
                # done with its pipes: until then signalling an exited child does nothing.
                with contextlib.suppress(ProcessLookupError):
                    call()
            else:
                with pytest.raises(ProcessLookupError):
                    call()

    run(loop, main())


def test_wait_timeout_then_kill(loop):
    async def main():
        proc = await python(BLOCK_ON_STDIN, stdin=PIPE)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.1)
        assert proc.returncode is None
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL

    run(loop, main())


def test_cancelled_communicate_leaves_no_hang(loop, request):
    if sys.version_info < (3, 11):
        # 3.10's asyncio.subprocess leaves the cancelled write's BrokenPipeError in a future
        # nobody retrieves, so the loop reports it (whatever the loop).
        request.getfixturevalue("expect_exception_handler")
    # The child reads nothing: communicate() is stuck writing 4 MiB to its stdin.
    code = "import signal; print('ready', flush=True); signal.pause()"

    async def main():
        proc = await python(code, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert await proc.stdout.readline() == b"ready\n"
        task = asyncio.ensure_future(proc.communicate(payload(4 * MiB)))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert proc.returncode is None
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL

    run(loop, main())


# -- many children, early exits, the shell ---------------------------------------------


def test_many_concurrent_children(loop):
    code = "import sys; sys.stdout.buffer.write(sys.argv[1].encode() + sys.stdin.buffer.read())"

    async def child(i):
        proc = await python(code, f"<child {i}>", stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(f"input of {i};".encode() * 1000)
        assert proc.returncode == 0
        return out

    async def main():
        outputs = await asyncio.gather(*(child(i) for i in range(50)))
        for i, out in enumerate(outputs):
            assert out == f"<child {i}>".encode() + f"input of {i};".encode() * 1000

    run(loop, main())


def test_output_of_an_exited_child_is_all_delivered(loop):
    # Less than a pipe's capacity on each stream: the child exits without waiting for us.
    code = """
import random, sys
sys.stdout.buffer.write(random.Random(1).randbytes(48 * 1024))
sys.stderr.buffer.write(random.Random(2).randbytes(16 * 1024))
"""

    async def main():
        proc = await python(code, stdout=PIPE, stderr=PIPE)
        assert await proc.wait() == 0
        assert await proc.stdout.read() == payload(48 * 1024, 1)
        assert await proc.stderr.read() == payload(16 * 1024, 2)

    run(loop, main())


def test_create_subprocess_shell(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            'read line; echo "$FERRO_VAR $line"; echo err >&2; exit 7',
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
            env={"FERRO_VAR": "shell", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        assert await proc.communicate(b"input\n") == (b"shell input\n", b"err\n")
        assert proc.returncode == 7

    run(loop, main())


# -- the protocol level ----------------------------------------------------------------


class Recording(asyncio.SubprocessProtocol):
    def __init__(self):
        self.events = []
        self.data = {1: bytearray(), 2: bytearray()}
        self.transport = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append(("made", transport.get_pid() is not None))

    def pipe_data_received(self, fd, data):
        self.events.append(("data", fd))
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe lost", fd, exc))

    def process_exited(self):
        self.events.append(("exited", self.transport.get_returncode()))

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(None)


def test_subprocess_protocol_callback_order(loop):
    data = payload(MiB)
    code = ECHO_STDIN + "raise SystemExit(5)"

    async def main():
        transport, proto = await loop.subprocess_exec(Recording, *PY, code)
        assert isinstance(transport, asyncio.SubprocessTransport)
        pid = transport.get_pid()
        assert isinstance(pid, int) and pid > 0
        assert transport.get_returncode() is None
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(transport.get_pipe_transport(1), asyncio.ReadTransport)
        assert isinstance(transport.get_pipe_transport(2), asyncio.ReadTransport)
        assert transport.get_extra_info("subprocess").pid == pid
        stdin.write(data)
        stdin.close()
        await proto.done
        events = proto.events
        # What asyncio guarantees: connection_made first, connection_lost last, after
        # process_exited; each pipe lost once, after its last data.
        assert events[0] == ("made", True)
        assert events[-1] == ("lost", None)
        assert events.count(("exited", 5)) == 1
        assert len([e for e in events if e[0] == "exited"]) == 1
        for fd in (0, 1, 2):
            lost = events.index(("pipe lost", fd, None))
            assert events.count(("pipe lost", fd, None)) == 1
            assert ("data", fd) not in events[lost:]
        assert len(events) == 6 + events.count(("data", 1)) + events.count(("data", 2))
        assert bytes(proto.data[1]) == data
        assert bytes(proto.data[2]) == str(len(data)).encode()
        assert transport.get_returncode() == 5
        transport.close()
        with pytest.raises(ProcessLookupError):
            transport.kill()

    run(loop, main())


# -- argument errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"universal_newlines": True}, "universal_newlines must be False"),
        ({"shell": True}, "shell must be False"),
        ({"bufsize": 1}, "bufsize must be 0"),
        ({"text": True}, "text must be False"),
        ({"encoding": "utf-8"}, "encoding must be None"),
        ({"errors": "strict"}, "errors must be None"),
    ],
)
def test_exec_argument_errors(loop, kwargs, message):
    async def main():
        with pytest.raises(ValueError, match=message):
            await asyncio.create_subprocess_exec(*PY, "pass", **kwargs)
        with pytest.raises(ValueError, match=message):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, *PY, "pass", **kwargs)

    run(loop, main())


def test_shell_argument_errors(loop):
    async def main():
        for cmd in (["true"], 5, None):
            with pytest.raises(ValueError, match="cmd must be a string"):
                await loop.subprocess_shell(asyncio.SubprocessProtocol, cmd)
        with pytest.raises(ValueError, match="shell must be True"):
            await asyncio.create_subprocess_shell("true", shell=False)
        with pytest.raises(ValueError, match="universal_newlines must be False"):
            await asyncio.create_subprocess_shell("true", universal_newlines=True)

    run(loop, main())


def test_program_and_argument_types(loop):
    async def main():
        for args in ((5,), (sys.executable, 5), (sys.executable, None)):
            with pytest.raises(TypeError):
                await asyncio.create_subprocess_exec(*args)
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program")
        # bytes and str both work, for the program and its arguments
        proc = await asyncio.create_subprocess_exec(
            os.fsencode(sys.executable), "-I", b"-S", "-c", b"print('bytes ok')", stdout=PIPE
        )
        assert await proc.communicate() == (b"bytes ok\n", None)

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 14), reason="3.14 (gh-119710): wait() stops there")
def test_wait_returns_when_the_child_exits_though_a_grandchild_keeps_its_pipe(loop):
    # The grandchild inherits the child's stdin and stdout and keeps them open after the
    # child is killed: the stdout pipe never reaches EOF, but wait() must return anyway.
    code = (
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', "
        "\"import sys; sys.stdout.write('ready'); sys.stdout.flush(); sys.stdin.read()\"])\n"
    )

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=PIPE, stdout=PIPE
        )
        try:
            waiting = asyncio.ensure_future(proc.wait())
            assert await proc.stdout.readexactly(5) == b"ready"
            proc.kill()
            return await asyncio.wait_for(waiting, 30)
        finally:
            proc.stdin.close()  # the grandchild exits
            await proc.stdout.read()

    assert loop.run_until_complete(main()) == -signal.SIGKILL
