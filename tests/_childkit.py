"""A test body in a fresh interpreter, on ferroloop or on stdlib asyncio: for the tests whose
failure would take the test process down (crashes, aborts, exit-time behaviour, fd tables)."""

import sys
import textwrap


def child_command(loop_kind, body, *args):
    """The argv that runs ``body`` (dedented) in a fresh interpreter under faulthandler, with
    ``new_loop`` bound to the loop kind's factory and ``run_main`` to its ``asyncio.run``;
    ``args`` become the child's ``sys.argv[1:]``."""
    prologue = textwrap.dedent(
        f"""
        import asyncio, sys
        if {loop_kind!r} == "ferroloop":
            import ferroloop
            new_loop = ferroloop.new_event_loop
            run_main = ferroloop.run
        else:
            new_loop = asyncio.new_event_loop
            run_main = asyncio.run
        """
    )
    return [sys.executable, "-X", "faulthandler", "-c", prologue + textwrap.dedent(body), *args]
