"""Kill a training run with SIGKILL at random moments and check it still ends bit-identical.

    python scripts/chaos_resume.py --config F.yaml --kills 10 [--seed 0] [--workdir DIR]

Runs ``mlm-jax train`` once uninterrupted (the reference), then again in a second workdir,
killing it N times at seeded random moments -- half of them timed to land while an async
checkpoint is being written (right after a ``*.orbax-checkpoint-tmp*`` directory appears) --
and restarting it after each kill until it finishes. Compares every parameter array bit for
bit and the ``metrics.jsonl`` tail (``perf/*`` keys excluded) with the reference. Prints one
JSON line of details, then ``survived K/N, params identical: yes|no`` as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUN_TIMEOUT_S = 900


def _train_cmd(config: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "mlm_jax.cli", "train", "--config", str(config),
            "--workdir", str(workdir)]  # fmt: skip


def _tmp_dirs(workdir: Path) -> set[str]:
    folder = workdir / "checkpoints"
    if not folder.exists():
        return set()
    return {p.name for p in folder.iterdir() if "orbax-checkpoint-tmp" in p.name}


def _saved_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
    )


def _kill_once(
    config: Path, workdir: Path, rng: random.Random, during_save: bool, span_s: float, log
) -> dict:
    """Start training and SIGKILL it: right after a new async save starts, or at a random
    moment within ``span_s`` seconds. Returns what happened."""
    stale = _tmp_dirs(workdir)  # left by an earlier kill: not a save of this process
    child = subprocess.Popen(_train_cmd(config, workdir), stdout=log, stderr=log)
    started = time.monotonic()
    delay = rng.uniform(0.2, 0.6) * span_s
    while child.poll() is None and time.monotonic() - started < RUN_TIMEOUT_S:
        if during_save and _tmp_dirs(workdir) - stale:
            time.sleep(rng.uniform(0.0, 0.1))
            break
        if not during_save and time.monotonic() - started >= delay:
            break
        time.sleep(0.01)
    event = {"during_save": during_save, "at_s": round(time.monotonic() - started, 2),
             "saved_before": _saved_steps(workdir)}  # fmt: skip
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        event["killed"] = True
        event["new_tmp_dir_at_kill"] = bool(_tmp_dirs(workdir) - stale)
    else:
        event["killed"] = False
        event["exit_code"] = child.returncode
    return event


def _params(workdir: Path) -> dict[str, np.ndarray]:
    from mlm_jax.state import restore

    _, _, params = restore.restore_params(str(workdir))
    return {str(k): np.asarray(v) for k, v in params.flat_state()}


def _metrics_tail(workdir: Path, n: int = 5) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    # A kill can leave a step logged twice (once before, once after resume): keep the last.
    by_step = {}
    for line in lines:
        record = json.loads(line)
        by_step.setdefault(record["step"], {}).update(
            {k: v for k, v in record.items() if not k.startswith("perf/")}
        )
    return [by_step[s] for s in sorted(by_step)[-n:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="chaos_"))
    root.mkdir(parents=True, exist_ok=True)
    reference, chaos = root / "reference", root / "chaos"
    for folder in (reference, chaos):
        shutil.rmtree(folder, ignore_errors=True)
    rng = random.Random(args.seed)
    started = time.monotonic()
    with open(root / "train.log", "ab") as log:
        subprocess.run(_train_cmd(args.config, reference), stdout=log, stderr=log, check=True)
        reference_s = time.monotonic() - started
        events, restarts = [], 0
        for kill in range(args.kills):
            events.append(
                _kill_once(
                    args.config, chaos, rng, during_save=kill % 2 == 0, span_s=reference_s, log=log
                )
            )
            if not events[-1]["killed"]:
                break
        final = subprocess.run(_train_cmd(args.config, chaos), stdout=log, stderr=log)
        restarts = len(events) + 1
    survived = sum(e["killed"] for e in events) if final.returncode == 0 else 0
    ref_params, chaos_params = _params(reference), _params(chaos)
    mismatched = sorted(
        k for k in ref_params
        if k not in chaos_params or ref_params[k].dtype != chaos_params[k].dtype
        or ref_params[k].tobytes() != chaos_params[k].tobytes()
    )  # fmt: skip
    identical = not mismatched and ref_params.keys() == chaos_params.keys()
    tail_equal = _metrics_tail(reference) == _metrics_tail(chaos)
    print(json.dumps({
        "kills": args.kills, "kills_landed": sum(e["killed"] for e in events),
        "kills_during_save": sum(e.get("new_tmp_dir_at_kill", False) for e in events),
        "restarts": restarts, "final_exit_code": final.returncode,
        "param_arrays": len(ref_params), "mismatched_arrays": mismatched[:10],
        "metrics_tail_identical": tail_equal, "reference_s": round(reference_s, 1),
        "total_s": round(time.monotonic() - started, 1), "events": events, "root": str(root),
    }))  # fmt: skip
    print(f"survived {survived}/{args.kills}, params identical: {'yes' if identical else 'no'}")
    return 0 if survived == args.kills and identical and tail_equal else 1


if __name__ == "__main__":
    sys.exit(main())
