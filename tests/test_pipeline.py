"""The Grain pipeline on a real tokenizer and a real TFDS ArrayRecord dataset."""

import collections
import hashlib
import json
import subprocess
import sys
import textwrap

import conftest
import numpy as np
import pytest
from test_masking import check_masked_batch
from test_packing import check_packed_rows

from mlm_jax.data import corpus, masking, peek, pipeline, preparation, tokenizer
from mlm_jax.errors import UserError

SEQ_LEN = 64
BATCH = 16
STREAMS = 4


@pytest.fixture(scope="module")
def artifacts(scenes, run_inputs, tmp_path_factory):
    """The shared tokenizer and a dataset prepared by the code from the first 30 scenes.

    Half the shared text, not all of it: the epoch tests read whole epochs and must cross one
    within their steps.
    """
    root = tmp_path_factory.mktemp("pipeline")
    text = root / "plays.txt"
    text.write_text("\n\n".join(scenes[:30]))
    preparation.prepare([str(text)], str(root / "data"), valid_fraction=0.1)
    return {"tokenizer": str(run_inputs["tokenizer"]), "data": str(root / "data")}


def make_config(artifacts, **data):
    """The tiny config over ``artifacts`` with a fixed seed; ``data`` fields win."""
    return conftest.tiny_config(
        model={"vocab_size": 640},
        data={"source": artifacts["data"], "tokenizer": artifacts["tokenizer"],
              "seq_len": SEQ_LEN, "num_streams": STREAMS, "prefetch_batches": 0, **data},
        train={"global_batch_size": BATCH, "seed": 7},
    )  # fmt: skip


def take(iterator, steps):
    return [next(iterator) for _ in range(steps)]


def digest(batches):
    hasher = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            hasher.update(key.encode() + batch[key].tobytes())
    return hasher.hexdigest()


def unmask(batch):
    """The packed ids before masking: labels put back at their positions."""
    ids = batch["input_ids"].copy()
    used = batch["mlm_weights"] > 0
    rows = np.broadcast_to(np.arange(len(ids))[:, None], used.shape)
    ids[rows[used], batch["mlm_positions"][used]] = batch["mlm_labels"][used]
    return ids


def first_epoch(config, process_index, process_count):
    """Every row of epoch 0 this process produced, with its stream and row index."""
    iterator = pipeline.make_train_iterator(config, process_index, process_count)
    rows = collections.defaultdict(list)
    done = set()
    while len(done) < len(iterator.streams):
        batch = next(iterator)
        for r, (stream, epoch, index) in enumerate(zip(*iterator.last_rows.values(), strict=True)):
            if epoch == 0:
                rows["index"].append(int(index))
                rows["stream"].append(int(stream))
                for key, value in batch.items():
                    rows[key].append(value[r])
            else:
                done.add(int(stream))
    iterator.close()
    return {key: np.array(value) for key, value in rows.items()}


@pytest.fixture(scope="module")
def train_tokens(artifacts):
    """Token counts of the whole train split, tokenized directly."""
    config = make_config(artifacts)
    records = corpus.open_config_split(config, "train")
    texts = [records[i] for i in range(len(records))]
    ids = tokenizer.load(artifacts["tokenizer"]).encode_batch(texts)
    return collections.Counter(np.concatenate(ids).tolist())


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_one_epoch_covers_every_train_token_exactly_once(artifacts, train_tokens, process_count):
    config = make_config(artifacts)
    seen = collections.Counter()
    indices = []
    for p in range(process_count):
        rows = first_epoch(config, p, process_count)
        ids = unmask(rows)
        check_packed_rows({"input_ids": ids, **{k: rows[k] for k in ("segment_ids", "positions")}})
        seen.update(ids[rows["segment_ids"] > 0].tolist())
        indices.extend(rows["index"].tolist())
    for special in (tokenizer.CLS_ID, tokenizer.SEP_ID):
        del seen[special]
    assert seen == train_tokens
    assert len(indices) == len(set(indices))  # no row twice


def test_processes_split_each_global_batch_without_changing_it(artifacts):
    config = make_config(artifacts)
    whole = take(pipeline.make_train_iterator(config), 6)
    for process_count in (2, 4):
        parts = [
            take(pipeline.make_train_iterator(config, p, process_count), 6)
            for p in range(process_count)
        ]
        for step, batch in enumerate(whole):
            for key, value in batch.items():
                joined = np.concatenate([part[step][key] for part in parts])
                assert np.array_equal(joined, value), (process_count, step, key)
                assert parts[0][step][key].shape[0] == BATCH // process_count


def test_batches_are_packed_and_masked_by_the_contract(artifacts):
    config = make_config(artifacts)
    iterator = pipeline.make_train_iterator(config)
    batches = take(iterator, 40)
    spec = masking.MaskSpec.from_tokenizer(config, tokenizer.load(artifacts["tokenizer"]))
    totals = collections.Counter()
    for batch in batches:
        assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
            "input_ids": ((BATCH, SEQ_LEN), "int32"),
            "segment_ids": ((BATCH, SEQ_LEN), "int32"),
            "positions": ((BATCH, SEQ_LEN), "int32"),
            "mlm_positions": ((BATCH, config.data.predictions_per_row), "int32"),
            "mlm_labels": ((BATCH, config.data.predictions_per_row), "int32"),
            "mlm_weights": ((BATCH, config.data.predictions_per_row), "float32"),
        }
        original = unmask(batch)
        check_packed_rows({**batch, "input_ids": original})
        totals.update(check_masked_batch(original, batch, spec))
    assert abs(totals["chosen"] / totals["maskable"] - 0.15) < 0.005
    assert abs(totals["mask"] / totals["chosen"] - 0.8) < 0.03
    assert pipeline.batch_stats(batches[0])["packing_efficiency"] > 0.95
    iterator.close()


def test_same_batches_in_a_new_process(artifacts):
    config = make_config(artifacts)
    here = digest(take(pipeline.make_train_iterator(config), 3))
    script = textwrap.dedent(
        f"""
        import hashlib, json
        from mlm_jax import config as config_lib
        from mlm_jax.data import pipeline
        config = config_lib.from_dict(json.loads({json.dumps(config.model_dump(mode="json"))!r}))
        iterator = pipeline.make_train_iterator(config)
        hasher = hashlib.sha256()
        for _ in range(3):
            batch = next(iterator)
            for key in sorted(batch):
                hasher.update(key.encode() + batch[key].tobytes())
        print(hasher.hexdigest())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == here


def test_restored_state_continues_with_identical_batches(artifacts):
    config = make_config(artifacts)
    reference = take(pipeline.make_train_iterator(config), 8)
    first = pipeline.make_train_iterator(config)
    take(first, 5)
    state = json.loads(json.dumps(first.get_state()))  # must survive JSON
    first.close()
    resumed = pipeline.make_train_iterator(config)
    resumed.set_state(state)
    assert digest(take(resumed, 3)) == digest(reference[5:])
    # Per-process states, merged, restore under another process count.
    halves = [pipeline.make_train_iterator(config, p, 2) for p in range(2)]
    for half in halves:
        take(half, 5)
    merged = dict(halves[0].get_state())
    merged["streams"] = {**halves[0].get_state()["streams"], **halves[1].get_state()["streams"]}
    single = pipeline.make_train_iterator(config)
    single.set_state(merged)
    assert digest(take(single, 3)) == digest(reference[5:])


def test_state_crosses_epochs(artifacts):
    config = make_config(artifacts)
    iterator = pipeline.make_train_iterator(config)
    batches = take(iterator, 150)
    assert iterator.epoch >= 1  # the small split ends within these steps
    again = pipeline.make_train_iterator(config)
    take(again, 120)
    state = again.get_state()
    resumed = pipeline.make_train_iterator(config)
    resumed.set_state(state)
    assert digest(take(resumed, 30)) == digest(batches[120:])
    # Another epoch reshuffles: the rows of epoch 1 differ from those of epoch 0.
    assert not np.array_equal(batches[0]["input_ids"], batches[-1]["input_ids"])


def test_worker_processes_do_not_change_the_batches(artifacts):
    config = make_config(artifacts)
    in_process = take(pipeline.make_train_iterator(config), 4)
    workers = pipeline.make_train_iterator(make_config(artifacts, worker_count=2))
    try:
        assert digest(take(workers, 4)) == digest(in_process)
        state = workers.get_state()
    finally:
        workers.close()
    assert state == _state_after(config, 4)


def _state_after(config, steps):
    iterator = pipeline.make_train_iterator(config)
    take(iterator, steps)
    return iterator.get_state()


def test_eval_batches_are_fixed_and_padded_at_the_end(artifacts):
    config = make_config(artifacts)
    batches = pipeline.make_eval_batches(config, 60)
    assert digest(batches) == digest(pipeline.make_eval_batches(config, 60))
    halves = [pipeline.make_eval_batches(config, 60, p, 2) for p in range(2)]
    joined = [
        {k: np.concatenate([halves[0][s][k], halves[1][s][k]]) for k in batches[s]}
        for s in range(60)
    ]
    assert digest(joined) == digest(batches)
    last = batches[-1]
    assert last["input_ids"].shape == (BATCH, SEQ_LEN)
    assert not last["segment_ids"].any() and not last["mlm_weights"].any()  # split ran out
    tokens = collections.Counter()
    for batch in batches:
        ids = unmask(batch)
        tokens.update(ids[batch["segment_ids"] > 0].tolist())
    records = corpus.open_config_split(config, "validation")
    encoded = tokenizer.load(artifacts["tokenizer"]).encode_batch(
        [records[i] for i in range(len(records))]
    )
    del tokens[tokenizer.CLS_ID], tokens[tokenizer.SEP_ID]
    assert tokens == collections.Counter(np.concatenate(encoded).tolist())


def test_tfds_name_in_data_dir_is_a_source(artifacts):
    config = make_config(artifacts)
    by_name = config.model_copy(
        update={
            "data": config.data.model_copy(
                update={"source": "mlm_jax_corpus", "data_dir": artifacts["data"]}
            )
        }
    )
    assert digest(take(pipeline.make_train_iterator(by_name), 2)) == digest(
        take(pipeline.make_train_iterator(config), 2)
    )


def test_peek_marks_masked_tokens(artifacts, tmp_path):
    config = make_config(artifacts)
    out = tmp_path / "peek.jsonl"
    summary = peek.peek(config, batches=1, out=str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == BATCH + 1 and lines[-1] == summary
    text = " ".join(s for line in lines[:-1] for s in line["segments"])
    assert "[MASK→" in text and "{" in text
    assert 0.9 < summary["packing_efficiency"] <= 1.0


def _with_data(config, **update):
    return config.model_copy(update={"data": config.data.model_copy(update=update)})


def test_bad_configs_are_user_errors(artifacts, tmp_path):
    config = make_config(artifacts)
    small_model = config.model_copy(
        update={"model": config.model.model_copy(update={"vocab_size": 500})}
    )
    with pytest.raises(UserError, match="has 600 tokens but model.vocab_size=500"):
        pipeline.make_train_iterator(small_model)
    with pytest.raises(UserError, match="seq_len=4 is too small"):
        pipeline.make_train_iterator(_with_data(config, seq_len=4))
    with pytest.raises(UserError, match="not divisible by the 3 processes"):
        pipeline.make_train_iterator(config, 0, 3)
    with pytest.raises(UserError, match="not a prepared dataset"):
        pipeline.make_train_iterator(_with_data(config, source=str(tmp_path)))
    with pytest.raises(UserError, match="no feature 'body'"):
        pipeline.make_train_iterator(_with_data(config, text_feature="body"))
    with pytest.raises(UserError, match="no tokenizer"):
        pipeline.make_train_iterator(_with_data(config, tokenizer=str(tmp_path)))
    many_streams = _with_data(config, num_streams=BATCH)
    many_streams = many_streams.model_copy(
        update={"train": config.train.model_copy(update={"global_batch_size": 64})}
    )
    many_streams = _with_data(many_streams, num_streams=64)
    with pytest.raises(UserError, match="fewer than data.num_streams=64"):
        pipeline.make_train_iterator(many_streams)
