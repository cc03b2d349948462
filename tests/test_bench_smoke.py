"""Smoke tests of the benchmark harness behind ``python -m ferroloop bench`` (a few seconds)."""

import importlib.util

import pytest
from ferroloop.bench import contestants, micro, procstat, registry, sock_echo

CLIENT_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def test_echo_harness_rejects_a_corrupting_server():
    """The echo client verifies every byte: a server that flips or drops one must fail."""
    settings = registry.Settings(
        cpus=procstat.allowed_cpus()[:2], timeout=30, client_loop=CLIENT_LOOP
    )
    lines: list[str] = []
    assert sock_echo.selftest(settings, log=lines.append), "\n".join(lines)
    assert len(lines) == 3


@pytest.mark.parametrize("contestant", ["asyncio", "ferroloop"])
def test_micro_benchmark_runs_in_process(contestant):
    loop = contestants.new_loop(contestant)
    try:
        result = micro.run_in_process("call_soon", loop, duration=0.05)
    finally:
        contestants.close(loop)
    assert result.ok, result.detail
    assert result.values["rate"] > 0


def test_registry_selection():
    names = [w.name for w in registry.all_workloads()]
    assert len(names) == len(set(names))
    quick = {w.name for w in registry.select_workloads(None, quick=True)}
    assert {"call_soon", "sock_echo_1k"} <= quick
    assert "sock_echo_100k" not in quick
    only = registry.select_workloads(["sock_echo", "tasks"], quick=False)
    assert {w.name for w in only} == {"tasks", "sock_echo_1k", "sock_echo_10k", "sock_echo_100k"}
    with pytest.raises(KeyError):
        registry.select_workloads(["no_such_workload"], quick=False)
