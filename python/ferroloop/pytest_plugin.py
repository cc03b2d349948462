"""pytest plugin: run a project's own asyncio tests on ferroloop, unchanged.

Installed with ferroloop as the ``pytest11`` entry point ``ferroloop``; it does nothing until
enabled with ``pytest --ferroloop`` (or, where plugins are not auto-loaded,
``pytest -p ferroloop.pytest_plugin --ferroloop``).  Enabled, every event loop asyncio creates
during the session is a ferroloop loop, which covers:

* pytest-asyncio (its runners make loops through the event-loop policy, and the loop factories a
  project returns from its ``pytest_asyncio_loop_factories`` hook are replaced by ferroloop's,
  keeping their names so ``@pytest.mark.asyncio(loop_factories=[...])`` still selects them);
* anyio's pytest plugin with the asyncio backend (unless the backend options name their own
  ``loop_factory`` or ``use_uvloop``);
* ``asyncio.run``, ``asyncio.Runner`` and ``asyncio.new_event_loop`` called by tests.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any

import pytest

_UNDO = pytest.StashKey[Callable[[], None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferroloop")
    group.addoption(
        "--ferroloop",
        action="store_true",
        default=False,
        help="run every asyncio event loop of the tests on ferroloop (pytest-asyncio, "
        "anyio's asyncio backend, asyncio.run)",
    )


def _enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("ferroloop", default=False))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if _enabled(config):
        from ._policy import use_ferroloop_for_every_new_loop

        config.stash[_UNDO] = use_ferroloop_for_every_new_loop()
        if config.pluginmanager.has_plugin("asyncio"):  # pytest-asyncio
            config.pluginmanager.register(_ProjectLoopFactories(), "ferroloop-loop-factories")
            config.pluginmanager.register(_DefaultLoopFactory(), "ferroloop-default-loop-factory")


def pytest_unconfigure(config: pytest.Config) -> None:
    undo = config.stash.get(_UNDO, None)
    if undo is not None:
        del config.stash[_UNDO]
        undo()


def pytest_report_header(config: pytest.Config) -> str | None:
    if not _enabled(config):
        return None
    from . import BUILD_PROFILE, __version__

    build = f"{__version__} ({BUILD_PROFILE} build)"
    return f"ferroloop: {build}: every asyncio event loop is ferroloop"


class _ProjectLoopFactories:
    """pytest-asyncio's ``pytest_asyncio_loop_factories`` hook (1.x), for an enabled plugin: the
    factories a project returns become ferroloop's, under the same names."""

    @pytest.hookimpl(optionalhook=True, hookwrapper=True)
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Generator[None, Any, None]:
        outcome = yield
        factories = outcome.get_result()
        if isinstance(factories, Mapping) and factories:
            from ._loop import new_event_loop

            outcome.force_result(dict.fromkeys(factories, new_event_loop))


class _DefaultLoopFactory:
    """With the wrapper above registered, pytest-asyncio requires a mapping from the hook: when
    the project has no implementation, ferroloop's factory is the only one.  (That is also why
    neither is registered unless the plugin is enabled.)"""

    @pytest.hookimpl(optionalhook=True, trylast=True)
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], Any]]:
        from ._loop import new_event_loop

        return {"ferroloop": new_event_loop}
