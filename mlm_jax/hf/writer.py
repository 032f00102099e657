"""The one writer of Hugging Face directories, for pretrained and fine-tuned runs alike.

A directory holds ``config.json`` + ``model.safetensors`` (no pickle), tokenizer files
that ``AutoTokenizer`` loads into the same ids as ours, ``mlm_jax.json`` (the resolved
config and run manifest) and a copy of ``spm.model``/``meta.json`` so our own tokenizer
loads from it too. It is staged in a temporary sibling and renamed into place: it
appears complete or not at all.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from mlm_jax import artifacts
from mlm_jax.config import Config
from mlm_jax.errors import UserError
from mlm_jax.hf import tokenizer as hf_tokenizer


def refusal(out: Path, force: bool) -> str:
    """Why ``out`` cannot be written ("" when it can)."""
    if out.exists() and not out.is_dir():
        return f"--out {str(out)!r} is a file; give a directory path"
    if out.is_dir() and any(out.iterdir()) and not force:
        return f"--out {str(out)!r} is not empty; pass --force to replace it"
    return ""


def check_out_dir(out: Path, force: bool) -> None:
    """:func:`refusal` decided by process 0 for all processes (a collective)."""
    problem = refusal(out, force) if jax.process_index() == 0 else ""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        flag = multihost_utils.broadcast_one_to_all(np.int32(bool(problem)))
        if int(flag) and not problem:
            problem = f"process 0 refused --out {str(out)!r}; see its message"
    if problem:
        raise UserError(problem)


def write_directory(
    out: str | Path,
    config: Config,
    tensors: dict[str, np.ndarray],
    hf_config: dict,
    manifest: dict | None = None,
    force: bool = False,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write ``tensors`` with ``hf_config`` as ``config.json``, the tokenizer, our record
    and ``extra`` files (name -> bytes)."""
    from safetensors.numpy import save_file

    out = Path(out)
    problem = refusal(out, force)
    if problem:
        raise UserError(problem)
    files = hf_tokenizer.hf_tokenizer_files(config.data.tokenizer, config)
    files["config.json"] = artifacts.json_bytes(hf_config)
    files["mlm_jax.json"] = artifacts.json_bytes(
        {"config": config.model_dump(mode="json"), "manifest": manifest}
    )
    files.update(extra or {})
    with artifacts.staged_directory(out) as staging:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)  # bi_encoder/...
            (staging / name).write_bytes(data)
    return out
