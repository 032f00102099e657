"""Packing tokenized documents into fixed-length rows.

Every piece of a document is written as ``[CLS] tokens [SEP]`` (BERT style), so
each segment of a row looks like a single-sequence BERT input and the model can
pool ``[CLS]`` in fine-tuning without a different input layout. Rows are filled
greedily in document order: when a document does not fit in what is left of a
row, the part that fits goes there and the rest continues in the next row as a
new piece (a new segment, positions restarting at 0). A piece needs at least
three slots (``[CLS]``, one token, ``[SEP]``); a row with fewer left is closed
and padded. So padding only ever sits at the end of a row, and ``segment_ids``
count pieces 1, 2, ... within a row (0 = padding).

The planning loop runs once per piece, never per token; copying is vectorised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from mlm_jax.errors import UserError

# [CLS] + one token + [SEP]: the smallest piece worth starting.
MIN_PIECE = 3
# Rows shorter than this cannot hold useful context for MLM; refuse them early.
MIN_SEQ_LEN = 8


def check_seq_len(seq_len: int) -> None:
    if seq_len < MIN_SEQ_LEN:
        raise UserError(
            f"data.seq_len={seq_len} is too small: a row needs [CLS], tokens and [SEP]; "
            f"use at least {MIN_SEQ_LEN} (typical: 128 or 512)"
        )


@dataclasses.dataclass
class Piece:
    """``length`` tokens of ``tokens`` from ``start``, placed at column ``column`` of a row."""

    tokens: np.ndarray
    start: int
    length: int
    column: int


class RowPacker:
    """Greedy packer that pulls documents on demand and returns one row's pieces at a time.

    Its position is ``(pending document, offset)``: the pipeline saves that to
    resume exactly at a row boundary.
    """

    def __init__(self, seq_len: int):
        check_seq_len(seq_len)
        self.seq_len = seq_len
        self.pending: np.ndarray | None = None
        self.offset = 0

    def next_row(self, next_document: Callable[[], np.ndarray | None]) -> list[Piece] | None:
        """Pieces of the next row; None when ``next_document`` is exhausted and nothing waits.

        ``next_document`` returns the next document's token ids, or None at the end.
        """
        pieces: list[Piece] = []
        column = 0
        while self.seq_len - column >= MIN_PIECE:
            if self.pending is None or self.offset >= len(self.pending):
                self.pending, self.offset = next_document(), 0
                if self.pending is None:
                    break
                continue  # an empty document yields no piece
            length = min(self.seq_len - column - 2, len(self.pending) - self.offset)
            pieces.append(Piece(self.pending, self.offset, length, column))
            self.offset += length
            column += length + 2
        return pieces or None


def rows_from_pieces(
    rows: list[list[Piece]], seq_len: int, cls_id: int, sep_id: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Write planned rows into ``input_ids, segment_ids, positions [R, L] int32``."""
    flat = [(r, s, p) for r, row in enumerate(rows) for s, p in enumerate(row, 1)]
    num_rows = len(rows)
    input_ids = np.full((num_rows, seq_len), pad_id, np.int32)
    segment_ids = np.zeros((num_rows, seq_len), np.int32)
    positions = np.zeros((num_rows, seq_len), np.int32)
    if not flat:
        return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions}
    row_of = np.array([r for r, _, _ in flat])
    segment_of = np.array([s for _, s, _ in flat])
    column_of = np.array([p.column for _, _, p in flat])
    width = np.array([p.length for _, _, p in flat]) + 2  # with [CLS] and [SEP]
    # Per slot of every piece: its position inside the piece, and where it lands.
    piece_of_slot = np.repeat(np.arange(len(flat)), width)
    starts = np.cumsum(width) - width
    position = np.arange(len(piece_of_slot)) - starts[piece_of_slot]
    destination = row_of[piece_of_slot] * seq_len + column_of[piece_of_slot] + position
    values = np.empty(len(piece_of_slot), np.int32)
    values[starts] = cls_id
    values[starts + width - 1] = sep_id
    inner = np.concatenate([p.tokens[p.start : p.start + p.length] for _, _, p in flat])
    is_inner = np.ones(len(values), bool)
    is_inner[starts] = False
    is_inner[starts + width - 1] = False
    values[is_inner] = inner
    input_ids.reshape(-1)[destination] = values
    segment_ids.reshape(-1)[destination] = segment_of[piece_of_slot]
    positions.reshape(-1)[destination] = position
    return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions}


def pack(
    documents: Iterable[np.ndarray], seq_len: int, cls_id: int, sep_id: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Pack all documents into rows; the last row is padded."""
    packer = RowPacker(seq_len)
    source = iter(documents)
    rows = []
    while (row := packer.next_row(lambda: next(source, None))) is not None:
        rows.append(row)
    return rows_from_pieces(rows, seq_len, cls_id, sep_id, pad_id)


def packing_efficiency(segment_ids: np.ndarray) -> float:
    """Share of slots holding a token (specials included) rather than padding."""
    return float(np.mean(segment_ids != 0)) if segment_ids.size else 0.0
