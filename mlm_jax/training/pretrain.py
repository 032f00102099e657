"""The pretraining loop: resume or start, step, log, evaluate, checkpoint, stop cleanly.

Start order: the newest complete checkpoint in the workdir, else ``model.init_from``
(a run directory or ``hf:PATH``), else fresh weights. Only process 0 writes files
other than checkpoints; every process steps, evaluates and saves together.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from mlm_jax import distributed
from mlm_jax.data import baselines, integrity, pipeline
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.errors import UserError
from mlm_jax.model import encoder as model
from mlm_jax.model import sharding
from mlm_jax.state import restore
from mlm_jax.training import loop, runs, step


def _gather_data_state(local: dict) -> dict:
    """Merge every process's stream positions into one global data state."""
    if jax.process_count() == 1:
        return local
    encoded = np.frombuffer(json.dumps(local).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([encoded.size]))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: encoded.size] = encoded
    everything = multihost_utils.process_allgather(padded)
    merged = dict(local, streams={})
    for row, length in zip(everything, lengths.reshape(-1), strict=True):
        merged["streams"].update(json.loads(bytes(row[: int(length)]).decode())["streams"])
    return merged


def _sum_over_processes(sums: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return sums
    gathered = multihost_utils.process_allgather(sums)
    return np.asarray(gathered).reshape(-1, sums.size).sum(0)


def _log_start(config, mesh, local_batch: int) -> None:
    data, fsdp, tensor = (mesh.shape[a] for a in sharding.MESH_AXES)
    distributed.log(
        f"{model.param_count(config) / 1e6:.2f}M parameters; mesh data={data} fsdp={fsdp} "
        f"tensor={tensor} over {jax.device_count()} devices in {jax.process_count()} process(es); "
        f"global batch {config.train.global_batch_size} = {local_batch} rows on this process × "
        f"{jax.process_count()}; {config.optim.grad_accum_steps} micro-batch(es) per step; "
        f"seq_len {config.data.seq_len}"
    )


class Evaluator:
    """MLM loss, accuracy and perplexity over fixed validation batches, with the
    context-free baselines on the same masked tokens (:mod:`mlm_jax.data.baselines`)."""

    def __init__(self, config, mesh, graphdef, param_shardings, num_batches: int):
        self.mesh = mesh
        self.batches = pipeline.make_eval_batches(
            config, num_batches, jax.process_index(), jax.process_count()
        )
        self.eval_step = step.make_eval_step(config, mesh, graphdef, param_shardings)
        tokenizer = tokenizer_lib.load(config.data.tokenizer)
        self.baseline = baselines.eval_baseline(
            config, tokenizer, self.batches, combine=_sum_over_processes
        )

    def __call__(self, params) -> dict[str, float]:
        totals = np.zeros(3)
        for host_batch in self.batches:
            sums = self.eval_step(params, sharding.host_batch_to_global(host_batch, self.mesh))
            totals += [float(sums["loss_sum"]), float(sums["correct"]), float(sums["weight_sum"])]
        loss = totals[0] / max(totals[2], 1.0)
        return {
            "eval/loss": loss,
            "eval/mlm_accuracy": totals[1] / max(totals[2], 1.0),
            "eval/perplexity": math.exp(min(loss, 50.0)),
            "eval/tokens": totals[2],
            **self.baseline,
        }


def run(config, workdir: str) -> dict:
    """Train ``config`` in ``workdir``; resumes by itself. Returns the final summary."""
    # A damaged copy stops every process here, before anything is written.
    distributed.together(lambda: integrity.check_inputs(config), "the start")
    workdir_path = Path(workdir).resolve()
    tokenizer = pipeline.load_checked_tokenizer(config)
    mesh = sharding.make_mesh(config)
    with runs.opened(config, workdir_path, tokenizer, mesh) as checkpointer:
        return _train(config, workdir_path, mesh, checkpointer)


def _train(config, workdir: Path, mesh, checkpointer) -> dict:
    restored, (graphdef, state, shardings) = runs.start(config, mesh, checkpointer)
    sharding.assert_params_sharded(state.params, mesh)
    data = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count())
    if restored is not None:
        data.set_state(restored.data_state)
    _log_start(config, mesh, data.local_batch_size)
    train_step = step.make_train_step(config, mesh, graphdef, shardings)
    evaluator = Evaluator(
        eval_config(config), mesh, graphdef, shardings.params, config.train.eval_batches
    )
    job = loop.Job(
        next_batch=lambda _: next(data),
        data_state=lambda: _gather_data_state(data.get_state()),
        evaluate=functools.partial(_evaluate, evaluator),
        tokens_per_step=config.train.global_batch_size * config.data.seq_len,
        flops_per_token=model.flops_per_token(config),
        input_knobs=(
            f"raise data.worker_count (now {config.data.worker_count}) or "
            f"data.prefetch_batches (now {config.data.prefetch_batches})"
        ),
    )
    first_step = restored.step if restored is not None else 0
    try:
        session = loop.Session(config, mesh, state, first_step, job, train_step, checkpointer)
        return runs.execute(session, workdir)
    finally:
        data.close()


def _evaluate(evaluator, params, label: str) -> dict:
    metrics = evaluator(params)
    distributed.log(
        f"eval {label}: loss {metrics['eval/loss']:.4f} "
        f"acc {metrics['eval/mlm_accuracy']:.3f} ppl {metrics['eval/perplexity']:.1f} | "
        f"context-free baseline: loss {metrics['baseline/unigram_loss']:.4f} "
        f"acc {metrics['baseline/majority_accuracy']:.3f}"
    )
    return metrics


def evaluate_run(
    workdir: str,
    step: int | None = None,
    batches: int | None = None,
    mask_rate: float | None = None,
) -> dict:
    """``mlm-jax eval``: validation loss, accuracy and perplexity of a run's checkpoint.

    ``mask_rate`` scores at another rate than the run's ``data.eval_mask_rate`` (itself
    ``data.mask_rate`` when unset).
    """
    config, graphdef, params = restore.restore_params(workdir, step)
    if mask_rate is not None and not 0.0 < mask_rate < 1.0:
        raise UserError(f"--mask-rate {mask_rate} must be in (0, 1); e.g. 0.15")
    config = eval_config(config, mask_rate)
    distributed.together(lambda: integrity.check_inputs(config), "the start")
    tokenizer_lib.load(config.data.tokenizer)
    mesh = sharding.make_mesh(config)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    evaluator = Evaluator(
        config, mesh, graphdef, param_shardings, batches or config.train.eval_batches
    )
    result = evaluator(params)
    if distributed.is_primary():
        scores = {k: round(v, 6) for k, v in result.items()}
        print(json.dumps({"workdir": str(workdir), "mask_rate": config.data.mask_rate, **scores}))
    return result


def eval_config(config, mask_rate: float | None = None):
    """The config evaluation reads: masked at ``mask_rate``, else ``data.eval_mask_rate``,
    with the prediction slots sized for it; unchanged when neither is set.

    Accuracy depends on how much of each row is hidden, so a fixed evaluation rate lets
    recipes trained at different rates be compared on one task.
    """
    mask_rate = mask_rate or config.data.eval_mask_rate
    if mask_rate is None:
        return config
    data = config.data.model_copy(update={"mask_rate": mask_rate, "max_predictions": None})
    return config.model_copy(update={"data": data})
