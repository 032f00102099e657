"""Running a compile in a child process, so that a compiler crash becomes an exception.

libtpu's compiler can die outright on a program it should refuse (a SIGSEGV inside the
compiler; docs/planning.md names the shapes known to trigger it). In-process, that ends
``mlm-jax plan`` with libtpu's stack dump and no word on what to change. :func:`call` runs
a function in a spawned child with the child's stderr sent to a log file, and hands back
its result, or re-raises its :class:`UserError`, or raises :class:`Crashed` when a signal
killed it, keeping the log for a bug report.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
from pathlib import Path

from mlm_jax.errors import UserError


class Crashed(Exception):
    """The child died by a signal; ``log`` holds what it wrote to stderr."""

    def __init__(self, signal_name: str, log: str):
        super().__init__(f"the child process died by {signal_name}; its stderr: {log}")
        self.signal_name, self.log = signal_name, log


def _child(connection, log: str, function, args) -> None:
    """Runs in the child: the result, or the user error, sent back through ``connection``."""
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(descriptor, 2)  # a native library writes to the descriptor, not to sys.stderr
    try:
        connection.send(("result", function(*args)))
    except UserError as error:
        connection.send(("error", str(error)))


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def call(function, *args):
    """``function(*args)`` computed in a spawned child process (``function`` and ``args``
    must pickle; a module-level function does)."""
    descriptor, log = tempfile.mkstemp(prefix="mlm-jax-child-", suffix=".log")
    os.close(descriptor)
    # spawn, not fork: the child must load JAX and libtpu afresh, and this process may
    # already hold threads.
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(sender, log, function, args))
    child.start()
    sender.close()
    try:
        kind, value = receiver.recv()
    except EOFError:  # the child ended without a word: crashed, or failed unexpectedly
        kind, value = None, None
    child.join()
    if child.exitcode is not None and child.exitcode < 0:
        raise Crashed(_signal_name(child.exitcode), log)
    sys.stderr.write(Path(log).read_text(errors="replace"))  # its warnings, as in-process
    os.unlink(log)
    if kind == "error":
        raise UserError(value)
    if kind != "result":
        raise RuntimeError(f"{function.__qualname__} failed in its child process (above)")
    return value
