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

from mlm_jax import (
    baselines,
    checkpoint,
    distributed,
    loop,
    manifest,
    model,
    pipeline,
    sharding,
    step,
)
from mlm_jax import config as config_lib
from mlm_jax import tokenizer as tokenizer_lib
from mlm_jax.errors import UserError
from mlm_jax.metrics import MetricsWriter


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


def params_from_run(run_dir: str, mesh):
    """Parameters of another run's newest checkpoint, placed on this mesh.

    Its shapes were already checked against this config by :func:`check_init_from`.
    """
    other = config_lib.load(Path(run_dir) / "config.yaml")
    _, abstract, _ = step.abstract_train_state(other, mesh)
    with checkpoint.Checkpointer(run_dir, other) as source:
        restored = source.restore_latest(abstract)
    if restored is None:
        raise UserError(f"model.init_from={run_dir} has no checkpoint; train it first")
    return restored[1].params


def _init_source(init: str) -> tuple[str, Path]:
    """``("run" | "hf", path)`` for ``model.init_from``: a run directory, or a Hugging Face
    directory (our export, or any BERT/ModernBERT) with or without the ``hf:`` prefix."""
    path = Path(init.removeprefix("hf:"))
    if not init.startswith("hf:") and (path / "config.yaml").is_file():
        return "run", path
    if (path / "config.json").is_file():
        return "hf", path
    raise UserError(
        f"model.init_from={init} is neither a run directory nor a Hugging Face directory "
        "(config.json); fix the path"
    )


def initial_params(config, mesh):
    """Parameters named by ``model.init_from`` (see :func:`_init_source`)."""
    kind, path = _init_source(config.model.init_from)
    if kind == "run":
        return params_from_run(str(path), mesh)
    from mlm_jax import hf_import

    return hf_import.load_hf_checkpoint(path, config)


def check_init_from(config, workdir: Path) -> None:
    """Refuse a bad ``model.init_from`` before anything is written to the workdir.

    Skipped when the workdir already has checkpoints: resuming wins over init_from.
    """
    init = config.model.init_from
    folder = workdir / checkpoint.CHECKPOINT_DIR
    if not init or (folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())):
        return
    kind, path = _init_source(init)
    if kind == "run":
        theirs = config_lib.load(path / "config.yaml").model
    else:
        from mlm_jax import hf_import

        theirs = hf_import.hf_model_config(path)
    source = f"model.init_from={init}"
    mismatch = manifest.model_shape_changes(theirs, config.model)
    if mismatch:
        raise UserError(f"{source} has other shapes ({mismatch}); match model.* to it")


def _start_state(config, mesh, checkpointer):
    """``(first_step, state, data_state, graphdef, shardings)`` by the resume order."""
    graphdef, abstract, shardings = step.abstract_train_state(config, mesh)
    restored = checkpointer.restore_latest(abstract)
    if restored is not None:
        saved_step, state, data_state, _ = restored
        distributed.log(f"resumed from checkpoint step {saved_step}")
        return saved_step, state, data_state, graphdef, shardings
    if config.model.init_from:
        params = initial_params(config, mesh)
        state = step.train_state_from_params(config, params, shardings)
        distributed.log(f"initialised from {config.model.init_from}")
        return 0, state, None, graphdef, shardings
    graphdef, state, shardings = step.init_train_state(config, mesh)
    return 0, state, None, graphdef, shardings


def prepare_workdir(workdir: Path, config, run_manifest: dict) -> None:
    """Check a resumed run still matches, then record its config and manifest."""
    previous = manifest.read(workdir)
    if previous is not None:
        manifest.check_resumable(previous, run_manifest)
    if distributed.is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(config_lib.dump(config))
        manifest.write(workdir, run_manifest)


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
    context-free baselines on the same masked tokens (:mod:`mlm_jax.baselines`)."""

    def __init__(self, config, mesh, graphdef, param_shardings, num_batches: int):
        self.mesh = mesh
        self.batches = pipeline.make_eval_batches(
            config, num_batches, jax.process_index(), jax.process_count()
        )
        self.eval_step = step.make_eval_step(config, mesh, graphdef, param_shardings)
        tokenizer = tokenizer_lib.load(config.data.tokenizer)
        self.baseline = baselines.eval_baseline(config, tokenizer, self.batches)

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
    workdir_path = Path(workdir).resolve()
    tokenizer = pipeline.load_checked_tokenizer(config)
    mesh = sharding.make_mesh(config)
    run_manifest = manifest.build(config, tokenizer, mesh)
    check_init_from(config, workdir_path)
    prepare_workdir(workdir_path, config, run_manifest)
    checkpointer = checkpoint.Checkpointer(workdir_path, config)
    try:
        return _train(config, workdir_path, mesh, checkpointer)
    finally:
        checkpointer.close()


def _train(config, workdir: Path, mesh, checkpointer) -> dict:
    first_step, state, data_state, graphdef, shardings = _start_state(config, mesh, checkpointer)
    sharding.assert_params_sharded(state.params, mesh)
    data = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count())
    if data_state is not None:
        data.set_state(data_state)
    _log_start(config, mesh, data.local_batch_size)
    train_step = step.make_train_step(config, mesh, graphdef, shardings)
    evaluator = Evaluator(config, mesh, graphdef, shardings.params, config.train.eval_batches)
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
    writer = MetricsWriter(workdir, enabled=distributed.is_primary())
    writer.truncate_after(first_step)
    stop = loop.StopRequest()
    stop.install()
    try:
        summary = loop.run(
            config, mesh, state, first_step, job, train_step, writer, checkpointer, stop
        )
    finally:
        stop.uninstall()
        data.close()
        writer.close()
    return summary


def _evaluate(evaluator, params, label: str) -> dict:
    metrics = evaluator(params)
    distributed.log(
        f"eval {label}: loss {metrics['eval/loss']:.4f} "
        f"acc {metrics['eval/mlm_accuracy']:.3f} ppl {metrics['eval/perplexity']:.1f} | "
        f"context-free baseline: loss {metrics['baseline/unigram_loss']:.4f} "
        f"acc {metrics['baseline/majority_accuracy']:.3f}"
    )
    return metrics


def load_run_params(workdir: str, step_number: int | None = None):
    """``(config, graphdef, params)`` of a run's checkpoint, on this process's devices."""
    workdir_path = Path(workdir)
    if not (workdir_path / "config.yaml").is_file():
        raise UserError(f"{workdir} is not a run directory (no config.yaml); train first")
    config = config_lib.load(
        workdir_path / "config.yaml", ["mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1"]
    )
    mesh = sharding.make_mesh(config)
    graphdef, abstract, _ = step.abstract_train_state(config, mesh)
    with checkpoint.Checkpointer(workdir_path, config) as ckpt:
        if step_number is None:
            restored = ckpt.restore_latest(abstract)
            if restored is None:
                raise UserError(f"{workdir} has no checkpoint yet; train it first")
            state = restored[1]
        else:
            state = ckpt.restore(step_number, abstract)[0]
    return config, graphdef, state.params


def evaluate_run(workdir: str, step: int | None = None, batches: int | None = None) -> dict:
    """``mlm-jax eval``: validation loss, accuracy and perplexity of a run's checkpoint."""
    config, graphdef, params = load_run_params(workdir, step)
    tokenizer_lib.load(config.data.tokenizer)
    mesh = sharding.make_mesh(config)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    evaluator = Evaluator(
        config, mesh, graphdef, param_shardings, batches or config.train.eval_batches
    )
    result = evaluator(params)
    if distributed.is_primary():
        print(json.dumps({"workdir": str(workdir), **{k: round(v, 6) for k, v in result.items()}}))
    return result
