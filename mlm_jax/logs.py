"""Holding another library's logger at a level for the length of a block."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def held_at(name: str, level: int):
    """Logger ``name`` at ``level`` inside the block, at its own level again after it (an
    exception raised inside still restores it)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
