"""Config schema: presets, overrides, cross-field checks, CLI errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlm_jax import config
from mlm_jax.errors import UserError

PRESETS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
DESIGN_KEYS = [
    "model.family", "model.num_layers", "model.hidden_size", "model.num_heads",
    "model.intermediate_size", "model.vocab_size", "model.dtype", "model.init_from",
    "data.source", "data.tokenizer", "data.seq_len", "data.mask_rate", "train.steps",
    "train.global_batch_size", "train.seed", "train.eval_every", "train.checkpoint_every",
    "optim.learning_rate", "optim.warmup_steps", "optim.grad_accum_steps", "mesh.data",
    "mesh.fsdp", "mesh.tensor",
]  # fmt: skip


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"tiny", "bert-base", "bert-large", "modern-base"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_round_trips(preset):
    loaded = config.load(preset)
    again = config.from_dict(yaml.safe_load(config.dump(loaded)))
    assert again == loaded


def test_design_keys_exist():
    keys = {line.split(":")[0] for line in config.schema_lines()}
    missing = [k for k in DESIGN_KEYS if k not in keys]
    assert not missing


def test_nested_overrides_take_types():
    cfg = config.load(
        None,
        ["optim.learning_rate=1e-4", "model.init_from=null", "mesh.fsdp=2", "data.shuffle=false"],
    )
    assert cfg.optim.learning_rate == pytest.approx(1e-4)
    assert cfg.model.init_from is None
    assert cfg.mesh.fsdp == 2 and cfg.data.shuffle is False


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load(None, ["data.tokenizer=tok", "data.source=ds"])
    assert cfg.data.tokenizer == str(tmp_path / "tok")
    assert cfg.data.source == str(tmp_path / "ds")


def test_tfds_name_with_data_dir_stays_a_name(tmp_path):
    cfg = config.load(None, ["data.source=wikipedia/20230601.en", f"data.data_dir={tmp_path}"])
    assert cfg.data.source == "wikipedia/20230601.en"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.bogus=1"], "unknown config key 'model.bogus'"),
        (["model.num_layers=two"], "model.num_layers"),
        (["model.num_heads=3"], "does not divide"),
        (["train.global_batch_size=30", "mesh.data=4"], "not divisible"),
        (["data.seq_len=1024"], "max_position_embeddings"),
        (["mesh.data=0"], "mesh.data"),
        (["optim.learning_rate"], "KEY=VALUE"),
    ],
)
def test_bad_configs_are_user_errors(overrides, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        config.load(None, overrides)


def test_mesh_must_match_devices():
    cfg = config.load(None, ["mesh.fsdp=2", "mesh.tensor=2", "mesh.data=1"])
    assert cfg.check_devices(4) == (1, 2, 2)
    with pytest.raises(UserError, match="does not fit 8 devices"):
        cfg.check_devices(8)
    auto = config.load(None, ["mesh.fsdp=2"])
    assert auto.check_devices(8) == (4, 2, 1)


def test_global_batch_checked_against_devices():
    cfg = config.load(None, ["train.global_batch_size=8", "optim.grad_accum_steps=2"])
    with pytest.raises(UserError, match="grad_accum_steps"):
        cfg.check_devices(8)


def test_malformed_yaml_is_user_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_layers: [1,\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        config.load(bad)


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mlm_jax.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_cli_rejects_unknown_key_and_wrong_type(tmp_path):
    preset = str(PRESETS[0])
    for override, fragment in [
        ("train.nope=1", "unknown config key"),
        ("train.steps=x", "integer"),
    ]:
        result = _cli("config", "show", "--config", preset, "--set", override)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr


def test_cli_show_prints_resolved_yaml():
    result = _cli("config", "show", "--config", str(PRESETS[0]), "--set", "train.steps=7")
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["train"]["steps"] == 7


def test_cli_schema_lists_fields_with_help():
    result = _cli("config", "schema")
    assert result.returncode == 0
    line = next(x for x in result.stdout.splitlines() if x.startswith("optim.learning_rate"))
    assert "float" in line and "#" in line


def test_a_modern_run_from_before_sliding_windows_resumes_only_all_global():
    """Its manifest has no window fields: every layer of it attended globally, which the
    new default (a global layer every third) would silently change."""
    from mlm_jax import manifest

    old = {"tokenizer_fingerprint": "t", "config": {"model": {"family": "modern"}}}
    now = {"tokenizer_fingerprint": "t",
           "config": {"model": {"family": "modern", "global_attn_every_n_layers": 3}}}  # fmt: skip
    with pytest.raises(UserError, match="global_attn_every_n_layers=1"):
        manifest.check_resumable(old, now)
    now["config"]["model"]["global_attn_every_n_layers"] = 1
    manifest.check_resumable(old, now)
    bert = {"tokenizer_fingerprint": "t", "config": {"model": {"family": "bert"}}}
    manifest.check_resumable(bert, {**bert, "config": {"model": {"family": "bert",
                             "global_attn_every_n_layers": 3}}})  # fmt: skip


def test_a_run_from_before_narrow_dropout_draws_resumes_only_with_32_bits():
    """Its manifest has no dropout_bits: its masks came from 32-bit draws, which the new
    default (8 bits) would silently change; without dropout nothing changes."""
    from mlm_jax import manifest

    old = {"tokenizer_fingerprint": "t", "config": {"model": {"dropout_rate": 0.1}}}
    now = {"tokenizer_fingerprint": "t", "config": {"model": {"dropout_rate": 0.1,
           "dropout_bits": 8}}}  # fmt: skip
    with pytest.raises(UserError, match="dropout_bits=32"):
        manifest.check_resumable(old, now)
    now["config"]["model"]["dropout_bits"] = 32
    manifest.check_resumable(old, now)
    off = {"dropout_rate": 0.0, "attention_dropout_rate": 0.0}
    now_off = {**off, "dropout_bits": 8}
    before, after = ({"tokenizer_fingerprint": "t", "config": {"model": m}} for m in (off, now_off))
    manifest.check_resumable(before, after)
