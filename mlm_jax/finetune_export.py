"""Fine-tuned runs as Hugging Face ``*ForSequenceClassification`` directories, and back.

The encoder's tensors are :mod:`mlm_jax.export`'s (without the MLM head); the head is

  bert:   pooler -> ``bert.pooler.dense``; classifier -> ``classifier``
  modern: pooler -> ``head.dense``; pooler_norm -> ``head.norm``; classifier -> ``classifier``

A reranker exports with one label and ``sentence_transformers.activation_fn`` set to
Identity, so ``CrossEncoder(DIR).predict`` returns the same logit ``mlm-jax score`` prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mlm_jax import artifacts, distributed, export, hf_import, hf_tokenizer
from mlm_jax import config as config_lib
from mlm_jax import manifest as manifest_lib
from mlm_jax import tokenizer as tokenizer_lib
from mlm_jax.errors import UserError

VERIFY_PAIRS = (
    ("Who comes here?", "A friend to this ground, and liegemen to the Dane."),
    ("To be, or not to be", "that is the question: whether 'tis nobler in the mind to suffer"),
    ("Naïve café?", "Emoji 🙂 and 数字 fall back to bytes."),
)
_HEAD_NAMES = {
    "bert": {"pooler": "bert.pooler.dense", "classifier": "classifier"},
    "modern": {"pooler": "head.dense", "pooler_norm": "head.norm", "classifier": "classifier"},
}
_MLM_HEAD_PREFIXES = {"bert": ("cls.",), "modern": ("head.", "decoder.")}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_ARCHITECTURES = {
    "bert": "BertForSequenceClassification",
    "modern": "ModernBertForSequenceClassification",
}


def to_hf_tensors(config, params: nnx.State) -> dict[str, np.ndarray]:
    """Our fine-tuned parameters -> HF sequence-classification tensors (collective)."""
    family = config.model.family
    host = export.gather_to_host(params)
    tensors = {
        name: value
        for name, value in export.to_hf_state_dict(config, host["encoder"]).items()
        if not name.startswith(_MLM_HEAD_PREFIXES[family])
    }
    for path, var in nnx.to_flat_state(host):
        if path[0] == "encoder":
            continue
        value = np.asarray(var.get_value(), np.float32)
        name = f"{_HEAD_NAMES[family][path[0]]}.{_LEAF_NAMES[path[-1]]}"
        tensors[name] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
    return tensors


def from_hf_tensors(config, tensors: dict[str, np.ndarray]) -> nnx.State:
    """HF sequence-classification tensors -> our parameters (host numpy); the MLM head zeros."""
    from mlm_jax.finetune import abstract_cross_encoder

    family, abstract = config.model.family, abstract_cross_encoder(config)[1]
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract["encoder"])
    encoder_tensors = export.to_hf_state_dict(config, zeros)  # every name, MLM head included
    encoder_tensors.update(tensors)
    encoder = nnx.to_flat_state(export.from_hf_state_dict(config, encoder_tensors))
    leaves = [(("encoder", *path), var) for path, var in encoder]
    for path, var in nnx.to_flat_state(abstract):
        if path[0] == "encoder":
            continue
        name = f"{_HEAD_NAMES[family][path[0]]}.{_LEAF_NAMES[path[-1]]}"
        if name not in tensors:
            raise UserError(f"checkpoint lacks tensor {name!r}; export the fine-tuned run again")
        value = np.asarray(tensors[name], np.float32)
        value = value.T if path[-1] == "kernel" else value
        if value.shape != var.get_value().shape:
            raise UserError(f"tensor {name!r} has shape {value.shape}, expected {var.shape}")
        leaves.append((path, var.replace(np.ascontiguousarray(value))))
    return nnx.from_flat_state(leaves)


def hf_classifier_config(config) -> dict:
    """``config.json`` of the matching ``*ForSequenceClassification``."""
    from mlm_jax.finetune import num_outputs

    hf = export.hf_config(config)
    outputs = num_outputs(config)
    hf["architectures"] = [_ARCHITECTURES[config.model.family]]
    hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(outputs)}
    hf["label2id"] = {f"LABEL_{i}": i for i in range(outputs)}
    if config.finetune.task == "rerank":
        # CrossEncoder applies a sigmoid to one-label models unless told otherwise.
        hf["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    return hf


def read_export(directory: Path):
    """``(config, params)`` of a fine-tuned export; the config's mesh is single-host."""
    saved = json.loads((directory / "mlm_jax.json").read_text())["config"]
    if not saved.get("finetune"):
        raise UserError(f"{directory} is a pretrained export; score needs a fine-tuned reranker")
    saved["data"]["tokenizer"] = str(directory)  # the export carries its tokenizer
    saved["mesh"] = {"data": -1, "fsdp": 1, "tensor": 1}
    config = config_lib.from_dict(saved, origin=str(directory / "mlm_jax.json"))
    return config, from_hf_tensors(config, hf_import.read_safetensors(directory))


def export_finetuned(workdir, out, step: int | None, force: bool, verify: bool) -> Path:
    """Write a fine-tuned run as ``out``; with ``verify``, compare transformers' logits."""
    from safetensors.numpy import save

    from mlm_jax.finetune import load_run

    out = Path(out)
    export.check_out_dir(out, force)
    config, _, params = load_run(str(workdir), step)
    tensors = to_hf_tensors(config, params)
    if jax.process_index() == 0:
        manifest = manifest_lib.read(workdir)
        files = hf_tokenizer.hf_tokenizer_files(config.data.tokenizer, config)
        files["config.json"] = artifacts.json_bytes(hf_classifier_config(config))
        files["mlm_jax.json"] = artifacts.json_bytes(
            {"config": config.model_dump(mode="json"), "manifest": manifest}
        )
        files["model.safetensors"] = save(tensors, metadata={"format": "pt"})
        tokenizer_lib.write_directory(out, files)
        distributed.log(f"wrote {out} ({_ARCHITECTURES[config.model.family]})")
        if verify:
            print(verify_export(out))
    export.barrier("mlm_jax_export_finetuned")
    return out


def verify_export(out: Path) -> str:
    """Compare ``transformers``' logits and pair token ids on ``out`` with ours; one line."""
    try:
        import torch
        import transformers
    except ImportError:
        return "export verification skipped: torch and transformers are not installed"
    from mlm_jax import finetune

    config, graphdef, params, tokenizer = finetune.load_model(str(out))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    queries, passages = (list(column) for column in zip(*VERIFY_PAIRS, strict=True))
    limit = config.data.seq_len
    encoded = hf_tokenizer(queries, passages, padding="max_length", truncation=True,
                           max_length=limit, return_tensors="np")  # fmt: skip
    pair_encoder = finetune.data_lib.PairEncoder(tokenizer, limit, config.finetune.max_query_tokens)
    ours = pair_encoder.encode(list(VERIFY_PAIRS))
    if not np.array_equal(encoded["input_ids"], ours["input_ids"]):
        raise RuntimeError("AutoTokenizer pair ids differ from ours on the verification pairs")
    if "token_type_ids" in encoded and not np.array_equal(
        encoded["token_type_ids"], ours["token_type_ids"]
    ):
        raise RuntimeError("AutoTokenizer token types differ from ours on the verification pairs")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(out), dtype=torch.float32
    )
    model.eval()
    with torch.no_grad():
        theirs = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in encoded.items()}).logits
    mesh = finetune.sharding.make_mesh(config)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    mine = finetune.Scorer(config, mesh, graphdef, param_shardings, tokenizer, 8)(
        params, list(VERIFY_PAIRS)
    )
    delta = float(np.abs(theirs.numpy() - mine).max())
    if not delta <= export.VERIFY_TOLERANCE:
        raise RuntimeError(f"exported classifier disagrees with ours: max |Δlogit| = {delta:.3g}")
    return f"export verified: max |Δlogit| = {delta:.2g} on {len(VERIFY_PAIRS)} pairs"
