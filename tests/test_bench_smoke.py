"""Smoke tests of the benchmark harness behind ``python -m ferroloop bench`` (a few seconds)."""

import importlib.util
import shutil
from pathlib import Path

import pytest
from ferroloop.bench import (
    contestants,
    echo,
    floor,
    http_keepalive,
    micro,
    procstat,
    registry,
    report,
    runner,
    sock_echo,
    spawn,
    tls_echo,
    udp_echo,
)

CLIENT_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _settings() -> registry.Settings:
    return registry.Settings(cpus=procstat.allowed_cpus()[:2], timeout=30, client_loop=CLIENT_LOOP)


def test_echo_harness_rejects_a_corrupting_server():
    """The echo client verifies every byte: a server that flips or drops one must fail."""
    lines: list[str] = []
    assert sock_echo.selftest(_settings(), log=lines.append), "\n".join(lines)
    assert len(lines) == 3


needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs openssl for the certificate"
)


@needs_openssl
def test_tls_echo_harness_rejects_a_corrupting_server():
    """The TLS client verifies the certificate and every byte: corrupted plaintext must fail."""
    lines: list[str] = []
    assert tls_echo.selftest(_settings(), log=lines.append), "\n".join(lines)
    assert len(lines) == 3


@needs_openssl
def test_tls_echo_on_ferroloop_measures_or_is_unsupported():
    """A loop without TLS shows as unsupported (not an error); with TLS it must pass."""
    result = tls_echo.measure_tls_echo("ferroloop", 1024, _settings(), warmup=0.1, duration=0.2)
    assert result.status in (registry.OK, registry.UNSUPPORTED), result.detail


def test_tls_echo_without_openssl_is_unsupported(monkeypatch):
    monkeypatch.setattr(tls_echo, "_certificate", None)
    monkeypatch.setattr(tls_echo.shutil, "which", lambda name: None)
    result = tls_echo.measure_tls_echo("asyncio", 1024, _settings())
    assert result.status == registry.UNSUPPORTED
    assert "openssl" in result.detail


def test_udp_harness_rejects_a_corrupting_server():
    lines: list[str] = []
    assert udp_echo.selftest(_settings(), log=lines.append), "\n".join(lines)
    assert len(lines) == 3


@pytest.mark.skipif(
    shutil.which("wrk") is None or importlib.util.find_spec("httptools") is None,
    reason="needs wrk and httptools",
)
def test_http_harness_rejects_wrong_answers():
    lines: list[str] = []
    assert http_keepalive.selftest(_settings(), log=lines.append), "\n".join(lines)
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


def test_spawn_benchmark_runs_in_process():
    loop = contestants.new_loop("asyncio")
    try:
        result = micro.run_bench(spawn.bench_spawn_pipe, loop, duration=0.05)
    finally:
        contestants.close(loop)
    assert result.ok, result.detail
    assert result.values["rate"] > 0


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo to build the floor")
def test_floor_server_passes_the_echo_harness():
    built = floor.build()
    assert built.available, built.detail
    settings = _settings()
    argv = floor.command("echo", settings.server_cpu)
    result = echo.measure_echo("echo", argv, 10 * 1024, settings, warmup=0.1, duration=0.3)
    assert result.ok, result.detail
    assert result.values["server_us"] > 0


def test_registry_selection():
    names = [w.name for w in registry.all_workloads()]
    assert len(names) == len(set(names))
    quick = {w.name for w in registry.select_workloads(None, quick=True)}
    assert {"call_soon", "sock_echo_1k", "echo_protocol_1k", "http_keepalive"} <= quick
    assert "sock_echo_100k" not in quick
    only = registry.select_workloads(["sock_echo", "tasks"], quick=False)
    assert {w.name for w in only} == {"tasks", "sock_echo_1k", "sock_echo_10k", "sock_echo_100k"}
    with pytest.raises(KeyError):
        registry.select_workloads(["no_such_workload"], quick=False)
    floored = {w.name for w in registry.all_workloads() if w.runs(registry.FLOOR)}
    assert {"echo_protocol_1k", "echo_protocol_100k", "http_keepalive"} <= floored
    assert "call_soon" not in floored and "echo_streams_1k" not in floored
    assert "tls_echo_1k" in quick and "tls_echo_1k" not in floored


def test_floor_runs_only_where_a_workload_has_it():
    """The floor column is measured on workloads listing it and shown as '–' elsewhere."""
    calls: list[tuple[str, str]] = []

    def measure(name):
        def run(contestant, settings):
            calls.append((name, contestant))
            return registry.Measurement(values={"rate": 2.0 if contestant == "floor" else 1.0})

        return run

    metric = (registry.Metric("rate", "rate", "ops/s"),)
    workloads = [
        registry.Workload("plain", "fake", "plain", "", metric, measure("plain")),
        registry.Workload(
            "floored", "fake", "floored", "", metric, measure("floored"), extras=("floor",)
        ),
    ]
    plan = runner.Plan(
        workloads=workloads,
        contestants=[contestants.Availability(n, True, "1") for n in ("asyncio", "floor")],
        baseline="asyncio",
        rounds=2,
        settings=registry.Settings(),
    )
    results = runner.run(plan, log=lambda line: None)
    assert ("plain", "floor") not in calls
    assert calls.count(("floored", "floor")) == 2
    assert results.ratio("floored", "floor", metric[0]) == 2.0
    table, _, _ = report.table(results)
    assert "| plain | rate ↑ | 1 | – |" in table
    assert "**floor**: not an event loop" in report.markdown(results)


def test_ferroloop_variants_are_probed_in_their_own_process(monkeypatch):
    # ferroloop-base imports the ferroloop package from the directory the variable names: here
    # the one this test runs (a copy of it would do); without the variable it is unavailable.
    import ferroloop

    monkeypatch.delenv(contestants.BASELINE_ENV, raising=False)
    missing = contestants.probe("ferroloop-base")
    assert not missing.available
    assert contestants.BASELINE_ENV in missing.detail

    site = str(Path(ferroloop.__file__).parent.parent)
    monkeypatch.setenv(contestants.BASELINE_ENV, site)
    assert contestants.probe("ferroloop-base").available
    assert contestants.probe("ferroloop-metrics").available
    assert "ferroloop-base" not in contestants.KNOWN  # only when asked for by name
