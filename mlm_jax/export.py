"""Hugging Face interop: export a run as a ``transformers`` model directory, import HF BERTs.

An export directory holds ``config.json`` + ``model.safetensors`` (``BertForMaskedLM`` or
``ModernBertForMaskedLM`` tensors, no pickle), tokenizer files that ``AutoTokenizer``
loads into the same ids as ours, ``mlm_jax.json`` (the resolved config and run manifest),
and a copy of ``spm.model``/``meta.json`` so our own tokenizer loads from it too.

Tensor naming follows the table in :mod:`mlm_jax.model`. Our kernels are ``[in, *out]``;
torch ``Linear.weight`` is ``[out, in]``. The vocabulary axis is padded to a multiple of
128 inside the model; exports hold ``model.vocab_size`` rows and imports pad them back.
Tied copies (``cls.predictions.decoder.weight``, ``decoder.weight``) are not written, as
``save_pretrained`` does not write them: ``tie_word_embeddings`` restores them on load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx

from mlm_jax import artifacts, hf_tokenizer
from mlm_jax import manifest as manifest_lib
from mlm_jax import tokenizer as tokenizer_lib
from mlm_jax.config import Config, ModelConfig
from mlm_jax.errors import UserError

VERIFY_TOLERANCE = 1e-4
VERIFY_SENTENCES = (
    "To be, or not to be: that is the question.",
    "The king [MASK] the crown upon his head, and spoke.",
    "Naïve café déjà vu — «quoted» text, 12345 digits   and  extra   spaces.",
    "Emoji 🙂 and 数字 fall back to bytes.",
)

# ----------------------------------------------------------------------------- tensor names

# Kinds of leaves: "kernel" (transposed to torch [out, in]), "plain" (same array),
# "vocab" (first axis cut to model.vocab_size on export, zero-padded on import).


def _dense(ours: tuple, hf: str) -> list[tuple[tuple, str, str]]:
    return [
        (ours + ("kernel",), f"{hf}.weight", "kernel"),
        (ours + ("bias",), f"{hf}.bias", "plain"),
    ]


def _norm(ours: tuple, hf: str) -> list[tuple[tuple, str, str]]:
    return [(ours + ("scale",), f"{hf}.weight", "plain"), (ours + ("bias",), f"{hf}.bias", "plain")]


def _bert_names(cfg: ModelConfig) -> list[tuple[tuple, str, str]]:
    e = "bert.embeddings"
    names = [
        (("embeddings", "word_embeddings"), f"{e}.word_embeddings.weight", "vocab"),
        (("embeddings", "position_embeddings"), f"{e}.position_embeddings.weight", "plain"),
        (("embeddings", "token_type_embeddings"), f"{e}.token_type_embeddings.weight", "plain"),
        *_norm(("embeddings", "norm"), f"{e}.LayerNorm"),
    ]
    for n in range(cfg.num_layers):
        hf = f"bert.encoder.layer.{n}"
        names += [
            *_dense(("layers", n, "query"), f"{hf}.attention.self.query"),
            *_dense(("layers", n, "key"), f"{hf}.attention.self.key"),
            *_dense(("layers", n, "value"), f"{hf}.attention.self.value"),
            *_dense(("layers", n, "attention_output"), f"{hf}.attention.output.dense"),
            *_norm(("layers", n, "attention_norm"), f"{hf}.attention.output.LayerNorm"),
            *_dense(("layers", n, "intermediate"), f"{hf}.intermediate.dense"),
            *_dense(("layers", n, "output"), f"{hf}.output.dense"),
            *_norm(("layers", n, "output_norm"), f"{hf}.output.LayerNorm"),
        ]
    return names + [
        *_dense(("head", "dense"), "cls.predictions.transform.dense"),
        *_norm(("head", "norm"), "cls.predictions.transform.LayerNorm"),
        (("head", "decoder_bias"), "cls.predictions.bias", "vocab"),
    ]


def _modern_names(cfg: ModelConfig) -> list[tuple[tuple, str, str]]:
    names = [
        (("embeddings", "tok_embeddings"), "model.embeddings.tok_embeddings.weight", "vocab"),
        *_norm(("embeddings", "norm"), "model.embeddings.norm"),
    ]
    for n in range(cfg.num_layers):
        hf = f"model.layers.{n}"
        names += [
            *_norm(("layers", n, "attn_norm"), f"{hf}.attn_norm"),
            *_dense(("layers", n, "Wqkv"), f"{hf}.attn.Wqkv"),
            *_dense(("layers", n, "Wo"), f"{hf}.attn.Wo"),
            *_norm(("layers", n, "mlp_norm"), f"{hf}.mlp_norm"),
            *_dense(("layers", n, "Wi"), f"{hf}.mlp.Wi"),
            *_dense(("layers", n, "mlp_Wo"), f"{hf}.mlp.Wo"),
        ]
    return names + [
        *_norm(("final_norm",), "model.final_norm"),
        *_dense(("head", "dense"), "head.dense"),
        *_norm(("head", "norm"), "head.norm"),
        (("head", "decoder_bias"), "decoder.bias", "vocab"),
    ]


def abstract_params(cfg: ModelConfig) -> nnx.State:
    from mlm_jax.model import abstract_encoder

    return abstract_encoder(cfg)[1]


def leaf_names(cfg: ModelConfig, abstract: nnx.State) -> dict[tuple, tuple[str, str]]:
    """Our parameter path -> (HF tensor name, kind), for exactly the leaves the model has."""
    table = _bert_names(cfg) if cfg.family == "bert" else _modern_names(cfg)
    lookup = {ours: (hf, kind) for ours, hf, kind in table}
    paths = [tuple(path) for path, _ in nnx.to_flat_state(abstract)]
    unmapped = [path for path in paths if path not in lookup]
    if unmapped:  # a model change that this table does not know: a bug, not a user error
        raise AssertionError(f"parameters without a Hugging Face name: {unmapped}")
    return {path: lookup[path] for path in paths}


def gather_to_host(params: Any) -> Any:
    """Parameters as host numpy arrays; every process must call this (collective)."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, np.ndarray):
            return x
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, params)


def to_hf_state_dict(config: Config, params: nnx.State) -> dict[str, np.ndarray]:
    """Our parameters -> HF ``*ForMaskedLM`` tensors (float32, vocab padding removed).

    Gathers sharded parameters, so every process of a multi-host run must call it.
    """
    cfg = config.model
    host = gather_to_host(params)
    names = leaf_names(cfg, host)
    tensors = {}
    for path, var in nnx.to_flat_state(host):
        hf_name, kind = names[tuple(path)]
        value = np.asarray(var.get_value(), dtype=np.float32)
        if kind == "kernel":
            value = value.reshape(value.shape[0], -1).T
        elif kind == "vocab":
            value = value[: cfg.vocab_size]
        tensors[hf_name] = np.ascontiguousarray(value)
    return tensors


def from_hf_state_dict(config: Config, tensors: dict[str, np.ndarray]) -> nnx.State:
    """HF tensors (our export's names, tied copies optional) -> an ``nnx.State`` of numpy arrays.

    Raises UserError naming the first missing tensor or wrong shape.
    """
    cfg = config.model
    abstract = abstract_params(cfg)
    names = leaf_names(cfg, abstract)
    leaves = []
    for path, var in nnx.to_flat_state(abstract):
        hf_name, kind = names[tuple(path)]
        shape = tuple(var.get_value().shape)
        expected = _hf_shape(shape, kind, cfg.vocab_size)
        if hf_name not in tensors:
            raise UserError(
                f"checkpoint lacks tensor {hf_name!r}; is it a {cfg.family} model "
                "with these model.* settings?"
            )
        value = np.asarray(tensors[hf_name], dtype=np.float32)
        if value.shape != expected:
            raise UserError(
                f"tensor {hf_name!r} has shape {value.shape}, the config expects {expected}; "
                "set model.* to the checkpoint's values (see `hf_model_config`)"
            )
        if kind == "kernel":
            value = value.T.reshape(shape)
        elif kind == "vocab":
            value = np.concatenate([value, np.zeros((shape[0] - value.shape[0], *shape[1:]))])
        leaves.append((path, var.replace(np.ascontiguousarray(value, dtype=np.float32))))
    return nnx.from_flat_state(leaves)


def _hf_shape(shape: tuple[int, ...], kind: str, vocab_size: int) -> tuple[int, ...]:
    if kind == "kernel":
        return (int(np.prod(shape[1:])), shape[0])
    if kind == "vocab":
        return (vocab_size, *shape[1:])
    return shape


# ----------------------------------------------------------------------------- config.json


def hf_config(config: Config) -> dict[str, Any]:
    """``config.json`` of the matching ``transformers`` class, computing what our model does."""
    m = config.model
    common = {
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "intermediate_size": m.intermediate_size,
        "initializer_range": 0.02,
        "pad_token_id": tokenizer_lib.PAD_ID,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }
    if m.family == "bert":
        return {
            "architectures": ["BertForMaskedLM"],
            "model_type": "bert",
            **common,
            "hidden_act": "gelu",  # exact erf GELU, as model.gelu
            "hidden_dropout_prob": m.dropout_rate,
            "attention_probs_dropout_prob": m.attention_dropout_rate,
            "max_position_embeddings": m.max_position_embeddings,
            "type_vocab_size": m.type_vocab_size,
            "layer_norm_eps": m.layer_norm_eps,
            "position_embedding_type": "absolute",
            "is_decoder": False,
            "add_cross_attention": False,
            "classifier_dropout": None,
        }
    # Rotary has no table: any length works; announce at least the training length.
    max_positions = max(m.max_position_embeddings, config.data.seq_len)
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    return {
        "architectures": ["ModernBertForMaskedLM"],
        "model_type": "modernbert",
        **common,
        "hidden_activation": "gelu",
        "classifier_activation": "gelu",  # the MLM head's transform activation
        "max_position_embeddings": max_positions,
        "norm_eps": m.layer_norm_eps,
        "norm_bias": False,
        "attention_bias": False,
        "mlp_bias": False,
        "classifier_bias": False,  # head.dense has no bias
        "decoder_bias": True,
        "embedding_dropout": m.dropout_rate,
        "attention_dropout": m.attention_dropout_rate,
        "mlp_dropout": m.dropout_rate,
        "classifier_dropout": 0.0,
        "classifier_pooling": "cls",
        # Every layer is global: our model has no sliding-window attention.
        "layer_types": ["full_attention"] * m.num_layers,
        "global_attn_every_n_layers": 1,
        "local_attention": max_positions + max_positions % 2,
        "rope_parameters": {"full_attention": dict(rope), "sliding_attention": dict(rope)},
        "global_rope_theta": m.rope_theta,  # transformers 4.x reads these two
        "local_rope_theta": m.rope_theta,
        "initializer_cutoff_factor": 2.0,
        "cls_token_id": tokenizer_lib.CLS_ID,
        "sep_token_id": tokenizer_lib.SEP_ID,
        "bos_token_id": tokenizer_lib.CLS_ID,
        "eos_token_id": tokenizer_lib.SEP_ID,
        "sparse_prediction": False,
        "deterministic_flash_attn": False,
    }


# ----------------------------------------------------------------------------- export


def export_run(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    step: int | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """Write a run's checkpoint as a Hugging Face directory ``out``; returns its path.

    Every process takes part (the parameters are gathered); process 0 alone writes.
    ``out`` appears complete or not at all. With ``verify`` (and torch + transformers
    installed), the written directory is loaded with ``AutoModelForMaskedLM`` and its
    logits and tokenizer ids are compared with ours; a mismatch raises RuntimeError.
    """
    from mlm_jax import distributed, train

    run_config = Path(workdir) / "config.yaml"
    if run_config.is_file() and (yaml.safe_load(run_config.read_text()) or {}).get("finetune"):
        from mlm_jax import finetune_export  # a fine-tuned run exports as a sequence classifier

        return finetune_export.export_finetuned(workdir, out, step, force, verify)
    out = Path(out)
    check_out_dir(out, force)
    config, _, params = train.load_run_params(str(workdir), step)
    host_params = gather_to_host(params)
    if jax.process_index() == 0:
        write_export(config, host_params, out, manifest=manifest_lib.read(workdir), force=force)
        which = "the newest checkpoint" if step is None else f"step {step}"
        distributed.log(f"wrote {out} ({config.model.family}, {which})")
        if verify:
            print(verify_export(out, config, host_params))
    barrier("mlm_jax_export")
    return out


def _refusal(out: Path, force: bool) -> str:
    """Why ``out`` cannot be written ("" when it can)."""
    if out.exists() and not out.is_dir():
        return f"--out {str(out)!r} is a file; give a directory path"
    if out.is_dir() and any(out.iterdir()) and not force:
        return f"--out {str(out)!r} is not empty; pass --force to replace it"
    return ""


def check_out_dir(out: Path, force: bool) -> None:
    """:func:`_refusal` decided by process 0 for all processes (a collective)."""
    problem = _refusal(out, force) if jax.process_index() == 0 else ""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        flag = multihost_utils.broadcast_one_to_all(np.int32(bool(problem)))
        if int(flag) and not problem:
            problem = f"process 0 refused --out {str(out)!r}; see its message"
    if problem:
        raise UserError(problem)


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write_export(
    config: Config,
    params: nnx.State,
    out: str | os.PathLike,
    manifest: dict | None = None,
    force: bool = False,
) -> Path:
    """Write ``config.json``, ``model.safetensors``, tokenizer files and ``mlm_jax.json``.

    Staged in a temporary sibling directory and renamed into place.
    """
    from safetensors.numpy import save_file

    out = Path(out)
    problem = _refusal(out, force)
    if problem:
        raise UserError(problem)
    tensors = to_hf_state_dict(config, params)
    files = hf_tokenizer.hf_tokenizer_files(config.data.tokenizer, config)
    files["config.json"] = artifacts.json_bytes(hf_config(config))
    files["mlm_jax.json"] = artifacts.json_bytes(
        {"config": config.model_dump(mode="json"), "manifest": manifest}
    )
    with artifacts.staged_directory(out) as staging:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        for name, data in files.items():
            (staging / name).write_bytes(data)
    return out


def verify_export(out: str | os.PathLike, config: Config, params: nnx.State) -> str:
    """Compare ``transformers``' logits and tokens on ``out`` with our model's; one-line result."""
    try:
        import torch
        import transformers
    except ImportError:
        return "export verification skipped: torch and transformers are not installed"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    ours = tokenizer_lib.load(out if (Path(out) / "spm.model").is_file() else config.data.tokenizer)
    # Tiny test models may have fewer positions than a sentence has tokens: truncate both.
    limit = hf_config(config)["max_position_embeddings"]
    rows = [
        [ours.cls_id, *ours.encode_with_specials(text).tolist()[: limit - 2], ours.sep_id]
        for text in VERIFY_SENTENCES
    ]
    encoded = hf_tokenizer(
        list(VERIFY_SENTENCES), padding=True, truncation=True, max_length=limit, return_tensors="np"
    )
    for text, row, ids, mask in zip(
        VERIFY_SENTENCES, rows, encoded["input_ids"], encoded["attention_mask"], strict=True
    ):
        if ids[mask.astype(bool)].tolist() != row:
            raise RuntimeError(f"AutoTokenizer ids differ from ours on {text!r}")
    model = transformers.AutoModelForMaskedLM.from_pretrained(str(out), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in encoded.items()}
        theirs = model(**inputs).logits.numpy()
    mask = encoded["attention_mask"].astype(bool)
    mine = our_logits(config, params, encoded["input_ids"], mask)
    delta = float(np.abs(theirs - mine)[mask].max())
    tokens = int(mask.sum())
    if not delta <= VERIFY_TOLERANCE:
        raise RuntimeError(
            f"exported model disagrees with ours: max |Δlogit| = {delta:.3g} over {tokens} "
            f"tokens > {VERIFY_TOLERANCE} (transformers {transformers.__version__})"
        )
    return (
        f"export verified: max |Δlogit| = {delta:.2g} over {tokens} tokens "
        f"(transformers {transformers.__version__})"
    )


def our_logits(
    config: Config, params: nnx.State, input_ids: np.ndarray, attention_mask: np.ndarray
) -> np.ndarray:
    """Our float32, dropout-free MLM logits ``[B, L, vocab_size]`` for padded rows."""
    from mlm_jax.model import abstract_encoder

    cfg = config.model.model_copy(update={"dtype": "float32"})
    graphdef = abstract_encoder(cfg)[0]
    input_ids = np.asarray(input_ids, np.int32)
    segment_ids = np.asarray(attention_mask, np.int32)  # one document per row; 0 = padding
    positions = np.broadcast_to(np.arange(input_ids.shape[1], dtype=np.int32), input_ids.shape)

    @jax.jit
    def forward(state, ids, segments, pos):
        return nnx.merge(graphdef, state).full_logits(ids, segments, pos)

    logits = forward(gather_to_host(params), input_ids, segment_ids, positions)
    return np.asarray(logits)[..., : cfg.vocab_size]
