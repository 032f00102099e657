"""Compiling a plan for a TPU slice in a child process, so that a compiler crash is one line.

libtpu's compiler can die outright on a program it should refuse (a SIGSEGV inside the
compiler; docs/planning.md names the shapes known to trigger it). In-process, that ends
``mlm-jax plan`` with libtpu's stack dump and no word on what to change. The child runs
:func:`mlm_jax.planning.plan.make_plan` with its stderr sent to a log file; the parent
receives the report, or the child's :class:`UserError`, or sees it killed by a signal and
says so in one line, keeping the log for a bug report.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
from pathlib import Path

from mlm_jax.errors import UserError

CRASH_KNOBS = "change train.global_batch_size or model.remat and plan again"


def _child(connection, config, target: str, hlo_out: str | None, log: str) -> None:
    """Runs in the child: the plan, or the user error, sent back through ``connection``."""
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(descriptor, 2)  # libtpu writes to the descriptor, not to sys.stderr
    from mlm_jax.planning import plan

    try:
        connection.send(("report", plan.make_plan(config, target, hlo_out)))
    except UserError as error:
        connection.send(("error", str(error)))


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def make_plan(config, target: str, hlo_out: str | None = None) -> dict:
    """:func:`mlm_jax.planning.plan.make_plan` for a TPU slice, compiled in a child process."""
    descriptor, log = tempfile.mkstemp(prefix="mlm-jax-plan-", suffix=".log")
    os.close(descriptor)
    # spawn, not fork: the child must load JAX and libtpu afresh, and this process may
    # already hold threads.
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(sender, config, target, hlo_out, log))
    child.start()
    sender.close()
    try:
        kind, value = receiver.recv()
    except EOFError:  # the child ended without a word: crashed, or failed unexpectedly
        kind, value = None, None
    child.join()
    text = Path(log).read_text(errors="replace")
    if child.exitcode is not None and child.exitcode < 0:
        raise UserError(
            f"libtpu's compiler crashed ({_signal_name(child.exitcode)}) compiling this run "
            f"for {target}; {CRASH_KNOBS} (docs/planning.md; the compiler's log: {log})"
        )
    os.unlink(log)
    sys.stderr.write(text)  # the compiler's warnings, as an in-process plan would show them
    if kind == "error":
        raise UserError(value)
    if kind != "report":
        raise RuntimeError(f"planning for {target} failed in its child process (above)")
    return value
