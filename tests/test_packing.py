"""Packing: segments, positions and padding of packed rows, standalone."""

import numpy as np
import pytest

from mlm_jax.data import packing
from mlm_jax.errors import UserError

CLS, SEP, PAD = 2, 3, 0


def check_packed_rows(rows: dict[str, np.ndarray], cls_id: int = CLS, sep_id: int = SEP):
    """Assert the packing invariants; return each row's segments as lists of inner tokens."""
    input_ids, segment_ids, positions = rows["input_ids"], rows["segment_ids"], rows["positions"]
    all_segments = []
    for ids, segments, pos in zip(input_ids, segment_ids, positions, strict=True):
        used = int(np.count_nonzero(segments))
        # Padding only at the end of the row.
        assert np.all(segments[:used] > 0) and np.all(segments[used:] == 0)
        assert np.all(ids[used:] == PAD) and np.all(pos[used:] == 0)
        # Segment ids count 1, 2, ... in order, one contiguous run each.
        changes = np.flatnonzero(np.diff(segments[:used])) + 1
        starts = np.concatenate([[0], changes])
        ends = np.concatenate([changes, [used]])
        assert list(segments[starts]) == list(range(1, len(starts) + 1))
        row_segments = []
        for start, end in zip(starts, ends, strict=True):
            assert end - start >= packing.MIN_PIECE
            assert list(pos[start:end]) == list(range(end - start))  # restart per piece
            assert ids[start] == cls_id and ids[end - 1] == sep_id
            inner = ids[start + 1 : end - 1]
            assert not np.isin(inner, (cls_id, sep_id, PAD)).any()
            row_segments.append(inner.tolist())
        all_segments.append(row_segments)
    return all_segments


def _documents(rng, count, longest):
    return [rng.integers(5, 1000, rng.integers(0, longest)).astype(np.int32) for _ in range(count)]


def test_pack_keeps_every_token_once_in_order():
    rng = np.random.default_rng(0)
    documents = _documents(rng, 300, 400)  # many longer than a row, some empty
    rows = packing.pack(documents, 64, CLS, SEP)
    segments = check_packed_rows(rows)
    flat = [token for row in segments for segment in row for token in segment]
    assert flat == np.concatenate(documents).tolist()
    assert rows["input_ids"].dtype == np.int32 and rows["input_ids"].shape[1] == 64


def test_long_document_continues_as_new_segment_with_fresh_positions():
    document = np.arange(5, 5 + 150, dtype=np.int32)
    rows = packing.pack([document], 64, CLS, SEP)
    segments = check_packed_rows(rows)
    assert [len(row) for row in segments] == [1, 1, 1]
    assert [len(row[0]) for row in segments] == [62, 62, 26]
    assert rows["positions"][1, 0] == 0 and rows["segment_ids"][1, 0] == 1


def test_row_with_less_than_a_piece_left_is_padded():
    # 59 tokens + CLS + SEP leave 3 slots for the next document: one token fits.
    rows = packing.pack([np.full(59, 7, np.int32), np.full(10, 8, np.int32)], 64, CLS, SEP)
    segments = check_packed_rows(rows)
    assert segments[0][1] == [8]
    rows = packing.pack([np.full(60, 7, np.int32), np.full(10, 8, np.int32)], 64, CLS, SEP)
    segments = check_packed_rows(rows)
    assert len(segments[0]) == 1 and rows["segment_ids"][0, -1] == 0  # 2 slots: padded
    assert segments[1] == [[8] * 10]


def test_efficiency_counts_non_pad_slots():
    rows = packing.pack([np.full(30, 9, np.int32)], 64, CLS, SEP)
    assert packing.packing_efficiency(rows["segment_ids"]) == pytest.approx(32 / 64)
    rng = np.random.default_rng(1)
    rows = packing.pack(_documents(rng, 200, 300), 128, CLS, SEP)
    assert packing.packing_efficiency(rows["segment_ids"]) > 0.97


def test_too_short_rows_are_refused():
    with pytest.raises(UserError, match="seq_len=4 is too small"):
        packing.pack([np.arange(5, 10)], 4, CLS, SEP)
