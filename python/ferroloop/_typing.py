"""What the mixins of :class:`ferroloop.Loop` see of the loop they are mixed into, for type
checkers only (at runtime the base is ``object``).

``Loop`` is ``class Loop(<the mixins>, CoreLoop, asyncio.AbstractEventLoop)``: each mixin's methods
use the others' and the Rust core's through ``self``.  Deriving the mixins from :class:`LoopAPI`
under ``TYPE_CHECKING`` gives those uses the real types of the core and of asyncio's API; the
mixins' own private helpers, shared across mixins, are reached through ``__getattr__`` (typed
``Any``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # (see __init__)
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    from ._ferroloop import CoreLoop

    class LoopAPI(CoreLoop, asyncio.AbstractEventLoop):
        def __getattr__(self, name: str) -> Any: ...

else:
    LoopAPI = object
