"""The typed experiment config: schema, YAML loading, dotted overrides, dumping.

Each field's description says what it controls (``mlm-jax config schema`` prints them).
Relative paths are resolved against the working directory when a config is
loaded, so the ``config.yaml`` dumped into a workdir reruns from anywhere.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlm_jax.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    family: Literal["bert", "modern"] = Field(
        "bert", description="bert: post-LN, learned positions; modern: pre-LN, rotary, GeGLU"
    )
    num_layers: int = Field(2, ge=1, description="number of transformer blocks")
    hidden_size: int = Field(128, ge=8, description="width of the residual stream")
    num_heads: int = Field(2, ge=1, description="attention heads; must divide hidden_size")
    intermediate_size: int = Field(512, ge=8, description="width of the feed-forward layer")
    vocab_size: int = Field(
        8000, ge=16, description="tokenizer vocabulary size (padded to a multiple of 128 inside)"
    )
    max_position_embeddings: int = Field(
        512, ge=8, description="longest sequence the position table (bert) supports"
    )
    type_vocab_size: int = Field(2, ge=1, description="token-type (segment A/B) ids, bert only")
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on hidden states")
    attention_dropout_rate: float = Field(
        0.1, ge=0.0, lt=1.0, description="dropout on attention probabilities"
    )
    dropout_bits: Literal[8, 16, 32] = Field(
        8,
        description="random bits per dropped element: 8 or 16 cut every 32-bit draw of the "
        "generator into 4 or 2 (the keep probability rounds to a multiple of 2^-bits and the "
        "scale follows it, so the expectation is exact); 32 is jax.random.bernoulli, what runs "
        "made before this field used",
    )
    layer_norm_eps: float = Field(1e-12, gt=0.0, description="epsilon of every layer norm")
    rope_theta: float = Field(
        160000.0, gt=0.0, description="rotary base frequency of the global layers, modern only"
    )
    local_rope_theta: float = Field(
        10000.0, gt=0.0, description="rotary base frequency of the sliding-window layers, modern"
    )
    global_attn_every_n_layers: int = Field(
        3,
        ge=1,
        description="modern: layer i attends globally when i % n == 0, the others through a "
        "sliding window (ModernBERT: 3); 1 makes every layer global",
    )
    local_attention: int = Field(
        128,
        ge=2,
        description="modern: width of the sliding window; a token sees the tokens at most "
        "local_attention // 2 positions away, within its own document (ModernBERT: 128)",
    )
    attention_bias: bool = Field(False, description="modern: biases in Wqkv and Wo")
    mlp_bias: bool = Field(False, description="modern: biases in the MLP's Wi and Wo")
    norm_bias: bool = Field(False, description="modern: biases in every layer norm")
    classifier_bias: bool = Field(False, description="modern: a bias in the MLM head's dense")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="compute dtype; parameters and optimizer state stay float32"
    )
    attention_kernel: Literal["auto", "explicit"] = Field(
        "auto",
        description="auto: cuDNN's fused kernel for bf16 on a GPU without attention dropout, "
        "XLA's for fp32 without it, else the products written out; explicit: always written out",
    )
    remat: Literal["none", "dense", "full"] = Field(
        "none",
        description="recompute activations in the backward pass: none; dense (keep the dense "
        "layers' outputs, recompute attention, activations and norms); full (keep only each "
        "block's input). Trades FLOPs for memory; `mlm-jax plan` shows both",
    )
    init_from: str | None = Field(
        None, description="start from a run directory, or hf:PATH for a Hugging Face checkpoint"
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} does not divide "
                f"model.hidden_size={self.hidden_size}; pick a divisor"
            )
        if self.family == "modern" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError("model.family=modern needs an even head size for rotary embeddings")
        modern_only = ("attention_bias", "mlp_bias", "norm_bias", "classifier_bias")
        if self.family == "bert" and any(getattr(self, f) for f in modern_only):
            raise ValueError(
                "model.attention_bias/mlp_bias/norm_bias/classifier_bias choose the modern "
                "family's biases; BERT has them all: leave them false with family=bert"
            )
        return self

    def attention_window(self, layer: int, length: int | None = None) -> int | None:
        """Tokens seen on either side by ``layer``'s sliding window; None: a global layer,
        or, for rows of ``length`` tokens, a window that spans the whole row."""
        if self.family != "modern" or layer % self.global_attn_every_n_layers == 0:
            return None
        window = self.local_attention // 2
        return None if length is not None and window >= length - 1 else window

    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary rounded up to a multiple of 128 so the vocab axis shards evenly."""
        return int(math.ceil(self.vocab_size / 128) * 128)


class DataConfig(_Section):
    source: str = Field(
        "runs/data", description="a prepared dataset directory, or a TFDS name with data.data_dir"
    )
    data_dir: str | None = Field(None, description="TFDS data_dir when data.source is a TFDS name")
    text_feature: str = Field("text", description="feature holding the text in a TFDS dataset")
    train_split: str = Field("train", description="split used for training")
    eval_split: str = Field("validation", description="split used by eval")
    tokenizer: str = Field(
        "runs/tokenizer", description="tokenizer directory (spm.model, or tokenizer.json)"
    )
    seq_len: int = Field(128, ge=8, description="tokens per packed row")
    mask_rate: float = Field(0.15, gt=0.0, lt=1.0, description="fraction of tokens to predict")
    eval_mask_rate: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="mask rate of evaluation (default: mask_rate); fix it, e.g. 0.15, to "
        "compare recipes trained at different rates on one task",
    )
    mask_token_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="of the chosen tokens, the share replaced by [MASK]"
    )
    random_token_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="of the chosen tokens, the share replaced at random"
    )
    max_predictions: int | None = Field(
        None, ge=1, description="masked slots per row (default: ceil(1.25*seq_len*mask_rate))"
    )
    worker_count: int = Field(0, ge=0, description="Grain worker processes (0: in-process)")
    prefetch_batches: int = Field(2, ge=0, description="batches prepared ahead of the step")
    shuffle: bool = Field(True, description="shuffle documents each epoch (seeded)")
    num_streams: int | None = Field(
        None,
        ge=1,
        description="packed row streams, fixed whatever the process count "
        "(default gcd(global_batch_size, 8)); must divide the batch, processes must divide it",
    )

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.mask_token_fraction + self.random_token_fraction > 1.0 + 1e-9:
            raise ValueError(
                "data.mask_token_fraction + data.random_token_fraction exceed 1; lower one"
            )
        return self

    @property
    def predictions_per_row(self) -> int:
        if self.max_predictions is not None:
            return self.max_predictions
        return max(1, math.ceil(1.25 * self.seq_len * self.mask_rate))


class TrainConfig(_Section):
    steps: int = Field(100, ge=1, description="optimizer steps to run")
    global_batch_size: int = Field(32, ge=1, description="rows per step over all processes")
    seed: int = Field(0, description="seed of init, shuffling, masking and dropout")
    eval_every: int = Field(50, ge=0, description="evaluate every N steps (0: only at the end)")
    eval_batches: int = Field(8, ge=1, description="validation batches per evaluation")
    log_every: int = Field(10, ge=1, description="write metrics every N steps")
    checkpoint_every: int = Field(50, ge=1, description="save a checkpoint every N steps")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept on disk")
    keep_best: bool = Field(False, description="also keep the checkpoint with best eval loss")
    on_nonfinite: Literal["raise", "skip"] = Field(
        "raise", description="non-finite loss or gradient: stop with an error, or skip the update"
    )


class OptimConfig(_Section):
    name: Literal["adamw", "lamb"] = Field("adamw", description="optimizer")
    learning_rate: float = Field(1e-3, gt=0.0, description="peak learning rate")
    warmup_steps: int = Field(10, ge=0, description="linear warmup from 0 to the peak")
    schedule: Literal["linear", "cosine", "wsd", "constant"] = Field(
        "linear", description="decay after warmup; wsd = warmup, stable, then decay"
    )
    decay_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="wsd: share of the steps spent decaying"
    )
    end_learning_rate_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="final learning rate as a share of the peak"
    )
    weight_decay: float = Field(0.01, ge=0.0, description="decoupled weight decay")
    b1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam beta1")
    b2: float = Field(0.98, ge=0.0, lt=1.0, description="Adam beta2")
    eps: float = Field(1e-6, gt=0.0, description="Adam epsilon")
    clip_norm: float | None = Field(1.0, gt=0.0, description="global-norm clipping (null: off)")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")


class MeshConfig(_Section):
    data: int = Field(-1, description="data-parallel axis size (-1: all remaining devices)")
    fsdp: int = Field(1, ge=1, description="parameter-sharded data-parallel axis size")
    tensor: int = Field(1, ge=1, description="tensor-parallel axis size (heads, mlp, vocab)")
    target: str | None = Field(
        None,
        description="the TPU slice this config is written for (e.g. v5p-64); `mlm-jax plan` "
        "compiles for it when --target is not given",
    )

    @model_validator(mode="after")
    def _data_positive_or_auto(self) -> MeshConfig:
        if self.data == 0 or self.data < -1:
            raise ValueError("mesh.data must be a positive size or -1 (use the remaining devices)")
        return self

    def shape(self, device_count: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) for ``device_count`` devices; raises UserError if impossible."""
        rest = self.fsdp * self.tensor
        data = self.data if self.data != -1 else device_count // rest
        if data < 1 or data * rest != device_count:
            raise UserError(
                f"mesh data={self.data} fsdp={self.fsdp} tensor={self.tensor} does not fit "
                f"{device_count} devices; make data*fsdp*tensor equal {device_count} "
                "(or set mesh.data=-1)"
            )
        return data, self.fsdp, self.tensor


class FinetuneConfig(_Section):
    task: Literal["classify", "rerank"] = Field("classify", description="head and loss to train")
    train_file: str = Field("", description="labelled JSONL for training")
    eval_file: str | None = Field(None, description="labelled JSONL for held-out evaluation")
    num_labels: int = Field(2, ge=1, description="classify: number of classes")
    loss: Literal["cross_entropy", "pointwise", "listwise", "distill"] = Field(
        "cross_entropy",
        description="classify: cross_entropy; rerank: pointwise BCE, listwise, or distill "
        "(listwise against the label mixed with a teacher's scores)",
    )
    teacher_scale: float = Field(
        20.0, gt=0.0, description="rerank distill: teacher scores times this are softmaxed"
    )
    distill_weight: float = Field(
        1.0, ge=0.0, description="rerank distill: the teacher's share beside the label's (1)"
    )
    negatives_per_query: int = Field(
        7, ge=1, description="rerank listwise: negatives scored with each positive"
    )
    max_query_tokens: int = Field(32, ge=1, description="rerank: query tokens kept on truncation")
    score_seq_len: int | None = Field(
        None,
        ge=8,
        description="score/search: row length when scoring (default: data.seq_len, the rows "
        "the model was trained on); --seq-len overrides",
    )
    score_windows: Literal["maxp", "firstp"] = Field(
        "maxp",
        description="score/search: a passage longer than the row's room is cut into "
        "half-overlapping windows scored by the best (maxp), or read only up to the room "
        "(firstp, as training rows are); --windows overrides",
    )
    pack_rows: bool = Field(
        True,
        description="pack short texts several to a row of data.seq_len (segment masks keep "
        "them apart): the same logits from fewer padded tokens",
    )


class Config(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    finetune: FinetuneConfig | None = Field(None, description="present for mlm-jax finetune")

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        if self.model.family == "bert" and self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_position_embeddings="
                f"{self.model.max_position_embeddings}; raise the latter or shorten rows"
            )
        if self.data.predictions_per_row > self.data.seq_len:
            raise ValueError("data.max_predictions exceeds data.seq_len; lower it")
        if self.train.global_batch_size % self.num_streams:
            raise ValueError(
                f"train.global_batch_size={self.train.global_batch_size} is not divisible by "
                f"data.num_streams={self.num_streams}; change one of them"
            )
        if self.mesh.data != -1:
            step_rows = self.mesh.data * self.mesh.fsdp * self.optim.grad_accum_steps
            if self.train.global_batch_size % step_rows:
                raise ValueError(
                    f"train.global_batch_size={self.train.global_batch_size} is not divisible by "
                    f"mesh.data*mesh.fsdp*optim.grad_accum_steps={step_rows}; change one of them"
                )
        return self

    @property
    def num_streams(self) -> int:
        """Row streams of the data pipeline; see DataConfig.num_streams."""
        if self.data.num_streams is not None:
            return self.data.num_streams
        return math.gcd(self.train.global_batch_size, 8)

    def check_devices(self, device_count: int) -> tuple[int, int, int]:
        """Validate the mesh and batch against the devices actually present."""
        data, fsdp, tensor = self.mesh.shape(device_count)
        step_rows = data * fsdp * self.optim.grad_accum_steps
        if self.train.global_batch_size % step_rows:
            raise UserError(
                f"train.global_batch_size={self.train.global_batch_size} is not divisible by "
                f"data*fsdp*grad_accum_steps={step_rows} on {device_count} devices; "
                "change the batch or the mesh"
            )
        return data, fsdp, tensor


_PATH_FIELDS = (
    ("data", "tokenizer"),
    ("data", "data_dir"),
    ("finetune", "train_file"),
    ("finetune", "eval_file"),
)


def _resolve_paths(raw: dict[str, Any]) -> None:
    """Make file paths absolute so a dumped config reruns from any directory."""
    for section, key in _PATH_FIELDS:
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str) and value and not value.startswith(("hf:", "gs://", "builtin:")):
            raw[section][key] = os.path.abspath(os.path.expanduser(value))
    data = raw.get("data") or {}
    # With a data_dir, data.source is a TFDS name (which may contain "/"); else a directory.
    if isinstance(data.get("source"), str) and not data.get("data_dir"):
        data["source"] = os.path.abspath(os.path.expanduser(data["source"]))
    init = (raw.get("model") or {}).get("init_from")
    if isinstance(init, str) and init:
        if init.startswith("hf:"):
            raw["model"]["init_from"] = "hf:" + os.path.abspath(os.path.expanduser(init[3:]))
        else:
            raw["model"]["init_from"] = os.path.abspath(os.path.expanduser(init))


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is read as YAML so numbers and null get their types."""
    if "=" not in item:
        raise UserError(f"override {item!r} is not KEY=VALUE; write e.g. optim.learning_rate=1e-4")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise UserError(f"override {item!r}: {key!r} is not a section; check the key path")
            node = child
        node[keys[-1]] = value


def _format_validation_error(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    kind = first["type"]
    if kind == "extra_forbidden":
        return (
            f"{origin}: unknown config key {where!r}; "
            "see `mlm-jax config schema` for the valid keys"
        )
    message = first["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{origin}: {message}"
    given = first.get("input")
    return f"{origin}: {where}={given!r}: {message}; fix the value (see `mlm-jax config schema`)"


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping safely (no Python object tags)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} not found; pass an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(
            f"config file {str(path)!r} is not valid YAML{at}; fix the syntax"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"config file {str(path)!r} is not UTF-8 text; pass a YAML file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections at top level")
    return raw


def from_dict(raw: dict[str, Any], origin: str = "config") -> Config:
    """Validate a raw mapping into a :class:`Config`, raising UserError on any problem."""
    _resolve_paths(raw)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, origin)) from None


def load(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Load a config file (or the defaults when ``path`` is None) and apply overrides."""
    raw = load_yaml(path) if path is not None else {}
    apply_overrides(raw, overrides or [])
    return from_dict(raw, origin=str(path) if path else "config")


def dump(config: Config) -> str:
    """The resolved config as YAML, the form written to ``WORKDIR/config.yaml``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def schema_lines() -> list[str]:
    """One line per field: dotted key, type, default and help."""
    lines = []
    sections = [(name, field) for name, field in Config.model_fields.items()]
    for section_name, section_field in sections:
        section_type = section_field.annotation
        if section_name == "finetune":
            section_type = FinetuneConfig
        for key, field in section_type.model_fields.items():
            type_name = _type_name(field.annotation)
            default = field.get_default(call_default_factory=True)
            lines.append(
                f"{section_name}.{key}: {type_name} = {default!r}  # {field.description or ''}"
            )
    return lines


def _type_name(annotation: Any) -> str:
    if getattr(annotation, "__origin__", None) is Literal:
        return " | ".join(repr(choice) for choice in annotation.__args__)
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
