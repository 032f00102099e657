"""Run directories, shared by pretraining and fine-tuning.

What the two have in common lives here: checks before anything is written (``init_from``,
a resumed run's manifest), the workdir record (``config.yaml``, ``manifest.json``), the
start order (the workdir's newest checkpoint > ``model.init_from`` > fresh weights), and
the step loop around a :class:`~mlm_jax.training.loop.Job` with its metrics writer and
stop handling. Restoring a finished run's parameters is :mod:`mlm_jax.state.restore`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

from mlm_jax import config as config_lib
from mlm_jax import distributed, manifest
from mlm_jax.errors import UserError
from mlm_jax.model import sharding
from mlm_jax.model.tasks import task_of
from mlm_jax.state import checkpoint, restore, train_state
from mlm_jax.training import loop
from mlm_jax.training.metrics import MetricsWriter

# ----------------------------------------------------------------------------- init_from


def init_source(init: str) -> tuple[str, Path]:
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
    """Encoder parameters named by ``model.init_from`` (see :func:`init_source`)."""
    kind, path = init_source(config.model.init_from)
    if kind == "run":
        # Its shapes were already checked against this config by check_init_from.
        other = config_lib.load(path / "config.yaml")
        missing = f"model.init_from={path} has no checkpoint; train it first"
        return restore.restore_params(path, config=other, mesh=mesh, missing=missing).params
    from mlm_jax.hf import reader

    return reader.load_hf_checkpoint(path, config)


def check_init_from(config, workdir: Path) -> None:
    """Refuse a bad ``model.init_from`` before anything is written to the workdir.

    Skipped when the workdir already has checkpoints: resuming wins over init_from.
    """
    init = config.model.init_from
    folder = workdir / checkpoint.CHECKPOINT_DIR
    if not init or (folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())):
        return
    kind, path = init_source(init)
    if kind == "run":
        theirs = config_lib.load(path / "config.yaml").model
    else:
        from mlm_jax.hf import reader

        theirs = reader.hf_model_config(path)
    mismatch = manifest.model_shape_changes(theirs, config.model)
    if mismatch:
        raise UserError(
            f"model.init_from={init} has other shapes ({mismatch}); match model.* to it"
        )


# ----------------------------------------------------------------------------- the skeleton


def prepare_workdir(workdir: Path, config, run_manifest: dict) -> None:
    """Check a resumed run still matches, then record its config and manifest."""
    previous = manifest.read(workdir)
    if previous is not None:
        manifest.check_resumable(previous, run_manifest)
    if distributed.is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(config_lib.dump(config))
        manifest.write(workdir, run_manifest)


@contextlib.contextmanager
def opened(config, workdir: Path, tokenizer, mesh) -> Iterator[checkpoint.Checkpointer]:
    """Check, record and open a run directory; yields its checkpointer, closed on exit."""
    run_manifest = manifest.build(config, tokenizer, mesh)
    check_init_from(config, workdir)
    prepare_workdir(workdir, config, run_manifest)
    checkpointer = checkpoint.Checkpointer(workdir, config)
    try:
        yield checkpointer
    finally:
        checkpointer.close()


def fresh_state(config, mesh, shardings) -> train_state.TrainState:
    """Step 0: fresh weights, the encoder's from ``model.init_from`` when it is set."""
    if not config.model.init_from:
        return train_state.state_initializer(config, shardings)(jax.random.key(config.train.seed))
    # Fresh weights only: the optimizer state is made once, around the final parameters.
    task = task_of(config)
    params = sharding.init_sharded(task.build, config.train.seed, shardings.params)
    params = task.with_encoder(params, initial_params(config, mesh))
    return train_state.train_state_from_params(config, params, shardings)


def start(config, mesh, checkpointer) -> tuple[checkpoint.Restored | None, train_state.Placed]:
    """``(the restored checkpoint or None, the state to train from)`` by the start order."""
    graphdef, abstract, shardings = train_state.abstract_train_state(config, mesh)
    restored = checkpointer.restore_latest(abstract)
    if restored is not None:
        distributed.log(f"resumed from checkpoint step {restored.step}")
        return restored, train_state.Placed(graphdef, restored.state, shardings)
    state = fresh_state(config, mesh, shardings)
    distributed.log(f"initialised from {config.model.init_from or 'scratch'}")
    return None, train_state.Placed(graphdef, state, shardings)


def execute(
    session: loop.Session, workdir: Path, before: Callable[[MetricsWriter], None] | None = None
) -> dict:
    """Run the step loop with a metrics writer and SIGTERM/SIGINT handling.

    ``before(writer)`` runs first (fine-tuning logs its step-0 evaluation there).
    """
    writer = MetricsWriter(workdir, enabled=distributed.is_primary())
    writer.truncate_after(session.first_step)
    stop = loop.StopRequest()
    stop.install()
    try:
        if before is not None:
            before(writer)
        return loop.run(session, writer, stop)
    finally:
        stop.uninstall()
        writer.close()
