"""``mlm-jax data peek``: the batches a process would see, decoded, with masked tokens marked.

What a user runs to check what the model is fed: each row's documents as text, with a
predicted token shown as ``[MASK→orig]`` (replaced by [MASK]), ``{orig→new}`` (replaced by
a random token) or ``{orig}`` (kept), and the packing efficiency of the batches.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, TextIO

import numpy as np

from mlm_jax.data.pipeline import batch_stats, load_checked_tokenizer, make_train_iterator


def _render_segment(tokenizer, ids, labels: dict[int, int], columns) -> str:
    """Pieces of one segment; predicted tokens marked as [MASK→orig], {orig→new} or {orig}."""
    words = []
    for column in columns:
        token = int(ids[column])
        piece = tokenizer.id_to_piece(token)
        if column in labels:
            original = tokenizer.id_to_piece(labels[column])
            if token == tokenizer.mask_id:
                piece = f"[MASK→{original}]"
            elif token != labels[column]:
                piece = f"{{{original}→{piece}}}"
            else:
                piece = f"{{{original}}}"
        words.append(piece)
    return " ".join(words).replace("▁", "")


def describe_row(tokenizer, batch: dict[str, np.ndarray], row: int) -> list[str]:
    """The segments of one row as readable text with masked tokens marked."""
    weights = batch["mlm_weights"][row] > 0
    labels = dict(
        zip(
            batch["mlm_positions"][row][weights].tolist(),
            batch["mlm_labels"][row][weights].tolist(),
            strict=True,
        )
    )
    segments = batch["segment_ids"][row]
    return [
        _render_segment(tokenizer, batch["input_ids"][row], labels, np.flatnonzero(segments == s))
        for s in np.unique(segments[segments > 0])
    ]


def peek(
    config, batches: int = 1, process_index: int = 0, process_count: int = 1, out: str | None = None
) -> dict[str, float]:
    """Print (or write as JSONL to ``out``) the first training batches, decoded and marked."""
    tokenizer = load_checked_tokenizer(config)
    iterator = make_train_iterator(config, process_index, process_count)
    with contextlib.ExitStack() as stack:
        stack.callback(iterator.close)
        sink: TextIO = stack.enter_context(open(out, "w", encoding="utf-8")) if out else sys.stdout
        efficiencies = []
        for step in range(batches):
            batch = next(iterator)
            efficiencies.append(batch_stats(batch)["packing_efficiency"])
            for row in range(iterator.local_batch_size):
                record = {
                    "step": step,
                    "row": row,
                    **{key: int(values[row]) for key, values in iterator.last_rows.items()},
                    "segments": describe_row(tokenizer, batch, row),
                }
                sink.write(_peek_line(record, as_json=bool(out)))
        summary = {"packing_efficiency": float(np.mean(efficiencies)), "batches": batches}
        sink.write(json.dumps(summary) + "\n")
        return summary


def _peek_line(record: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(record, ensure_ascii=False) + "\n"
    header = (
        f"step {record['step']} row {record['row']} (stream {record['stream']}, "
        f"epoch {record['epoch']}, row {record['row_index']})"
    )
    return header + "\n" + "".join(f"  | {segment}\n" for segment in record["segments"])
