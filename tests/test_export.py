"""Hugging Face interop: exports load in transformers with the same logits and token ids,
HF BERT checkpoints import, and fill-mask runs on an export."""

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import conftest
import jax
import numpy as np
import pytest
from flax import nnx

from mlm_jax import config as config_lib
from mlm_jax import export
from mlm_jax.data import pipeline, preparation, tokenizer
from mlm_jax.errors import UserError
from mlm_jax.hf import names
from mlm_jax.hf import reader as hf_import
from mlm_jax.hf import tokenizer as hf_tokenizer
from mlm_jax.inference import fill_mask as inference
from mlm_jax.model import encoder as model_lib
from mlm_jax.model import sharding
from mlm_jax.model.encoder import Encoder
from mlm_jax.state import restore
from mlm_jax.training import step as step_lib

torch = conftest.require("torch")
transformers = conftest.require("transformers")

TOLERANCE = 1e-4
SENTENCES = [
    "To be, or not to be: that is the question.",
    "Naïve café déjà vu — «quoted» and ‘curly’ ½ ＡＢＣ ﬁ.",
    "数字 12345 and emoji 🙂 in one line.",
    "  extra   whitespace\tand tabs  \n and a newline ",
    "The capital of [MASK] is Paris.",
    "x \n [MASK][MASK] y[MASK]",
    "[MASK] starts, ends with [SEP]",
    "▁already escaped ▁▁ pieces",
]


def make_config(tokenizer_dir, family: str, source=None, **model) -> config_lib.Config:
    """The tiny config at width 64 over the shared tokenizer, on a 2x2x2 mesh."""
    return conftest.tiny_config(
        model={"family": family, "hidden_size": 64, "intermediate_size": 96,
               "vocab_size": conftest.VOCAB, "layer_norm_eps": 1e-5, "rope_theta": 10000.0,
               **model},
        data={"tokenizer": str(tokenizer_dir), "seq_len": 64,
              **({"source": str(source)} if source else {})},
        mesh={"data": 2, "fsdp": 2, "tensor": 2},
    )  # fmt: skip


def imported_config(directory, tokenizer_dir, **model) -> config_lib.Config:
    """The config of the transformers checkpoint in ``directory`` (``model`` fields win)."""
    values = {**hf_import.hf_model_config(directory), **model}
    return config_lib.from_dict(
        {"model": values, "data": {"tokenizer": str(tokenizer_dir), "seq_len": 32}}
    )


def perturbed_params(config: config_lib.Config, seed: int = 1):
    """Random params with every tensor moved off its init (LN scales != 1, biases != 0)."""
    graphdef, params = nnx.split(Encoder(config.model, rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.2, x.shape), params)
    return graphdef, jax.tree.map(lambda x: np.asarray(x, np.float32), params)


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """A run directory served by a stand-in ``restore.restore_params``."""
    runs = {}

    def restore_params(workdir, step=None):
        return runs[str(workdir)]

    monkeypatch.setattr(restore, "restore_params", restore_params)

    def make(config, graphdef, params):
        workdir = tmp_path / f"run{len(runs)}"
        workdir.mkdir()
        (workdir / "manifest.json").write_text(json.dumps({"tokenizer_fingerprint": "abc"}))
        runs[str(workdir)] = (config, graphdef, params)
        return workdir

    return make


@pytest.fixture(scope="module")
def exports(run_inputs, tmp_path_factory):
    """One verified export per family, and the params it came from."""
    made = {}
    for family in ("bert", "modern"):
        config = make_config(run_inputs["tokenizer"], family)
        _, params = perturbed_params(config)
        out = tmp_path_factory.mktemp("exports") / family
        export.write_pretrained(config, params, out, manifest={"run": family})
        made[family] = (config, params, out)
    return made


def hf_logits(out, input_ids, attention_mask, token_type_ids=None):
    model = transformers.AutoModelForMaskedLM.from_pretrained(str(out), dtype=torch.float32)
    model.eval()
    inputs = {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
    }
    if token_type_ids is not None:
        inputs["token_type_ids"] = torch.tensor(token_type_ids, dtype=torch.long)
    with torch.no_grad():
        return model(**inputs).logits.numpy()


def padded_batch(rows: list[list[int]]):
    length = max(map(len, rows))
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask


def jax_logits(config, params, ids, mask, token_type_ids=None):
    model = nnx.merge(nnx.split(Encoder(config.model, rngs=nnx.Rngs(0)))[0], params)
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    logits = model.full_logits(ids, mask, positions, token_type_ids)
    return np.asarray(logits)[..., : config.model.vocab_size]


@pytest.mark.parametrize("family", ["bert", "modern"])
def test_export_logits_match_transformers(exports, family):
    config, params, out = exports[family]
    ours = tokenizer.load(out)
    rows = [[2, *ours.encode_with_specials(s).tolist(), 3] for s in SENTENCES[:5]]
    ids, mask = padded_batch(rows)  # rows of different lengths: padding must not leak
    theirs = hf_logits(out, ids, mask)
    mine = jax_logits(config, params, ids, mask)
    assert theirs.shape == mine.shape == (*ids.shape, config.model.vocab_size)
    delta = np.abs(theirs - mine)[mask.astype(bool)].max()
    assert delta <= TOLERANCE, delta
    assert np.abs(theirs).max() > 1.0  # perturbed params: the comparison is not of zeros


@pytest.fixture(scope="module")
def real_batch(run_inputs, real_text, tmp_path_factory):
    """One training batch from the real pipeline, packed and masked (15%, 80/10/10) as
    training sees it. Its text is the tokenizer's Shakespeare cut into documents of three
    lines, short enough that rows pack several of them."""
    root = tmp_path_factory.mktemp("data")
    lines = [x for x in real_text.read_text().splitlines() if x.strip()]
    documents = ["\n".join(lines[i : i + 3]) for i in range(0, 600, 3)]
    (root / "short.txt").write_text("\n\n".join(documents))
    preparation.prepare([str(root / "short.txt")], str(root / "data"), valid_fraction=0.0)
    config = make_config(run_inputs["tokenizer"], "bert", source=root / "data")
    batches = pipeline.make_train_iterator(config)
    try:
        return next(batches)
    finally:
        batches.close()


def one_document_per_row(batch):
    """``(input_ids, attention_mask, labels)`` for transformers, from one packed batch.

    A transformers encoder attends over its whole row, so each packed document becomes a
    row of its own (positions restart per document in both). ``labels`` is -100 except at
    the masked positions, where it holds the original token, as ``BertForMaskedLM`` expects.
    """
    rows = {}
    for r, segments in enumerate(batch["segment_ids"]):
        for segment in np.unique(segments[segments > 0]):
            columns = np.flatnonzero(segments == segment)
            np.testing.assert_array_equal(batch["positions"][r, columns], np.arange(columns.size))
            rows[r, segment] = batch["input_ids"][r, columns]
    labels = {key: np.full(ids.size, -100) for key, ids in rows.items()}
    for r, slot in zip(*np.nonzero(batch["mlm_weights"]), strict=True):
        column = batch["mlm_positions"][r, slot]
        document = labels[r, batch["segment_ids"][r, column]]
        assert document[batch["positions"][r, column]] == -100, "a position masked twice"
        document[batch["positions"][r, column]] = batch["mlm_labels"][r, slot]
    ids, mask = padded_batch([row.tolist() for row in rows.values()])
    padded_labels = np.full(ids.shape, -100)
    for i, row_labels in enumerate(labels.values()):
        padded_labels[i, : row_labels.size] = row_labels
    return ids, mask, padded_labels


@pytest.mark.parametrize("family", ["bert", "modern"])
def test_mlm_loss_matches_transformers_loss_with_labels(exports, real_batch, family):
    """Our training loss on a real batch equals ``*ForMaskedLM(labels=...).loss`` on the
    exported weights: an independent check of which tokens are targets and how they weigh."""
    config, params, out = exports[family]
    weights = real_batch["mlm_weights"]
    # Every target counts once in both losses; fractional weights would need weighting here.
    assert set(np.unique(weights)) == {0.0, 1.0} and weights.sum() >= 50
    assert (real_batch["segment_ids"].max(axis=1) >= 2).any()  # rows do pack documents
    mesh = sharding.make_mesh(config)
    graphdef, abstract = model_lib.abstract_encoder(config.model)
    param_shardings = sharding.tree_shardings(abstract, mesh)
    eval_step = step_lib.make_eval_step(config, mesh, graphdef, param_shardings)
    sums = eval_step(
        jax.device_put(params, param_shardings), sharding.host_batch_to_global(real_batch, mesh)
    )
    ours = float(sums["loss_sum"]) / float(sums["weight_sum"])

    ids, mask, labels = one_document_per_row(real_batch)
    assert (labels != -100).sum() == weights.sum()
    model = transformers.AutoModelForMaskedLM.from_pretrained(str(out), dtype=torch.float32)
    with torch.no_grad():
        output = model.eval()(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
        )
    theirs = float(output.loss)
    assert theirs == pytest.approx(ours, rel=TOLERANCE)
    # The tolerance resolves single targets: the per-target losses spread so widely that one
    # wrong label or weight typically moves the mean by many times the tolerance.
    targets = torch.tensor(labels != -100)
    per_target = torch.nn.functional.cross_entropy(
        output.logits[targets], torch.tensor(labels)[targets], reduction="none"
    )
    assert float(per_target.mean()) == pytest.approx(theirs, rel=1e-6)
    assert float(per_target.std()) / len(per_target) > 10 * TOLERANCE * ours


def test_export_run_writes_verified_directory(run_inputs, fake_run, tmp_path, capsys):
    """Through export_run: sharded params on an 8-device mesh are gathered and verified."""
    config = make_config(run_inputs["tokenizer"], "bert")
    mesh = sharding.make_mesh(config)
    graphdef, params, shardings = conftest.sharded_params(config, mesh, 3)
    host = jax.tree.map(np.asarray, params)
    params = jax.device_put(jax.tree.map(lambda x: x + 0.1, host), shardings)
    workdir = fake_run(config, graphdef, params)
    out = tmp_path / "export"
    export.export_run(workdir, out)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("export verified: ")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "mlm_jax.json", "spm.model"} <= names
    assert set(hf_tokenizer.TOKENIZER_FILES) <= names
    saved = json.loads((out / "mlm_jax.json").read_text())
    assert saved["manifest"] == {"tokenizer_fingerprint": "abc"}
    assert saved["config"]["model"] == config.model.model_dump(mode="json")
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["architectures"] == ["BertForMaskedLM"]
    assert hf_config["vocab_size"] == conftest.VOCAB
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_non_empty_out_refused_and_untouched(exports, fake_run, tmp_path):
    config, params, _ = exports["modern"]
    workdir = fake_run(config, None, params)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="--force"):
        export.export_run(workdir, out, verify=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    export.export_run(workdir, out, force=True, verify=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_tokenizer_ids_match_sentencepiece(exports):
    _, _, out = exports["bert"]
    ours = tokenizer.load(out)
    theirs = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in SENTENCES:
        expected = [ours.cls_id, *ours.encode_with_specials(text).tolist(), ours.sep_id]
        assert theirs(text)["input_ids"] == expected, text
    emoji = theirs("🙂 数字")["input_ids"]
    assert tokenizer.UNK_ID not in emoji and len(emoji) > 4  # byte fallback, not [UNK]
    assert theirs.decode(emoji, skip_special_tokens=True) == "🙂 数字"
    assert theirs.mask_token == "[MASK]" and theirs.mask_token_id == tokenizer.MASK_ID
    assert theirs.pad_token_id == tokenizer.PAD_ID
    assert theirs.added_tokens_decoder[tokenizer.MASK_ID].lstrip  # "of [MASK]" as in BERT


@pytest.mark.parametrize("family", ["bert", "modern"])
def test_pipeline_fill_mask_agrees_with_ours(exports, family):
    _, _, out = exports[family]
    text = "The king [MASK] the crown upon his head."
    fill = transformers.pipeline("fill-mask", model=str(out), top_k=3)
    theirs = fill(text)
    ours = inference.fill_mask(out, text, top_k=3)
    assert len(ours) == 1
    assert [r["token"] for r in theirs] == [
        tokenizer.load(out).processor.piece_to_id(piece) for piece, _ in ours[0]
    ]
    for result, (_, probability) in zip(theirs, ours[0], strict=True):
        assert abs(result["score"] - probability) <= TOLERANCE


def test_fill_mask_top_k(exports):
    _, _, out = exports["modern"]
    predictions = inference.fill_mask(out, "To be, or [MASK] to be: that is the [MASK].", top_k=4)
    assert len(predictions) == 2
    # Each [MASK]'s four best pieces and their probabilities are transformers' own, in order.
    theirs = transformers.pipeline("fill-mask", model=str(out), top_k=4)(
        "To be, or [MASK] to be: that is the [MASK]."
    )
    pieces = tokenizer.load(out).processor
    for candidates, expected in zip(predictions, theirs, strict=True):
        assert [pieces.piece_to_id(piece) for piece, _ in candidates] == [
            r["token"] for r in expected
        ]
        np.testing.assert_allclose(
            [p for _, p in candidates], [r["score"] for r in expected], atol=TOLERANCE
        )
    with pytest.raises(UserError, match=r"\[MASK\]"):
        inference.fill_mask(out, "no mask here")


@pytest.mark.parametrize("family", ["bert", "modern"])
def test_state_dict_round_trip(run_inputs, family):
    config = make_config(run_inputs["tokenizer"], family)
    _, params = perturbed_params(config, seed=5)
    tensors = names.to_hf_state_dict(config, params)
    back = names.from_hf_state_dict(config, tensors)
    for (path, a), (_, b) in zip(nnx.to_flat_state(params), nnx.to_flat_state(back), strict=True):
        expected = np.asarray(a.get_value())
        if path[-1] in ("word_embeddings", "tok_embeddings", "decoder_bias"):
            expected = expected.copy()
            expected[config.model.vocab_size :] = 0  # padding rows are not exported
        np.testing.assert_array_equal(np.asarray(b.get_value()), expected, err_msg=str(path))


def _hf_bert_config(**overrides):
    values = dict(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
    )
    return transformers.BertConfig(**{**values, **overrides})


def _perturb_torch(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def test_import_bert_for_masked_lm(tmp_path, run_inputs):
    torch.manual_seed(0)
    hf_model = _perturb_torch(transformers.BertForMaskedLM(_hf_bert_config()))
    hf_model.save_pretrained(tmp_path / "hf")
    config = imported_config(tmp_path / "hf", run_inputs["tokenizer"])
    params = hf_import.load_hf_checkpoint(tmp_path / "hf", config)
    rng = np.random.default_rng(0)
    ids, mask = padded_batch([rng.integers(5, 300, n).tolist() for n in (12, 7)])
    types_ = (np.arange(ids.shape[1]) >= 4).astype(np.int32)[None].repeat(2, 0)
    with torch.no_grad():
        theirs = hf_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            token_type_ids=torch.tensor(types_, dtype=torch.long),
        ).logits.numpy()
    mine = jax_logits(config, params, ids, mask, types_)
    assert np.abs(theirs - mine)[mask.astype(bool)].max() <= TOLERANCE
    # import -> export gives back the very tensors transformers saved
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
    exported = names.to_hf_state_dict(config, params)
    assert set(exported) == set(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_import_bert_model_initializes_missing_head(tmp_path, run_inputs, caplog):
    torch.manual_seed(1)
    hf_model = _perturb_torch(transformers.BertModel(_hf_bert_config(), add_pooling_layer=True))
    hf_model.save_pretrained(tmp_path / "base")
    config = imported_config(tmp_path / "base", run_inputs["tokenizer"])
    with caplog.at_level(logging.WARNING, logger="mlm_jax.export"):
        params = hf_import.load_hf_checkpoint(tmp_path / "base", config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for name in (
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.bias",
    ):
        assert name in warnings[0]
    head = params["head"]
    np.testing.assert_array_equal(head["norm"]["scale"].get_value(), np.ones(32))
    np.testing.assert_array_equal(head["decoder_bias"].get_value(), np.zeros(384))
    assert 0.01 < np.std(head["dense"]["kernel"].get_value()) < 0.03  # normal(0, 0.02)
    # The encoder itself is the checkpoint's: hidden states match BertModel's.
    ids, mask = padded_batch([[7, 8, 9, 10, 11, 12], [20, 21, 22]])
    with torch.no_grad():
        theirs = hf_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).last_hidden_state.numpy()
    model = nnx.merge(nnx.split(Encoder(config.model, rngs=nnx.Rngs(0)))[0], params)
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    mine = np.asarray(model.encode(ids, mask, positions))
    assert np.abs(theirs - mine)[mask.astype(bool)].max() <= TOLERANCE


def test_import_rejects_mismatched_config(tmp_path, run_inputs):
    transformers.BertForMaskedLM(_hf_bert_config()).save_pretrained(tmp_path / "hf")
    config = imported_config(tmp_path / "hf", run_inputs["tokenizer"], hidden_size=64, num_layers=3)
    with pytest.raises(UserError, match=r"model\.num_layers=3 .*model\.hidden_size=64 "):
        hf_import.load_hf_checkpoint(tmp_path / "hf", config)


TWO_PROCESS_EXPORT = textwrap.dedent(
    """
    import sys, types
    import jax, numpy as np
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
    from flax import nnx
    from mlm_jax import export
    from mlm_jax.model import encoder as encoder_lib
    from mlm_jax.model import sharding
    from mlm_jax.state import restore
    sys.path.insert(0, "tests")
    from test_export import make_config, perturbed_params

    config = make_config(sys.argv[4], "modern", **{})
    config.mesh.data = 1  # 4 devices over 2 processes: fsdp and tensor cross them
    mesh = sharding.make_mesh(config)
    graphdef, host = perturbed_params(config, seed=7)
    _, abstract = encoder_lib.abstract_encoder(config.model)
    shardings = sharding.tree_shardings(abstract, mesh)
    params = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]), host, shardings)
    assert not all(x.is_fully_addressable for x in jax.tree.leaves(params))
    restore.restore_params = lambda workdir, step=None: (config, graphdef, params)
    export.export_run(sys.argv[1], sys.argv[1] + "/out", verify=jax.process_index() == 0)
    print("ok", jax.process_index(), flush=True)
    """
)


def test_two_processes_gather_and_one_writes(tmp_path, run_inputs):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    args = [str(tmp_path), f"127.0.0.1:{port}"]
    tokenizer_dir = run_inputs["tokenizer"]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESS_EXPORT, *args, str(pid), str(tokenizer_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for pid in (0, 1)
    ]
    try:
        outputs = [child.communicate(timeout=240) for child in children]
    finally:
        for child in children:
            child.kill()
    for pid, (child, (out, err)) in enumerate(zip(children, outputs, strict=True)):
        assert child.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == f"ok {pid}"
    assert outputs[0][0].strip().splitlines()[-2].startswith("export verified: ")
    from safetensors.numpy import load_file

    config = make_config(tokenizer_dir, "modern")
    expected = names.to_hf_state_dict(config, perturbed_params(config, seed=7)[1])
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(written[name], value, err_msg=name)


def test_fill_mask_on_a_transformers_bert_directory(tmp_path):
    """load_model on a foreign HF directory: config from config.json, WordPiece tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = ["the", "king", "queen", "crown", "wears", "a", "and", "##s", "."]
    vocab = {token: i for i, token in enumerate([*tokenizer.SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    torch.manual_seed(2)
    hf_model = _perturb_torch(transformers.BertForMaskedLM(_hf_bert_config()))
    hf_model.save_pretrained(tmp_path)
    backend.save(str(tmp_path / "tokenizer.json"))
    text = "The king [MASK] a crown."
    predictions = inference.fill_mask(tmp_path, text, top_k=3)
    ids = [2, *backend.encode("The king", add_special_tokens=False).ids, 4]
    ids += [*backend.encode("a crown.", add_special_tokens=False).ids, 3]
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor([ids])).logits[0, ids.index(4)]
    probabilities = torch.softmax(logits, -1).numpy()
    best = np.argsort(-probabilities)[:3]
    assert [piece for piece, _ in predictions[0]] == [
        backend.id_to_token(int(i)) or "[UNK]" for i in best
    ]
    np.testing.assert_allclose([p for _, p in predictions[0]], probabilities[best], atol=TOLERANCE)


def test_tokenizer_of_a_whole_model_directory_copies_only_tokenizer_files(exports, tmp_path):
    """``data.tokenizer`` may name a model directory (``hf:`` fine-tuning of a
    sentence-transformers checkpoint): weights, its model configs and the pooling folder
    stay behind; the tokenizer's files are copied unchanged."""
    config, _, out = exports["bert"]
    model_dir = tmp_path / "st-model"
    (model_dir / "1_Pooling").mkdir(parents=True)
    for name in hf_tokenizer.TOKENIZER_FILES:
        (model_dir / name).write_bytes((out / name).read_bytes())
    (model_dir / "vocab.txt").write_text("[PAD]\n")
    for name in ("model.safetensors", "config.json", "modules.json", "README.md"):
        (model_dir / name).write_text("{}")
    files = hf_tokenizer.hf_tokenizer_files(model_dir, config)
    assert sorted(files) == sorted([*hf_tokenizer.TOKENIZER_FILES, "vocab.txt"])
    assert files["tokenizer.json"] == (out / "tokenizer.json").read_bytes()
