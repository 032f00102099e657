"""Stateless MLM masking: the mask of a row is a pure function of (seed, epoch, row index).

Each row draws its randomness from its own Philox generator keyed by those three
numbers, so a resumed or resharded run masks every row exactly as before, no
matter which process or worker produced it. The rest is vectorised over rows.

Per row, ``floor(mask_rate * maskable + u)`` tokens are chosen (``u`` uniform,
so the expected rate is exact, not rounded), capped by ``max_predictions``.
``[PAD]``, ``[CLS]`` and ``[SEP]`` are never chosen. A chosen token becomes
``[MASK]`` with probability ``mask_token_fraction``, a random real token (never
a special id) with ``random_token_fraction``, and stays as it is otherwise; its
label is always the original id.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mlm_jax.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID

NEVER_MASKED = (PAD_ID, CLS_ID, SEP_ID)
# Ids 0..4 are the special tokens; random replacements start after them.
FIRST_REAL_ID = 5
_ROW_BITS = 40  # row index < 2**40, epoch < 2**24 share the second key word


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Everything masking needs besides the rows themselves."""

    seed: int
    vocab_size: int
    mask_rate: float = 0.15
    mask_token_fraction: float = 0.8
    random_token_fraction: float = 0.1
    max_predictions: int = 20
    mask_id: int = MASK_ID
    never_masked: tuple[int, ...] = NEVER_MASKED
    first_real_id: int = FIRST_REAL_ID

    @classmethod
    def from_tokenizer(cls, config, tokenizer) -> MaskSpec:
        """The config's masking options with the tokenizer's vocabulary and special ids."""
        data = config.data
        return cls(
            seed=config.train.seed,
            vocab_size=tokenizer.vocab_size,
            mask_rate=data.mask_rate,
            mask_token_fraction=data.mask_token_fraction,
            random_token_fraction=data.random_token_fraction,
            max_predictions=data.predictions_per_row,
            mask_id=tokenizer.mask_id,
            never_masked=tuple(sorted(tokenizer.special_ids)),
        )


def row_generator(seed: int, epoch: int, row_index: int) -> np.random.Generator:
    """The generator of one row: Philox keyed by (seed, epoch, row index)."""
    key = [seed % (1 << 64), ((epoch % (1 << 24)) << _ROW_BITS) | (row_index % (1 << _ROW_BITS))]
    return np.random.Generator(np.random.Philox(key=key))


def _row_draws(spec: MaskSpec, epochs, row_indices, seq_len: int):
    """Per row: selection keys, 80/10/10 draws, rounding draw, random replacement ids."""
    rows = len(row_indices)
    uniforms = np.empty((rows, 2 * seq_len + 1))
    replacements = np.empty((rows, seq_len), np.int32)
    for r, (epoch, row_index) in enumerate(zip(epochs, row_indices, strict=True)):
        generator = row_generator(spec.seed, int(epoch), int(row_index))
        uniforms[r] = generator.random(2 * seq_len + 1)
        replacements[r] = generator.integers(spec.first_real_id, spec.vocab_size, seq_len)
    return uniforms[:, :seq_len], uniforms[:, seq_len:-1], uniforms[:, -1], replacements


def mask_rows(
    input_ids: np.ndarray, epochs: np.ndarray, row_indices: np.ndarray, spec: MaskSpec
) -> dict[str, np.ndarray]:
    """Mask rows ``input_ids [B, L]``; returns the masked ids and the MLM targets.

    Returns ``input_ids [B, L] int32`` (masked copy), ``mlm_positions, mlm_labels
    [B, P] int32`` and ``mlm_weights [B, P] float32`` (0.0 on unused slots, whose
    position and label are 0). Positions are ascending within a row.
    """
    rows, seq_len = input_ids.shape
    predictions = spec.max_predictions
    select_keys, kind_draws, rounding, replacements = _row_draws(spec, epochs, row_indices, seq_len)
    maskable = ~np.isin(input_ids, spec.never_masked)  # [B, L]
    count = np.floor(spec.mask_rate * maskable.sum(1) + rounding).astype(np.int64)
    count = np.minimum(count, predictions)  # [B]
    # The `count` maskable tokens with the smallest keys are the chosen ones.
    candidates = np.argsort(np.where(maskable, select_keys, 2.0), axis=1, kind="stable")
    if predictions > seq_len:
        candidates = np.pad(candidates, ((0, 0), (0, predictions - seq_len)))
    used = np.arange(predictions)[None, :] < count[:, None]  # [B, P]
    positions = np.sort(np.where(used, candidates[:, :predictions], seq_len), axis=1)
    positions = np.where(used, positions, 0).astype(np.int32)
    labels = np.where(used, np.take_along_axis(input_ids, positions, 1), 0).astype(np.int32)

    kind = np.take_along_axis(kind_draws, positions, 1)
    to_mask = used & (kind < spec.mask_token_fraction)
    to_random = used & ~to_mask & (kind < spec.mask_token_fraction + spec.random_token_fraction)
    masked = input_ids.astype(np.int32, copy=True)
    row_of = np.broadcast_to(np.arange(rows)[:, None], positions.shape)
    masked[row_of[to_mask], positions[to_mask]] = spec.mask_id
    random_ids = np.take_along_axis(replacements, positions, 1)
    masked[row_of[to_random], positions[to_random]] = random_ids[to_random]
    return {
        "input_ids": masked,
        "mlm_positions": positions,
        "mlm_labels": labels,
        "mlm_weights": used.astype(np.float32),
    }
