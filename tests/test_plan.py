"""`mlm-jax plan`: slices, collectives and memory of programs compiled for TPU devices.

Every compile here is real: libtpu's compile-only devices on this CPU host (the `tpu`
extra), nothing faked. The presets' own plans are in tests/test_aot_presets.py.
"""

import json
import math
import os
import sys
from pathlib import Path

import pytest
from conftest import config_dict, require, run_cli, tiny_config

from mlm_jax.errors import UserError
from mlm_jax.planning import collectives, targets

require("libtpu")  # the `tpu` extra, which scripts/test.sh installs (CI fails without it)


@pytest.mark.parametrize(
    "name, generation, shape",
    [
        ("v5p-8", "v5p", (2, 2, 1)),
        ("v5p-64", "v5p", (2, 4, 4)),
        ("v4-128", "v4", (4, 4, 4)),
        ("v5e-1", "v5e", (1, 1)),
        ("v5e-8", "v5e", (2, 4)),
        ("v6e-256", "v6e", (16, 16)),
        ("v5p:4x4x2", "v5p", (4, 4, 2)),
    ],
)
def test_slice_names_give_cloud_tpu_shapes(name, generation, shape):
    tpu = targets.parse_slice(name)
    assert tpu.chip.generation == generation and tpu.shape == shape


@pytest.mark.parametrize("name", ["v5p-6", "v5p-4", "v7-8", "tpu", "v5e-512", "v5e:2x2x2"])
def test_bad_slice_names_are_refused_with_examples(name):
    with pytest.raises(UserError, match="v5p-8"):
        targets.parse_slice(name)


def _plan(tmp_path, *overrides, target="v5p-8", env=None):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(config_dict({"model": {"dtype": "bfloat16"}})))
    out = tmp_path / "plan.json"
    sets = [a for o in overrides for a in ("--set", o)]
    result = run_cli("plan", "--config", config, "--target", target, "--json", out, *sets, env=env)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def _weight_bytes(*overrides):
    from mlm_jax.model import encoder

    config = tiny_config("model.dtype=bfloat16", *overrides)
    return 4 * encoder.param_count(config)


def test_data_parallel_plan_all_reduces_the_gradients_once(tmp_path):
    result, report = _plan(tmp_path, "mesh.data=4")
    assert result.returncode == 0, result.stderr
    assert "predicted MFU" in result.stdout and "fits" in result.stdout
    assert report["fits"] and report["devices"] == 4 and report["device_kind"] == "TPU v5"
    assert set(report["programs"]) == {"initializer", "train_step", "eval_step"}
    kinds = report["collectives"]["by_kind"]
    # Pure data parallelism: only all-reduces, and together they carry each float32
    # gradient once (plus a few scalars: loss sums, the gradient norm).
    assert set(kinds) == {"all-reduce"}
    weights = _weight_bytes()
    assert weights <= kinds["all-reduce"]["bytes"] <= weights * 1.01


def test_fsdp_plan_gathers_weights_and_reduce_scatters_gradients(tmp_path):
    # Wide enough that XLA reduce-scatters rather than all-reducing tiny gradients whole.
    wide = ("mesh.fsdp=4", "model.hidden_size=128", "model.intermediate_size=512")
    result, report = _plan(tmp_path, *wide)
    assert result.returncode == 0, result.stderr
    kinds = report["collectives"]["by_kind"]
    assert {"all-gather", "reduce-scatter"} <= set(kinds)
    # Each gradient is reduce-scattered once: the summed operands are the weights' bytes
    # (the embed-free vectors, norms and biases, stay whole and are all-reduced).
    weights = _weight_bytes(*wide[1:])
    assert 0.9 * weights <= kinds["reduce-scatter"]["bytes"] <= weights
    assert report["replicated_parameter_share"] == 0.0
    # Grouped by the operation that issued them, layers folded together.
    assert any("layer*" in op["op"] for op in report["collectives"]["by_op"])
    # Accumulating over two micro-batches reduce-scatters every gradient once per
    # micro-batch: collectives in the loop body count once per trip.
    result, accumulated = _plan(tmp_path, *wide, "optim.grad_accum_steps=2")
    assert result.returncode == 0, result.stderr
    scattered = accumulated["collectives"]["by_kind"]["reduce-scatter"]["count"]
    assert scattered == 2 * kinds["reduce-scatter"]["count"]


def test_remat_lowers_the_train_steps_temporaries(tmp_path):
    # Four layers of rows long enough that activations outweigh the MLM head's logits; the
    # tiny width keeps each of the three compiles near half a minute (width 128: a minute).
    shape = ("model.num_layers=4", "data.seq_len=64", "train.global_batch_size=512",
             "mesh.data=4")  # fmt: skip
    temporaries = {}
    for remat in ("none", "dense", "full"):
        result, report = _plan(tmp_path, *shape, f"model.remat={remat}")
        assert result.returncode == 0, result.stderr
        assert report["remat"] == remat
        temporaries[remat] = report["programs"]["train_step"]["memory"]["temporaries"]
    assert temporaries["full"] < temporaries["dense"] < temporaries["none"]
    assert temporaries["full"] < 0.5 * temporaries["none"]


def test_a_slice_plan_leaves_the_persistent_compilation_cache_alone(tmp_path):
    # libtpu's compile-only client cannot load a cached executable back: a plan that wrote
    # its programs to the cache warned once per program on every later run, and compiled
    # anyway. So a slice plan neither writes the cache nor creates it.
    cache = tmp_path / "xla-cache"
    result, report = _plan(tmp_path, env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache)))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert report["fits"] and not cache.exists()


def test_a_run_too_big_for_the_slice_is_refused_in_one_line(tmp_path):
    result, _ = _plan(tmp_path, "train.global_batch_size=262144", target="v5e-1")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for knob in ("train.global_batch_size", "optim.grad_accum_steps", "mesh.fsdp", "model.remat"):
        assert knob in lines[0]


def test_a_compiler_crash_is_one_line_with_the_knobs_to_change(tmp_path):
    # libtpu 0.0.42.1 dies with SIGSEGV inside its convolution tiling on these shapes
    # (docs/planning.md); the compile runs in a child, so the plan ends in one line.
    shape = ("model.num_layers=4", "model.hidden_size=128", "model.intermediate_size=512",
             "data.seq_len=64", "train.global_batch_size=64", "mesh.data=4",
             "model.remat=full")  # fmt: skip
    result, report = _plan(tmp_path, *shape)
    assert result.returncode == 2 and report is None
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "crashed (SIGSEGV)" in lines[0] and "model.remat" in lines[0]
    log = Path(lines[0].rsplit("the compiler's log: ", 1)[1].rstrip(")"))
    assert "SIGSEGV" in log.read_text()  # libtpu's dump, kept for a bug report
    log.unlink()


def test_plan_without_libtpu_names_the_tpu_extra(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("{}")
    code = (
        "import sys; sys.modules['libtpu'] = None; from mlm_jax.cli import main; "
        f"sys.exit(main(['plan', '--config', {str(config)!r}, '--target', 'v5p-8']))"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and ".[tpu]" in result.stderr


# One of each collective form, as XLA prints them (a trailing backslash joins HLO's lines).
HLO = """ENTRY %main (p: f32[8,4]) -> f32[32,4] {
  %all-gather.1 = f32[32,4]{1,0} all-gather(%p), channel_id=1, replica_groups={{0,1,2,3}}, \
dimensions={0}, metadata={op_name="jit(step)/jvp(layer3)/dot_general"}
  %all-reduce.2 = f32[8,4]{1,0} all-reduce(%p), channel_id=2, replica_groups=[2,4]<=[8], \
to_apply=%add
  %cp-start = (f32[8,4]{1,0}, f32[8,4]{1,0}) collective-permute-start(%p), \
source_target_pairs={{0,1}}
  %cp-done = f32[8,4]{1,0} collective-permute-done(%cp-start)
}"""


def test_collective_bytes_follow_the_ring_model():
    found = collectives.parse(HLO, device_count=8)
    by_kind = {c.kind: c for c in found}
    assert set(by_kind) == {"all-gather", "all-reduce", "collective-permute"}
    assert by_kind["all-gather"].moved == 32 * 4 * 4 * 3 / 4
    assert by_kind["all-reduce"].group == 4
    assert math.isclose(by_kind["all-reduce"].moved, 2 * 8 * 4 * 4 * 3 / 4)
    assert by_kind["collective-permute"].moved == 8 * 4 * 4
    assert collectives.readable_op(by_kind["all-gather"].op_name) == "jvp(layer*)/dot_general"


def test_train_plan_refuses_a_run_too_big_for_this_host_before_reading_data(tmp_path):
    missing = tmp_path / "no-dataset"
    sections = {"data": {"source": str(missing), "tokenizer": str(missing)}}
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(config_dict(sections)))
    workdir = tmp_path / "run"
    # 2^18 rows: the train step needs more than this host's memory per simulated device.
    big = run_cli("train", "--config", config, "--workdir", workdir, "--plan",
                  "--set", "train.global_batch_size=262144")  # fmt: skip
    assert big.returncode == 2
    assert big.stderr.count("\n") == 1 and "train.global_batch_size" in big.stderr
    assert not workdir.exists()
    # A run that fits passes the plan, then meets its missing dataset as before.
    small = run_cli("train", "--config", config, "--workdir", workdir, "--plan")
    assert "plan: peak" in small.stdout
    assert small.returncode == 2 and "no-dataset" in small.stderr


# A prefetch into on-chip memory (S(1)) and a fusion that reads the prefetched copy: the
# HBM estimate counts the prefetch's read once, not the fusion's second read of the same bytes.
PREFETCH = """ENTRY %main (a: f32[256,256]) -> f32[256,256] {
  %a = f32[256,256]{1,0} parameter(0)
  %cs = (f32[256,256]{1,0:S(1)}, f32[256,256]{1,0}, u32[]{:S(2)}) copy-start(%a)
  %cd = f32[256,256]{1,0:S(1)} copy-done(%cs)
  %f = f32[256,256]{1,0} fusion(%cd), kind=kLoop, calls=%fused
}
%fused (p: f32[256,256]) -> f32[256,256] {
  %p = f32[256,256]{1,0} parameter(0)
  ROOT %n = f32[256,256]{1,0} negate(%p)
}"""


def test_hbm_traffic_counts_on_chip_buffers_once():
    from mlm_jax.planning import traffic

    matrix = 256 * 256 * 4
    # The prefetch reads A from HBM; the fusion reads on-chip memory and writes HBM.
    assert traffic.hbm_bytes(PREFETCH) == 2 * matrix
    # Were the copy in HBM, it would be a read and a write, and the fusion's read another.
    assert traffic.hbm_bytes(PREFETCH.replace(":S(1)", "")) == 4 * matrix
