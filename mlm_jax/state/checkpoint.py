"""Checkpoints of a training run: a thin layer over Orbax ``CheckpointManager``.

A checkpoint lives in ``WORKDIR/checkpoints/<step>/`` and holds three items:

- ``state``: the train state, any pytree of ``jax.Array`` (params, optimizer state, step, rng);
- ``data``: the data-iterator position, a JSON dict from the Grain pipeline;
- ``meta``: JSON with the resolved config and the versions used.

Saves are asynchronous: :meth:`Checkpointer.save` returns once the arrays are copied to host
memory, so the caller may donate or overwrite its state right away, and the write finishes in a
background thread. Orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it
when complete, so a process killed mid-save leaves only a tmp directory, which is never listed as
a step and is removed the next time a :class:`Checkpointer` opens the directory.

Restore goes through an abstract target (``jax.ShapeDtypeStruct`` leaves carrying shardings), so
the arrays land directly on the current mesh, whatever the device count was at save time.

Every process calls every method; Orbax synchronises them and writes the JSON items from the
primary process only, which is why ``data_state`` must describe the global data position (the
same dict on every process).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from mlm_jax import distributed, manifest
from mlm_jax.errors import UserError
from mlm_jax.state import async_leftovers

log = logging.getLogger(__name__)


class _OneLineOrbaxErrors(logging.Filter):
    """Orbax logs a failed async write with its traceback from background threads, then
    raises it again on the next wait, where we report it in one line naming the fix;
    keep its log records to their first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "orbax" in record.pathname:
            record.msg = record.getMessage().splitlines()[0][:300]
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _quiet_orbax_once() -> None:
    """Keep Orbax's background errors to the one line we report; first Checkpointer only.

    Done where Orbax is first used rather than at import, so importing this module (for
    :class:`Restored`, say) changes no global logging or asyncio behaviour.
    """
    global _QUIETED
    if not _QUIETED:
        logging.getLogger("absl").addFilter(_OneLineOrbaxErrors())
        async_leftovers.install()
        _QUIETED = True


_QUIETED = False

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged"
BEST_METRIC = "eval/loss"
_ITEM_HANDLERS = {
    "state": ocp.StandardCheckpointHandler,
    "data": ocp.JsonCheckpointHandler,
    "meta": ocp.JsonCheckpointHandler,
}


# TensorStore reports a failed write (disk full, permissions) as a ValueError or
# RuntimeError, not an OSError, with the OS error in the message: "Error writing ...".
_WRITE_FAILED = re.compile(r"\bError writing\b")


class Restored(NamedTuple):
    """What a checkpoint gives back."""

    step: int
    state: Any  # the train state, on the shardings of the abstract target
    data_state: dict  # the input pipeline's position, for an exact resume


class Checkpointer:
    """Saves and restores the checkpoints of one workdir (``WORKDIR/checkpoints``).

    Cadence: ``train.checkpoint_every`` (call :meth:`save` every step; it returns False when the
    step is not due, unless ``force``). Retention: the newest ``train.keep_checkpoints``, plus,
    with ``train.keep_best``, the one with the lowest ``eval/loss`` among those saved with
    metrics.
    """

    def __init__(self, workdir: str | os.PathLike, config: Any):
        _quiet_orbax_once()
        self.config = config
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
        self._failed = False
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={name: handler() for name, handler in _ITEM_HANDLERS.items()},
            options=_manager_options(config.train),
        )

    # ----------------------------------------------------------------------------- saving

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is due for a checkpoint (every ``train.checkpoint_every`` steps)."""
        return self._manager.should_save(step)

    def save(
        self,
        step: int,
        state: Any,
        data_state: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Start an asynchronous save of ``step``; True if one was started.

        Returns once ``state`` is copied off the devices. Skips (False) a step that is not due
        (unless ``force``: final step, SIGTERM) or that is already on disk. ``metrics`` (e.g.
        ``{"eval/loss": 2.3}``) rank checkpoints for ``train.keep_best``.
        """
        if step in self._manager.all_steps():
            return False
        if not force and not self._manager.should_save(step):
            return False
        meta = {"step": step, "config": _config_dict(self.config)}
        meta["versions"] = manifest.package_versions()
        items = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(dict(data_state)),
            meta=ocp.args.JsonSave(meta),
        )
        self._check_free_space(step, state)
        clean_metrics = {k: float(v) for k, v in metrics.items()} if metrics else None
        with self._write_errors_as_user_errors():
            return self._manager.save(step, args=items, metrics=clean_metrics, force=True)

    def wait(self) -> None:
        """Block until the save in flight (if any) is committed to disk."""
        with self._write_errors_as_user_errors():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish the save in flight and release Orbax's threads."""
        if self._failed:
            return  # the failed save was reported; closing would raise it again
        with self._write_errors_as_user_errors():
            self._manager.close()

    def _check_free_space(self, step: int, state: Any) -> None:
        """Refuse a save the disk cannot hold before writing a byte of it.

        A write that fails half-way is still safe (the step is never committed), but
        TensorStore's background threads report it noisily; most full disks are
        caught here instead.
        """
        needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state) if hasattr(leaf, "nbytes"))
        needed = int(needed * 1.05) + (1 << 20)  # metadata, JSON items, OCDBT manifests
        os.makedirs(self.directory, exist_ok=True)
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise UserError(
                f"not enough disk space for the checkpoint of step {step} in {self.directory}: "
                f"needs about {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB free; free space, "
                "then rerun to resume from the newest checkpoint"
            )

    @contextlib.contextmanager
    def _write_errors_as_user_errors(self):
        """An async write that failed (disk full, permissions) surfaces here as one line.

        Orbax commits a step by renaming its tmp directory, so the failed step never
        becomes a checkpoint and the previous ones stay intact.
        """
        try:
            yield
        except (OSError, ValueError, RuntimeError) as exc:
            if self._failed or not (isinstance(exc, OSError) or _WRITE_FAILED.search(str(exc))):
                raise
            self._failed = True
            newest = self._manager.latest_step()  # as listed before the failed write
            kept = (
                f"newest intact checkpoint: step {newest}" if newest is not None else "none saved"
            )
            raise UserError(
                f"could not write a checkpoint in {self.directory} ({_describe(exc)}); "
                f"free disk space or fix permissions, then rerun to resume ({kept})"
            ) from None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------- listing

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Newest complete checkpoint step, or None; half-written saves are never listed."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def saved_config(self, step: int) -> dict[str, Any]:
        """The resolved config (as a dict) that the run had when it saved ``step``."""
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return meta["meta"]["config"]

    # ---------------------------------------------------------------------------- restoring

    def restore(self, step: int, abstract_state: Any) -> Restored:
        """Restore ``step`` onto the shardings of ``abstract_state``.

        ``abstract_state`` is the train state's pytree with ``jax.ShapeDtypeStruct`` leaves
        carrying the current mesh's ``NamedSharding``.
        Raises UserError if the step is missing or unreadable, or if its tree or shapes differ
        from ``abstract_state``.
        """
        steps = self.all_steps()
        if step not in steps:
            raise UserError(
                f"no checkpoint at step {step} in {self.directory} (saved steps: {steps}); "
                "pick one of the saved steps"
            )
        try:
            return self._read(step, abstract_state)
        except UserError:
            raise
        except Exception as exc:  # Orbax and TensorStore raise many types
            raise UserError(
                f"checkpoint at step {step} in {self.directory} cannot be read "
                f"({_describe(exc)}); pick another step"
            ) from exc

    def _read(self, step: int, abstract_state: Any) -> Restored:
        """:meth:`restore` without the friendly errors: damage raises what Orbax raises."""
        self._check_matches(step, abstract_state)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return Restored(step, restored["state"], restored["data"])

    def restore_latest(self, abstract_state: Any) -> Restored | None:
        """Restore the newest restorable checkpoint.

        Returns None when there is no checkpoint. A checkpoint that fails to read (a truncated
        or missing file) gets one warning and the next older one is tried. Once an older one
        restores, the damaged newer ones are moved to ``checkpoints/damaged/`` (never deleted),
        with one warning line each, so training can save those steps again. Raises UserError
        when none restores; then nothing is moved, since a bug and damage would look alike.
        """
        steps = self.all_steps()
        damaged: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                restored = self._read(step, abstract_state)
            except UserError:
                raise
            except Exception as exc:  # Orbax and TensorStore raise many types
                damaged.append((step, _describe(exc)))
                continue
            self._set_aside(damaged, restored_step=step)
            return restored
        if damaged:
            newest, error = damaged[0]
            raise UserError(
                f"no checkpoint in {self.directory} can be read (steps {steps}; step {newest}: "
                f"{error}); restore the files or use a new --workdir"
            )
        return None

    def _check_matches(self, step: int, abstract_state: Any) -> None:
        """Refuse a checkpoint whose parameter tree or shapes differ from ``abstract_state``."""
        try:
            saved = self._manager.item_metadata(step)["state"]
        except Exception:  # unreadable metadata: damage, which restore reports
            return
        saved_shapes = _shapes_by_path(getattr(saved, "tree", saved))
        if not saved_shapes:
            return  # no readable array metadata: damage, which restore reports
        wanted_shapes = _shapes_by_path(abstract_state)
        difference = _describe_difference(saved_shapes, wanted_shapes)
        if difference is None:
            return
        config_difference = self._describe_config_difference(step)
        raise UserError(
            f"checkpoint at step {step} in {self.directory} was made for a model with "
            f"{config_difference or difference}; use a new --workdir or matching model.* settings"
        )

    def _describe_config_difference(self, step: int) -> str | None:
        """``model.hidden_size=256 (now 128), ...`` from the config saved with ``step``."""
        try:
            saved = self.saved_config(step).get("model", {})
        except Exception:  # fall back to describing the arrays
            return None
        now = _config_dict(self.config).get("model", {})
        changed = [
            f"model.{key}={saved[key]!r} (now {now.get(key)!r})"
            for key in saved
            if key != "init_from" and saved[key] != now.get(key)
        ]
        return ", ".join(changed) or None

    def _set_aside(self, damaged: list[tuple[int, str]], restored_step: int) -> None:
        """Move damaged steps to ``checkpoints/damaged/<step>-<time>``, one warning each."""
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        target_dir = os.path.join(self.directory, DAMAGED_DIR)
        for step, error in damaged:
            source = os.path.join(self.directory, str(step))
            target = os.path.join(target_dir, f"{step}-{stamp}")
            log.warning(
                "checkpoint %s is damaged (%s); resumed from step %d, moved it to %s",
                source,
                error,
                restored_step,
                target,
            )
            if jax.process_index() == 0:
                os.makedirs(target_dir, exist_ok=True)
                shutil.move(source, target)
        if damaged:
            distributed.barrier("mlm_jax_checkpoint_set_aside")
            self._manager.reload()


# ------------------------------------------------------------------------------- helpers


def _manager_options(train: Any) -> ocp.CheckpointManagerOptions:
    """Orbax options from ``train.checkpoint_every/keep_checkpoints/keep_best``."""
    keep: list[policies.PreservationPolicy] = [policies.LatestN(n=train.keep_checkpoints)]
    if train.keep_best:
        keep.append(
            policies.BestN(
                get_metric_fn=_best_metric,
                reverse=True,  # sorted high to low, BestN keeps the tail: the lowest loss
                n=1,
                keep_checkpoints_without_metrics=False,
            )
        )
    return ocp.CheckpointManagerOptions(
        enable_async_checkpointing=True,
        # Tmp dirs left by a killed save are never restorable; remove them on open.
        cleanup_tmp_directories=True,
        save_decision_policy=policies.AnySavePolicy(
            [
                policies.FixedIntervalPolicy(train.checkpoint_every),
                policies.PreemptionCheckpointingPolicy(),
            ]
        ),
        preservation_policy=policies.AnyPreservationPolicy(keep),
        # best_fn makes Orbax store the metrics with each step; ranking is done by BestN.
        best_fn=_best_metric if train.keep_best else None,
        best_mode="min",
    )


def _best_metric(metrics: Mapping[str, float]) -> float:
    """The loss used to rank checkpoints; missing or NaN ranks last."""
    value = float(metrics.get(BEST_METRIC, math.inf))
    return math.inf if math.isnan(value) else value


def _config_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain JSON data (pydantic model or mapping)."""
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return dict(config)


def _path_name(path: tuple[Any, ...]) -> str:
    """``params/layers/0/kernel`` for a pytree key path, whatever the node types."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """Leaf path -> stored shape, for a tree of arrays, ShapeDtypeStructs or Orbax metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): _stored_shape(leaf) for path, leaf in leaves}


def _stored_shape(leaf: Any) -> tuple[int, ...]:
    """Shape as written to disk: a typed PRNG key is stored as its key data (e.g. [..., 2])."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
    return tuple(np.shape(leaf))


def _describe_difference(
    saved: dict[str, tuple[int, ...]], wanted: dict[str, tuple[int, ...]]
) -> str | None:
    """First difference between two path->shape maps, in words, or None if equal."""
    for path in sorted(saved.keys() | wanted.keys()):
        if path not in wanted:
            return f"an array {path} that this config does not have"
        if path not in saved:
            return f"no array {path}, which this config needs"
        if saved[path] != wanted[path]:
            return f"{path} of shape {saved[path]} (this config: {wanted[path]})"
    return None


def _describe(exc: BaseException) -> str:
    """``ValueError: NOT_FOUND: ...``: the type and the start of the first line."""
    text = str(exc).strip()
    first_line = text.splitlines()[0][:160] if text else ""
    return f"{type(exc).__name__}: {first_line}"
