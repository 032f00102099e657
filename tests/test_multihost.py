"""Multi-process runs over jax.distributed (gloo) on 127.0.0.1, against one process.

2 processes x 4 simulated CPU devices and 1 process x 8 devices train the same fp32
config with the same global batch: the data each process reads, the losses, checkpoints
resumed across the two layouts, and exports must agree. A process killed with SIGKILL must
bring its peer down with JAX's message instead of leaving it hanging. Runs are shared
through module fixtures and started side by side where they do not depend on each other.
"""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_config

pytestmark = pytest.mark.slow

LAUNCH = Path(__file__).resolve().parents[1] / "scripts" / "launch_local.sh"
STEPS, MORE_STEPS = 10, 13
RUN_TIMEOUT_S = 420
# JAX's coordination service declares a silent peer dead after this many seconds.
HEARTBEAT_S = 5


def _env(devices: int | None = None) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
    for key in ("MLM_JAX_COORDINATOR", "MLM_JAX_NUM_PROCESSES", "MLM_JAX_PROCESS_ID"):
        env.pop(key, None)
    if devices is not None:
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return env


def _single(*args) -> subprocess.Popen:
    """``mlm-jax ARGS`` in one process with 8 devices."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlm_jax.cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(8),
    )  # fmt: skip


def _launch(log_dir: Path, *args, processes: int = 2, devices: int = 4) -> subprocess.Popen:
    """``scripts/launch_local.sh``: PROCESSES processes x DEVICES devices."""
    return subprocess.Popen(
        ["bash", str(LAUNCH), "--devices-per-process", str(devices), "--log-dir", str(log_dir),
         str(processes), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip


def _finish(*children: subprocess.Popen) -> list[str]:
    """Wait for every child (bounded); each must exit 0. Returns their stderr."""
    results = []
    for child in children:
        try:
            _, stderr = child.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.terminate()  # the launcher forwards SIGTERM to its processes
            _, stderr = child.communicate(timeout=60)
            raise AssertionError(f"{child.args} timed out:\n{stderr[-3000:]}") from None
        results.append(stderr)
    for child, stderr in zip(children, results, strict=True):
        assert child.returncode == 0, f"{child.args} failed:\n{stderr[-3000:]}"
    return results


def _train_losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    steps = [s for s, _ in losses]
    assert steps == sorted(set(steps)), f"a step was logged twice (several writers?): {steps}"
    return dict(losses)


def _assert_close(ours: dict[int, float], reference: dict[int, float], steps) -> None:
    for s in steps:
        assert math.isfinite(ours[s]), (s, ours[s])
        assert abs(ours[s] - reference[s]) <= 1e-4 * abs(reference[s]), (s, ours, reference)


@pytest.fixture(scope="module")
def runs(run_inputs, tmp_path_factory) -> dict[str, Path]:
    """The same 10 fp32 steps in 1 process x 8 devices and in 2 processes x 4 devices,
    dropout on: its masks are drawn for the global batch, whatever the process count."""
    root = tmp_path_factory.mktemp("multihost")
    dropout = {"dropout_rate": 0.1, "attention_dropout_rate": 0.1}
    cfg = write_config(
        root / "run.yaml", run_inputs, model={"dtype": "float32", **dropout},
        train={"steps": STEPS, "log_every": 1, "checkpoint_every": STEPS, "eval_every": 0,
               "eval_batches": 1},
    )  # fmt: skip
    start = time.monotonic()
    one = _single("train", "--config", cfg, "--workdir", root / "one")
    two = _launch(root / "logs-two", "train", "--config", cfg, "--workdir", root / "two")
    _, two_stderr = _finish(one, two)
    print(f"1-process and 2-process runs side by side: {time.monotonic() - start:.1f} s")
    (root / "two-stderr.txt").write_text(two_stderr)
    return {"config": cfg, "root": root, "one": root / "one", "two": root / "two"}


@pytest.fixture(scope="module")
def resumed(runs) -> dict[str, Path]:
    """Each run's step-10 checkpoint continued to step 13 in the other layout."""
    root = runs["root"]
    two_then_one, one_then_two = root / "two-then-one", root / "one-then-two"
    shutil.copytree(runs["two"], two_then_one)
    shutil.copytree(runs["one"], one_then_two)
    more = f"train.steps={MORE_STEPS}"
    one = _single("train", "--config", runs["config"], "--workdir", two_then_one, "--set", more)
    two = _launch(root / "logs-resume", "train", "--config", runs["config"],
                  "--workdir", one_then_two, "--set", more)  # fmt: skip
    stderr = _finish(one, two)
    return {"two_then_one": two_then_one, "one_then_two": one_then_two, "stderr": stderr}


def _rerank_lines(count: int) -> list[dict]:
    """Shakespeare paragraphs as queries: the opening words find the rest of the paragraph,
    among three other paragraphs; lengths vary, so packing shares rows."""
    from mlm_jax.data import sources

    doc = next(iter(sources.iter_documents(["builtin:shakespeare"])))
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if len(p.split()) > 8]
    lines = []
    for i, words in enumerate(p.split() for p in paragraphs[:count]):
        others = [paragraphs[(i + k * 7) % len(paragraphs)] for k in (1, 2, 3)]
        lines.append({"query": " ".join(words[:5]), "positive": " ".join(words[5:]),
                      "negatives": others})  # fmt: skip
    return lines


def test_packed_rerank_finetune_agrees_across_processes_and_with_unpacked_rows(
    run_inputs, tmp_path
):
    """A reranker's fp32 training losses: 1 process x 8 devices, 2 processes x 4 devices
    (each packs the global batch and takes half of its rows, the model gathers [CLS] over
    all of them), and 1 process without packing: the same numbers."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(line) + "\n" for line in _rerank_lines(64)))
    cfg = write_config(
        tmp_path / "rerank.yaml", run_inputs, model={"dtype": "float32"},
        train={"steps": 4, "log_every": 1, "checkpoint_every": 4, "eval_every": 0},
        finetune={"task": "rerank", "loss": "listwise", "negatives_per_query": 3,
                  "max_query_tokens": 8, "train_file": str(train)},
    )  # fmt: skip
    args = ("finetune", "--config", cfg, "--workdir")
    one = _single(*args, tmp_path / "one")
    two = _launch(tmp_path / "logs", *args, tmp_path / "two")
    unpacked = _single(*args, tmp_path / "unpacked", "--set", "finetune.pack_rows=false")
    _finish(one, two, unpacked)
    reference = _train_losses(tmp_path / "one")
    assert sorted(reference) == [1, 2, 3, 4]
    _assert_close(_train_losses(tmp_path / "two"), reference, range(1, 5))
    _assert_close(_train_losses(tmp_path / "unpacked"), reference, range(1, 5))


def test_process_batches_are_disjoint_and_join_into_the_global_batch(run_inputs, tmp_path):
    from mlm_jax import config as config_lib
    from mlm_jax.data import pipeline

    config = config_lib.load(write_config(tmp_path / "run.yaml", run_inputs))
    whole = pipeline.make_train_iterator(config, 0, 1)
    parts = [pipeline.make_train_iterator(config, p, 2) for p in range(2)]
    try:
        assert [p.local_batch_size for p in parts] == [8, 8]
        for _ in range(3):
            batch, pieces = next(whole), [next(p) for p in parts]
            for name, value in batch.items():
                joined = np.concatenate([piece[name] for piece in pieces])
                np.testing.assert_array_equal(joined, value, err_msg=name)
            rows = [{row.tobytes() for row in piece["input_ids"]} for piece in pieces]
            assert len(rows[0]) == len(rows[1]) == 8 and not rows[0] & rows[1]
        streams = [set(p.get_state()["streams"]) for p in parts]
        assert not streams[0] & streams[1]
        assert streams[0] | streams[1] == set(whole.get_state()["streams"])
    finally:
        for iterator in (whole, *parts):
            iterator.close()


def test_launched_processes_each_read_half_and_together_the_whole_stream(runs):
    stderr = (runs["root"] / "two-stderr.txt").read_text()
    for p in range(2):
        assert re.search(rf"\[process {p}\] .*global batch 16 = 8 rows on this process × 2", stderr)
        assert (runs["root"] / "logs-two" / f"process-{p}.log").stat().st_size > 0
    # The data position saved by 2 processes (merged) equals the 1-process one.
    positions = [
        json.loads((runs[k] / "checkpoints" / str(STEPS) / "data" / "metadata").read_text())
        for k in ("one", "two")
    ]
    assert positions[0] == positions[1]
    assert positions[0]["steps"] == STEPS and len(positions[0]["streams"]) == 8


def test_losses_agree_between_one_and_two_processes(runs):
    one, two = _train_losses(runs["one"]), _train_losses(runs["two"])
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    assert one[STEPS] < one[1] - 0.1, one  # it trains, so the comparison means something
    _assert_close(two, one, range(1, STEPS + 1))
    # Process 0 alone writes the run's files.
    assert (runs["two"] / "manifest.json").is_file() and (runs["two"] / "config.yaml").is_file()


def _weights(workdir: Path) -> dict[str, np.ndarray]:
    from flax import nnx

    from mlm_jax.state import restore

    _, _, params = restore.restore_params(str(workdir))
    return {str(k): np.asarray(v) for k, v in nnx.to_flat_state(params)}


def test_one_and_two_processes_end_with_the_same_weights(runs):
    """Not only the losses: every weight after 10 fp32 steps, up to the order in which
    the two layouts sum gradients (about 1e-7 here; Adam moved each weight ~1e-2)."""
    one, two = _weights(runs["one"]), _weights(runs["two"])
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=2e-5, err_msg=name)


def test_checkpoints_resume_across_process_counts(resumed, runs):
    for stderr in resumed["stderr"]:
        assert f"resumed from checkpoint step {STEPS}" in stderr
    a, b = _train_losses(resumed["two_then_one"]), _train_losses(resumed["one_then_two"])
    assert sorted(a) == sorted(b) == list(range(1, MORE_STEPS + 1))
    # The first 10 steps are kept from the run that wrote the checkpoint ...
    _assert_close(a, _train_losses(runs["two"]), range(1, STEPS + 1))
    # ... and both continuations see the same state and data.
    _assert_close(a, b, range(STEPS + 1, MORE_STEPS + 1))
    assert a[MORE_STEPS] < a[1]


def test_two_process_export_equals_one_process_export(runs):
    from safetensors.numpy import load_file

    root = runs["root"]
    one = _single("export", "--workdir", runs["two"], "--out", root / "export-one", "--no-verify")
    two = _launch(root / "logs-export", "export", "--workdir", runs["two"],
                  "--out", root / "export-two", "--no-verify")  # fmt: skip
    _finish(one, two)
    a = load_file(root / "export-one" / "model.safetensors")
    b = load_file(root / "export-two" / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for name in ("config.json", "tokenizer.json"):
        one_file, two_file = root / "export-one" / name, root / "export-two" / name
        assert one_file.read_bytes() == two_file.read_bytes(), name
    # Process 0 alone wrote: nothing stray next to the export.
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("export")) == [
        "export-one",
        "export-two",
    ]


def _wait_for(log: Path, text: str, *children: subprocess.Popen) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and not (log.exists() and text in log.read_text()):
        for child in children:
            assert child.poll() is None, f"{child.args} ended early:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    assert text in log.read_text(), f"{text!r} never appeared in {log}"


def test_sigterm_stops_every_process_and_a_killed_one_brings_down_its_peer(run_inputs, tmp_path):
    """SIGTERM to the launcher: all processes save one step and exit 0. Resumed, then
    SIGKILL on process 1: process 0 exits with JAX's message within the heartbeat timeout.

    One device per process: the smallest job that trains over gloo starts fastest."""
    cfg = write_config(tmp_path / "run.yaml", run_inputs, train={"steps": 100000, "log_every": 1})
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    launcher = _launch(logs, "train", "--config", cfg, "--workdir", workdir, devices=1)
    _wait_for(logs / "process-1.log", "step 1/", launcher)
    launcher.send_signal(signal.SIGTERM)
    (stderr,) = _finish(launcher)
    for p in range(2):
        assert f"[process {p}] SIGTERM: saved step" in stderr, stderr[-3000:]
    saved = max(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(_env(1), MLM_JAX_COORDINATOR=f"127.0.0.1:{port}", MLM_JAX_NUM_PROCESSES="2",
               MLM_JAX_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_S))  # fmt: skip
    args = [sys.executable, "-m", "mlm_jax.cli", "train", "--config", str(cfg),
            "--workdir", str(workdir)]  # fmt: skip
    logs = [tmp_path / f"direct-{p}.log" for p in range(2)]
    children = []
    for p in range(2):  # no launcher: it would stop the survivor itself
        with logs[p].open("w") as log:
            children.append(subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=log,
                env=dict(env, MLM_JAX_PROCESS_ID=str(p)),
            ))  # fmt: skip
    try:
        _wait_for(logs[1], f"step {saved + 1}/", *children)
        children[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        children[0].wait(timeout=HEARTBEAT_S + 60)
        took = time.monotonic() - killed_at
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    print(f"process 0 exited {took:.1f} s after process 1 was killed")
    stderr = logs[0].read_text()
    assert f"resumed from checkpoint step {saved}" in stderr
    assert children[0].returncode != 0
    assert "another task died" in stderr or "unhealthy" in stderr, stderr[-3000:]


def test_launcher_stops_every_process_when_one_fails(tmp_path):
    """A stand-in interpreter: process 1 fails once process 0 runs, which would sleep 5 min."""
    fake = tmp_path / "fake-python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = -c ]; then exec {sys.executable} "$@"; fi  # the launcher picking a port\n'
        'echo "process $MLM_JAX_PROCESS_ID of $MLM_JAX_NUM_PROCESSES at $MLM_JAX_COORDINATOR '
        '$XLA_FLAGS args $*" >&2\n'
        f'if [ "$MLM_JAX_PROCESS_ID" = 0 ]; then touch {tmp_path}/started; exec sleep 300; fi\n'
        f"until [ -e {tmp_path}/started ]; do sleep 0.05; done\n"
        'echo "boom" >&2; exit 3\n'
    )
    fake.chmod(0o755)
    start = time.monotonic()
    result = subprocess.run(
        ["bash", str(LAUNCH), "--devices-per-process", "3", "--log-dir", str(tmp_path / "logs"),
         "2", "train", "--config", "x.yaml"],
        capture_output=True, text=True, timeout=60,
        env=dict(_env(), PYTHON=str(fake), MLM_JAX_KILL_GRACE_S="5"),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - start < 30
    assert "process 1 exited with code 3" in result.stderr
    assert "[process 1] boom" in result.stderr
    log0 = (tmp_path / "logs" / "process-0.log").read_text()
    assert re.search(r"process 0 of 2 at 127\.0\.0\.1:\d+ .*device_count=3 args -m mlm_jax", log0)
    assert "--xla_force_host_platform_device_count=8" not in log0


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _by_hand(configs: list[Path], workdir: Path, logs: list[Path], *args) -> list[int]:
    """Two processes started without the launcher, each with its own config (the launcher
    would give both the same, and would stop the survivor itself); their exit codes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(_env(4), MLM_JAX_COORDINATOR=f"127.0.0.1:{port}", MLM_JAX_NUM_PROCESSES="2")
    children = []
    for p, (config, log) in enumerate(zip(configs, logs, strict=True)):
        with log.open("w") as stream:
            children.append(subprocess.Popen(
                [sys.executable, "-m", "mlm_jax.cli", "train", "--config", str(config),
                 "--workdir", str(workdir), *args],
                stdout=subprocess.DEVNULL, stderr=stream, env=dict(env, MLM_JAX_PROCESS_ID=str(p)),
            ))  # fmt: skip
    try:
        return [child.wait(timeout=RUN_TIMEOUT_S) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_damage_on_one_host_stops_every_process_in_one_line_and_a_repaired_rerun_resumes_exactly(
    run_inputs, runs, resumed, tmp_path
):
    """Process 1 reads its own copy of the dataset (as hosts with local disks do), damaged
    in place (same size) before the run resumes from the 1-process step-10 checkpoint."""
    import yaml

    local = tmp_path / "host-1-data"
    shutil.copytree(run_inputs["data"], local)
    (shard,) = local.rglob("*-train.array_record-*")
    original = shard.read_bytes()
    cut = len(original) // 10  # zeros over the middle 80%: most records become unreadable
    shard.write_bytes(original[:cut] + bytes(len(original) - 2 * cut) + original[-cut:])
    settings = yaml.safe_load(runs["config"].read_text())
    settings["data"]["source"] = str(local)
    host_1 = tmp_path / "host-1.yaml"
    host_1.write_text(yaml.safe_dump(settings))
    configs = [runs["config"], host_1]
    workdir = tmp_path / "run"
    shutil.copytree(runs["one"], workdir)
    checkpoints = _digest(workdir / "checkpoints")
    more = ("--set", f"train.steps={MORE_STEPS}")

    logs = [tmp_path / f"stopped-{p}.log" for p in range(2)]
    assert _by_hand(configs, workdir, logs, *more) == [2, 2], [x.read_text() for x in logs]
    for log in logs:  # each process: its start, then exactly one line, naming host 1's file
        text = log.read_text()
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
        assert text.rstrip().endswith(errors[0])
        assert f"process 1 of 2 stopped the run at step {STEPS + 1}" in errors[0], errors[0]
        assert str(shard) in errors[0] and "does not match its checksum" in errors[0]
    assert _digest(workdir / "checkpoints") == checkpoints  # the newest one untouched

    shard.write_bytes(original)  # restored: the run goes on exactly as the undamaged one did
    logs = [tmp_path / f"repaired-{p}.log" for p in range(2)]
    assert _by_hand(configs, workdir, logs, *more) == [0, 0], logs[0].read_text()[-3000:]
    reference = _train_losses(resumed["one_then_two"])
    assert _train_losses(workdir) == reference, (_train_losses(workdir), reference)
