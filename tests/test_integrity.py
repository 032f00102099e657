"""Damaged datasets and tokenizers get one line naming the file and the fix, exit 2.

Each case damages a copy of the session's real dataset and tokenizer (made by the CLI, so
they carry their checksums) the way an interrupted copy leaves them, then runs the CLI as
a user would.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, write_config


def _shard(dataset: Path, split: str = "train") -> Path:
    (shard,) = dataset.rglob(f"*-{split}.array_record-*")
    return shard


@pytest.fixture
def copies(run_inputs, tmp_path) -> dict[str, Path]:
    """Private copies of the shared tokenizer and dataset, free to damage."""
    out = {name: tmp_path / name for name in ("tokenizer", "data")}
    for name, path in out.items():
        shutil.copytree(run_inputs[name], path)
        shutil.rmtree(path / "baselines", ignore_errors=True)
    return out


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def saved_run(run_inputs, tmp_path_factory) -> Path:
    """A workdir whose run saved a checkpoint at step 2, on undamaged inputs."""
    root = tmp_path_factory.mktemp("saved")
    config = write_config(root / "run.yaml", run_inputs)
    run_cli("train", "--config", config, "--workdir", root / "run", "--set", "train.steps=2",
            check=True)  # fmt: skip
    return root / "run"


def _resume_refused(config: Path, saved_run: Path, tmp_path: Path, *words) -> None:
    """Resuming a copy of ``saved_run`` over damaged inputs stops in one line (the words in
    it) and leaves every checkpoint file as it was."""
    workdir = tmp_path / "resumed"
    shutil.copytree(saved_run, workdir)
    before = _tree_digest(workdir / "checkpoints")
    assert before, "the saved run has no checkpoint to protect"
    train = run_cli("train", "--config", config, "--workdir", workdir, "--set", "train.steps=4")
    _one_line_error(train, *words)
    assert _tree_digest(workdir / "checkpoints") == before


def _one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _junk(path: Path, size: int) -> None:
    path.write_bytes(bytes(range(256)) * (size // 256) + b"\0" * (size % 256))


DAMAGE = {
    "shard overwritten with junk": lambda s: _junk(s, s.stat().st_size // 3),
    "shard truncated to half": lambda s: s.write_bytes(s.read_bytes()[: s.stat().st_size // 2]),
    "shard missing": lambda s: s.unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_shard_stops_train_and_peek_in_one_line(damage, copies, saved_run, tmp_path):
    config = write_config(tmp_path / "run.yaml", copies)
    shard = _shard(copies["data"])
    DAMAGE[damage](shard)
    _resume_refused(config, saved_run, tmp_path, str(shard), "data prepare")
    peek = run_cli("data", "peek", "--config", config)
    _one_line_error(peek, str(shard), "data prepare")
    verify = run_cli("data", "verify", copies["data"])
    assert verify.returncode == 2 and f"damaged: {shard}" in verify.stdout


def test_a_cut_dataset_info_is_named(copies, saved_run, tmp_path):
    config = write_config(tmp_path / "run.yaml", copies)
    (info,) = copies["data"].rglob("dataset_info.json")
    info.write_text(info.read_text()[:40])
    _resume_refused(config, saved_run, tmp_path, str(info))


@pytest.mark.parametrize("same_size", [True, False])
def test_an_overwritten_tokenizer_is_named(same_size, copies, saved_run, tmp_path):
    config = write_config(tmp_path / "run.yaml", copies)
    model = copies["tokenizer"] / "spm.model"
    _junk(model, model.stat().st_size if same_size else 1000)
    _resume_refused(config, saved_run, tmp_path, str(model), "tokenizer train")
    verify = run_cli("data", "verify", copies["data"], "--tokenizer", copies["tokenizer"])
    assert verify.returncode == 2 and str(model) in verify.stdout


def test_verify_passes_a_whole_dataset_and_finds_same_size_damage(copies):
    whole = run_cli("data", "verify", copies["data"], "--tokenizer", copies["tokenizer"])
    assert whole.returncode == 0, whole.stderr
    assert "whole" in whole.stdout
    # Same size, other bytes in the middle: only the checksum and the records tell.
    shard = _shard(copies["data"])
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    shard.write_bytes(bytes(data))
    damaged = run_cli("data", "verify", copies["data"])
    assert damaged.returncode == 2
    assert f"damaged: {shard} does not match its checksum" in damaged.stdout
    assert damaged.stderr.count("\n") == 1


@pytest.mark.slow
def test_damage_found_mid_run_stops_cleanly_and_a_repaired_rerun_resumes_exactly(copies, tmp_path):
    config = write_config(tmp_path / "run.yaml", copies)
    steps = ("--set", "train.steps=20")
    # Both runs train 10 steps, then resume to 20; the reference meets no damage.
    for run in (tmp_path / "ref", tmp_path / "run"):
        run_cli("train", "--config", config, "--workdir", run, "--set", "train.steps=10",
                check=True)  # fmt: skip
    run_cli("train", "--config", config, "--workdir", tmp_path / "ref", *steps, check=True)
    # The run under test finds its shard damaged in place (same size) when it resumes.
    workdir = tmp_path / "run"
    shard = _shard(copies["data"])
    original = shard.read_bytes()
    cut = len(original) // 10  # zeros over the middle 80%: most records become unreadable
    shard.write_bytes(original[:cut] + bytes(len(original) - 2 * cut) + original[-cut:])
    checkpoints = _tree_digest(workdir / "checkpoints")
    stopped = run_cli("train", "--config", config, "--workdir", workdir, *steps)
    # The run had logged its start; what the damage adds is one error line, no traceback.
    assert stopped.returncode == 2, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stopped.stderr, stopped.stderr
    assert stopped.stderr.rstrip().endswith(errors[0])
    assert str(shard) in errors[0] and "does not match its checksum" in errors[0]
    assert _tree_digest(workdir / "checkpoints") == checkpoints  # the newest one untouched
    # Restored, the run resumes and ends exactly where the undamaged one did.
    shard.write_bytes(original)
    run_cli("train", "--config", config, "--workdir", workdir, *steps, check=True)

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(m["step"], m.get("train/loss")) for m in map(json.loads, lines)]

    assert losses(workdir) == losses(tmp_path / "ref")
