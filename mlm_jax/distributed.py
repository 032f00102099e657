"""Starting JAX's multi-process runtime, and who is the primary process.

Three ways in, in this order: explicit ``--coordinator/--num-processes/--process-id``
(or the ``MLM_JAX_*`` environment variables that ``scripts/launch_local.sh`` sets),
``--distributed`` for JAX's own cluster detection (TPU VMs, SLURM, Open MPI), or
nothing at all for a single process. On CPU the collectives go over gloo.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import TypeVar

from mlm_jax.errors import UserError

_ENV = {
    "coordinator": "MLM_JAX_COORDINATOR",
    "num_processes": "MLM_JAX_NUM_PROCESSES",
    "process_id": "MLM_JAX_PROCESS_ID",
    "heartbeat_timeout_s": "MLM_JAX_HEARTBEAT_TIMEOUT_S",
}
# A peer that died must not leave the others waiting forever at a barrier.
# MLM_JAX_HEARTBEAT_TIMEOUT_S overrides it (tests use a few seconds).
HEARTBEAT_TIMEOUT_S = 30
INIT_TIMEOUT_S = 120
# Room for one process's error line when the processes share why one of them stopped.
MESSAGE_BYTES = 2048

T = TypeVar("T")


def _from_env(value, key: str, cast=str):
    if value is not None:
        return value
    raw = os.environ.get(_ENV[key])
    if raw in (None, ""):
        return None
    try:
        return cast(raw)
    except ValueError:
        raise UserError(f"{_ENV[key]}={raw!r} is not valid; set it to a {cast.__name__}") from None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """Initialise ``jax.distributed`` if asked to; a no-op for single-process runs."""
    coordinator = _from_env(coordinator, "coordinator")
    num_processes = _from_env(num_processes, "num_processes", int)
    process_id = _from_env(process_id, "process_id", int)
    explicit = [coordinator, num_processes, process_id]
    if not auto and all(v is None for v in explicit):
        return
    if not auto and any(v is None for v in explicit):
        raise UserError(
            "multi-process runs need --coordinator, --num-processes and --process-id together "
            "(or --distributed for cluster auto-detection)"
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise UserError(f"--process-id {process_id} is outside 0..{num_processes - 1}")
    heartbeat = _from_env(None, "heartbeat_timeout_s", int) or HEARTBEAT_TIMEOUT_S
    import jax

    # Only the CPU client reads this option; asking for the backend here instead would
    # initialise it, which jax.distributed.initialize refuses.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=INIT_TIMEOUT_S,
        heartbeat_timeout_seconds=heartbeat,
    )
    log(f"joined {jax.process_count()} processes; {jax.local_device_count()} local devices")


def is_primary() -> bool:
    """Process 0 alone writes metrics, manifests, events and exports."""
    import jax

    return jax.process_index() == 0


def log(message: str) -> None:
    """A stderr line prefixed with the process index when there are several processes."""
    import jax

    prefix = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
    print(f"{prefix}{message}", file=sys.stderr, flush=True)


def gather_to_host(params):
    """Parameters as host numpy arrays; every process must call this (collective)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, np.ndarray):
            return x
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, params)


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (a no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def together(action: Callable[[], T], where: str) -> T:
    """``action()`` on every process; if it fails on any, every process stops.

    Some failures happen on one host only: its copy of a shard is damaged, its disk
    lost a file. That process must not simply exit: the others would wait for it in
    the next collective until the coordination service declares it dead, and each would
    print a traceback. So the processes share whether ``action`` raised a
    :class:`UserError`, and if one did, each raises one naming the process, its host and
    the error. Every process must call this at the same point (it is a collective).
    """
    import jax

    if jax.process_count() == 1:
        return action()
    try:
        result, failure = action(), None
    except UserError as error:
        result, failure = None, str(error)
    stopped = _failures_of_all_processes(failure)
    if not stopped:
        return result
    process, message = stopped[0]
    more = f" (and {len(stopped) - 1} more)" if len(stopped) > 1 else ""
    raise UserError(
        f"process {process} of {jax.process_count()}{more} stopped the run at {where}, {message}"
    )


def _failures_of_all_processes(failure: str | None) -> list[tuple[int, str]]:
    """(process index, "on HOST: error") of every process that failed, in process order.

    One int per process each call; the messages travel (fixed-size byte arrays, the shape
    a collective needs) only when some process failed.
    """
    import numpy as np
    from jax.experimental import multihost_utils

    failed = multihost_utils.process_allgather(np.int32(failure is not None))
    if not failed.any():
        return []
    text = np.zeros(MESSAGE_BYTES, np.uint8)
    if failure is not None:
        encoded = f"on {socket.gethostname()}: {failure}".encode()[:MESSAGE_BYTES]
        text[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    texts = multihost_utils.process_allgather(text)
    return [
        (int(p), bytes(texts[p]).rstrip(b"\0").decode(errors="replace"))
        for p in np.flatnonzero(failed)
    ]
