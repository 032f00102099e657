"""Text corpora as TFDS datasets in ArrayRecord files, built and read without TensorFlow.

``prepare`` turns local text (anything :mod:`mlm_jax.data.sources` reads) into a TFDS
dataset with ``train`` and ``validation`` splits and one feature, ``text`` (plus
``doc_id``, see :func:`doc_id`). A document goes to validation when the sha256 of
its text falls below ``valid_fraction``, so the split is stable when documents are
added or reordered, and duplicates never straddle the two splits.

Two engines build the same dataset: this process (the default; it reads each input
once, spilling documents to a scratch file per split, then TFDS writes the
shards), or an Apache Beam pipeline through TFDS's Beam support
(:mod:`mlm_jax.data.beam_prepare`), for corpora that need many cores or machines.

Layout of a prepared directory ``OUT``::

    OUT/meta.json                      what was read and how (see ``prepare``)
    OUT/mlm_jax_corpus/1.0.0/...       the TFDS builder directory (ArrayRecord shards)

``open_split`` opens a split for a config: a directory made by ``prepare``, or any
TFDS dataset already prepared as ArrayRecord in ``data.data_dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlm_jax.data import integrity, sources, tfds_writer
from mlm_jax.errors import UserError

BUILDER_NAME = "mlm_jax_corpus"
BUILDER_VERSION = "1.0.0"
META_FILE = "meta.json"
_HASH_SCALE = float(1 << 64)
SPLITS = ("train", "validation")
# A doc id packs the input's index (in the expanded, sorted input list) above the
# document's position in that input: its byte offset for text, its row number for
# Parquet, its index for builtin corpora. Whichever worker reads whichever slice,
# a document gets the same id; 40 bits of position allow inputs up to 1 TiB.
POSITION_BITS = 40
_MAX_INPUTS = 1 << (63 - POSITION_BITS)
# Per-shard size when Beam cuts large inputs into slices for its workers.
DEFAULT_SHARD_BYTES = 64 << 20
_PROGRESS_SECONDS = 5.0
# The Beam counters the workers report read statistics under.
BEAM_COUNTERS = "mlm_jax"


def validation_score(text: str) -> float:
    """A stable number in [0, 1) from the text; below ``valid_fraction`` means validation."""
    digest = hashlib.sha256(text.encode("utf-8", errors="replace")).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SCALE


def doc_id(input_index: int, position: int) -> int:
    """The id of the document at ``position`` of input number ``input_index``."""
    if input_index >= _MAX_INPUTS or position >> POSITION_BITS:
        raise UserError(
            f"input {input_index} is too large for doc ids (over {_MAX_INPUTS} inputs or a "
            "file over 1 TiB); split it into smaller files"
        )
    return input_index << POSITION_BITS | position


def split_of(text: str, valid_fraction: float) -> str:
    return "validation" if validation_score(text) < valid_fraction else "train"


def shard_examples(
    shard: sources.Shard, text_field: str, valid_fraction: float, stats: sources.ReadStats
) -> Iterator[tuple[str, int, str]]:
    """``(split, doc_id, text)`` for every document of one shard: the rule both engines use."""
    for position, text in sources.read_shard(shard, text_field, stats):
        split = split_of(text, valid_fraction)
        text, replaced = _clean(text)
        stats.undecodable_lines += replaced
        yield split, doc_id(shard.input_index, position), text


def _clean(text: str) -> tuple[str, bool]:
    """Text TFDS can store: lone surrogates (possible from JSON escapes) become U+FFFD."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8"), True


def builder_class():
    """Define the builder lazily: importing TFDS costs a second the CLI should not always pay."""
    global _BUILDER_CLASS
    if _BUILDER_CLASS is not None:
        return _BUILDER_CLASS
    import tensorflow_datasets as tfds

    class MlmJaxCorpus(tfds.core.GeneratorBasedBuilder):
        """Documents of local text files; ``train``/``validation`` split by text hash.

        Its generators are a Beam pipeline (``download_and_prepare`` with a Beam runner,
        :mod:`.beam_prepare`): every input shard is read once, in parallel, into one
        collection of ``(split, (doc_id, example))``, and each split keeps its own. The
        single-process build constructs it without shards, for its name and metadata, and
        writes the shards itself (:mod:`.tfds_writer`).
        """

        VERSION = tfds.core.Version(BUILDER_VERSION)
        RELEASE_NOTES = {BUILDER_VERSION: "Documents from mlm_jax.data.sources, split by sha256."}
        # No checksums or metadata files live beside this code; without this TFDS
        # probes the package resources and needs the optional importlib_resources.
        code_path = None

        def __init__(self, *, shards=(), text_field="text", valid_fraction=0.0, splits=SPLITS,
                     **kwargs):  # fmt: skip
            self._shards = list(shards)
            self._text_field = text_field
            self._valid_fraction = valid_fraction
            self._splits = tuple(splits)
            self.read_stats = sources.ReadStats()
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Text documents prepared by `mlm-jax data prepare`.",
                features=tfds.features.FeaturesDict(
                    {"text": tfds.features.Text(), "doc_id": np.int64}
                ),
            )

        def _split_generators(self, dl_manager, pipeline):
            import apache_beam as beam

            # Reshuffle breaks fusion with Create, so shards spread over the workers.
            examples = (
                pipeline
                | "Shards" >> beam.Create(self._shards)
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.FlatMap(read_examples, self._text_field, self._valid_fraction)
            )
            return {
                split: examples | f"Select_{split}" >> self._generate_examples(split)
                for split in self._splits
            }

        def _generate_examples(self, split):
            import apache_beam as beam

            return beam.FlatMap(examples_of, split)

        def _process_pipeline_result(self, pipeline_result):
            from apache_beam.metrics.metric import MetricsFilter

            query = MetricsFilter().with_namespace(BEAM_COUNTERS)
            for counter in pipeline_result.metrics().query(query)["counters"]:
                value = counter.committed if counter.committed is not None else counter.attempted
                setattr(self.read_stats, counter.key.metric.name, value)

    _BUILDER_CLASS = MlmJaxCorpus
    return MlmJaxCorpus


# Beam workers run these by reference, so they live at module level.
def read_examples(shard: sources.Shard, text_field: str, valid_fraction: float) -> Iterator:
    """One shard's ``(split, (doc_id, example))``; its read counts go to Beam counters."""
    from apache_beam.metrics import Metrics

    stats = sources.ReadStats()
    for split, key, text in shard_examples(shard, text_field, valid_fraction, stats):
        yield split, (key, {"text": text, "doc_id": key})
    for field in dataclasses.fields(stats):
        Metrics.counter(BEAM_COUNTERS, field.name).inc(getattr(stats, field.name))


def examples_of(element, split: str) -> Iterator:
    if element[0] == split:
        yield element[1]


_BUILDER_CLASS = None


def write_spills(
    shards: list[sources.Shard], text_field: str, valid_fraction: float, directory: Path
) -> tuple[dict[str, tfds_writer.SplitSpill], sources.ReadStats]:
    """Read every shard once, serializing each document into its split's scratch file."""
    directory.mkdir(parents=True, exist_ok=True)
    spills = {split: tfds_writer.SplitSpill(directory / f"{split}.records") for split in SPLITS}
    stats = sources.ReadStats()
    progress = _Progress()
    try:
        for shard in shards:
            for split, key, text in shard_examples(shard, text_field, valid_fraction, stats):
                spills[split].add(key, text)
                progress.maybe_report(stats)
    finally:
        for spill in spills.values():
            spill.close()
    return spills, stats


class _Progress:
    """A line on stderr every few seconds while inputs are read."""

    def __init__(self):
        self.started = self.last = time.monotonic()

    def maybe_report(self, stats: sources.ReadStats) -> None:
        now = time.monotonic()
        if now - self.last < _PROGRESS_SECONDS:
            return
        self.last = now
        megabytes = stats.characters / 1e6
        print(
            f"  reading inputs: {stats.documents:,} documents, {megabytes:,.0f} M characters "
            f"({megabytes / (now - self.started):.1f} M/s)",
            file=sys.stderr,
            flush=True,
        )


def check_split_counts(counts: dict[str, int], valid_fraction: float, inputs: list[str]) -> None:
    """Refuse a corpus with no training documents; warn when validation got none."""
    if not any(counts.values()):
        raise UserError(f"the inputs {inputs} hold no documents; pass a non-empty corpus")
    if not counts["train"]:
        raise UserError(
            f"all {counts['validation']} documents fell into validation; lower --valid-fraction "
            "or add text"
        )
    if not counts["validation"] and valid_fraction > 0:
        print("warning: no document fell into validation; add text for one", file=sys.stderr)


def download_and_prepare(builder, staging: Path, **download_options) -> None:
    """TFDS's build into ``staging``; nothing is downloaded, the builder reads local inputs."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    builder.download_and_prepare(
        download_dir=str(staging / "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, **download_options),
    )
    shutil.rmtree(staging / "downloads", ignore_errors=True)


def build_single_process(
    staging: Path, shards, text_field: str, valid_fraction: float, inputs: list[str]
):
    """Build in this process: one pass over the inputs into scratch files, then the shards."""
    spill_dir = staging / "spill"
    spills, stats = write_spills(shards, text_field, valid_fraction, spill_dir)
    check_split_counts(
        {split: len(spill) for split, spill in spills.items()}, valid_fraction, inputs
    )
    builder = builder_class()(data_dir=str(staging), file_format="array_record")
    # TFDS refuses a split without examples, so empty ones are left out here too.
    tfds_writer.write_dataset(builder, {split: s for split, s in spills.items() if len(s)})
    shutil.rmtree(spill_dir, ignore_errors=True)
    return builder, stats


class TextRecords:
    """Random access to the texts of one split; picklable, opened lazily in each process.

    Grain worker processes receive this object pickled and open the ArrayRecord
    files themselves.
    """

    def __init__(self, location: dict[str, Any], split: str, feature: str, size: int):
        self.location = location
        self.split = split
        self.feature = feature
        self._size = size
        self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def _open(self):
        if self._source is None:
            self._source = _load_builder(self.location).as_data_source(split=self.split)
        return self._source

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> str:
        value = self._open()[int(index)][self.feature]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def iter_texts(self, batch_size: int = 1024) -> Iterator[str]:
        """Every text in record order, read a batch at a time."""
        source = self._open()
        for first in range(0, self._size, batch_size):
            indices = range(first, min(first + batch_size, self._size))
            for record in source.__getitems__(list(indices)):
                value = record[self.feature]
                yield value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def __repr__(self) -> str:
        return f"TextRecords({self.location}, split={self.split!r}, feature={self.feature!r})"


def _load_builder(location: dict[str, Any]):
    import tensorflow_datasets as tfds

    if "builder_dir" in location:
        return tfds.builder_from_directory(location["builder_dir"])
    return tfds.builder(location["name"], data_dir=location["data_dir"])


def _location(source: str, data_dir: str | None) -> dict[str, Any]:
    """Where the TFDS builder lives, from ``data.source`` and ``data.data_dir``."""
    if data_dir:
        if not Path(data_dir).is_dir():
            raise UserError(f"data.data_dir {data_dir!r} does not exist; point at a TFDS data_dir")
        return {"name": source, "data_dir": data_dir}
    directory = Path(source)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise UserError(
            f"data.source {source!r} is not a prepared dataset (no {META_FILE}); run "
            "`mlm-jax data prepare --input ... --out DIR`, or set data.data_dir for a TFDS name"
        )
    meta = json.loads(meta_path.read_text())
    integrity.check_dataset(directory, meta)
    return {"builder_dir": str(directory / meta["builder_dir"]), "root": str(directory)}


def open_split(
    source: str, split: str, data_dir: str | None = None, feature: str = "text"
) -> TextRecords:
    """Open one split of a prepared directory, or of TFDS dataset ``source`` in ``data_dir``."""
    location = _location(source, data_dir)
    try:
        builder = _load_builder(location)
    except UserError:
        raise
    except Exception as exc:  # TFDS raises many types for "not there"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot open TFDS dataset {source!r} in {data_dir!r} ({reason}); prepare it as "
            "ArrayRecord there first"
        ) from None
    splits = builder.info.splits
    if split not in splits:
        raise UserError(
            f"dataset {source!r} has no split {split!r} (it has {sorted(splits)}); "
            "fix data.train_split / data.eval_split"
        )
    features = builder.info.features
    if feature not in features:
        raise UserError(
            f"dataset {source!r} has no feature {feature!r} (it has {sorted(features)}); "
            "set data.text_feature"
        )
    if builder.info.file_format is None or builder.info.file_format.value != "array_record":
        raise UserError(
            f"dataset {source!r} is not stored as ArrayRecord; re-prepare it with "
            "file_format=array_record"
        )
    size = splits[split].num_examples
    if size == 0:
        raise UserError(
            f"split {split!r} of {source!r} is empty; prepare it from more text "
            "(or with a larger --valid-fraction for validation)"
        )
    return TextRecords(location, split, feature, size)


def open_config_split(config, split: str) -> TextRecords:
    """The split named ``split`` of the dataset a config points at."""
    data = config.data
    return open_split(data.source, split, data.data_dir, data.text_feature)
