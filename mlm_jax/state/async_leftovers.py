"""Quiet the asyncio leftovers of an Orbax read or write that failed.

When Orbax gives up on a checkpoint (a damaged file, a full disk), the real error reaches
us and is reported in one line. Two kinds of leftovers would bury it (this module is
installed once, when :mod:`mlm_jax.state.checkpoint` is imported):

- Orbax closes its asyncio loop while TensorStore's C++ threads still hold completion
  callbacks for it; each late ``loop.call_soon_threadsafe`` raises "Event loop is closed"
  and TensorStore prints the traceback, dozens of times. The loop is gone and nobody waits
  on those callbacks, so they are dropped.
- The sibling reads that failed the same way are never awaited, and asyncio logs each one
  with its traceback when it is collected: "Task exception was never retrieved" for a
  task, "Future exception was never retrieved" for a bare future TensorStore completed.
  Those records are dropped when the error came from Orbax or TensorStore.
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


# What asyncio's default exception handler says of an error nobody awaited, for a task and
# for a plain future.
_UNRETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")


class _DropUnretrievedOrbaxErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_UNRETRIEVED):
            return True
        return not _comes_from_checkpoint_io(record)


def _comes_from_checkpoint_io(record: logging.LogRecord) -> bool:
    """Whether an unretrieved task error belongs to an Orbax or TensorStore operation.

    The traceback usually names an Orbax file, but an error that TensorStore set on a future
    from C++ can arrive with no traceback at all; then the task's description in the message
    (its coroutine) or the error text (a TensorStore spec) tells where it came from.
    """
    exc_info = record.exc_info
    files = []
    if exc_info and exc_info[2] is not None:
        files = [frame.filename for frame in traceback.extract_tb(exc_info[2])]
    error = str(exc_info[1]) if exc_info and exc_info[1] is not None else ""
    evidence = " ".join([*files, str(record.msg), error]).lower()
    return "orbax" in evidence or "tensorstore" in evidence


def install() -> None:
    asyncio.base_events.BaseEventLoop.call_soon_threadsafe = _call_soon_threadsafe
    logging.getLogger("asyncio").addFilter(_DropUnretrievedOrbaxErrors())
