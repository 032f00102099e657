"""``mlm-jax export``: a run's checkpoint as a Hugging Face directory, checked by ``transformers``.

A pretraining run becomes a ``BertForMaskedLM`` / ``ModernBertForMaskedLM`` directory, a
fine-tuned run a ``*ForSequenceClassification`` one (a reranker with one label and
``sentence_transformers.activation_fn`` set to Identity, so ``CrossEncoder(DIR).predict``
returns the logit ``mlm-jax score`` prints). Both are written by :mod:`mlm_jax.hf.writer`
from the name tables of :mod:`mlm_jax.hf.names`; then, when torch and transformers are
installed, the directory is loaded back and its logits and token ids compared with ours.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mlm_jax import distributed
from mlm_jax import manifest as manifest_lib
from mlm_jax.config import Config
from mlm_jax.data import finetune_data
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.hf import names, writer
from mlm_jax.inference import fusion, loading
from mlm_jax.model import sharding
from mlm_jax.model.encoder import abstract_encoder
from mlm_jax.model.pair_scorer import Scorer
from mlm_jax.model.tasks import task_of
from mlm_jax.state import restore

VERIFY_TOLERANCE = 1e-4
VERIFY_SENTENCES = (
    "To be, or not to be: that is the question.",
    "The king [MASK] the crown upon his head, and spoke.",
    "Naïve café déjà vu — «quoted» text, 12345 digits   and  extra   spaces.",
    "Emoji 🙂 and 数字 fall back to bytes.",
)
VERIFY_PAIRS = (
    ("Who comes here?", "A friend to this ground, and liegemen to the Dane."),
    ("To be, or not to be", "that is the question: whether 'tis nobler in the mind to suffer"),
    ("Naïve café?", "Emoji 🙂 and 数字 fall back to bytes."),
)


def export_run(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    step: int | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """Write a run's checkpoint (newest, or ``step``) as the directory ``out``.

    Every process takes part (the parameters are gathered); process 0 alone writes.
    ``out`` appears complete or not at all. With ``verify`` (and torch + transformers
    installed) a mismatch with ``transformers`` raises RuntimeError.
    """
    out = Path(out)
    writer.check_out_dir(out, force)
    config, _, params = restore.restore_params(str(workdir), step)
    host_params = distributed.gather_to_host(params)
    tensors, hf_config = names.exported(config, host_params)
    if jax.process_index() == 0:
        manifest = manifest_lib.read(workdir)
        writer.write_directory(out, config, tensors, hf_config, manifest, force=force,
                               extra=_beside_model(workdir))  # fmt: skip
        which = "the newest checkpoint" if step is None else f"step {step}"
        distributed.log(f"wrote {out} ({hf_config['architectures'][0]}, {which})")
        if verify:
            print(_VERIFY[task_of(config).export_kind](out, config, host_params))
    distributed.barrier("mlm_jax_export")
    return out


def _beside_model(workdir) -> dict[str, bytes]:
    """Files a run keeps next to its checkpoints that travel with its export: its fusion
    weights and the bi-encoder they weigh (:func:`mlm_jax.inference.fusion.exported`)."""
    return fusion.exported(workdir)


def write_pretrained(config: Config, params: nnx.State, out, manifest=None, force=False) -> Path:
    """Write host ``params`` of a pretraining config as a ``*ForMaskedLM`` directory."""
    tensors = names.to_hf_state_dict(config, params)
    return writer.write_directory(out, config, tensors, names.hf_config(config), manifest, force)


def verify_pretrained(out: str | os.PathLike, config: Config, params: nnx.State) -> str:
    """Compare ``transformers``' logits and tokens on ``out`` with our model's; one-line result."""
    try:
        import torch
        import transformers
    except ImportError:
        return "export verification skipped: torch and transformers are not installed"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    ours = tokenizer_lib.load(out if (Path(out) / "spm.model").is_file() else config.data.tokenizer)
    # Tiny test models may have fewer positions than a sentence has tokens: truncate both.
    limit = names.hf_max_positions(config)
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
    cfg = config.model.model_copy(update={"dtype": "float32"})
    graphdef = abstract_encoder(cfg)[0]
    input_ids = np.asarray(input_ids, np.int32)
    segment_ids = np.asarray(attention_mask, np.int32)  # one document per row; 0 = padding
    positions = np.broadcast_to(np.arange(input_ids.shape[1], dtype=np.int32), input_ids.shape)

    @jax.jit
    def forward(state, ids, segments, pos):
        return nnx.merge(graphdef, state).full_logits(ids, segments, pos)

    logits = forward(distributed.gather_to_host(params), input_ids, segment_ids, positions)
    return np.asarray(logits)[..., : cfg.vocab_size]


def verify_finetuned(out: Path, config: Config, params: nnx.State) -> str:
    """Compare ``transformers``' logits and pair token ids on ``out`` with ours; one line.

    Our side is the export read back (``config`` and ``params`` are the run's: the
    signature every task's check shares)."""
    del config, params
    try:
        import torch
        import transformers
    except ImportError:
        return "export verification skipped: torch and transformers are not installed"
    loaded = loading.load(out)
    config, graphdef, params, tokenizer = (
        loaded.config, loaded.graphdef, loaded.params, loaded.tokenizer
    )  # fmt: skip
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    queries, passages = (list(column) for column in zip(*VERIFY_PAIRS, strict=True))
    limit = config.data.seq_len
    encoded = hf_tokenizer(queries, passages, padding="max_length", truncation=True,
                           max_length=limit, return_tensors="np")  # fmt: skip
    pair_encoder = finetune_data.PairEncoder(tokenizer, limit, config.finetune.max_query_tokens)
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
    mesh = sharding.make_mesh(config)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    mine = Scorer(config, mesh, graphdef, param_shardings, tokenizer, 8)(params, list(VERIFY_PAIRS))
    delta = float(np.abs(theirs.numpy() - mine).max())
    if not delta <= VERIFY_TOLERANCE:
        raise RuntimeError(f"exported classifier disagrees with ours: max |Δlogit| = {delta:.3g}")
    return f"export verified: max |Δlogit| = {delta:.2g} on {len(VERIFY_PAIRS)} pairs"


# How the export of each kind of task is checked against transformers.
_VERIFY = {"masked_lm": verify_pretrained, "sequence_classification": verify_finetuned}
