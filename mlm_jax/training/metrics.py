"""Where metrics go: ``metrics.jsonl``, TensorBoard event files, and a live progress line.

Only the primary process writes files; every process may print its progress.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from mlm_jax import artifacts


class MetricsWriter:
    """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=10)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step``: a resumed run rewrites them identically."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in read_metrics(self.path.parent) if record["step"] <= step]
        artifacts.write_jsonl(self.path, kept)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in sorted(scalars.items())}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step" and value is not None:
                self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def _plain(value) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """Every record of a run's ``metrics.jsonl`` (none before its first step)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = artifacts.read_jsonl(path, missing="train first", expected="the records we write")
    return [record for _, record in lines]


class ProgressLine:
    """A single refreshing terminal line: step, loss, accuracy, tokens/s, MFU, ETA."""

    def __init__(self, total_steps: int, stream=None, accuracy_key: str = "train/mlm_accuracy"):
        self.total_steps = total_steps
        self.accuracy_key = accuracy_key
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.started = time.monotonic()
        self.first_step: int | None = None

    def update(self, step: int, scalars: dict[str, float]) -> None:
        if self.first_step is None:
            self.first_step, self.started = step, time.monotonic()
        done = step - self.first_step
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        accuracy = scalars.get(self.accuracy_key, float("nan"))
        mfu = f"mfu {100 * scalars['perf/mfu']:.1f}%  " if "perf/mfu" in scalars else ""
        # Share of wall time spent waiting for batches: high means input-bound.
        wait = scalars.get("perf/input_wait_share")
        mfu += f"input wait {100 * wait:.0f}%  " if wait is not None else ""
        text = (
            f"step {step}/{self.total_steps}  loss {scalars.get('train/loss', float('nan')):.4f}  "
            f"acc {accuracy:.3f}  {scalars.get('perf/tokens_per_s', 0.0):,.0f} tok/s  "
            f"{mfu}eta {_duration(eta)}"
        )
        end = "\r" if self.interactive else "\n"
        self.stream.write(text.ljust(100) + end if self.interactive else text + end)
        self.stream.flush()

    def finish(self) -> None:
        if self.interactive:
            self.stream.write("\n")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
