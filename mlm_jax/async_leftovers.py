"""Quiet the asyncio leftovers of an Orbax read or write that failed.

When Orbax gives up on a checkpoint (a damaged file, a full disk), the real error reaches
us and is reported in one line. Two kinds of leftovers would bury it:

- Orbax closes its asyncio loop while TensorStore's C++ threads still hold completion
  callbacks for it; each late ``loop.call_soon_threadsafe`` raises "Event loop is closed"
  and TensorStore prints the traceback, dozens of times. The loop is gone and nobody waits
  on those callbacks, so they are dropped.
- The sibling read tasks that failed the same way are never awaited, and asyncio logs each
  one with its traceback ("Task exception was never retrieved") when it is collected.
  Those records are dropped when the exception was raised inside Orbax.
"""

from __future__ import annotations

import asyncio.base_events
import logging
import traceback

_original = asyncio.base_events.BaseEventLoop.call_soon_threadsafe


def _call_soon_threadsafe(self, callback, *args, context=None):
    if self.is_closed():
        return None
    return _original(self, callback, *args, context=context)


class _DropUnretrievedOrbaxErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Task exception was never retrieved"):
            return True
        exc_info = record.exc_info
        if not exc_info or exc_info[2] is None:
            return True
        files = [frame.filename for frame in traceback.extract_tb(exc_info[2])]
        return not any("orbax" in name for name in files)


def install() -> None:
    asyncio.base_events.BaseEventLoop.call_soon_threadsafe = _call_soon_threadsafe
    logging.getLogger("asyncio").addFilter(_DropUnretrievedOrbaxErrors())
