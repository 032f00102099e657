"""Passages longer than a row, scored whole: overlapping windows and the best one (MaxP).

A reranker's row holds ``[CLS] query [SEP] passage [SEP]`` in ``seq_len`` tokens. Cut to
that, a long passage is judged by its opening only (FirstP), which is what training rows
hold but loses an answer further down. MaxP cuts the passage into windows that each fill
the room the query leaves, half overlapping so that no sentence is split in every window
that holds it, scores each window with the same query and keeps the best score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MODES = ("maxp", "firstp")
Pair = tuple[str, "str | np.ndarray | None"]


def windows(ids: np.ndarray, room: int) -> list[np.ndarray]:
    """Spans of ``room`` tokens every ``room // 2``, the last one ending with the passage:
    every token is in at least one window; a passage that fits is its own one window."""
    if len(ids) <= room:
        return [ids]
    stride = max(1, room // 2)
    starts = [*range(0, len(ids) - room, stride), len(ids) - room]
    return [ids[start : start + room] for start in starts]


def best_window_scores(
    encoder, score_rows: Callable[[list[Pair]], np.ndarray], pairs: list[tuple[str, str]]
) -> np.ndarray:
    """Each pair's score as its best window's: ``score_rows`` scores (query, token ids)
    rows that :class:`~mlm_jax.data.finetune_data.PairEncoder` ``encoder`` builds."""
    queries = encoder.token_ids([q for q, _ in pairs])
    passages = encoder.token_ids([p for _, p in pairs])
    rows, owner = [], []
    for index, ((query, _), query_ids, passage_ids) in enumerate(
        zip(pairs, queries, passages, strict=True)
    ):
        for window in windows(passage_ids, encoder.second_room(query_ids)):
            rows.append((query, window))
            owner.append(index)
    best = np.full(len(pairs), -np.inf, np.float32)
    np.maximum.at(best, np.asarray(owner), score_rows(rows))
    return best
