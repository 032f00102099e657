"""Fine-tuning an encoder into a classifier or a cross-encoder reranker.

The model is :class:`~mlm_jax.model.cross_encoder.CrossEncoder`; its losses are in
:mod:`mlm_jax.model.objectives`. What is particular to fine-tuning is here: labelled
batches, held-out evaluation beside BM25 and the model at initialisation, and the
:class:`Scorer` that evaluation and inference share. Everything else is pretraining's
machinery: the same step builder (gradient accumulation included) and the same run
skeleton (:mod:`mlm_jax.training.runs`): mesh, checkpoints with resume before
``model.init_from``, ``metrics.jsonl``, the progress line, SIGTERM.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
import optax

from mlm_jax import distributed
from mlm_jax.data import bm25_index
from mlm_jax.data import finetune_data as data_lib
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.data.ranking_metrics import classification_metrics, mean_ranking_metrics
from mlm_jax.errors import UserError
from mlm_jax.model import objectives, pair_scorer, sharding
from mlm_jax.training import loop, runs, step
from mlm_jax.training.metrics import read_metrics


def _check_task(config) -> None:
    ft = config.finetune
    if ft is None:
        raise UserError("the config has no finetune: section; add task, train_file and loss")
    if not ft.train_file:
        raise UserError("finetune.train_file is empty; point it at a labelled JSONL file")
    if ft.task == "classify" and ft.loss != "cross_entropy":
        raise UserError(f"finetune.loss={ft.loss} is for rerank; classify uses cross_entropy")
    if ft.task == "rerank" and ft.loss == "cross_entropy":
        raise UserError("finetune.task=rerank needs finetune.loss=listwise, pointwise or distill")


# ----------------------------------------------------------------------------- evaluation


class Evaluator:
    """Held-out metrics: accuracy/macro-F1 (classify) or MRR/NDCG/recall, with BM25's (rerank)."""

    def __init__(self, config, scorer: pair_scorer.Scorer, examples):
        self.task, self.scorer = config.finetune.task, scorer
        self.initial: dict[str, float] = {}  # the model at initialisation, once evaluated
        if self.task == "classify":
            self.pairs = [(e.text_a, e.text_b) for e in examples]
            self.labels = np.asarray([e.label for e in examples])
            self.baseline = {}
            return
        self.queries = examples
        self.pairs = [(q.query, p) for q in self.queries for p in q.positives + q.negatives]
        self.relevant = [
            np.asarray([1] * len(q.positives) + [0] * len(q.negatives)) for q in self.queries
        ]
        bm25 = mean_ranking_metrics(bm25_index.candidate_scores(self.queries), self.relevant)
        self.baseline = {f"bm25/{k}": v for k, v in bm25.items()}

    def __call__(self, params) -> dict[str, float]:
        logits = self.scorer(params, self.pairs)
        if self.task == "classify":
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, self.labels).mean()
            metrics = classification_metrics(logits.argmax(-1), self.labels)
            return {"eval/loss": float(loss), **{f"eval/{k}": v for k, v in metrics.items()}}
        split = np.cumsum([len(r) for r in self.relevant])[:-1]
        scores = np.split(logits[:, 0], split)
        return {f"eval/{k}": v for k, v in mean_ranking_metrics(scores, self.relevant).items()}

    def describe(self, metrics: dict[str, float]) -> str:
        """The model's metrics, then (when known) its initialisation's and BM25's."""
        text = ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in metrics.items())
        for name, others in (("at initialisation", self.initial), ("BM25", self.baseline)):
            if others and others != metrics:
                text += f" | {name}: " + ", ".join(
                    f"{k.split('/')[1]} {v:.4f}" for k, v in others.items()
                )
        return text


# ----------------------------------------------------------------------------- the run


def run(config, workdir: str) -> dict:
    """Fine-tune ``config`` in ``workdir``; resumes by itself. Returns the final summary."""
    _check_task(config)
    workdir_path = Path(workdir).resolve()
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    mesh = sharding.make_mesh(config)
    # Read the labelled files first: a bad line must not leave a half-made workdir.
    batches = training_batches(config, tokenizer, mesh)
    eval_examples = _read_eval(config)
    with runs.opened(config, workdir_path, tokenizer, mesh) as checkpointer:
        return _finetune(
            config, workdir_path, mesh, tokenizer, checkpointer, batches, eval_examples
        )


def training_batches(config, tokenizer, mesh):
    """``batch(step) -> host batch`` of this process's share."""
    ft, batch_size, seed = config.finetune, config.train.global_batch_size, config.train.seed
    encoder = data_lib.PairEncoder(tokenizer, config.data.seq_len, ft.max_query_tokens)
    share = {"pack": pair_scorer.pack_multiple(config, mesh),
             "process": (jax.process_index(), jax.process_count())}  # fmt: skip
    if ft.task == "classify":
        examples = data_lib.read_classify(ft.train_file, ft.num_labels)
        return lambda s: data_lib.classify_batch(examples, encoder, s, batch_size, seed, **share)
    queries = data_lib.read_rerank(ft.train_file)
    k, distill = ft.negatives_per_query, None
    if ft.loss == "distill":
        data_lib.check_teacher_scores(queries, ft.train_file)
        distill = (ft.teacher_scale, ft.distill_weight)
    return lambda s: data_lib.rerank_batch(
        queries, encoder, s, batch_size, k, seed, distill, **share
    )


def _read_eval(config):
    ft = config.finetune
    if not ft.eval_file:
        return None
    if ft.task == "classify":
        return data_lib.read_classify(ft.eval_file, ft.num_labels)
    return data_lib.read_rerank(ft.eval_file, evaluation=True)


def _finetune(config, workdir: Path, mesh, tokenizer, checkpointer, batches, eval_examples):
    restored, (graphdef, state, shardings) = runs.start(config, mesh, checkpointer)
    first_step = restored.step if restored is not None else 0
    objective = objectives.finetune_objective(config.finetune.loss)
    train_step = step.make_train_step(config, mesh, graphdef, shardings)
    rows_per_step = config.train.global_batch_size * (
        1 if config.finetune.task == "classify" else 1 + config.finetune.negatives_per_query
    )
    evaluate = evaluator = None
    if eval_examples is not None:
        scorer = pair_scorer.Scorer(
            config, mesh, graphdef, shardings.params, tokenizer, rows_per_step
        )
        evaluator = Evaluator(config, scorer, eval_examples)
        evaluate = functools.partial(_evaluate, evaluator)
    # Batches are a pure function of the step, so the step alone is the data state.
    job = loop.Job(
        next_batch=batches,
        data_state=dict,
        evaluate=evaluate,
        # Pairs as if one per row: packing shows as a higher rate, not fewer tokens.
        tokens_per_step=rows_per_step * config.data.seq_len,
        accuracy_key=objective.accuracy_name,
    )
    initial = {}

    def evaluate_initialisation(writer) -> None:
        nonlocal initial
        if first_step == 0 and evaluate is not None and first_step < config.train.steps:
            initial = evaluate(state.params, "before fine-tuning (step 0)")
            writer.write(0, initial)
        if evaluator is not None:
            evaluator.initial = _initial_metrics(initial, workdir)

    session = loop.Session(config, mesh, state, first_step, job, train_step, checkpointer)
    summary = runs.execute(session, workdir, before=evaluate_initialisation)
    summary.update({k.replace("eval/", "initial/"): v for k, v in initial.items()})
    return summary


def _initial_metrics(initial: dict, workdir: Path) -> dict:
    """The model's held-out metrics at step 0: just measured, or logged before a resume."""
    if not initial:
        initial = next((r for r in read_metrics(workdir) if r["step"] == 0), {})
    return {k: v for k, v in initial.items() if k.startswith("eval/")}


def _evaluate(evaluator, params, label: str) -> dict:
    """Held-out metrics, logged with BM25's; returns both, as the metrics file records them."""
    metrics = evaluator(params)
    distributed.log(f"eval {label}: {evaluator.describe(metrics)}")
    return {**metrics, **evaluator.baseline}
