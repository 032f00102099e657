"""``mlm-jax report``: a run's curves (loss, accuracy, learning rate, throughput) in one PNG.

The loss and accuracy panels carry the context-free baselines of the evaluation
(:mod:`mlm_jax.data.baselines`) as horizontal lines: a curve that stays above the unigram loss
or below the majority accuracy has not learned to use context.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlm_jax.errors import UserError
from mlm_jax.training.metrics import read_metrics

_PANELS = (
    ("loss", ("train/loss", "eval/loss"), "baseline/unigram_loss"),
    ("MLM accuracy", ("train/mlm_accuracy", "eval/mlm_accuracy"), "baseline/majority_accuracy"),
    ("learning rate", ("train/learning_rate",), None),
    ("tokens / s", ("perf/tokens_per_s",), None),
)


def plot_run(workdir: str | os.PathLike, out: str | None = None) -> Path:
    """Draw the curves of ``workdir/metrics.jsonl`` into ``out`` (default WORKDIR/report.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    if not records:
        raise UserError(f"no metrics.jsonl in {str(workdir)!r}; train first or check the path")
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    for axis, (title, names, baseline) in zip(axes.flat, _PANELS, strict=True):
        for name in names:
            points = [(r["step"], r[name]) for r in records if r.get(name) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, label=name, marker="." if name.startswith("eval") else "")
        _draw_baseline(axis, records, baseline)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.suptitle(str(Path(workdir).resolve().name))
    figure.tight_layout()
    target = Path(out) if out else Path(workdir) / "report.png"
    figure.savefig(target, dpi=110)
    plt.close(figure)
    print(f"wrote {target}")
    return target


def _draw_baseline(axis, records: list[dict], name: str | None) -> None:
    """The newest logged value of ``name`` as a dashed horizontal line, if there is one."""
    values = [r[name] for r in records if name and r.get(name) is not None]
    if values:
        label = f"{name} (no context) {values[-1]:.3f}"
        axis.axhline(values[-1], color="black", linestyle="--", linewidth=1, label=label)
