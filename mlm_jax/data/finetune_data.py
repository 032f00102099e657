"""Labelled JSONL for fine-tuning: reading with ``file:line`` errors, pair encoding, batches.

Formats (one JSON object per line):

- classify: ``{"text", "label"}`` or ``{"text_a", "text_b", "label"}``; label an int class id;
- rerank: ``{"query", "positive", "negatives": [...]}`` or ``{"query", "passage", "label"}``
  with label 0/1 (lines of one query are grouped). A passage line may carry its first-stage
  score ``"bm25"`` (``mlm-jax data relevance --pairs`` writes it), which the BM25 baseline
  then uses as is. In an evaluation file a query may have no relevant passage (retrieval
  missed it); it scores 0. For ``finetune.loss: distill`` every training passage carries a
  teacher's score: ``"teacher": [positive's, each negative's...]`` on a
  ``{"query", "positive", "negatives"}`` line, ``"teacher": number`` on a passage line
  (``mlm-jax data teacher`` adds them from a sentence-transformers bi-encoder).

Cross-encoder rows are ``[CLS] first [SEP] second [SEP]`` with token types 0 then 1;
truncation keeps up to ``max_query_tokens`` of the first text and gives the rest of
``seq_len`` to the second. The training batch at step s depends only on the data, the
seed and s, so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlm_jax import artifacts
from mlm_jax.errors import UserError


@dataclass(frozen=True)
class Labelled:
    """One classification example."""

    text_a: str
    text_b: str | None
    label: int


@dataclass
class RankingQuery:
    """A query with its relevant and irrelevant passages."""

    query: str
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    where: str = ""  # FILE:LINE of its first line, for error messages
    bm25: dict[str, float] = field(default_factory=dict)  # passage -> first-stage score
    teacher: dict[str, float] = field(default_factory=dict)  # passage -> a teacher's score


_MISSING = "check finetune.train_file/eval_file"


def _records(path: str | Path, missing: str = _MISSING):
    """``(where, dict)`` for each non-blank line; UserError naming ``file:line`` (a missing
    file's ends in ``missing``, what to pass instead)."""
    lines = artifacts.read_jsonl(path, missing=missing, expected="one JSON object per line")
    for where, record in lines:
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {_kind(record)}")
        yield where, record


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else type(value).__name__
    )


def _text(record: dict, key: str, where: str, expected: str) -> str:
    if key not in record:
        raise UserError(f"{where}: missing field {key!r}; each line needs {expected}")
    value = record[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {key!r} must be a string, got {_kind(value)}")
    return value


def read_classify(path: str | Path, num_labels: int) -> list[Labelled]:
    """Classification examples of a JSONL file."""
    expected = '{"text", "label"} or {"text_a", "text_b", "label"}'
    examples = []
    for where, record in _records(path):
        if "text" in record or "text_a" not in record:
            text_a, text_b = _text(record, "text", where, expected), None
        else:
            text_a, text_b = (_text(record, k, where, expected) for k in ("text_a", "text_b"))
        if "label" not in record:
            raise UserError(f"{where}: missing field 'label'; each line needs {expected}")
        label = record["label"]
        if not isinstance(label, int) or isinstance(label, bool):
            raise UserError(
                f"{where}: 'label' must be an integer class id, got {_kind(label)} {label!r}"
            )
        if not 0 <= label < num_labels:
            raise UserError(
                f"{where}: label {label} is outside 0..{num_labels - 1}; raise finetune.num_labels"
            )
        examples.append(Labelled(text_a, text_b, label))
    if not examples:
        raise UserError(f"{path}: no examples; write one JSON object per line")
    return examples


def read_rerank(
    path: str | Path, evaluation: bool = False, missing: str = _MISSING
) -> list[RankingQuery]:
    """Ranking queries of a JSONL file, in order of first appearance.

    ``evaluation``: a query's candidates may all be irrelevant (or all relevant).
    ``missing``: what a missing file's error tells the user to pass instead.
    """
    expected = '{"query", "positive", "negatives"} or {"query", "passage", "label"}'
    queries: dict[str, RankingQuery] = {}
    for where, record in _records(path, missing):
        text = _text(record, "query", where, expected)
        entry = queries.setdefault(text, RankingQuery(text, where=where))
        if "passage" in record:
            passage = _text(record, "passage", where, expected)
            label = record.get("label")
            if "label" not in record:
                raise UserError(f"{where}: missing field 'label'; each line needs {expected}")
            if label not in (0, 1) or not isinstance(label, int | bool):
                raise UserError(f"{where}: 'label' must be 0 or 1, got {_kind(label)} {label!r}")
            (entry.positives if label else entry.negatives).append(passage)
            if isinstance(record.get("bm25"), int | float):
                entry.bm25[passage] = float(record["bm25"])
            _read_teacher(record, [passage], entry, where)
            continue
        entry.positives.append(_text(record, "positive", where, expected))
        negatives = record.get("negatives")
        if "negatives" not in record:
            raise UserError(f"{where}: missing field 'negatives'; each line needs {expected}")
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            raise UserError(f"{where}: 'negatives' must be a list of strings")
        if not negatives:
            raise UserError(f"{where}: 'negatives' is empty; give at least one negative passage")
        entry.negatives.extend(negatives)
        _read_teacher(record, [entry.positives[-1], *negatives], entry, where)
    for entry in queries.values():
        missing = "positive" if not entry.positives else "negative" if not entry.negatives else ""
        if missing and not evaluation:
            raise UserError(
                f"{entry.where}: query {entry.query[:40]!r} has no {missing} passage; "
                "each query needs at least one of each"
            )
    if not queries:
        raise UserError(f"{path}: no queries; write one JSON object per line")
    return list(queries.values())


def _read_teacher(record: dict, passages: list[str], entry: RankingQuery, where: str) -> None:
    """Record the line's ``teacher`` scores, one per passage of the line, if it has them."""
    if "teacher" not in record:
        return
    scores = record["teacher"]
    scores = [scores] if len(passages) == 1 and not isinstance(scores, list) else scores
    numeric = isinstance(scores, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in scores
    )
    if not numeric or len(scores) != len(passages):
        raise UserError(f"{where}: 'teacher' must hold {len(passages)} number(s), one per "
                        "passage of the line (positive first)")  # fmt: skip
    entry.teacher.update(zip(passages, map(float, scores), strict=True))


def check_teacher_scores(queries: list[RankingQuery], path: str) -> None:
    """Distillation needs a teacher score for every passage; name the first query lacking one."""
    for query in queries:
        if not set(query.teacher) >= {*query.positives, *query.negatives}:
            raise UserError(
                f"{query.where}: query {query.query[:40]!r} lacks 'teacher' scores that "
                "finetune.loss=distill needs; add them with `mlm-jax data teacher`"
            )


# ----------------------------------------------------------------------------- encoding


class PairEncoder:
    """Turns texts into padded cross-encoder rows; token ids are cached per text."""

    def __init__(self, tokenizer, seq_len: int, max_query_tokens: int):
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.max_query_tokens = max_query_tokens
        self._ids: dict[str, np.ndarray] = {}

    def token_ids(self, texts: list) -> list[np.ndarray]:
        """Token ids of each text, tokenized once per distinct text; an item that is
        already token ids (a passage window) passes through."""
        new = sorted({t for t in texts if isinstance(t, str) and t not in self._ids})
        if new:
            self._ids.update(zip(new, self.tokenizer.encode_batch(new), strict=True))
        return [t if isinstance(t, np.ndarray) else self._ids[t] for t in texts]

    def second_room(self, first: np.ndarray) -> int:
        """Tokens of a long second text that fit in a row beside ``first``: the query keeps
        up to ``max_query_tokens`` and the row's three special tokens take theirs."""
        room = self.seq_len - 3
        return room - min(len(first), self.max_query_tokens, room - 1)

    def row(self, first: np.ndarray, second: np.ndarray | None) -> tuple[list[int], list[int]]:
        """``(input_ids, token_type_ids)`` of one row, truncated to ``seq_len``."""
        cls, sep = self.tokenizer.cls_id, self.tokenizer.sep_id
        if second is None:
            ids = [cls, *first[: self.seq_len - 2].tolist(), sep]
            return ids, [0] * len(ids)
        room = self.seq_len - 3
        keep_first = min(len(first), max(self.max_query_tokens, room - len(second)), room - 1)
        keep_second = min(len(second), room - keep_first)  # second_room(first) when long
        a, b = first[:keep_first].tolist(), second[:keep_second].tolist()
        return [cls, *a, sep, *b, sep], [0] * (len(a) + 2) + [1] * (len(b) + 1)

    def _rows(self, pairs: list[tuple[str, str | None]]) -> list[tuple[list[int], list[int]]]:
        """:meth:`row` of each pair, token ids looked up in one batch per side."""
        firsts = self.token_ids([a for a, _ in pairs])
        seconds = iter(self.token_ids([b for _, b in pairs if b is not None]))
        return [self.row(first, next(seconds) if b is not None else None)
                for (_, b), first in zip(pairs, firsts, strict=True)]  # fmt: skip

    def encode(self, pairs: list[tuple[str, str | None]]) -> dict[str, np.ndarray]:
        """Rows ``[N, seq_len]``: input_ids, token_type_ids, segment_ids (0 = pad), positions."""
        rows = self._rows(pairs)
        shape = (len(pairs), self.seq_len)
        batch = {
            "input_ids": np.zeros(shape, np.int32),
            "token_type_ids": np.zeros(shape, np.int32),
            "segment_ids": np.zeros(shape, np.int32),
            "positions": np.broadcast_to(np.arange(self.seq_len, dtype=np.int32), shape).copy(),
        }
        for i, (ids, types) in enumerate(rows):
            batch["input_ids"][i, : len(ids)] = ids
            batch["token_type_ids"][i, : len(ids)] = types
            batch["segment_ids"][i, : len(ids)] = 1
        return batch

    def pack(self, pairs: list[tuple[str, str | None]], multiple: int) -> dict[str, np.ndarray]:
        """Pairs packed several to a row: ``encode``'s arrays plus ``cls_index [N]``.

        Rows are mostly padding (short glosses in rows sized for the long ones), so short
        pairs share a row: each pair is its own segment (1, 2, ... within the row; the
        encoder's segment mask keeps pairs from attending to each other) with positions
        from 0, and ``cls_index`` is the flat ``row * seq_len + offset`` of its ``[CLS]``.
        First-fit decreasing fills the rows; their count is rounded up to ``multiple``
        so that a run compiles for a few row counts only.
        """
        rows = self._rows(pairs)
        room: list[int] = []  # free tokens per packed row
        segments: list[int] = []  # pairs placed per packed row so far
        place = np.zeros((len(rows), 3), np.int64)  # (packed row, offset, segment) per pair
        for i in sorted(range(len(rows)), key=lambda i: -len(rows[i][0])):
            need = len(rows[i][0])
            target = next((r for r, free in enumerate(room) if free >= need), len(room))
            if target == len(room):
                room.append(self.seq_len)
                segments.append(0)
            segments[target] += 1
            place[i] = target, self.seq_len - room[target], segments[target]
            room[target] -= need
        count = -(-max(len(room), 1) // multiple) * multiple
        shape = (count, self.seq_len)
        batch = {name: np.zeros(shape, np.int32) for name in
                 ("input_ids", "token_type_ids", "segment_ids", "positions")}  # fmt: skip
        for (ids, types), (r, start, segment) in zip(rows, place, strict=True):
            span = slice(start, start + len(ids))
            batch["input_ids"][r, span] = ids
            batch["token_type_ids"][r, span] = types
            batch["segment_ids"][r, span] = segment
            batch["positions"][r, span] = np.arange(len(ids))
        batch["cls_index"] = (place[:, 0] * self.seq_len + place[:, 1]).astype(np.int32)
        return batch


def encode_share(
    encoder: PairEncoder, pairs: list[tuple[str, str | None]], pack: int, process=(0, 1)
) -> dict[str, np.ndarray]:
    """Process ``index`` of ``count``'s part of the global batch of ``pairs``.

    ``pack`` (0: off; else a multiple of the batch's devices) packs the whole batch, on
    every process alike so that they agree on the row count, and hands each its share of
    the packed rows and of ``cls_index`` (which keeps its global values: the model gathers
    over the global batch).
    """
    if not pack:
        return encoder.encode(pairs[_share(len(pairs), process)])
    packed = encoder.pack(pairs, pack)
    share = {k: v[_share(len(v), process)] for k, v in packed.items()}
    share["cls_index"] = packed["cls_index"][_share(len(pairs), process)]
    return share


def _share(items: int, process) -> slice:
    """Process ``index`` of ``count``'s contiguous share of ``items`` (a multiple of count)."""
    index, count = process
    per = items // count
    return slice(index * per, (index + 1) * per)


# ----------------------------------------------------------------------------- training batches


def _slots(step: int, batch_size: int, count: int, seed: int) -> np.ndarray:
    """Example indices of the ``batch_size`` slots of ``step``: a fresh permutation per epoch."""
    flat = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(flat, count)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng((seed, int(epoch))).permutation(count)
        out[epochs == epoch] = order[offsets[epochs == epoch]]
    return out


def classify_batch(
    examples: list[Labelled], encoder: PairEncoder, step: int, batch_size: int, seed: int,
    pack: int = 0, process=(0, 1),
) -> dict[str, np.ndarray]:  # fmt: skip
    """This process's share of the training batch of ``step`` (see :func:`encode_share`)."""
    chosen = [examples[i] for i in _slots(step, batch_size, len(examples), seed)]
    batch = encode_share(encoder, [(e.text_a, e.text_b) for e in chosen], pack, process)
    mine = _share(batch_size, process)
    batch["labels"] = np.asarray([e.label for e in chosen[mine]], np.int32)
    batch["weights"] = np.ones(len(chosen[mine]), np.float32)
    return batch


def rerank_batch(
    queries: list[RankingQuery],
    encoder: PairEncoder,
    step: int,
    batch_size: int,
    negatives: int,
    seed: int,
    distill: tuple[float, float] | None = None,
    pack: int = 0,
    process=(0, 1),
) -> dict[str, np.ndarray]:
    """This process's queries of ``step``: per query 1 positive then ``negatives`` negatives.

    Rows (pairs, before any packing) are query-major, ``[Q * (1 + negatives), L]``;
    ``weights [Q]`` marks the queries. With ``distill = (teacher_scale, weight)`` the batch
    also holds ``targets [Q, 1 + k]``: the label (all mass on the positive) mixed with
    ``softmax(teacher_scale * teacher scores)`` in the proportion 1 : weight.
    """
    slots = _slots(step, batch_size, len(queries), seed)
    pairs, targets = [], []
    for slot in range(batch_size):
        query = queries[slots[slot]]
        rng = np.random.default_rng((seed, step, slot, 1))
        positive = query.positives[rng.integers(len(query.positives))]
        replace = len(query.negatives) < negatives
        picked = rng.choice(len(query.negatives), negatives, replace=replace)
        chosen = [positive] + [query.negatives[i] for i in picked]
        pairs += [(query.query, passage) for passage in chosen]
        if distill is not None:
            targets.append(_soft_targets([query.teacher[p] for p in chosen], *distill))
    batch = encode_share(encoder, pairs, pack, process)
    mine = _share(batch_size, process)
    batch["weights"] = np.ones(mine.stop - mine.start, np.float32)
    if distill is not None:
        batch["targets"] = np.asarray(targets[mine], np.float32)
    return batch


def _soft_targets(teacher: list[float], scale: float, weight: float) -> np.ndarray:
    logits = scale * np.asarray(teacher, np.float64)
    soft = np.exp(logits - logits.max())
    label = np.zeros(len(teacher))
    label[0] = 1.0
    return (label + weight * soft / soft.sum()) / (1.0 + weight)


# ----------------------------------------------------------------------------- scoring input


def _candidate_text(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("text", "passage"):
            if isinstance(value.get(key), str):
                return value[key]
    raise UserError(f'{where}: a candidate must be a string or {{"text": ...}}, got {_kind(value)}')


def read_candidates(path: str | Path) -> list[str]:
    """Candidate texts, one per line: ``{"text"}``, ``{"passage"}`` or a JSON string."""
    lines = artifacts.read_jsonl(
        path, missing="pass a JSONL file to --candidates", expected="one candidate per line"
    )
    texts = [_candidate_text(value, where) for where, value in lines]
    if not texts:
        raise UserError(f"{path}: no candidates; write one JSON object per line")
    return texts


def read_scoring_queries(path: str | Path) -> list[tuple[str, list[str]]]:
    """``(query, candidates)`` per line of ``{"query", "candidates": [...]}``."""
    jobs = []
    for where, record in _records(path):
        query = _text(record, "query", where, '{"query", "candidates"}')
        candidates = record.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            raise UserError(f"{where}: 'candidates' must be a non-empty list")
        jobs.append((query, [_candidate_text(c, where) for c in candidates]))
    if not jobs:
        raise UserError(f"{path}: no queries; write one JSON object per line")
    return jobs
