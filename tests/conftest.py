"""Test set-up: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

# A child process that chose its own device count keeps it when it imports a test module.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Two cores: keep TensorFlow-free TFDS and Grain from spawning thread storms.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache per test run, shared by both xdist workers (they
# inherit the environment of the process that loads this file first) and every `mlm-jax`
# child: many tests compile the same small programs, and a hit loads in a fraction of a
# second what takes up to seconds to compile. Programs under JAX's one-second threshold
# are kept too (tests/test_train.py: 228 s without the cache, 200 s with the threshold,
# 185 s without it). The directory is the run's own, never a cache the shell names, so no
# test leans on an earlier run's programs and the size limit never evicts a user's. The
# limit also turns on JAX's file lock (the `filelock` package, in the test extra): without
# it an entry is written in place, and a process reading it half-written (the other worker,
# a peer of a multi-process run) would warn on stderr and compile again.
if "MLM_JAX_TEST_XLA_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["MLM_JAX_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="mlm-jax-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["MLM_JAX_TEST_XLA_CACHE"], True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["MLM_JAX_TEST_XLA_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 * 2**30)


import importlib  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

# The heaviest files, heaviest first (each 3 to 8 minutes of one of the two workers;
# `pytest --durations=70`, sixteenth session). scripts/test.sh runs `--dist loadfile
# --no-loadscope-reorder`: each worker takes the next file in collection order when it
# finishes one, so a long file left for last runs alone while the other worker sits idle;
# taking the long ones first leaves the short files to fill the end.
HEAVIEST_FIRST = (
    "test_aot_presets.py", "test_finetune.py", "test_plan.py", "test_train.py", "test_step.py",
    "test_multihost.py", "test_search.py", "test_recipe.py", "test_integrity.py",
)  # fmt: skip


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


def require(module: str):
    """Import an optional test dependency (torch, transformers, sentence_transformers).

    Missing, it skips the test on a developer's machine but fails it in CI (``CI`` set, as
    CI services and ``.ci/run`` do), where a silent skip would hide the export and
    reranker checks while the suite still reports green.
    """
    if not os.environ.get("CI"):
        return pytest.importorskip(module)
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"{module} is required when CI is set: {error}", pytrace=False)


def run_cli(*args, env=None, timeout=600, check=False):
    """Run ``mlm-jax`` in a fresh process, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "mlm_jax.cli", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"mlm-jax {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """A script of ``scripts/`` imported as a module, to test its functions directly."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The shared real text: the first SCENES Shakespeare scenes, one document each.
SCENES = 60
# The vocabulary of the shared tokenizer.
VOCAB = 600


@pytest.fixture(scope="session")
def scenes() -> list[str]:
    """The first ``SCENES`` built-in Shakespeare scenes, read once for the whole session.

    Tests that need less text take a prefix, so every slice is the start of ``real_text``.
    """
    from mlm_jax.data import sources

    return list(sources.iter_documents(["builtin:shakespeare"]))[:SCENES]


@pytest.fixture(scope="session")
def real_text(scenes, tmp_path_factory) -> Path:
    """About 475 KB of Shakespeare as a plain text file (documents = scenes)."""
    path = tmp_path_factory.mktemp("text") / "plays.txt"
    path.write_text("\n\n".join(scenes), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def run_inputs(real_text, tmp_path_factory) -> dict[str, Path]:
    """The shared tokenizer (``VOCAB`` pieces) and TFDS dataset of ``real_text``.

    Made through the CLI, as a user would, and trained once per session: training is the
    slow part, so every test that needs a real tokenizer takes this one.
    """
    root = tmp_path_factory.mktemp("inputs")
    run_cli("tokenizer", "train", "--input", real_text, "--vocab-size", VOCAB,
            "--out", root / "tok", check=True)  # fmt: skip
    run_cli("data", "prepare", "--input", real_text, "--out", root / "data",
            "--valid-fraction", 0.1, check=True)  # fmt: skip
    return {"tokenizer": root / "tok", "data": root / "data"}


TINY_VOCAB, TINY_SEQ = 300, 32

# The tiny model the config builders below start from: 2 layers of width 32.
TINY = {
    "model": {"num_layers": 2, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64,
              "vocab_size": TINY_VOCAB, "max_position_embeddings": 64},
    "data": {"seq_len": TINY_SEQ},
    "train": {"global_batch_size": 8},
}  # fmt: skip

# What a short run on the shared real data changes over TINY (see write_config).
RUN = {
    "model": {"num_heads": 2, "vocab_size": 640, "dropout_rate": 0.0,
              "attention_dropout_rate": 0.0},
    "data": {"seq_len": 64},
    "train": {"steps": 20, "global_batch_size": 16, "eval_every": 10, "eval_batches": 2,
              "log_every": 5, "checkpoint_every": 10},
    "optim": {"learning_rate": 3e-3, "warmup_steps": 5},
    "mesh": {"data": -1},
}  # fmt: skip


def config_dict(*layers: dict, overrides: tuple[str, ...] = ()) -> dict:
    """``TINY`` as a raw mapping, each layer's sections merged over it field by field, then
    the KEY=VALUE ``overrides``: the one place both config builders below get their fields."""
    from mlm_jax import config as config_lib

    raw = {}
    for layer in (TINY, *layers):
        for section, values in layer.items():
            raw.setdefault(section, {}).update(values)
    config_lib.apply_overrides(raw, list(overrides))
    return raw


def tiny_config(*overrides: str, **sections: dict):
    """The tiny config, in process; keyword ``sections`` then ``overrides`` (KEY=VALUE) win."""
    from mlm_jax import config as config_lib

    return config_lib.from_dict(config_dict(sections, overrides=overrides))


def write_config(path: Path, run_inputs: dict[str, Path], **sections) -> Path:
    """The tiny config as a short ``RUN`` over ``run_inputs``, written as YAML for the CLI;
    keyword sections override fields."""
    inputs = {"source": str(run_inputs["data"]), "tokenizer": str(run_inputs["tokenizer"])}
    path.write_text(yaml.safe_dump(config_dict(RUN, {"data": inputs}, sections)))
    return path


def sharded_params(config, mesh, seed: int):
    """``(graphdef, params, param_shardings)`` of a fresh run of ``config`` with ``seed``,
    initialised the way training does it (born sharded on ``mesh``)."""
    from mlm_jax.state import train_state

    config = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
    graphdef, state, shardings = train_state.init_train_state(config, mesh)
    return graphdef, state.params, shardings.params
