"""The single-process build writes its shards itself (mlm_jax.data.tfds_writer): the files
must hold what TFDS's own writer makes from the same input — the same records, in the
same order and shards, with the same metadata.

TFDS's record bytes are not reproducible from one process to the next (protobuf's map
entries come out in a seeded order), so records are compared as parsed messages, and ours
must be protobuf's deterministic encoding of that message."""

import filecmp
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import example_serializer, hashing
from tensorflow_datasets.proto import tf_example_pb2

from mlm_jax.data import corpus, preparation, sources, tfds_writer

FEATURES = tfds.features.FeaturesDict({"text": tfds.features.Text(), "doc_id": np.int64})

DOCUMENTS = [
    (0, ""),
    (7, "To be, or not to be"),
    (1 << 40 | 12_345, "é" * 300),  # multi-byte text; a doc id from the second input
    (3 << 40, "x" * 70_000),  # lengths that need three-byte varints
]


@pytest.mark.parametrize(("doc_id", "text"), DOCUMENTS)
def test_records_are_what_tfds_serializes(doc_id, text):
    serializer = example_serializer.ExampleSerializer(FEATURES.get_serialized_info())
    theirs = serializer.serialize_example(FEATURES.encode_example({"text": text, "doc_id": doc_id}))
    ours = tfds_writer.serialize_example(doc_id, text.encode())
    message = tf_example_pb2.Example.FromString(theirs)
    assert tf_example_pb2.Example.FromString(ours) == message
    assert ours == message.SerializeToString(deterministic=True)


def test_record_order_is_tfds_shuffle_order():
    for split in ("train", "validation"):
        hasher = hashing.Hasher(split)
        for key in (0, 1, 12_345, 3 << 40):
            digest = tfds_writer.shuffle_digest(split, key)
            assert int.from_bytes(digest, "big") == hasher.hash_key(key)


def test_negative_doc_ids_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        tfds_writer.serialize_example(-1, b"x")


class _TfdsWritten(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The reference: the same builder name, version and features, written by TFDS."""

    name = corpus.BUILDER_NAME
    VERSION = tfds.core.Version(corpus.BUILDER_VERSION)
    RELEASE_NOTES = corpus.builder_class().RELEASE_NOTES
    code_path = None

    def __init__(self, *, inputs, valid_fraction, **kwargs):
        self._shards = sources.plan_shards(inputs, "text", None)
        self._valid_fraction = valid_fraction
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="Text documents prepared by `mlm-jax data prepare`.",
            features=FEATURES,
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in corpus.SPLITS}

    def _generate_examples(self, wanted):
        stats, rate = sources.ReadStats(), self._valid_fraction
        for shard in self._shards:
            for split, key, text in corpus.shard_examples(shard, "text", rate, stats):
                if split == wanted:
                    yield key, {"text": text, "doc_id": key}


def test_prepared_dataset_equals_tfds_own_build(scenes, tmp_path):
    """`data prepare` (our writer) and TFDS's writer, fed the same documents: the same files
    in the builder directory, the same records in each, the same dataset_info.json."""
    text = tmp_path / "plays.txt"
    text.write_text("\n\n".join(scenes[:40]))
    meta = preparation.prepare([str(text)], str(tmp_path / "ours"), valid_fraction=0.2)
    ours = tmp_path / "ours" / meta["builder_dir"]

    reference = _TfdsWritten(
        inputs=[str(text)], valid_fraction=0.2,
        data_dir=str(tmp_path / "tfds"), file_format="array_record",
    )  # fmt: skip
    corpus.download_and_prepare(reference, tmp_path / "tfds")
    theirs = tmp_path / "tfds" / meta["builder_dir"]
    assert meta["splits"]["validation"] > 0 and meta["splits"]["train"] > 0

    names = sorted(p.name for p in ours.iterdir())
    assert names == sorted(p.name for p in theirs.iterdir())
    assert any("array_record" in name for name in names)
    for name in names:
        if name == "dataset_info.json":
            # moduleName names the builder's module; the reference is defined in this file.
            info = [json.loads((d / name).read_text()) for d in (ours, theirs)]
            assert info[0].pop("moduleName") == "mlm_jax.data.corpus"
            info[1].pop("moduleName")
            assert info[0] == info[1]
        elif "array_record" in name:
            assert _messages(ours / name) == _messages(theirs / name), name
        else:
            assert filecmp.cmp(ours / name, theirs / name, shallow=False), name


def _messages(path):
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
        return [tf_example_pb2.Example.FromString(r) for r in reader.read_all()]
    finally:
        reader.close()


def test_two_builds_give_identical_files(scenes, tmp_path):
    text = tmp_path / "plays.txt"
    text.write_text("\n\n".join(scenes[:20]))
    dirs = []
    for name in ("a", "b"):
        meta = preparation.prepare([str(text)], str(tmp_path / name), valid_fraction=0.2)
        dirs.append(tmp_path / name / meta["builder_dir"])
    shards = sorted(p.name for p in dirs[0].iterdir() if "array_record" in p.name)
    assert shards == sorted(p.name for p in dirs[1].iterdir() if "array_record" in p.name)
    assert shards
    match, mismatch, errors = filecmp.cmpfiles(dirs[0], dirs[1], shards, shallow=False)
    assert match == shards, (mismatch, errors)
