"""Speed of `mlm-jax data prepare` per engine, and of tokenizer training, on >= 200 MB of text.

The corpus is builtin:shakespeare and builtin:pydocs repeated (each copy's documents
tagged so none are duplicates) into a directory of plain-text shards. Each
measurement runs the CLI in a fresh child process and prints one JSON line: wall
seconds, input MB/s, documents/s and the child's peak RSS (from ``wait4``; Beam's
worker processes are counted when the runner waits for them). Modes:

- ``baseline``: the single-process path of git ref ``--baseline-ref`` (before issue
  14 it read every input three times: a counting pass, then once per split);
- ``single``: today's single-process path (one read, then TFDS writes);
- ``beam1`` / ``beam2``: Beam's DirectRunner, multi-processing, 1 and 2 workers;
- ``read``: one parsing pass over the inputs and nothing else, the cost the baseline pays
  three times and ``single`` once;
- ``tokenizer``: ``tokenizer train`` on the same corpus (vocab 8000, default sample).

    python scripts/bench_prepare.py [--megabytes 200] [--modes read baseline single beam1
        beam2 tokenizer] [--baseline-ref af07bf3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The last commit before issue 14 changed how `data prepare` reads its inputs.
DEFAULT_BASELINE = "af07bf3"
BEAM_FLAGS = "--direct_running_mode=multi_processing --direct_num_workers={workers}"
READ_ONCE = (
    "import sys; from mlm_jax.data import sources; "
    "n = sum(1 for _ in sources.iter_documents([sys.argv[1]])); print(n, file=sys.stderr)"
)


def write_corpus(directory: Path, megabytes: float, files: int) -> tuple[int, int]:
    """Tagged copies of two builtin corpora across ``files`` shards; (bytes, documents)."""
    from mlm_jax.data import builtin_corpora

    documents = [*builtin_corpora.documents("shakespeare"), *builtin_corpora.documents("pydocs")]
    # A docstring with blank lines is several documents once written as plain text.
    paragraphs = [p for d in documents for p in d.split("\n\n") if p.strip()]
    directory.mkdir(parents=True)
    handles = [(directory / f"part-{n:05d}.txt").open("w", encoding="utf-8") for n in range(files)]
    written, count, copy = 0, 0, 0
    try:
        while written < megabytes * 1e6:
            for paragraph in paragraphs:
                text = f"(copy {copy}) {paragraph.strip()}\n\n"
                handles[count % files].write(text)
                written += len(text.encode())
                count += 1
            copy += 1
    finally:
        for handle in handles:
            handle.close()
    return written, count


def baseline_tree(ref: str, root: Path) -> Path:
    """The ``mlm_jax`` package as it was at ``ref``, unpacked beside the corpus."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "mlm_jax"], capture_output=True, check=True
    ).stdout
    target = root / f"baseline-{ref}"
    target.mkdir()
    archive_path = root / "baseline.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(target, filter="data")
    return target


def run_child(argv: list[str], cwd: Path) -> dict:
    """Run one command; wall time, exit code, peak RSS and the last stderr line."""
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=cwd)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        stderr.seek(0)
        lines = stderr.read().decode(errors="replace").strip().splitlines()
    return {
        "wall_s": round(wall, 2),
        "exit_code": os.waitstatus_to_exitcode(status),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "last_line": lines[-1] if lines else "",
    }


def prepare_argv(mode: str, corpus: Path, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "mlm_jax.cli", "data", "prepare", "--input", str(corpus),
            "--out", str(out), "--valid-fraction", "0.01"]  # fmt: skip
    if mode.startswith("beam"):
        flags = BEAM_FLAGS.format(workers=int(mode.removeprefix("beam")))
        argv += ["--beam-runner", "DirectRunner", f"--beam-options={flags}"]
    return argv


def measure(mode: str, corpus: Path, root: Path, size: int, documents: int, args) -> dict:
    # `python -m` imports mlm_jax from its working directory first: that picks the version.
    cwd = baseline_tree(args.baseline_ref, root) if mode == "baseline" else REPO
    if mode == "read":
        argv = [sys.executable, "-c", READ_ONCE, str(corpus)]
    elif mode == "tokenizer":
        argv = [sys.executable, "-m", "mlm_jax.cli", "tokenizer", "train", "--input", str(corpus),
                "--vocab-size", str(args.vocab_size), "--out", str(root / "tok")]  # fmt: skip
    else:
        argv = prepare_argv(mode, corpus, root / f"out-{mode}")
    load_before = os.getloadavg()[0]
    result = run_child(argv, cwd)
    wall = result["wall_s"]
    meta_path = root / f"out-{mode}" / "meta.json"
    if meta_path.is_file():  # the count the build itself made
        documents = json.loads(meta_path.read_text())["documents"]
    sample = {}
    if mode == "tokenizer" and (root / "tok" / "meta.json").is_file():
        tok_meta = json.loads((root / "tok" / "meta.json").read_text())
        sample = {key: tok_meta[key] for key in ("sampled_sentences", "seen_sentences")}
    return {
        "bench": {"tokenizer": "tokenizer_train", "read": "read_once"}.get(mode, "prepare"),
        "mode": mode,
        **result,
        "input_mb": round(size / 1e6, 1),
        "mb_per_s": round(size / 1e6 / wall, 2),
        "documents": documents,
        "documents_per_s": round(documents / wall),
        **sample,
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200.0)
    parser.add_argument("--files", type=int, default=16, help="shards the corpus is written to")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["read", "baseline", "single", "beam1", "beam2", "tokenizer"],
    )
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument(
        "--workdir",
        help="make the scratch directory under this one (a disk "
        "with room for ~3x --megabytes; default: the system's temp dir)",
    )
    args = parser.parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        corpus = root / "corpus"
        size, documents = write_corpus(corpus, args.megabytes, args.files)
        context = {"machine": f"{platform.machine()} {os.cpu_count()} cpus",
                   "python": platform.python_version()}  # fmt: skip
        for mode in args.modes:
            print(json.dumps({**measure(mode, corpus, root, size, documents, args), **context}),
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
