"""The training loop through the CLI: loss falls, exact resume after kill -9, SIGTERM,
resharded resume, reruns from config.yaml, refused mismatches. Real processes, real
checkpoints, real text."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import run_cli, write_config

pytestmark = pytest.mark.slow


def _metrics(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _saved_steps(workdir):
    folder = workdir / "checkpoints"
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []


def _final_params(workdir, step=None):
    from mlm_jax.state import restore

    _, _, params = restore.restore_params(str(workdir), step)
    from flax import nnx

    return {str(k): np.asarray(v) for k, v in nnx.to_flat_state(params)}


# Dropout on in the reference run, so an exact resume must also restore the dropout key.
DROPOUT = {"dropout_rate": 0.1, "attention_dropout_rate": 0.1}


@pytest.fixture(scope="module")
def straight_run(run_inputs, tmp_path_factory):
    """40 steps uninterrupted, with dropout: the reference for every resume test."""
    root = tmp_path_factory.mktemp("straight")
    cfg = write_config(root / "run.yaml", run_inputs, model=DROPOUT,
                       train={"steps": 40, "checkpoint_every": 5})  # fmt: skip
    run_cli("train", "--config", cfg, "--workdir", root / "run", check=True)
    return root / "run"


def test_run_learns_and_records(straight_run):
    records = _metrics(straight_run)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses  # from ~ln(600) = 6.4
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    keys = {"train/loss", "train/mlm_accuracy", "train/grad_norm", "train/learning_rate",
            "perf/tokens_per_s", "perf/mfu"}  # fmt: skip
    assert keys <= set(records[0])
    manifest = json.loads((straight_run / "manifest.json").read_text())
    assert manifest["versions"]["jax"] and manifest["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert list((straight_run / "tensorboard").iterdir())


def test_kill_9_then_resume_is_bitwise_identical(straight_run, run_inputs, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", run_inputs, model=DROPOUT,
                       train={"steps": 40, "checkpoint_every": 5})  # fmt: skip
    workdir = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "mlm_jax.cli", "train", "--config", str(cfg), "--workdir",
         str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        steps = _saved_steps(workdir)
        if steps and max(steps) >= 20:
            break
        time.sleep(0.2)
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    result = run_cli("train", "--config", cfg, "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    resumed = re.search(r"resumed from checkpoint step (\d+)", result.stderr)
    assert resumed, result.stderr
    # A resume from the last step would compare two finished runs and test nothing.
    assert 0 < int(resumed.group(1)) < 40, resumed.group(0)
    ours, reference = _final_params(workdir), _final_params(straight_run)
    assert ours.keys() == reference.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rs]  # noqa: E731
    assert strip(_metrics(workdir)) == strip(_metrics(straight_run))


def test_sigterm_saves_and_exits_zero(run_inputs, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", run_inputs,
                       train={"steps": 100000, "checkpoint_every": 100000})  # fmt: skip
    workdir = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "mlm_jax.cli", "train", "--config", str(cfg), "--workdir",
         str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (workdir / "metrics.jsonl").exists():
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    assert "SIGTERM: saved step" in stderr and "resume" in stderr
    saved = _saved_steps(workdir)
    assert saved and max(saved) >= 5


def test_rerun_from_config_yaml_reproduces_metrics(straight_run, tmp_path):
    result = run_cli("train", "--config", straight_run / "config.yaml", "--workdir", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rs]  # noqa: E731
    assert strip(_metrics(tmp_path / "b")) == strip(_metrics(straight_run))


def test_resume_on_other_mesh_and_device_count(run_inputs, tmp_path):
    """Mesh (2,2,2) on 8 devices to step 20, then resumed to 30 twice: on mesh (4,1,1)
    over 4 devices, and on the original mesh. The losses must agree."""
    train = {"steps": 30, "checkpoint_every": 5, "log_every": 1}
    cfg = write_config(tmp_path / "run.yaml", run_inputs, train=train,
                       mesh={"data": 2, "fsdp": 2, "tensor": 2})  # fmt: skip
    first = run_cli("train", "--config", cfg, "--workdir", tmp_path / "a", "--set",
                    "train.steps=20")  # fmt: skip
    assert first.returncode == 0, first.stderr
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    same_mesh = run_cli("train", "--config", cfg, "--workdir", tmp_path / "a")
    assert same_mesh.returncode == 0, same_mesh.stderr
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    mesh_411 = ["--set", "mesh.data=4", "--set", "mesh.fsdp=1", "--set", "mesh.tensor=1"]
    other_mesh = run_cli("train", "--config", cfg, "--workdir", tmp_path / "b", *mesh_411, env=env)
    assert other_mesh.returncode == 0, other_mesh.stderr
    assert "data=4 fsdp=1 tensor=1 over 4 devices" in other_mesh.stderr
    losses = [
        {r["step"]: r["train/loss"] for r in _metrics(tmp_path / name) if "train/loss" in r}
        for name in ("a", "b")
    ]
    assert sorted(losses[0]) == sorted(losses[1]) == list(range(1, 31))
    for step_number in range(21, 31):
        assert losses[1][step_number] == pytest.approx(losses[0][step_number], rel=1e-5)
    # The weights too: the same model at step 30, up to the order of float32 reductions
    # (10 Adam steps at the config's learning rate move each weight by ~1e-2).
    a, b = _final_params(tmp_path / "a"), _final_params(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=2e-5, err_msg=name)


def test_resume_refuses_another_tokenizer(straight_run, real_text, tmp_path):
    other = tmp_path / "tok"
    run_cli("tokenizer", "train", "--input", real_text, "--vocab-size", 500, "--out", other,
            check=True)  # fmt: skip
    before = sorted(p.name for p in (straight_run / "checkpoints").iterdir())
    result = run_cli("train", "--config", straight_run / "config.yaml", "--workdir", straight_run,
                     "--set", f"data.tokenizer={other}", "--set", "train.steps=40")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: the tokenizer differs")
    assert sorted(p.name for p in (straight_run / "checkpoints").iterdir()) == before


def test_resume_refuses_other_model_shapes(straight_run):
    result = run_cli("train", "--config", straight_run / "config.yaml", "--workdir", straight_run,
                     "--set", "model.hidden_size=64", "--set", "train.steps=40")  # fmt: skip
    assert result.returncode == 2
    assert "model.hidden_size 32→64" in result.stderr


def test_nonfinite_raise_names_step_and_checkpoint(run_inputs, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", run_inputs, optim={"learning_rate": 1e30,
                       "warmup_steps": 0, "clip_norm": None})  # fmt: skip
    result = run_cli("train", "--config", cfg, "--workdir", tmp_path / "run")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "non-finite" in last and "at step" in last and "checkpoint" in last


def test_nonfinite_skip_leaves_the_weights_of_the_last_good_step(run_inputs, tmp_path):
    """A learning rate of 1e30: step 1 is finite and throws the weights to ~1e30, after which
    every loss is non-finite. With on_nonfinite=skip the run goes on to the end, counts the
    skipped steps, and saves exactly the weights step 1 left."""
    optim = {"learning_rate": 1e30, "warmup_steps": 0, "clip_norm": None}
    cfg = write_config(tmp_path / "run.yaml", run_inputs, optim=optim,
                       train={"on_nonfinite": "skip", "log_every": 1, "eval_every": 0})  # fmt: skip
    skipped = run_cli("train", "--config", cfg, "--workdir", tmp_path / "skip",
                      "--set", "train.steps=5", check=True)  # fmt: skip
    assert skipped.stderr.count("update skipped") == 4, skipped.stderr
    records = [r for r in _metrics(tmp_path / "skip") if "train/skipped_steps" in r]
    assert [r["train/skipped_steps"] for r in records] == [0, 1, 2, 3, 4]
    run_cli("train", "--config", cfg, "--workdir", tmp_path / "one", "--set", "train.steps=1",
            check=True)  # fmt: skip
    after_skips, after_one = _final_params(tmp_path / "skip"), _final_params(tmp_path / "one")
    assert after_skips.keys() == after_one.keys()
    for name in after_one:
        np.testing.assert_array_equal(after_skips[name], after_one[name], err_msg=name)


def test_eval_command_matches_the_logged_evaluation(straight_run):
    result = run_cli("eval", "--workdir", straight_run)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    logged = [r for r in _metrics(straight_run) if "eval/loss" in r][-1]
    assert logged["step"] == 40
    assert printed["eval/loss"] == pytest.approx(logged["eval/loss"], rel=1e-5)
    assert printed["eval/perplexity"] == pytest.approx(np.exp(printed["eval/loss"]), rel=1e-5)


def test_report_draws_the_curves(straight_run, tmp_path):
    import matplotlib.image

    result = run_cli("report", "--workdir", straight_run, "--out", tmp_path / "curves.png")
    assert result.returncode == 0, result.stderr
    image = matplotlib.image.imread(tmp_path / "curves.png")
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # drawn, not blank


def test_train_resume_export_predict_end_to_end(run_inputs, tmp_path):
    """The user's path: train, stop, train further (resume), export, fill a mask."""
    cfg = write_config(tmp_path / "run.yaml", run_inputs,
                       train={"steps": 10, "checkpoint_every": 5, "eval_every": 5})  # fmt: skip
    workdir, out = tmp_path / "run", tmp_path / "export"
    run_cli("train", "--config", cfg, "--workdir", workdir, "--set", "train.steps=5",
            check=True)  # fmt: skip
    resumed = run_cli("train", "--config", cfg, "--workdir", workdir, check=True)
    assert "resumed from checkpoint step 5" in resumed.stderr
    exported = run_cli("export", "--workdir", workdir, "--out", out, check=True)
    assert exported.stdout.strip().splitlines()[-1].startswith("export verified: max")
    predicted = run_cli("predict", "--model", out, "To be or not to [MASK].", "--top-k", "3",
                        check=True)  # fmt: skip
    lines = [line for line in predicted.stdout.splitlines() if "%" in line]
    assert len(lines) == 3


@pytest.mark.parametrize("family", ["bert", "modern"])
def test_bfloat16_pretraining_end_to_end(run_inputs, tmp_path, family):
    """The presets' compute dtype (bf16) for both families through the CLI: the loss falls,
    checkpoints hold fp32 parameters, and `mlm-jax eval` reproduces the logged evaluation."""
    cfg = write_config(tmp_path / "run.yaml", run_inputs,
                       model={"family": family, "dtype": "bfloat16"},
                       train={"steps": 20, "checkpoint_every": 10, "eval_every": 10,
                              "log_every": 1})  # fmt: skip
    workdir = tmp_path / "run"
    run_cli("train", "--config", cfg, "--workdir", workdir, check=True)
    records = _metrics(workdir)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 20 and all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert sorted(_saved_steps(workdir)) == [10, 20]
    params = _final_params(workdir)
    assert params and all(value.dtype == np.float32 for value in params.values())
    result = run_cli("eval", "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["eval/loss"] == pytest.approx(evals[-1]["eval/loss"], rel=1e-5)
