"""The asyncio leftovers of a failed Orbax operation are dropped; everything else passes."""

import asyncio
import logging
import sys

from mlm_jax.state import async_leftovers


def _record_from(filename: str) -> logging.LogRecord:
    try:
        exec(compile("raise ValueError('OUT_OF_RANGE')", filename, "exec"))
    except ValueError:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1, "Task exception was never retrieved\nfuture: x",
        None, exc_info,
    )  # fmt: skip


def _frameless(message: str, error: Exception) -> logging.LogRecord:
    """What asyncio logs for an error set on a future from C++: no frames to look at."""
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None,
                             (type(error), error, None))  # fmt: skip


def test_unretrieved_orbax_task_errors_are_dropped_others_kept():
    keep = async_leftovers._DropUnretrievedOrbaxErrors().filter
    assert not keep(_record_from("/site-packages/orbax/checkpoint/serialization.py"))
    assert keep(_record_from("/site-packages/somethingelse/module.py"))
    plain = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "other", None, None)
    assert keep(plain)


def test_tensorstore_errors_without_a_traceback_are_dropped():
    """TensorStore can set an error on a future from C++: no frames, only the text says so."""
    keep = async_leftovers._DropUnretrievedOrbaxErrors().filter
    error = ValueError("OUT_OF_RANGE: Error reading byte range [tensorstore_spec='{}']")
    message = "Task exception was never retrieved\nfuture: <Task finished coro=<read()>>"
    assert not keep(_frameless(message, error))
    assert keep(_frameless(message, ValueError("bad value")))


def _unretrieved_future(error: Exception) -> str:
    return f"Future exception was never retrieved\nfuture: <Future finished exception={error!r}>"


def test_unretrieved_errors_of_bare_futures_are_dropped_too():
    """A future TensorStore completed with an error (not a task) is logged as "Future
    exception was never retrieved", with the spec in its repr (seen in CI on a truncated
    checkpoint); it is dropped like a task's, and an unrelated one is kept."""
    keep = async_leftovers._DropUnretrievedOrbaxErrors().filter
    error = ValueError("OUT_OF_RANGE: Error reading byte range [tensorstore_spec='{}']")
    assert not keep(_frameless(_unretrieved_future(error), error))
    other = ValueError("bad value")
    assert keep(_frameless(_unretrieved_future(other), other))


def test_callbacks_to_a_closed_loop_are_dropped():
    async_leftovers.install()
    loop = asyncio.new_event_loop()
    loop.close()
    assert loop.call_soon_threadsafe(lambda: None) is None
    open_loop = asyncio.new_event_loop()
    try:
        assert open_loop.call_soon_threadsafe(lambda: None) is not None
    finally:
        open_loop.close()
