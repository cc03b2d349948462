"""``python -m asyncio ps PID`` / ``pstree PID`` (3.14's introspection of a running process's
tasks) against a process whose loop is ferroloop."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.ferroloop_only,
    pytest.mark.skipif(sys.version_info < (3, 14), reason="python -m asyncio ps is new in 3.14"),
]

CHILD = textwrap.dedent(
    """
    import asyncio, sys, ferroloop

    async def leaf():
        await asyncio.sleep(3600)

    async def middle():
        await asyncio.create_task(leaf(), name="ferro-leaf")

    async def main():
        assert isinstance(asyncio.get_running_loop(), ferroloop.Loop)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(middle(), name="ferro-middle")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            print("ready", flush=True)
            sys.stdin.read()  # blocks the loop thread: the tasks stay as they are
            raise SystemExit(0)

    ferroloop.run(main())
    """
)


@pytest.fixture
def ferroloop_process():
    pytest.importorskip("ferroloop")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(30)


def asyncio_tool(command, pid):
    result = subprocess.run(
        [sys.executable, "-m", "asyncio", command, str(pid)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "ermission" in result.stderr:
        pytest.skip(f"this process may not read another's memory: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_asyncio_ps_lists_the_tasks_of_a_ferroloop_process(ferroloop_process):
    out = asyncio_tool("ps", ferroloop_process)
    rows = {line.split()[2]: line for line in out.splitlines()[2:] if line.strip()}
    assert {"Task-1", "ferro-middle", "ferro-leaf"} <= set(rows), out
    assert "leaf" in rows["ferro-leaf"] and "ferro-middle" in rows["ferro-leaf"], out
    assert "ferro-middle" in out and "Task-1" in rows["ferro-middle"], out


def test_asyncio_pstree_shows_who_awaits_whom_in_a_ferroloop_process(ferroloop_process):
    out = asyncio_tool("pstree", ferroloop_process)
    lines = out.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if name in line)
        for name in ("(T) Task-1", "(T) ferro-middle", "(T) ferro-leaf")
    ]
    assert order == sorted(order), out
    # Each awaited task is drawn deeper than its awaiter.
    depth = [len(lines[i]) - len(lines[i].lstrip("│ └├─")) for i in order]
    assert depth == sorted(depth) and len(set(depth)) == 3, out
