"""The shared step loop, in process, with a fake batch source, step and checkpointer.

What is checked here is the loop's own bookkeeping: steps, logging windows, the
input-wait share and its one warning, checkpoint scheduling and the stop request.
"""

from __future__ import annotations

import time

import conftest
import numpy as np

from mlm_jax.model import sharding
from mlm_jax.training import loop

ROWS, LENGTH = 8, 4


class FakeCheckpointer:
    def __init__(self, every: int):
        self.every, self.saved = every, []

    def should_save(self, step: int) -> bool:
        return step % self.every == 0

    def save(self, step, state, data_state, metrics=None, force=False) -> None:
        self.saved.append((step, state, data_state))

    def wait(self) -> None:
        pass

    def latest_step(self):
        return self.saved[-1][0] if self.saved else None

    directory = "fake"


class FakeWriter:
    def __init__(self):
        self.records = []

    def write(self, step, scalars) -> None:
        self.records.append((step, dict(scalars)))


class NeverStop:
    signal_name = None

    def requested(self, step_number: int) -> bool:
        return False


def fake_step(state, batch, seconds: float = 0.0):
    """Counts steps; ``seconds`` stands for the device time of a real step."""
    time.sleep(seconds)
    rows = float(np.asarray(batch["input_ids"]).shape[0])
    metrics = {"train/loss": 1.0 / (state + 1), "train/mlm_accuracy": 0.5, "train/nonfinite": 0.0}
    return state + 1, {**metrics, "rows": rows}


def run_loop(delay_s: float, step_s: float = 0.0, steps: int = 12, log_every: int = 4):
    config = conftest.tiny_config(
        f"train.steps={steps}", f"train.log_every={log_every}", "train.global_batch_size=8"
    )
    mesh = sharding.make_mesh(config)
    fetched = []

    def next_batch(step_number: int) -> dict:
        fetched.append(step_number)
        time.sleep(delay_s)  # a slow input pipeline
        return {"input_ids": np.full((ROWS, LENGTH), step_number, np.int32)}

    job = loop.Job(
        next_batch=next_batch,
        data_state=lambda: {"position": len(fetched)},
        evaluate=None,
        tokens_per_step=ROWS * LENGTH,
        input_knobs="raise data.worker_count",
    )
    writer, checkpointer = FakeWriter(), FakeCheckpointer(every=6)

    def train_step(state, batch):
        return fake_step(state, batch, step_s)

    session = loop.Session(config, mesh, 0, 0, job, train_step, checkpointer)
    summary = loop.run(session, writer, NeverStop())
    return summary, writer, checkpointer, fetched


def test_loop_steps_logs_and_checkpoints_on_schedule(capsys):
    summary, writer, checkpointer, fetched = run_loop(delay_s=0.0, step_s=0.01)
    assert summary["step"] == 12 and fetched == list(range(12))
    assert [step for step, _ in writer.records] == [4, 8, 12]
    assert [step for step, _, _ in checkpointer.saved] == [6, 12]
    assert checkpointer.saved[-1][2] == {"position": 12}  # the data position at that step
    for _, scalars in writer.records:
        assert 0.0 <= scalars["perf/input_wait_share"] < 1.0
        assert scalars["perf/tokens_per_s"] > 0


def test_an_input_bound_loop_says_so_once(capsys):
    _, writer, _, _ = run_loop(delay_s=0.05, step_s=0.01)
    shares = [scalars["perf/input_wait_share"] for _, scalars in writer.records]
    # 50 ms waiting per 10 ms step: at least 5/6 of each window minus overheads.
    assert min(shares) > 0.6, shares
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "input-bound" in line]
    assert len(warnings) == 1, err
    assert "raise data.worker_count" in warnings[0]
    assert "input wait" in err  # the progress line shows the share


def test_a_compute_bound_loop_does_not_warn(capsys):
    _, writer, _, _ = run_loop(delay_s=0.0, step_s=0.1)
    shares = [scalars["perf/input_wait_share"] for _, scalars in writer.records]
    assert max(shares) < loop.INPUT_BOUND_SHARE, shares
    assert "input-bound" not in capsys.readouterr().err
