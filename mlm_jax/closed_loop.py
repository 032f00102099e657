"""Callbacks sent to a closed asyncio loop are dropped instead of raising.

When Orbax gives up on a checkpoint read or write (a damaged file, a full disk), it
closes its asyncio loop while TensorStore's C++ threads still hold completion callbacks
for it. Each late callback calls ``loop.call_soon_threadsafe``, which raises
``RuntimeError: Event loop is closed``, and TensorStore prints that traceback, dozens of
times, burying the one-line error we report. The loop is gone and nobody waits on those
callbacks, so dropping them loses nothing.
"""

from __future__ import annotations

import asyncio.base_events

_original = asyncio.base_events.BaseEventLoop.call_soon_threadsafe


def _call_soon_threadsafe(self, callback, *args, context=None):
    if self.is_closed():
        return None
    return _original(self, callback, *args, context=context)


def install() -> None:
    asyncio.base_events.BaseEventLoop.call_soon_threadsafe = _call_soon_threadsafe
