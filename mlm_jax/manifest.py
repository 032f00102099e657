"""``WORKDIR/manifest.json``: what a run was made of, so it can be checked, resumed and rerun."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

import mlm_jax
from mlm_jax import config as config_lib
from mlm_jax.errors import UserError

_PACKAGES = (
    "mlm_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "sentencepiece",
    "tensorflow-datasets", "numpy",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    """Library versions recorded in manifests and checkpoints, for reproducing a run."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _git_commit() -> str | None:
    """The commit of the mlm_jax checkout, when it is one (not a wheel install)."""
    source = Path(mlm_jax.__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def dataset_fingerprint(config: config_lib.Config) -> str:
    """The prepared dataset's input fingerprint, or the TFDS name for a data_dir source."""
    if config.data.data_dir:
        return f"tfds:{config.data.source}@{config.data.data_dir}"
    meta = Path(config.data.source) / "meta.json"
    if not meta.is_file():
        return "unknown"
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("input_fingerprint", "unknown")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise UserError(
            f"{meta} is not a dataset description; rebuild it with `mlm-jax data prepare`"
        ) from None


def build(config, tokenizer, mesh) -> dict:
    import jax

    devices = jax.devices()
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mlm_jax_version": mlm_jax.__version__,
        "git_commit": _git_commit(),
        "versions": package_versions(),
        "config": config.model_dump(mode="json"),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "dataset_fingerprint": dataset_fingerprint(config),
        "mesh": dict(mesh.shape),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


def read(workdir: str | os.PathLike) -> dict | None:
    path = Path(workdir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_resumable(previous: dict, current: dict) -> None:
    """Refuse to resume a run whose tokenizer or model shapes changed since it was saved."""
    if previous.get("tokenizer_fingerprint") != current["tokenizer_fingerprint"]:
        raise UserError(
            "the tokenizer differs from the one this run was trained with; point data.tokenizer "
            "back at it, or start a new --workdir"
        )
    before, now = previous["config"]["model"], current["config"]["model"]
    if (
        before.get("family") == "modern"
        and "global_attn_every_n_layers" not in before
        and now.get("global_attn_every_n_layers") != 1
    ):
        # Written before sliding windows existed: every layer of it attended globally.
        raise UserError(
            "this modern run was trained with every layer global, before sliding windows; "
            "resume it with --set model.global_attn_every_n_layers=1"
        )
    if "dropout_bits" not in before and now.get("dropout_bits") != 32 and _drops(now):
        # Written before narrow dropout draws: every mask came from jax.random.bernoulli.
        raise UserError(
            "this run was trained with 32-bit dropout draws, before model.dropout_bits "
            "existed; resume it with --set model.dropout_bits=32"
        )
    detail = model_shape_changes(before, now)
    if detail:
        raise UserError(
            f"this run's checkpoints have other model shapes ({detail}); "
            "use a new --workdir or restore the old settings"
        )


def _drops(model: dict) -> bool:
    return model.get("dropout_rate", 0) > 0 or model.get("attention_dropout_rate", 0) > 0


_SHAPE_KEYS = (
    "family", "num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size",
    "max_position_embeddings", "type_vocab_size", "attention_bias", "mlp_bias", "norm_bias",
    "classifier_bias",
)  # fmt: skip


def model_shape_changes(old, new) -> str:
    """``"model.k a→b, ..."`` for the shape-defining model fields that differ, or ``""``."""
    as_dict = lambda m: m if isinstance(m, dict) else m.model_dump()  # noqa: E731
    old, new = as_dict(old), as_dict(new)
    changed = [key for key in _SHAPE_KEYS if key in old and old[key] != new.get(key)]
    return ", ".join(f"model.{k} {old.get(k)}→{new.get(k)}" for k in changed)


def write(workdir: str | os.PathLike, manifest: dict) -> None:
    """Write atomically: a crash never leaves a truncated manifest."""
    path = Path(workdir) / "manifest.json"
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staging, path)
