"""``mlm-jax data prepare``: text files to a checked TFDS dataset, on one process or on Beam.

The dataset itself (builder, split rule, doc ids) is :mod:`mlm_jax.data.corpus`; the Beam
engine is :mod:`mlm_jax.data.beam_prepare`. This module chooses the engine, refuses a bad
request before anything is read, and writes the result through a staged directory.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mlm_jax import artifacts
from mlm_jax.data import corpus, integrity, sources
from mlm_jax.errors import UserError


def _same_request(meta: dict, request: dict) -> bool:
    return all(meta.get(key) == value for key, value in request.items())


def _check_existing(out: Path, request: dict, force: bool) -> dict | None:
    """The existing meta when OUT already holds this request; raise if it holds another."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a directory path")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    meta_path = out / corpus.META_FILE
    meta = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = None
    if meta is not None and _same_request(meta, request) and not force:
        return meta
    if not force:
        what = "a dataset of other inputs or options" if meta else "other files"
        raise UserError(
            f"--out {str(out)!r} already holds {what}; choose another directory or pass --force "
            "to replace it"
        )
    return None


def prepare(
    inputs: list[str],
    out: str,
    valid_fraction: float = 0.01,
    force: bool = False,
    text_field: str = "text",
    beam_runner: str | None = None,
    beam_options: str | None = None,
    shard_bytes: int = corpus.DEFAULT_SHARD_BYTES,
) -> dict:
    """Write the inputs as a TFDS ArrayRecord dataset plus ``meta.json`` into ``out``.

    With ``beam_runner`` (a Beam runner name, ``beam_options`` its flags as one
    string) the dataset is built by an Apache Beam pipeline whose workers each read
    slices of about ``shard_bytes``; otherwise by this process. Both give the same
    documents, splits and doc ids.

    Atomic: built in a temporary sibling of ``out`` and renamed into place, so a
    failure never leaves a half-written dataset or damages an existing one.
    Rerunning with the same inputs and options returns the existing meta
    (with ``"reused": True``) without writing anything.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {valid_fraction} must be in [0, 1); e.g. 0.01")
    build = _choose_engine(beam_runner, beam_options)
    shards = sources.plan_shards(inputs, text_field, shard_bytes if beam_runner else None)
    out_path = Path(out).expanduser().absolute()
    request = {
        "input_fingerprint": sources.fingerprint(inputs),
        "valid_fraction": valid_fraction,
        "text_field": text_field,
    }
    existing = _check_existing(out_path, request, force)
    if existing is not None:
        print(f"{out_path} already holds this dataset; nothing to do", file=sys.stderr)
        return {**existing, "reused": True}
    with artifacts.staged_directory(out_path) as staging:
        builder, stats = build(staging, shards, text_field, valid_fraction, inputs)
        meta = _meta(request, inputs, builder, stats, staging, beam_runner)
        # Every shard's size and checksum, whichever engine wrote it: what train checks
        # at start and `mlm-jax data verify` checks in full.
        meta[integrity.META_KEY] = integrity.record(
            staging, integrity.dataset_files(Path(builder.data_dir))
        )
        (staging / corpus.META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out_path}: {meta['splits']} ({stats.summary()})", file=sys.stderr)
    return {**meta, "reused": False}


def _choose_engine(beam_runner: str | None, beam_options: str | None) -> Callable:
    """The build function for the requested engine; checks Beam before anything is read."""
    if beam_runner is None:
        if beam_options:
            raise UserError(
                "--beam-options needs --beam-runner; add e.g. --beam-runner DirectRunner"
            )
        return corpus.build_single_process
    from mlm_jax.data import beam_prepare

    return beam_prepare.engine(beam_runner, beam_options)


def _meta(request, inputs, builder, stats, staging, beam_runner) -> dict:
    return {
        **request,
        "inputs": list(inputs),
        "splits": {name: info.num_examples for name, info in builder.info.splits.items()},
        "documents": stats.documents,
        "characters": stats.characters,
        "undecodable_lines": stats.undecodable_lines,
        "skipped_records": stats.skipped_records,
        "doc_ids": f"input index << {corpus.POSITION_BITS} | position in the input",
        "engine": f"beam:{beam_runner}" if beam_runner else "single-process",
        "tfds_name": corpus.BUILDER_NAME,
        "tfds_version": corpus.BUILDER_VERSION,
        "builder_dir": os.path.relpath(builder.data_dir, staging),
    }
