"""Fine-tuning an encoder into a classifier or a cross-encoder reranker, and scoring with it.

The model is :class:`CrossEncoder`: the pretrained :class:`~mlm_jax.model.Encoder`, a
pooler on the ``[CLS]`` hidden state and a linear classifier, the tensors of Hugging
Face ``BertForSequenceClassification`` (pooler dense + tanh) or
``ModernBertForSequenceClassification`` (head dense + GELU + norm). A reranker is a
classifier with one output, its logit the relevance score.

Losses are pure functions of ``(logits, batch) -> (loss_sum, correct_sum, weight_sum)``:
cross-entropy (classify), pointwise BCE and listwise softmax over one positive and k
negatives (rerank). The run machinery is pretraining's: the mesh, an Orbax checkpoint
per ``train.checkpoint_every`` holding the state and the step, resume from the workdir
before ``model.init_from``, ``metrics.jsonl`` and the progress line, SIGTERM.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mlm_jax import checkpoint, distributed, loop, manifest, sharding, step, train
from mlm_jax import config as config_lib
from mlm_jax import finetune_data as data_lib
from mlm_jax import tokenizer as tokenizer_lib
from mlm_jax.errors import UserError
from mlm_jax.metrics import MetricsWriter, read_metrics
from mlm_jax.model import Dense, Encoder, LayerNorm, dropout, gelu
from mlm_jax.optim import make_optimizer
from mlm_jax.ranking_metrics import classification_metrics, mean_ranking_metrics

# ----------------------------------------------------------------------------- model


class CrossEncoder(nnx.Module):
    """Encoder + pooler on ``[CLS]`` + classifier: logits ``[B, num_outputs]``."""

    def __init__(self, cfg, num_outputs: int, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        dtype = self.encoder.dtype
        bert = cfg.family == "bert"
        self.pooler = Dense(d, d, ("embed", None), use_bias=bert, dtype=dtype, rngs=rngs)
        self.pooler_norm = (
            None if bert else LayerNorm(d, eps=cfg.layer_norm_eps, use_bias=False, rngs=rngs)
        )
        self.classifier = Dense(
            d, num_outputs, ("embed", None), use_bias=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, input_ids, segment_ids, positions, token_type_ids, dropout_key=None):
        encoder_key = head_key = None
        if dropout_key is not None:
            encoder_key, head_key = (jax.random.fold_in(dropout_key, i) for i in range(2))
        cls = self.encoder.cls_hidden(
            input_ids, segment_ids, positions, token_type_ids, encoder_key
        )
        if self.pooler_norm is None:
            pooled = jnp.tanh(self.pooler(cls))  # BertPooler
        else:
            pooled = self.pooler_norm(gelu(self.pooler(cls)))  # ModernBertPredictionHead
        return self.classifier(dropout(pooled, self.cfg.dropout_rate, head_key))  # [B, C]


def num_outputs(config) -> int:
    return config.finetune.num_labels if config.finetune.task == "classify" else 1


def _forward(graphdef, params, batch, dropout_key=None) -> jax.Array:
    model = nnx.merge(graphdef, params)
    return model(
        batch["input_ids"],
        batch["segment_ids"],
        batch["positions"],
        batch["token_type_ids"],
        dropout_key,
    )


# ----------------------------------------------------------------------------- losses


def cross_entropy_sums(logits: jax.Array, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Classification: logits ``[B, C]``, ``labels [B]``, ``weights [B]``."""
    labels, weights = batch["labels"], batch["weights"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


def _groups(logits: jax.Array, batch) -> jax.Array:
    """Scores ``[Q, 1 + k]`` of query-major rows; column 0 is the positive."""
    queries = batch["weights"].shape[0]
    return logits[:, 0].reshape(queries, -1)


def pointwise_sums(logits: jax.Array, batch):
    """Rerank: binary cross-entropy of every candidate against its 0/1 relevance."""
    scores, weights = _groups(logits, batch), batch["weights"]
    targets = jnp.zeros_like(scores).at[:, 0].set(1.0)
    losses = optax.sigmoid_binary_cross_entropy(scores, targets).mean(-1)  # [Q]
    correct = (jnp.argmax(scores, -1) == 0).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


def listwise_sums(logits: jax.Array, batch):
    """Rerank: softmax cross-entropy over each query's candidates, the positive the target."""
    scores, weights = _groups(logits, batch), batch["weights"]
    losses = jax.nn.logsumexp(scores, -1) - scores[:, 0]
    correct = (jnp.argmax(scores, -1) == 0).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


def distill_sums(logits: jax.Array, batch):
    """Rerank: softmax cross-entropy over each query's candidates against soft ``targets``
    (the label mixed with a teacher's softmax, made by the batch builder)."""
    scores, weights = _groups(logits, batch), batch["weights"]
    losses = -jnp.sum(batch["targets"] * jax.nn.log_softmax(scores, -1), -1)
    correct = (jnp.argmax(scores, -1) == 0).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


LOSSES = {
    "cross_entropy": cross_entropy_sums,
    "pointwise": pointwise_sums,
    "listwise": listwise_sums,
    "distill": distill_sums,
}


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
    if config.optim.grad_accum_steps != 1:
        raise UserError("fine-tuning does not accumulate gradients; set optim.grad_accum_steps=1")


# ----------------------------------------------------------------------------- state and step


def abstract_cross_encoder(config) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, params)`` of the cross-encoder, made of shapes only."""
    outputs = num_outputs(config)
    return nnx.split(nnx.eval_shape(lambda: CrossEncoder(config.model, outputs, rngs=nnx.Rngs(0))))


def abstract_state(config, mesh):
    """``(graphdef, abstract_state, shardings)`` of the fine-tuning train state."""
    return step.abstract_train_state(config, mesh, abstract_cross_encoder(config))


def init_state(config, mesh, shardings) -> step.TrainState:
    """A fresh state: new pooler and classifier; the encoder from ``init_from`` if set."""
    seed, outputs = config.train.seed, num_outputs(config)

    def init():
        return nnx.split(CrossEncoder(config.model, outputs, rngs=nnx.Rngs(seed)))[1]

    params = jax.jit(init, out_shardings=shardings.params)()
    if config.model.init_from:
        params["encoder"] = jax.device_put(
            train.initial_params(config, mesh), shardings.params["encoder"]
        )
    return step.train_state_from_params(config, params, shardings)


def make_train_step(config, mesh, graphdef, shardings):
    """The jitted ``train_step(state, batch) -> (state, metrics)``; ``state`` is donated."""
    tx, schedule = make_optimizer(config)
    loss_sums = LOSSES[config.finetune.loss]

    def loss_fn(params, batch, key):
        loss_sum, correct, weight_sum = loss_sums(_forward(graphdef, params, batch, key), batch)
        denom = jnp.maximum(weight_sum, 1.0)
        return loss_sum / denom, correct / denom

    def train_step(state: step.TrainState, batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            key = jax.random.fold_in(state.rng, state.step)
            (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, batch, key
            )
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
            new_state = step.TrainState(
                step=state.step + 1,
                params=keep(params, state.params),
                opt_state=keep(opt_state, state.opt_state),
                rng=state.rng,
            )
            return new_state, {
                "train/loss": loss,
                "train/accuracy": accuracy,
                "train/grad_norm": grad_norm,
                "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
                "train/nonfinite": 1.0 - finite.astype(jnp.float32),
            }

    return jax.jit(
        train_step,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, NamedSharding(mesh, P())),
        donate_argnums=0,
    )


# ----------------------------------------------------------------------------- scoring


class Scorer:
    """Logits ``[N, C]`` for many rows, in fixed-size chunks (one compilation), eval mode."""

    def __init__(self, config, mesh, graphdef, param_shardings, tokenizer, chunk_rows: int):
        devices = mesh.shape["data"] * mesh.shape["fsdp"]
        self.chunk_rows = -(-max(chunk_rows, devices) // devices) * devices
        self.mesh = mesh
        self.encoder = data_lib.PairEncoder(
            tokenizer, config.data.seq_len, config.finetune.max_query_tokens
        )

        def logits(params, batch):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return _forward(graphdef, params, batch)

        self._logits = jax.jit(
            logits,
            in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
            out_shardings=NamedSharding(mesh, P()),
        )

    def __call__(self, params, pairs: list[tuple[str, str | None]]) -> np.ndarray:
        out = []
        per_process = self.chunk_rows // jax.process_count()
        mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
        for start in range(0, len(pairs), self.chunk_rows):
            chunk = pairs[start : start + self.chunk_rows]
            padded = chunk + [chunk[-1]] * (self.chunk_rows - len(chunk))
            rows = self.encoder.encode(padded[mine])  # rows encode independently
            logits = self._logits(params, sharding.host_batch_to_global(rows, self.mesh))
            out.append(np.asarray(jax.device_get(logits))[: len(chunk)])
        return np.concatenate(out).astype(np.float32)


def bm25_scores(queries: list[data_lib.RankingQuery]) -> list[np.ndarray]:
    """BM25 (``bm25s``, English stopwords) of each query's candidates, positives first.

    Scores the file carries (first-stage retrieval over a whole collection) are used as
    they are; otherwise BM25 is computed over the union of all candidates.
    """
    import bm25s

    if all(set(q.bm25) >= {*q.positives, *q.negatives} for q in queries):
        return [np.asarray([q.bm25[p] for p in q.positives + q.negatives]) for q in queries]
    passages = sorted({p for q in queries for p in q.positives + q.negatives})
    index = {p: i for i, p in enumerate(passages)}
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(passages, stopwords="en", show_progress=False), show_progress=False
    )
    tokens = bm25s.tokenize(
        [q.query for q in queries], stopwords="en", return_ids=False, show_progress=False
    )
    out = []
    for query, query_tokens in zip(queries, tokens, strict=True):
        scores = retriever.get_scores(query_tokens) if query_tokens else np.zeros(len(passages))
        out.append(np.asarray([scores[index[p]] for p in query.positives + query.negatives]))
    return out


class Evaluator:
    """Held-out metrics: accuracy/macro-F1 (classify) or MRR/NDCG/recall, with BM25's (rerank)."""

    def __init__(self, config, scorer: Scorer, examples):
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
        bm25 = mean_ranking_metrics(bm25_scores(self.queries), self.relevant)
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
    batches = _training_batches(config, tokenizer)
    eval_examples = _read_eval(config)
    run_manifest = manifest.build(config, tokenizer, mesh)
    train.check_init_from(config, workdir_path)
    train.prepare_workdir(workdir_path, config, run_manifest)
    checkpointer = checkpoint.Checkpointer(workdir_path, config)
    try:
        return _finetune(
            config, workdir_path, mesh, tokenizer, checkpointer, batches, eval_examples
        )
    finally:
        checkpointer.close()


def _training_batches(config, tokenizer):
    """``batch(step) -> host batch`` of this process's rows."""
    ft, batch_size, seed = config.finetune, config.train.global_batch_size, config.train.seed
    encoder = data_lib.PairEncoder(tokenizer, config.data.seq_len, ft.max_query_tokens)
    local = batch_size // jax.process_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    if ft.task == "classify":
        examples = data_lib.read_classify(ft.train_file, ft.num_labels)
        return lambda s: data_lib.classify_batch(examples, encoder, s, rows, batch_size, seed)
    queries = data_lib.read_rerank(ft.train_file)
    k, distill = ft.negatives_per_query, None
    if ft.loss == "distill":
        data_lib.check_teacher_scores(queries, ft.train_file)
        distill = (ft.teacher_scale, ft.distill_weight)
    return lambda s: data_lib.rerank_batch(queries, encoder, s, rows, batch_size, k, seed, distill)


def _read_eval(config):
    ft = config.finetune
    if not ft.eval_file:
        return None
    if ft.task == "classify":
        return data_lib.read_classify(ft.eval_file, ft.num_labels)
    return data_lib.read_rerank(ft.eval_file, evaluation=True)


def _finetune(config, workdir: Path, mesh, tokenizer, checkpointer, batches, eval_examples):
    graphdef, abstract, shardings = abstract_state(config, mesh)
    restored = checkpointer.restore_latest(abstract)
    if restored is not None:
        first_step, state = restored[0], restored[1]
        distributed.log(f"resumed from checkpoint step {first_step}")
    else:
        first_step, state = 0, init_state(config, mesh, shardings)
        distributed.log(f"initialised from {config.model.init_from or 'scratch'}")
    train_step = make_train_step(config, mesh, graphdef, shardings)
    rows_per_step = config.train.global_batch_size * (
        1 if config.finetune.task == "classify" else 1 + config.finetune.negatives_per_query
    )
    evaluate = evaluator = None
    if eval_examples is not None:
        scorer = Scorer(config, mesh, graphdef, shardings.params, tokenizer, rows_per_step)
        evaluator = Evaluator(config, scorer, eval_examples)
        evaluate = functools.partial(_evaluate, evaluator)
    # Batches are a pure function of the step, so the step alone is the data state.
    job = loop.Job(
        next_batch=batches,
        data_state=dict,
        evaluate=evaluate,
        tokens_per_step=rows_per_step * config.data.seq_len,
        accuracy_key="train/accuracy",
    )
    writer = MetricsWriter(workdir, enabled=distributed.is_primary())
    writer.truncate_after(first_step)
    initial = {}
    if first_step == 0 and evaluate is not None and first_step < config.train.steps:
        initial = evaluate(state.params, "before fine-tuning (step 0)")
        writer.write(0, initial)
    if evaluator is not None:
        evaluator.initial = _initial_metrics(initial, workdir)
    stop = loop.StopRequest()
    stop.install()
    try:
        summary = loop.run(config, mesh, state, first_step, job, train_step, writer,
                           checkpointer, stop)  # fmt: skip
    finally:
        stop.uninstall()
        writer.close()
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


# ----------------------------------------------------------------------------- loading and scoring


def load_run(workdir: str, step_number: int | None = None):
    """``(config, graphdef, params)`` of a fine-tuned run's checkpoint, on this host's devices."""
    path = Path(workdir)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{workdir} is not a run directory (no config.yaml); fine-tune first")
    config = config_lib.load(path / "config.yaml", ["mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1"])
    if config.finetune is None:
        raise UserError(f"{workdir} is a pretraining run; pass a fine-tuned run or its export")
    graphdef, abstract, _ = abstract_state(config, sharding.make_mesh(config))
    with checkpoint.Checkpointer(path, config) as ckpt:
        if step_number is not None:
            return config, graphdef, ckpt.restore(step_number, abstract)[0].params
        restored = ckpt.restore_latest(abstract)
    if restored is None:
        raise UserError(f"{workdir} has no checkpoint yet; fine-tune it first")
    return config, graphdef, restored[1].params


def load_model(path: str):
    """``(config, graphdef, params, tokenizer)`` of a fine-tuned run or its export, float32."""
    from mlm_jax import finetune_export

    directory = Path(path)
    if (directory / "mlm_jax.json").is_file():
        config, params = finetune_export.read_export(directory)
    elif (directory / "config.yaml").is_file():
        config, _, params = load_run(str(directory))
    else:
        raise UserError(
            f"{path!r} is neither a fine-tuned export (mlm_jax.json) nor a run (config.yaml)"
        )
    config.model.dtype = "float32"  # scoring: full precision, as transformers does
    graphdef, _, shardings = abstract_state(config, sharding.make_mesh(config))
    params = jax.device_put(params, shardings.params)
    return config, graphdef, params, tokenizer_lib.load(config.data.tokenizer)


def load_reranker(path: str, chunk_rows: int = 32):
    """``score(pairs) -> [N] logits`` of the reranker at ``path``; refuses other models."""
    config, graphdef, params, tokenizer = load_model(path)
    if num_outputs(config) != 1:
        raise UserError(f"{path} is a {config.finetune.num_labels}-class classifier; score ranks "
                        "with a reranker (finetune.task: rerank)")  # fmt: skip
    mesh = sharding.make_mesh(config)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    scorer = Scorer(config, mesh, graphdef, param_shardings, tokenizer, chunk_rows)
    return lambda pairs: scorer(params, pairs)[:, 0]


def score_pairs(path: str, pairs: list[tuple[str, str]], chunk_rows: int = 32) -> np.ndarray:
    """Relevance scores (logits) of ``(query, passage)`` pairs under the model at ``path``."""
    return load_reranker(path, chunk_rows)(pairs)


def print_scores(model: str, query=None, candidates=None, queries=None, top_k: int = 10):
    """``mlm-jax score``: candidates sorted by score, for one query or a JSONL of queries.

    One query prints ``rank<TAB>score<TAB>text`` lines; ``--queries`` prints one JSON
    object per query: ``{"query", "results": [{"rank", "score", "text"}, ...]}``.
    """
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    if (queries is None) == (query is None or candidates is None):
        raise UserError("pass --query with --candidates, or --queries F.jsonl (not both)")
    if queries is None:
        jobs = [(query, data_lib.read_candidates(candidates))]
    else:
        jobs = data_lib.read_scoring_queries(queries)
    pairs = [(q, text) for q, texts in jobs for text in texts]
    scores = score_pairs(model, pairs)
    results, start = [], 0
    for q, texts in jobs:
        mine = scores[start : start + len(texts)]
        start += len(texts)
        order = np.argsort(-mine, kind="stable")[:top_k]
        ranked = [
            {"rank": r + 1, "score": float(mine[i]), "text": texts[i]} for r, i in enumerate(order)
        ]
        results.append({"query": q, "results": ranked})
        if queries is None:
            for item in ranked:
                print(f"{item['rank']}\t{item['score']:.6f}\t{item['text']}")
        else:
            print(json.dumps(results[-1], ensure_ascii=False))
    return results
