"""Bad input to every command: one ``error:`` line naming the problem and nothing else on
stderr, exit code 2, no traceback, and no existing artifact changed (every file hashed
before and after).

One tiny trained run, its export and a second tokenizer are shared by the whole module;
each case builds its bad input in its own ``tmp_path``.
"""

# The case table keeps one case per line, even when that line is long.
# ruff: noqa: E501

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(run_inputs, real_text, tmp_path_factory) -> dict[str, Path]:
    """A trained 4-step run, its export, and a tokenizer of another vocabulary."""
    root = tmp_path_factory.mktemp("bad_inputs")
    cfg = write_config(root / "run.yaml", run_inputs,
                       train={"steps": 4, "checkpoint_every": 2, "eval_every": 0, "log_every": 2})  # fmt: skip
    run_cli("train", "--config", cfg, "--workdir", root / "run", check=True)
    run_cli("export", "--workdir", root / "run", "--out", root / "export", "--no-verify",
            check=True)  # fmt: skip
    run_cli("tokenizer", "train", "--input", real_text, "--vocab-size", 400,
            "--out", root / "tok400", check=True)  # fmt: skip
    return {"root": root, "run": root / "run", "export": root / "export",
            "tok400": root / "tok400", "text": real_text, **run_inputs}  # fmt: skip


def _digest(roots) -> dict[str, str]:
    digests = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _jsonl(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _config(w, tmp, **sections) -> Path:
    return write_config(tmp / "bad.yaml", {"data": w["data"], "tokenizer": w["tokenizer"]},
                        **sections)  # fmt: skip


def _finetune(w, tmp, records, **finetune) -> Path:
    data = _jsonl(tmp / "train.jsonl", *records)
    section = {"task": "classify", "train_file": str(data), **finetune}
    cfg = _config(w, tmp, model={"init_from": str(w["run"])}, finetune=section,
                  train={"steps": 2, "global_batch_size": 8, "eval_every": 0})  # fmt: skip
    return cfg


def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 64)
    return path


# Each case: (id, builder(world, tmp) -> argv, regex the error line must match).
CASES = [
    # config show
    ("yaml-malformed", lambda w, t: ["config", "show", "--config", _write(t / "c.yaml", "model: {num_layers: [\n")], r"yaml|pars"),
    ("yaml-not-mapping", lambda w, t: ["config", "show", "--config", _write(t / "c.yaml", "- 1\n- 2\n")], r"mapping|dict|section"),
    ("yaml-unknown-key", lambda w, t: ["config", "show", "--config", _yaml(t / "c.yaml", {"model": {"num_layer": 2}})], r"unknown.*num_layer"),
    ("yaml-unknown-section", lambda w, t: ["config", "show", "--config", _yaml(t / "c.yaml", {"modle": {}})], r"unknown.*modle"),
    ("yaml-mistyped", lambda w, t: ["config", "show", "--config", _yaml(t / "c.yaml", {"train": {"steps": "many"}})], r"train\.steps"),
    ("yaml-bad-literal", lambda w, t: ["config", "show", "--config", _yaml(t / "c.yaml", {"model": {"family": "gpt"}})], r"model\.family"),
    ("config-missing", lambda w, t: ["config", "show", "--config", t / "nope.yaml"], r"nope\.yaml"),
    ("override-unknown", lambda w, t: ["config", "show", "--set", "train.nope=1"], r"nope"),
    ("override-no-equals", lambda w, t: ["config", "show", "--set", "train.steps"], r"train\.steps"),
    ("heads-not-dividing", lambda w, t: ["config", "show", "--config", _yaml(t / "c.yaml", {"model": {"hidden_size": 30, "num_heads": 4}})], r"num_heads|hidden_size|divid"),
    # tokenizer train
    ("tok-missing-input", lambda w, t: ["tokenizer", "train", "--input", t / "none.txt", "--vocab-size", 400, "--out", t / "tok"], r"none\.txt"),
    ("tok-empty-input", lambda w, t: ["tokenizer", "train", "--input", _write(t / "e.txt", ""), "--vocab-size", 400, "--out", t / "tok"], r"empty|no text|no documents"),
    ("tok-binary-input", lambda w, t: ["tokenizer", "train", "--input", _binary(t / "b.txt"), "--vocab-size", 400, "--out", t / "tok"], r"binary|utf-?8|text"),
    ("tok-vocab-too-small", lambda w, t: ["tokenizer", "train", "--input", w["text"], "--vocab-size", 3, "--out", t / "tok"], r"vocab"),
    ("tok-vocab-not-int", lambda w, t: ["tokenizer", "train", "--input", w["text"], "--vocab-size", "lots", "--out", t / "tok"], r"vocab-size"),
    # data prepare / peek
    ("data-missing-input", lambda w, t: ["data", "prepare", "--input", t / "none.txt", "--out", t / "d"], r"none\.txt"),
    ("data-empty-input", lambda w, t: ["data", "prepare", "--input", _write(t / "e.txt", "\n\n"), "--out", t / "d"], r"empty|no text|no documents"),
    ("data-binary-input", lambda w, t: ["data", "prepare", "--input", _binary(t / "b.txt"), "--out", t / "d"], r"binary|utf-?8|text"),
    ("data-bad-fraction", lambda w, t: ["data", "prepare", "--input", w["text"], "--out", t / "d", "--valid-fraction", 1.5], r"valid-fraction|fraction"),
    ("data-out-is-other-dataset", lambda w, t: ["data", "prepare", "--input", _write(t / "x.txt", "other words\n\nmore words here\n"), "--out", w["data"]], r"force|exists|different"),
    ("peek-missing-source", lambda w, t: ["data", "peek", "--config", _config(w, t, data={"source": str(t / "nodata")})], r"nodata"),
    ("peek-missing-tokenizer", lambda w, t: ["data", "peek", "--config", _config(w, t, data={"tokenizer": str(t / "notok")})], r"notok"),
    # train
    ("train-batch-not-divisible", lambda w, t: ["train", "--config", _config(w, t, train={"global_batch_size": 12}), "--workdir", t / "r"], r"global_batch_size|divisib"),
    ("train-mesh-too-large", lambda w, t: ["train", "--config", _config(w, t, mesh={"data": 16}), "--workdir", t / "r"], r"mesh|device"),
    ("train-tokenizer-vocab-too-big", lambda w, t: ["train", "--config", _config(w, t, model={"vocab_size": 256}), "--workdir", t / "r"], r"vocab"),
    ("train-other-tokenizer-resume", lambda w, t: ["train", "--config", _config(w, t, data={"tokenizer": str(w["tok400"])}), "--workdir", _copy(w["run"], t / "r")], r"tokenizer|vocab"),
    ("train-other-model-resume", lambda w, t: ["train", "--config", _config(w, t, model={"hidden_size": 64}), "--workdir", _copy(w["run"], t / "r")], r"hidden_size|model|checkpoint"),
    ("train-init-from-other-model", lambda w, t: ["train", "--config", _config(w, t, model={"hidden_size": 64, "init_from": str(w["run"])}), "--workdir", t / "r"], r"hidden_size|init_from|shape"),
    ("train-binary-dataset", lambda w, t: ["train", "--config", _config(w, t, data={"source": str(_binary_dir(t / "bin"))}), "--workdir", t / "r"], r"bin"),
    # eval / export / predict
    ("eval-not-a-run", lambda w, t: ["eval", "--workdir", t], r"run directory|config\.yaml"),
    ("eval-missing-step", lambda w, t: ["eval", "--workdir", w["run"], "--step", 999], r"999"),
    ("eval-mask-rate-above-one", lambda w, t: ["eval", "--workdir", w["run"], "--mask-rate", 1.5], r"--mask-rate 1\.5"),
    ("eval-truncated-checkpoint", lambda w, t: ["eval", "--workdir", _truncated(w["run"], t / "r"), "--step", 4], r"checkpoint|damaged|corrupt|truncat"),
    ("export-out-exists", lambda w, t: ["export", "--workdir", w["run"], "--out", w["export"], "--no-verify"], r"force"),
    ("export-not-a-run", lambda w, t: ["export", "--workdir", t, "--out", t / "e"], r"run directory|config\.yaml"),
    ("predict-no-mask", lambda w, t: ["predict", "--model", w["export"], "no mask token here"], r"\[MASK\]"),
    ("predict-missing-model", lambda w, t: ["predict", "--model", t / "nomodel", "to be or [MASK]"], r"nomodel"),
    # finetune
    ("ft-no-section", lambda w, t: ["finetune", "--config", _config(w, t), "--workdir", t / "r"], r"finetune"),
    ("ft-missing-file", lambda w, t: ["finetune", "--config", _config(w, t, finetune={"train_file": str(t / "none.jsonl")}), "--workdir", t / "r"], r"none\.jsonl"),
    ("ft-bad-json", lambda w, t: ["finetune", "--config", _finetune(w, t, ['{"text": "a", "label": 1', {"text": "b", "label": 0}]), "--workdir", t / "r"], r"train\.jsonl:1.*JSON"),
    ("ft-missing-field", lambda w, t: ["finetune", "--config", _finetune(w, t, [{"text": "a"}]), "--workdir", t / "r"], r"train\.jsonl:1.*label"),
    ("ft-label-wrong-type", lambda w, t: ["finetune", "--config", _finetune(w, t, [{"text": "a", "label": "pos"}]), "--workdir", t / "r"], r"train\.jsonl:1.*label"),
    ("ft-label-out-of-range", lambda w, t: ["finetune", "--config", _finetune(w, t, [{"text": "a", "label": 7}]), "--workdir", t / "r"], r"train\.jsonl:1.*label"),
    ("ft-empty-negatives", lambda w, t: ["finetune", "--config", _finetune(w, t, [{"query": "q", "positive": "p", "negatives": []}], task="rerank", loss="listwise"), "--workdir", t / "r"], r"train\.jsonl:1.*negatives"),
    ("ft-init-from-missing", lambda w, t: ["finetune", "--config", _config(w, t, model={"init_from": str(t / "gone")}, finetune={"train_file": str(_jsonl(t / "a.jsonl", {"text": "a", "label": 0}))}), "--workdir", t / "r"], r"gone"),
    # score
    ("score-not-a-reranker", lambda w, t: ["score", "--model", w["export"], "--query", "q", "--candidates", _jsonl(t / "c.jsonl", {"text": "a"})], r"rerank|classif|fine-tun"),
    ("score-missing-candidates", lambda w, t: ["score", "--model", w["export"], "--query", "q", "--candidates", t / "none.jsonl"], r"none\.jsonl"),
]  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _binary_dir(path: Path) -> Path:
    path.mkdir()
    _binary(path / "dataset_info.json")
    _binary(path / "meta.json")
    return path


def _truncated(run: Path, dest: Path) -> Path:
    """A copy of the run whose checkpoint 4 lost the second half of every array data file."""
    _copy(run, dest)
    for path in (dest / "checkpoints" / "4").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    return dest


def _assert_refused(result, pattern: str, alone: bool = True) -> None:
    """Exit 2 with an ``error:`` line matching ``pattern``; ``alone``: the only stderr line
    (no warning, progress or log line before it). A run that fails after it started has
    already logged its start-up lines, so there the error need only be the last line."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    if alone:
        assert len(lines) == 1, result.stderr[-3000:]
    assert lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert re.search(pattern, lines[-1], re.IGNORECASE), lines[-1]


@pytest.mark.parametrize("build,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused(world, tmp_path, build, pattern):
    case = tmp_path / "case"
    case.mkdir()
    argv = build(world, case)
    watched = [world["run"], world["export"], world["data"], world["tokenizer"], case]
    before = _digest(watched)
    result = run_cli(*argv, timeout=300)
    _assert_refused(result, pattern)
    assert _digest(watched) == before, "a refused command changed an artifact"


def test_disk_full_during_save(world, tmp_path):
    """A workdir on a 1 MB filesystem: the checkpoint cannot fit, the run stops with one
    line, and nothing half-written is left as a checkpoint."""
    cfg = _config(world, tmp_path, train={"steps": 4, "checkpoint_every": 2, "eval_every": 0})
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:  # not root, or a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()[:200]}")
    try:
        workdir = small / "r"
        watched = [world["data"], world["tokenizer"], cfg]
        before = _digest(watched)
        result = subprocess.run(
            [sys.executable, "-m", "mlm_jax.cli", "train", "--config", str(cfg), "--workdir",
             str(workdir)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        _assert_refused(result, r"disk space", alone=False)
        assert _digest(watched) == before
        folder = workdir / "checkpoints"
        committed = [p.name for p in folder.iterdir() if p.name.isdigit()]
        assert not committed, f"a checkpoint was committed after a failed write: {committed}"
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_battery_is_large_enough():
    assert len(CASES) + 1 >= 30
    assert len({c[0] for c in CASES}) == len(CASES)
