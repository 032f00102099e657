"""Masking: rates, 80/10/10, never-masked specials, labels, statelessness, standalone."""

import numpy as np
import pytest

from mlm_jax.data import masking

VOCAB = 700


def check_masked_batch(original: np.ndarray, masked: dict[str, np.ndarray], spec) -> dict:
    """Assert the masking invariants for rows whose unmasked ids are ``original``.

    Returns counts for rate checks: maskable, chosen, [MASK], random, kept.
    """
    positions, labels = masked["mlm_positions"], masked["mlm_labels"]
    weights = masked["mlm_weights"]
    used = weights > 0
    assert weights.dtype == np.float32 and set(np.unique(weights)) <= {0.0, 1.0}
    assert positions.dtype == np.int32 and labels.dtype == np.int32
    # Used slots come first, positions strictly ascending; unused slots are zeros.
    assert np.all(np.diff(used.astype(int), axis=1) <= 0)
    assert np.all(positions[~used] == 0) and np.all(labels[~used] == 0)
    for row_positions, row_used in zip(positions, used, strict=True):
        assert np.all(np.diff(row_positions[row_used]) > 0)
    rows = np.broadcast_to(np.arange(len(original))[:, None], positions.shape)
    chosen_original = original[rows[used], positions[used]]
    assert np.array_equal(labels[used], chosen_original)  # labels are the original ids
    assert not np.isin(chosen_original, spec.never_masked).any()
    # Only chosen positions change.
    changed = masked["input_ids"] != original
    chosen = np.zeros_like(changed)
    chosen[rows[used], positions[used]] = True
    assert not (changed & ~chosen).any()
    now = masked["input_ids"][rows[used], positions[used]]
    is_mask = now == spec.mask_id
    is_kept = now == chosen_original
    random_ids = now[~is_mask & ~is_kept]
    assert np.all(random_ids >= spec.first_real_id) and np.all(random_ids < spec.vocab_size)
    return {
        "maskable": int(np.sum(~np.isin(original, spec.never_masked))),
        "chosen": int(used.sum()),
        "mask": int(is_mask.sum()),
        "random": int(np.sum(~is_mask & ~is_kept)),
        "kept": int(is_kept.sum()),
    }


def _rows(rng, count, seq_len):
    """Rows shaped like packed ones: [CLS] ... [SEP] pieces and a padded tail."""
    ids = rng.integers(5, VOCAB, (count, seq_len)).astype(np.int32)
    ids[:, 0] = 2
    ids[:, 40] = 3
    ids[:, 41] = 2
    lengths = rng.integers(60, seq_len + 1, count)
    for row, length in enumerate(lengths):
        ids[row, length - 1] = 3
        ids[row, length:] = 0
    return ids


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_rates_over_100k_tokens(rate):
    rng = np.random.default_rng(0)
    original = _rows(rng, 1100, 128)
    spec = masking.MaskSpec(
        seed=0, vocab_size=VOCAB, mask_rate=rate, max_predictions=int(np.ceil(1.25 * 128 * rate))
    )
    result = masking.mask_rows(original, np.zeros(1100), np.arange(1100), spec)
    counts = check_masked_batch(original, result, spec)
    assert counts["maskable"] >= 100_000
    assert abs(counts["chosen"] / counts["maskable"] - rate) < 0.005
    assert abs(counts["mask"] / counts["chosen"] - 0.8) < 0.01
    assert abs(counts["random"] / counts["chosen"] - 0.1) < 0.01
    assert abs(counts["kept"] / counts["chosen"] - 0.1) < 0.01


def test_mask_is_a_function_of_seed_epoch_and_row_only():
    rng = np.random.default_rng(1)
    original = _rows(rng, 8, 64)
    spec = masking.MaskSpec(seed=5, vocab_size=VOCAB, max_predictions=12)
    rows, epochs = np.arange(100, 108), np.array([0, 0, 1, 1, 2, 2, 3, 3])
    together = masking.mask_rows(original, epochs, rows, spec)
    # The same row masked alone, or in another batch order, gets the same mask.
    order = np.arange(8)[::-1]
    reversed_batch = masking.mask_rows(original[order], epochs[order], rows[order], spec)
    for key, value in together.items():
        assert np.array_equal(value[order], reversed_batch[key])
    alone = masking.mask_rows(original[3:4], epochs[3:4], rows[3:4], spec)
    assert np.array_equal(alone["input_ids"][0], together["input_ids"][3])
    # Another epoch, row or seed changes the mask.
    other_epoch = masking.mask_rows(original, epochs + 1, rows, spec)
    other_seed = masking.mask_rows(original, epochs, rows, masking.MaskSpec(6, VOCAB))
    assert not np.array_equal(other_epoch["mlm_positions"], together["mlm_positions"])
    assert not np.array_equal(other_seed["mlm_positions"], together["mlm_positions"])


def test_max_predictions_caps_and_padding_rows_have_no_targets():
    original = np.zeros((3, 32), np.int32)
    original[1] = np.r_[2, np.arange(5, 35), 3]
    spec = masking.MaskSpec(seed=0, vocab_size=VOCAB, mask_rate=0.5, max_predictions=4)
    result = masking.mask_rows(original, np.zeros(3), np.arange(3), spec)
    check_masked_batch(original, result, spec)
    assert result["mlm_weights"].sum(1).tolist() == [0.0, 4.0, 0.0]
    assert np.array_equal(result["input_ids"][0], original[0])
