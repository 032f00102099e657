"""Every large preset compiles for the TPU slice it names, fits it, and shards as intended.

Real compiles for libtpu's compile-only devices, ahead of time ("aot"): about ten minutes
on one of two cores, so the module is marked slow; it is part of the default command all
the same, and tests/conftest.py hands it out first so the other worker runs the rest
meanwhile.
"""

import json
from pathlib import Path

import pytest
import yaml
from conftest import require, run_cli

require("libtpu")  # the `tpu` extra, which scripts/test.sh installs (CI fails without it)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ["bert-base", "bert-large", "modern-base"]

# What each parallelism should issue: data parallelism all-reduces gradients; FSDP
# gathers weights and reduce-scatters gradients (XLA may run either as a ring of
# collective-permutes, and all-reduces the unsharded vectors and scalars).
DATA_PARALLEL = {"all-reduce"}
SHARDED = {"all-gather", "reduce-scatter", "all-reduce", "collective-permute"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_fits_its_slice_with_sharded_weights_and_the_expected_collectives(preset, tmp_path):
    config = CONFIGS / f"{preset}.yaml"
    mesh = yaml.safe_load(config.read_text())["mesh"]
    assert mesh.get("target"), f"{preset} names no mesh.target"
    out = tmp_path / "plan.json"
    result = run_cli("plan", "--config", config, "--json", out, timeout=1200)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["target"] == mesh["target"]
    assert report["fits"] and report["peak_memory_bytes"] < report["memory_capacity_bytes"]
    if preset == "modern-base":  # no attention dropout: attention runs in the splash kernel
        assert report["programs"]["train_step"]["kernel_flops"] > 0
    kinds = set(report["collectives"]["by_kind"])
    if mesh.get("fsdp", 1) * mesh.get("tensor", 1) > 1:
        assert report["replicated_parameter_share"] <= 0.05
        assert {"all-gather", "reduce-scatter"} <= kinds <= SHARDED, kinds
    else:
        assert kinds == DATA_PARALLEL, kinds
