"""The step loop that pretraining and fine-tuning share.

Both run the same cycle: fetch a host batch, run the jitted step, check the loss is
finite, log throughput, evaluate on schedule, checkpoint on schedule or when a SIGTERM or
SIGINT arrives, and stop cleanly at ``train.steps``. What differs between the two (where
batches come from, what the data state is, how evaluation reads) is passed in a
:class:`Job`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from mlm_jax import distributed
from mlm_jax.errors import UserError
from mlm_jax.model import sharding
from mlm_jax.training import perf
from mlm_jax.training.metrics import ProgressLine


class StopRequest:
    """Set by SIGTERM/SIGINT; the loop finishes its step, saves and exits 0."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, step_number: int) -> bool:
        if jax.process_count() == 1:
            return self.signal_name is not None
        # All processes must stop at the same step. Our handler replaced the SIGTERM handler
        # of JAX's preemption notifier, so the processes share their flags every step (the
        # loop syncs on the metrics anyway); JAX's sync point still relays cluster notices.
        signalled = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
        if signalled.any() or multihost_utils.reached_preemption_sync_point(step_number):
            self.signal_name = self.signal_name or "SIGTERM"
            return True
        return False


def check_finite(config, metrics: dict, step_number: int, checkpointer) -> bool:
    """True when the step was good; raises or counts per ``train.on_nonfinite``."""
    if metrics["train/nonfinite"] == 0.0:
        return True
    if config.train.on_nonfinite == "skip":
        distributed.log(f"step {step_number}: non-finite loss or gradient; update skipped")
        return False
    last = checkpointer.latest_step()
    where = f"last good checkpoint: step {last}" if last is not None else "no checkpoint yet"
    raise UserError(
        f"non-finite loss or gradient at step {step_number} (update not applied; {where}); "
        "lower optim.learning_rate or set train.on_nonfinite=skip"
    )


@dataclass
class Job:
    """What a run feeds the shared loop."""

    next_batch: Callable[[int], dict]  # step index -> this process's host batch
    data_state: Callable[[], dict]  # saved beside each checkpoint, for an exact resume
    evaluate: Callable[[Any, str], dict] | None  # (params, label) -> metrics; logs itself
    tokens_per_step: int  # global tokens per step, for throughput
    flops_per_token: float | None = None  # None: no MFU in the logs
    accuracy_key: str = "train/mlm_accuracy"  # the accuracy the progress line shows
    input_knobs: str = ""  # what to raise when the loop waits on its input


@dataclass
class Session:
    """One stretch of a run's loop: what it trains from which step, and what it saves to."""

    config: Any
    mesh: Any
    state: Any  # the train state at ``first_step`` (donated to ``train_step``)
    first_step: int
    job: Job
    train_step: Callable  # (state, global batch) -> (state, metrics)
    checkpointer: Any  # mlm_jax.state.checkpoint.Checkpointer


# Waiting on the next batch for more than this share of a logging window is worth a
# warning: the accelerator idles that long, whatever the model and mesh.
INPUT_BOUND_SHARE = 0.10


class Window:
    """Wall time and input-wait time of the steps since the last log line."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.started, self.steps, self.waiting = time.perf_counter(), 0, 0.0

    def fetch(self, next_batch: Callable[[int], dict], step_number: int, mesh) -> dict:
        """The next global batch, timing how long the loop waited for it."""
        started = time.perf_counter()
        # A process whose data turns out damaged stops every process, before the step.
        host = distributed.together(lambda: next_batch(step_number), f"step {step_number + 1}")
        batch = sharding.host_batch_to_global(host, mesh)
        self.waiting += time.perf_counter() - started
        return batch

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def run(session: Session, writer, stop) -> dict:
    """Train from ``session.first_step`` to ``train.steps``; returns the final summary."""
    config, mesh, state, job = session.config, session.mesh, session.state, session.job
    first_step, train_step, ckpt = session.first_step, session.train_step, session.checkpointer
    total = config.train.steps
    progress = ProgressLine(total, accuracy_key=job.accuracy_key)
    if job.flops_per_token is not None and first_step < total:
        distributed.log(f"MFU is measured against {perf.device_peak(config.model.dtype)}")
    skipped, last_eval, window, warned = 0, {}, Window(), False
    step_number = first_step
    while step_number < total:
        batch = window.fetch(job.next_batch, step_number, mesh)
        state, metrics = train_step(state, batch)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        step_number += 1
        window.steps += 1
        if not check_finite(config, metrics, step_number, ckpt):
            skipped += 1
        metrics["train/skipped_steps"] = skipped
        if step_number % config.train.log_every == 0 or step_number == total:
            _add_throughput(config, job, metrics, window)
            warned = warned or _warn_if_input_bound(metrics, window, job)
            progress.update(step_number, metrics)
            writer.write(step_number, metrics)
        eval_due = config.train.eval_every and step_number % config.train.eval_every == 0
        if job.evaluate is not None and (eval_due or step_number == total):
            last_eval = job.evaluate(state.params, f"step {step_number}")
            writer.write(step_number, last_eval)
        stopping = stop.requested(step_number)
        if ckpt.should_save(step_number) or step_number == total or stopping:
            # Only a scheduled evaluation with a loss ranks checkpoints for keep-best.
            ranked = last_eval if eval_due and "eval/loss" in last_eval else None
            ckpt.save(step_number, state, job.data_state(), metrics=ranked, force=True)
        if stopping:
            ckpt.wait()
            progress.finish()
            distributed.log(
                f"{stop.signal_name}: saved step {step_number} in {ckpt.directory}; "
                "run the same command to resume"
            )
            return {"step": step_number, "stopped_by": stop.signal_name}
        # The first step of a session includes compilation: keep it out of throughput.
        if step_number % config.train.log_every == 0 or step_number == first_step + 1:
            window.restart()
    ckpt.wait()
    progress.finish()
    summary = {"step": step_number, "skipped_steps": skipped, **last_eval}
    if first_step >= total:
        distributed.log(f"already trained to step {total}; raise train.steps to continue")
    else:
        distributed.log("done: " + ", ".join(_format(k, v) for k, v in summary.items()))
    return summary


def _add_throughput(config, job: Job, metrics: dict, window: Window) -> None:
    seconds = window.seconds()
    metrics["perf/tokens_per_s"] = job.tokens_per_step * window.steps / seconds
    # Time spent fetching and placing the next batch, not overlapped with the step: the
    # loop waits for each step's metrics, so this is time the devices sat idle.
    metrics["perf/input_wait_share"] = window.waiting / seconds
    if job.flops_per_token is not None:
        metrics["perf/mfu"] = perf.mfu(
            job.flops_per_token, metrics["perf/tokens_per_s"], config.model.dtype
        )


def _warn_if_input_bound(metrics: dict, window: Window, job: Job) -> bool:
    """One warning line the first time a window is input-bound; True once warned."""
    share = metrics["perf/input_wait_share"]
    if share <= INPUT_BOUND_SHARE:
        return False
    distributed.log(
        f"warning: input-bound: the loop waited for batches {100 * share:.0f}% of the last "
        f"{window.steps} steps; {job.input_knobs or 'make batches cheaper to produce'}"
    )
    return True


def _format(key: str, value) -> str:
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
