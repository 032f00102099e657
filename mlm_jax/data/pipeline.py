"""The Grain input pipeline: documents → tokens → packed rows → masked host batches.

Multi-host contract: the global batch at step ``s`` depends only on (config, data, s),
never on the process count or the worker count. That comes from fixed *row streams*:

- ``V = config.num_streams`` streams, independent of the process count. Stream ``v``
  owns records ``v, v+V, v+2V, ...`` of the split, visits them in a permutation
  drawn from ``(seed, epoch, v)`` each epoch, tokenizes, packs (``packing``) and
  masks (``masking``) row ``k`` of the stream from ``(seed, epoch, v + V*k)``.
  Rows never mix two epochs: the last row of an epoch is padded.
- Every step, each stream contributes ``global_batch_size / V`` rows; the 1-process
  batch is streams ``0..V-1`` concatenated in order.
- Process ``p`` of ``C`` owns the contiguous block of streams
  ``[p*V/C, (p+1)*V/C)``; so concatenating the host batches in process order gives
  exactly the 1-process batch, and each process reads and tokenizes only its share.
- With ``data.worker_count = W > 0`` a process's streams are dealt round-robin to
  ``min(W, streams)`` Grain worker processes (``mp_prefetch`` with one worker per
  group); whole streams move, so the rows do not depend on ``W``.

The iterator state is the position of every stream after the last batch handed out
(``{"doc", "offset", "rows"}``), tracked in the main process, so prefetch depth and
worker count do not enter it. It is plain JSON. ``set_state`` accepts states holding
more streams than the process owns, so the per-process states of a run can be merged
and restored under another process count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import grain
import numpy as np

from mlm_jax.data import corpus, integrity, masking, packing
from mlm_jax.data import tokenizer as tokenizers
from mlm_jax.errors import UserError

STATE_VERSION = 1
_READ_AHEAD_DOCUMENTS = 16
_EMPTY_EPOCHS_ALLOWED = 2


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """Everything a worker process needs to rebuild one row stream."""

    stream: int
    num_streams: int
    records: corpus.TextRecords
    tokenizer_dir: str
    seq_len: int
    seed: int
    shuffle: bool
    single_epoch: bool

    @property
    def document_count(self) -> int:
        """Records of the split that belong to this stream."""
        return len(range(self.stream, len(self.records), self.num_streams))


def _shuffle_seed(seed: int, epoch: int, stream: int) -> int:
    """A 32-bit seed for the permutation of one stream in one epoch."""
    return int(np.random.SeedSequence([seed % (1 << 63), epoch, stream]).generate_state(1)[0])


class DocumentReader:
    """Picklable map ``i -> (i, token ids)`` for the i-th document a stream visits.

    ``i`` counts across epochs: epoch ``i // n``, place ``i % n`` in that epoch's order.
    """

    def __init__(self, spec: StreamSpec):
        self.spec = spec
        self._tokenizer = None

    def __getstate__(self):
        return {"spec": self.spec, "_tokenizer": None}

    def record_index(self, i: int) -> int:
        count = self.spec.document_count
        epoch, place = divmod(i, count)
        if self.spec.shuffle:
            seed = _shuffle_seed(self.spec.seed, epoch, self.spec.stream)
            place = grain.experimental.index_shuffle(place, count - 1, seed, 4)
        return self.spec.stream + self.spec.num_streams * place

    def __call__(self, i: int) -> tuple[int, np.ndarray]:
        if self._tokenizer is None:
            self._tokenizer = tokenizers.load(self.spec.tokenizer_dir)
        text = self.spec.records[self.record_index(i)]
        return i, self._tokenizer.encode(text)


class RowStream:
    """One stream of packed (unmasked) rows, resumable from a position dict."""

    def __init__(self, spec: StreamSpec, position: dict[str, int] | None = None):
        position = position or {"doc": 0, "offset": 0, "rows": 0}
        self.spec = spec
        self.document_count = spec.document_count
        self.rows_made = int(position["rows"])
        self.packer = packing.RowPacker(spec.seq_len)
        self.next_index = int(position["doc"])
        self.pending_index = -1
        self._documents = self._open(self.next_index)
        self._lookahead: tuple[int, np.ndarray] | None = None
        if position["offset"]:
            self.pending_index, self.packer.pending = self._take()
            self.packer.offset = int(position["offset"])
        self.row_epoch = 0

    def _open(self, start: int):
        if self.document_count == 0:
            return iter(())
        documents = grain.MapDataset.range(start, sys.maxsize).map(DocumentReader(self.spec))
        options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=_READ_AHEAD_DOCUMENTS)
        return iter(documents.to_iter_dataset(options))

    def _peek(self) -> tuple[int, np.ndarray]:
        if self._lookahead is None:
            self._lookahead = next(self._documents)
        return self._lookahead

    def _take(self) -> tuple[int, np.ndarray]:
        item = self._peek()
        self._lookahead = None
        self.next_index = item[0] + 1
        return item

    def _next_document(self) -> np.ndarray | None:
        """The next document of the current row's epoch; None at the epoch's end."""
        if self._peek()[0] // self.document_count > self.row_epoch:
            return None
        self.pending_index, tokens = self._take()
        return tokens

    def _has_pending(self) -> bool:
        pending = self.packer.pending
        return pending is not None and self.packer.offset < len(pending)

    def position(self) -> dict[str, int]:
        """Where the next row starts: a document index, a token offset, rows made so far."""
        if self._has_pending():
            return {"doc": self.pending_index, "offset": self.packer.offset, "rows": self.rows_made}
        return {"doc": self.next_index, "offset": 0, "rows": self.rows_made}

    def next_row(self) -> tuple[list[packing.Piece], int, int]:
        """(pieces, epoch, global row index) of the next row; no pieces = a padding row."""
        row_index = self.spec.stream + self.spec.num_streams * self.rows_made
        self.rows_made += 1
        pieces = None
        for _ in range(_EMPTY_EPOCHS_ALLOWED + 1):
            if self.document_count == 0:
                return [], 0, row_index
            self.row_epoch = self.position()["doc"] // self.document_count
            if self.spec.single_epoch and self.row_epoch > 0:
                return [], 0, row_index
            pieces = self.packer.next_row(self._next_document)
            if pieces is not None:
                return pieces, self.row_epoch, row_index
        raise UserError(
            f"stream {self.spec.stream} of {self.spec.records} yields no tokens; "
            "check the dataset is not empty text"
        )

    def close(self) -> None:
        close = getattr(self._documents, "close", None)
        if close is not None:
            close()


class StreamGroup(grain.IterDataset):
    """A Grain dataset of steps: each element holds ``rows_per_stream`` rows of each stream."""

    def __init__(
        self,
        specs: list[StreamSpec],
        positions: list[dict[str, int] | None],
        rows_per_stream: int,
        mask_spec: masking.MaskSpec,
        special_ids: tuple[int, int, int],
    ):
        super().__init__()
        self.specs = specs
        self.positions = positions
        self.rows_per_stream = rows_per_stream
        self.mask_spec = mask_spec
        self.special_ids = special_ids  # pad, cls, sep

    def __iter__(self) -> StreamGroupIterator:
        return StreamGroupIterator(self)


class StreamGroupIterator(grain.DatasetIterator):
    """Builds its streams lazily, so they open files inside the worker process."""

    def __init__(self, group: StreamGroup):
        super().__init__()
        self._group = group
        self._positions = list(group.positions)
        self._streams: list[RowStream] | None = None

    def _open_streams(self) -> list[RowStream]:
        if self._streams is None:
            pairs = zip(self._group.specs, self._positions, strict=True)
            self._streams = [RowStream(spec, position) for spec, position in pairs]
        return self._streams

    def __next__(self) -> dict[str, Any]:
        group = self._group
        rows, epochs, row_indices, stream_ids = [], [], [], []
        for stream in self._open_streams():
            for _ in range(group.rows_per_stream):
                pieces, epoch, row_index = stream.next_row()
                rows.append(pieces)
                epochs.append(epoch)
                row_indices.append(row_index)
                stream_ids.append(stream.spec.stream)
        pad_id, cls_id, sep_id = group.special_ids
        seq_len = group.specs[0].seq_len
        batch = packing.rows_from_pieces(rows, seq_len, cls_id, sep_id, pad_id)
        epochs, row_indices = np.array(epochs), np.array(row_indices)
        batch.update(masking.mask_rows(batch["input_ids"], epochs, row_indices, group.mask_spec))
        self._positions = [stream.position() for stream in self._streams]
        return {
            "batch": batch,
            "rows": {"stream": np.array(stream_ids), "epoch": epochs, "row_index": row_indices},
            "positions": json.dumps(self._positions),
        }

    def get_state(self) -> dict[str, Any]:
        return {"positions": json.dumps(self._positions)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.close()
        self._positions = json.loads(state["positions"])

    def close(self) -> None:
        for stream in self._streams or ():
            stream.close()
        self._streams = None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Per-process arithmetic: which streams, how many rows each, what to mask with."""

    specs: list[StreamSpec]
    rows_per_stream: int
    mask_spec: masking.MaskSpec
    special_ids: tuple[int, int, int]
    worker_count: int
    prefetch: int


def _check_processes(num_streams: int, process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(
            f"process_index={process_index} is outside process_count={process_count}; "
            "pass the index of this process"
        )
    if num_streams % process_count:
        raise UserError(
            f"data.num_streams={num_streams} is not divisible by the {process_count} processes; "
            "set data.num_streams to a multiple of the process count that divides "
            "train.global_batch_size"
        )


def load_checked_tokenizer(config) -> tokenizers.Tokenizer:
    """The config's tokenizer, refused when its ids do not fit the model's embeddings."""
    tokenizer = tokenizers.load(config.data.tokenizer)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(
            f"tokenizer {config.data.tokenizer!r} has {tokenizer.vocab_size} tokens but "
            f"model.vocab_size={config.model.vocab_size}; set model.vocab_size to at least "
            f"{tokenizer.vocab_size}"
        )
    return tokenizer


def _plan(config, split: str, process_index: int, process_count: int, train: bool) -> _Plan:
    num_streams = config.num_streams
    global_batch = config.train.global_batch_size
    _check_processes(num_streams, process_index, process_count)
    if global_batch % num_streams:
        raise UserError(
            f"train.global_batch_size={global_batch} is not divisible by "
            f"data.num_streams={num_streams}; change one of them"
        )
    packing.check_seq_len(config.data.seq_len)
    tokenizer = load_checked_tokenizer(config)
    records = corpus.open_config_split(config, split)
    if train and len(records) < num_streams:
        raise UserError(
            f"split {split!r} has {len(records)} documents, fewer than data.num_streams="
            f"{num_streams}; lower data.num_streams or prepare more text"
        )
    per_process = num_streams // process_count
    first = process_index * per_process
    specs = [
        StreamSpec(
            stream=v,
            num_streams=num_streams,
            records=records,
            tokenizer_dir=str(config.data.tokenizer),
            seq_len=config.data.seq_len,
            seed=config.train.seed,
            shuffle=train and config.data.shuffle,
            single_epoch=not train,
        )
        for v in range(first, first + per_process)
    ]
    mask_spec = masking.MaskSpec.from_tokenizer(config, tokenizer)
    return _Plan(
        specs=specs,
        rows_per_stream=global_batch // num_streams,
        mask_spec=mask_spec,
        special_ids=(tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id),
        worker_count=config.data.worker_count if train else 0,
        prefetch=config.data.prefetch_batches if train else 0,
    )


def _allow_grain_workers() -> None:
    """Let Grain start workers outside an absl app.

    With JAX installed, Grain's ``mp_prefetch`` reads an absl flag that raises when
    flags were never parsed (our CLI uses argparse). Marking that one flag as given
    keeps its default and touches no other flag.
    """
    from absl import flags

    name = "grain_enable_multiprocess_worker_profiling"
    if not flags.FLAGS.is_parsed() and name in flags.FLAGS:
        flags.FLAGS[name].present = True


class HostBatchIterator:
    """Host batches of one process; checkpointable through ``get_state``/``set_state``."""

    def __init__(self, plan: _Plan, process_index: int, process_count: int):
        self._plan = plan
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch_size = plan.rows_per_stream * len(plan.specs)
        self.streams = [spec.stream for spec in plan.specs]
        self.steps = 0
        self.epoch = 0
        self.last_rows: dict[str, np.ndarray] | None = None
        self._positions: dict[int, dict[str, int] | None] = dict.fromkeys(self.streams)
        self._groups: list[tuple[list[int], Any]] = []
        self._start()

    def _start(self) -> None:
        plan = self._plan
        group_count = max(1, min(plan.worker_count, len(plan.specs)))
        self._groups = []
        for g in range(group_count):
            members = list(range(g, len(plan.specs), group_count))
            dataset = StreamGroup(
                [plan.specs[i] for i in members],
                [self._positions[plan.specs[i].stream] for i in members],
                plan.rows_per_stream,
                plan.mask_spec,
                plan.special_ids,
            )
            if plan.worker_count > 0:
                _allow_grain_workers()
                options = grain.MultiprocessingOptions(
                    num_workers=1, per_worker_buffer_size=max(1, plan.prefetch)
                )
                dataset = dataset.mp_prefetch(options)
            elif plan.prefetch > 0:
                dataset = grain.experimental.ThreadPrefetchIterDataset(
                    dataset, prefetch_buffer_size=plan.prefetch
                )
            self._groups.append((members, iter(dataset)))
        # Rows of a group come stream by stream; this puts them back in stream order.
        b = plan.rows_per_stream
        order = [i for members, _ in self._groups for i in members]
        self._row_order = np.argsort(np.repeat(order, b) * b + np.tile(np.arange(b), len(order)))

    def __iter__(self) -> HostBatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            elements = [next(iterator) for _, iterator in self._groups]
        except (StopIteration, KeyboardInterrupt, UserError):
            raise
        except Exception as error:  # a shard that passed the size check but cannot be read
            root = self._plan.specs[0].records.location.get("root")
            damage = integrity.locate_damage(Path(root)) if root else None
            if damage is None:
                raise
            raise damage from error
        for (members, _), element in zip(self._groups, elements, strict=True):
            for i, position in zip(members, json.loads(element["positions"]), strict=True):
                self._positions[self._plan.specs[i].stream] = position
        batch = {
            key: np.concatenate([e["batch"][key] for e in elements])[self._row_order]
            for key in elements[0]["batch"]
        }
        self.last_rows = {
            key: np.concatenate([e["rows"][key] for e in elements])[self._row_order]
            for key in elements[0]["rows"]
        }
        self.epoch = int(self.last_rows["epoch"].min())
        self.steps += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position of this process's streams after the last batch."""
        return {
            "version": STATE_VERSION,
            "num_streams": self._plan.specs[0].num_streams,
            "steps": self.steps,
            "streams": {
                str(stream): position or {"doc": 0, "offset": 0, "rows": 0}
                for stream, position in self._positions.items()
            },
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; it may hold other processes' streams as well."""
        num_streams = self._plan.specs[0].num_streams
        if state.get("version") != STATE_VERSION or state.get("num_streams") != num_streams:
            raise UserError(
                f"data iterator state is for num_streams={state.get('num_streams')}, not "
                f"{num_streams}; resume with the data.num_streams the run started with"
            )
        missing = [s for s in self.streams if str(s) not in state["streams"]]
        if missing:
            raise UserError(
                f"data iterator state lacks streams {missing}; merge the states of all processes"
            )
        self.close()
        self._positions = {s: dict(state["streams"][str(s)]) for s in self.streams}
        self.steps = int(state.get("steps", 0))
        self._start()

    def close(self) -> None:
        for _, iterator in self._groups:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        self._groups = []

    def __del__(self):
        # At interpreter shutdown the workers may already be gone.
        with contextlib.suppress(Exception):
            self.close()


def make_train_iterator(config, process_index: int = 0, process_count: int = 1):
    """Endless, shuffled, masked host batches of ``config.data.train_split`` for one process."""
    plan = _plan(config, config.data.train_split, process_index, process_count, train=True)
    return HostBatchIterator(plan, process_index, process_count)


def make_eval_batches(
    config, num_batches: int, process_index: int = 0, process_count: int = 1
) -> list[dict[str, np.ndarray]]:
    """``num_batches`` fixed host batches of ``config.data.eval_split`` (in order, one pass).

    When the split runs out, rows are padding with zero ``mlm_weights``, so every
    batch has the training batch's shape.
    """
    plan = _plan(config, config.data.eval_split, process_index, process_count, train=False)
    iterator = HostBatchIterator(plan, process_index, process_count)
    try:
        return [next(iterator) for _ in range(num_batches)]
    finally:
        iterator.close()


def batch_stats(batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Packing efficiency (non-pad share of slots) and masked share of real tokens."""
    real = int(np.sum(batch["segment_ids"] != 0))
    return {
        "packing_efficiency": packing.packing_efficiency(batch["segment_ids"]),
        "masked_fraction": float(batch["mlm_weights"].sum() / max(real, 1)),
        "tokens": real,
    }
