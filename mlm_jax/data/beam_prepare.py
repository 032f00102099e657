"""Building the corpus dataset with Apache Beam, through TFDS's own Beam support.

The builder is :mod:`mlm_jax.data.corpus`'s, whose generators are a Beam pipeline: its
``_split_generators`` reads every input shard once, in parallel, into one shared
collection of ``(split, (doc_id, example))``, and its ``_generate_examples``
returns the Beam transform that keeps one split's examples. TFDS's ``BeamWriter``
then shuffles and writes the ArrayRecord shards, also on the workers. The split
rule, the doc ids and the shard reading are the very functions the
single-process path uses, so both produce the same dataset.

The same pipeline runs on Beam's DirectRunner (all local cores with
``--direct_running_mode=multi_processing``) or on a cluster runner (Dataflow,
Flink, Spark), given a staging path every worker can read and write.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from mlm_jax import logs
from mlm_jax.data import corpus
from mlm_jax.errors import UserError

# Beam workers log every bundle at INFO; keep their stderr for errors unless asked.
_HARNESS_LOG_FLAG = "--default_sdk_harness_log_level"
# TFDS's Beam writer fails a split that received no example with this message.
_EMPTY_SPLIT = re.compile(r"total number of generated examples is 0 for split (\w+)")
# A UserError raised on a worker process comes back inside the runner's error text.
_WORKER_USER_ERROR = re.compile(r"UserError: (.+)$", re.M)
# Beam appends the step an error happened in to its message.
_STEP_SUFFIX = re.compile(r" \[while running '[^']*'\]$")


def _import_beam():
    """Import apache_beam, or say how to install it.

    Its import logs a warning about optional BigQuery clients through the root
    logger, which would also install a stderr handler for the rest of the run: the
    root logger is muted, and given a null handler if it has none, meanwhile.
    """
    root = logging.getLogger()
    quiet = logging.NullHandler()
    adding, was_disabled = not root.handlers, root.disabled
    if adding:
        root.addHandler(quiet)
    root.disabled = True
    try:
        import apache_beam
    except ImportError:
        raise UserError(
            "--beam-runner needs apache-beam, which is not installed; run "
            "`pip install 'mlm_jax[beam]'` or drop --beam-runner"
        ) from None
    finally:
        root.disabled = was_disabled
        if adding:
            root.removeHandler(quiet)
    return apache_beam


def _runner_and_options(runner_name: str, options: str | None):
    _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import create_runner

    try:
        runner = create_runner(runner_name)
    except (ValueError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise UserError(
            f"--beam-runner {runner_name!r} is not a usable Beam runner ({reason}); "
            "use e.g. DirectRunner"
        ) from None
    flags = shlex.split(options or "")
    if any(not flag.startswith("-") for flag in flags):
        raise UserError(
            f"--beam-options {options!r} must be Beam flags like --direct_num_workers=2"
        )
    if not any(flag.startswith(_HARNESS_LOG_FLAG) for flag in flags):
        flags.append(f"{_HARNESS_LOG_FLAG}=ERROR")
    return runner, PipelineOptions(flags)


def engine(runner_name: str, options: str | None) -> Callable:
    """Check Beam and the runner now; return ``build(staging, shards, ...)`` for corpus."""
    runner, pipeline_options = _runner_and_options(runner_name, options)

    def build(staging: Path, shards, text_field: str, valid_fraction: float, inputs):
        return _build(staging, shards, text_field, valid_fraction, inputs, runner, pipeline_options)

    return build


def _run(staging: Path, shards, text_field, valid_fraction, splits, runner, options):
    shutil.rmtree(staging / corpus.BUILDER_NAME, ignore_errors=True)  # a failed attempt's
    builder = corpus.builder_class()(
        shards=shards,
        text_field=text_field,
        valid_fraction=valid_fraction,
        splits=splits,
        data_dir=str(staging),
        file_format="array_record",
    )
    # Beam logs a failing worker's traceback before raising it; the error raised is enough.
    with logs.held_at("apache_beam", logging.CRITICAL):
        corpus.download_and_prepare(builder, staging, beam_runner=runner, beam_options=options)
    return builder


def _empty_split(error: Exception) -> str | None:
    match = _EMPTY_SPLIT.search(str(error))
    return match.group(1) if match else None


def _user_error_from(error: Exception) -> UserError | None:
    """A worker's UserError as we raised it, from what the runner re-raised."""
    text = str(error)
    if not isinstance(error, UserError):
        match = _WORKER_USER_ERROR.search(text)
        if match is None:
            return None
        text = match.group(1)
    return UserError(_STEP_SUFFIX.sub("", text.strip()))


def _build(staging, shards, text_field, valid_fraction, inputs, runner, options):
    """Run the pipeline; a split that received nothing is dropped and the build rerun.

    TFDS's Beam writer cannot write an empty split, and which split is empty is only
    known after reading; that happens for small corpora only, so rerunning is cheap.
    """
    splits = corpus.SPLITS if valid_fraction > 0 else ("train",)
    while True:
        try:
            builder = _run(staging, shards, text_field, valid_fraction, splits, runner, options)
        except Exception as error:  # the runner wraps worker failures in many types
            splits = _splits_after_failure(error, splits, inputs)
            continue
        return builder, builder.read_stats


def _splits_after_failure(error: Exception, splits: tuple[str, ...], inputs) -> tuple[str, ...]:
    """The splits to retry with after a failed build, or the error to show the user.

    Either empty split may be the one reported first (the writers race), so an empty
    corpus can first drop validation and then fail again on train.
    """
    user_error = _user_error_from(error)
    if user_error is not None:
        raise user_error from None
    empty = _empty_split(error)
    if empty is None:
        raise error
    if empty == "train" or len(splits) == 1:
        raise UserError(
            f"no document of the inputs {inputs} fell into the train split (there are no "
            "documents, or all fell into validation); pass more text or lower "
            "--valid-fraction"
        ) from None
    print("warning: no document fell into validation; add text for one", file=sys.stderr)
    return ("train",)
