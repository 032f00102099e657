"""Fine-tuning: JSONL errors, ranking metrics, a reranker and a classifier on real
Shakespeare, CLI scoring, and export parity with sentence-transformers' CrossEncoder.

Relevance set: the query is the first line of a speech, the relevant passage its next
two lines, the negatives the continuations of other speeches. Classification set:
speeches labelled by speaker (four characters of four plays).
"""

import json
import random
import re

import numpy as np
import pytest
from conftest import run_cli, write_config

from mlm_jax import config as config_lib
from mlm_jax import finetune, finetune_data, sources
from mlm_jax.errors import UserError
from mlm_jax.ranking_metrics import classification_metrics, query_metrics

_SPEAKER = re.compile(r"^([A-Z][A-Za-z' ]{0,30}): (.*)$")
SPEAKERS = ("Falstaff", "Hamlet", "Brutus", "Othello")


def _speeches() -> list[tuple[str, list[str]]]:
    speeches, current = [], None
    for doc in sources.iter_documents(["builtin:shakespeare"]):
        for line in doc.splitlines():
            match = _SPEAKER.match(line)
            if match:
                current = (match.group(1), [match.group(2)])
                speeches.append(current)
            elif current and not line.startswith(("Enter", "Exit", "Exeunt")):
                current[1].append(line)
            else:
                current = None
    return speeches


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune_data")
    speeches = _speeches()
    long = [lines for _, lines in speeches if len(lines) >= 3]
    random.Random(0).shuffle(long)
    continuation = [" ".join(lines[1:3]) for lines in long]

    def rerank_records(indices, negatives):
        rng = random.Random(indices[0])
        for i in indices:
            others = rng.sample([j for j in indices if j != i], negatives)
            yield {
                "query": long[i][0],
                "positive": continuation[i],
                "negatives": [continuation[j] for j in others],
            }

    by_speaker = {s: [" ".join(lines) for who, lines in speeches if who == s] for s in SPEAKERS}
    train_cls, eval_cls = [], []
    for label, speaker in enumerate(SPEAKERS):
        texts = by_speaker[speaker]
        random.Random(label).shuffle(texts)
        train_cls += [{"text": t, "label": label} for t in texts[:120]]
        eval_cls += [{"text": t, "label": label} for t in texts[120:150]]
    return {
        "rerank_train": _write_jsonl(root / "rr_train.jsonl", rerank_records(range(600), 7)),
        "rerank_eval": _write_jsonl(root / "rr_eval.jsonl", rerank_records(range(600, 660), 15)),
        "classify_train": _write_jsonl(root / "cls_train.jsonl", train_cls),
        "classify_eval": _write_jsonl(root / "cls_eval.jsonl", eval_cls),
    }


@pytest.fixture(scope="module")
def pretrained(run_inputs, tmp_path_factory):
    """A tiny BERT briefly pretrained on Shakespeare through the CLI."""
    root = tmp_path_factory.mktemp("pretrain")
    cfg = write_config(root / "pre.yaml", run_inputs, train={"steps": 40, "eval_every": 0,
                       "checkpoint_every": 40, "log_every": 20})  # fmt: skip
    run_cli("train", "--config", cfg, "--workdir", root / "run", check=True)
    return root / "run"


def _finetune_config(path, run_inputs, pretrained, **finetune_fields):
    write_config(
        path,
        run_inputs,
        model={"init_from": str(pretrained)},
        train={"steps": 60, "global_batch_size": 16, "eval_every": 0, "log_every": 20,
               "checkpoint_every": 60, "seed": 0},
        optim={"learning_rate": 2e-3, "warmup_steps": 6},
        finetune=finetune_fields,
    )  # fmt: skip
    return config_lib.load(path)


# ----------------------------------------------------------------------------- JSONL errors


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"query": "q", "negatives": ["n"]}, "missing field 'positive'"),
        ({"query": "q", "positive": "p", "negatives": []}, "'negatives' is empty"),
        ({"positive": "p", "negatives": ["n"]}, "missing field 'query'"),
        ({"query": "q", "passage": "p", "label": "yes"}, "'label' must be 0 or 1"),
    ],
)
def test_bad_rerank_jsonl_names_the_line(tmp_path, line, message):
    good = {"query": "a", "positive": "b", "negatives": ["c"]}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(UserError, match=rf"bad\.jsonl:2: {re.escape(message)}"):
        finetune_data.read_rerank(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"text": "t"}, "missing field 'label'"),
        ({"text": "t", "label": "1"}, "'label' must be an integer class id, got a string"),
        ({"text": "t", "label": 1.0}, "'label' must be an integer class id, got a number"),
        ({"text": "t", "label": 5}, "label 5 is outside 0..1"),
        ({"text_a": "t", "label": 0}, "missing field 'text_b'"),
    ],
)
def test_bad_classify_jsonl_names_the_line(tmp_path, line, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok", "label": 0}, line])
    with pytest.raises(UserError, match=rf"bad\.jsonl:2: {re.escape(message)}"):
        finetune_data.read_classify(path, num_labels=2)


def test_bad_jsonl_exits_2_with_one_line(tmp_path, run_inputs):
    bad = _write_jsonl(tmp_path / "train.jsonl", [{"query": "q", "positive": "p", "negatives": []}])
    fields = {"task": "rerank", "loss": "listwise", "train_file": str(bad)}
    cfg = write_config(tmp_path / "ft.yaml", run_inputs, finetune=fields)
    result = run_cli("finetune", "--config", cfg, "--workdir", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: {bad}:1: 'negatives' is empty; give at least one negative passage"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- metrics, encoding


def test_ranking_metrics_by_hand():
    # Relevant at ranks 2 and 4 of 5 (one tie broken against the relevant candidate).
    scores = np.asarray([0.9, 0.5, 0.7, 0.1, 0.5])
    relevant = np.asarray([0, 0, 1, 0, 1])
    metrics = query_metrics(scores, relevant)
    ideal = 1 + 1 / np.log2(3)
    assert metrics["mrr@10"] == pytest.approx(0.5)
    assert metrics["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / ideal)
    assert metrics["recall@1"] == 0.0 and metrics["recall@10"] == 1.0
    flat = query_metrics(np.zeros(4), np.asarray([1, 0, 0, 0]))
    assert flat["mrr@10"] == pytest.approx(0.25)  # constant scores earn the worst rank
    cls = classification_metrics(np.asarray([0, 0, 1, 2]), np.asarray([0, 1, 1, 2]))
    assert cls["accuracy"] == 0.75
    assert cls["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_pair_encoding_keeps_the_query_and_token_types(run_inputs):
    from mlm_jax import tokenizer as tokenizer_lib

    tok = tokenizer_lib.load(run_inputs["tokenizer"])
    encoder = finetune_data.PairEncoder(tok, seq_len=24, max_query_tokens=6)
    query, passage = "Now, fair Hippolyta, our nuptial hour draws on apace", "word " * 50
    rows = encoder.encode([(query, passage), ("short", "also short")])
    q_ids = tok.encode(query)
    ids, types = rows["input_ids"][0], rows["token_type_ids"][0]
    assert ids[0] == tok.cls_id and ids[1:7].tolist() == q_ids[:6].tolist() and ids[7] == tok.sep_id
    assert ids[-1] == tok.sep_id and rows["segment_ids"][0].all()  # truncated to exactly 24
    assert types[:8].tolist() == [0] * 8 and types[8:].tolist() == [1] * 16
    short = rows["segment_ids"][1].sum()
    assert rows["input_ids"][1, short:].tolist() == [0] * (24 - short)
    whole_query = tok.encode("short").tolist()
    assert rows["input_ids"][1, 1 : 1 + len(whole_query)].tolist() == whole_query


# ----------------------------------------------------------------------------- learning


def test_reranker_beats_its_initialisation_and_exports_for_cross_encoder(
    tmp_path, run_inputs, pretrained, datasets
):
    config = _finetune_config(
        tmp_path / "rr.yaml", run_inputs, pretrained, task="rerank", loss="listwise",
        train_file=str(datasets["rerank_train"]), eval_file=str(datasets["rerank_eval"]),
        negatives_per_query=3, max_query_tokens=24,
    )  # fmt: skip
    summary = finetune.run(config, str(tmp_path / "run"))
    print(
        "rerank held-out MRR@10 / NDCG@10 / R@1 / R@10:",
        *(f"{name}: " + " ".join(f"{summary[f'{name}/{m}']:.3f}" for m in
          ("mrr@10", "ndcg@10", "recall@1", "recall@10")) for name in ("initial", "eval", "bm25")),
    )  # fmt: skip
    assert summary["eval/mrr@10"] > summary["initial/mrr@10"] + 0.05
    assert summary["eval/ndcg@10"] > summary["initial/ndcg@10"]

    # Resume: a finished run restores its checkpoint and stops.
    again = finetune.run(config, str(tmp_path / "run"))
    assert again["step"] == 60 and "initial/mrr@10" not in again

    # Export, then CrossEncoder, mlm-jax score and our in-process scores agree.
    out = tmp_path / "export"
    finetune.export_finetuned(tmp_path / "run", out, verify=True)
    queries = [json.loads(line) for line in datasets["rerank_eval"].read_text().splitlines()[:2]]
    jobs = [{"query": q["query"], "candidates": [q["positive"], *q["negatives"][:4]]}
            for q in queries]  # fmt: skip
    _write_jsonl(tmp_path / "queries.jsonl", jobs)
    result = run_cli("score", "--model", out, "--queries", tmp_path / "queries.jsonl",
                     "--top-k", 5, check=True)  # fmt: skip
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["query"] for p in printed] == [j["query"] for j in jobs]

    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(str(out), device="cpu", local_files_only=True)
    for job, ranked in zip(jobs, printed, strict=True):
        theirs = cross_encoder.predict([(job["query"], c) for c in job["candidates"]])
        ours = {item["text"]: item["score"] for item in ranked["results"]}
        scores = [item["score"] for item in ranked["results"]]
        assert scores == sorted(scores, reverse=True)
        for candidate, score in zip(job["candidates"], theirs, strict=True):
            assert abs(ours[candidate] - float(score)) <= 1e-4

    # One query with a candidates file: same scores from the run directory.
    _write_jsonl(tmp_path / "cands.jsonl", [{"text": c} for c in jobs[0]["candidates"]])
    single = finetune.print_scores(
        str(tmp_path / "run"), query=jobs[0]["query"], candidates=tmp_path / "cands.jsonl"
    )
    for item in single[0]["results"]:
        assert abs(item["score"] - printed[0]["results"][item["rank"] - 1]["score"]) <= 1e-4


def test_classifier_learns_speakers(tmp_path, run_inputs, pretrained, datasets):
    config = _finetune_config(
        tmp_path / "cls.yaml", run_inputs, pretrained, task="classify", num_labels=4,
        train_file=str(datasets["classify_train"]), eval_file=str(datasets["classify_eval"]),
    )  # fmt: skip
    summary = finetune.run(config, str(tmp_path / "run"))
    print(
        f"classify held-out accuracy {summary['eval/accuracy']:.3f} macro-F1 "
        f"{summary['eval/macro_f1']:.3f} (initial {summary['initial/accuracy']:.3f}, chance 0.25)"
    )
    assert summary["eval/accuracy"] > 0.35
    assert summary["eval/macro_f1"] > 0.3
