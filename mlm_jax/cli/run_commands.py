"""``mlm-jax train``, ``plan``, ``eval``, ``export``, ``predict``, ``finetune`` and ``report``:
the commands that build, compile, read and publish a run."""

from __future__ import annotations

import argparse
import os

from mlm_jax.cli.arguments import (
    add_config_args,
    add_distributed_args,
    default_workdir,
    load_config,
    start_distributed,
)
from mlm_jax.errors import UserError


def _cmd_train(args: argparse.Namespace) -> None:
    from mlm_jax.training import pretrain

    config = load_config(args)
    start_distributed(args)
    if args.plan:
        from mlm_jax.planning import plan

        plan.check_before_training(config)
    pretrain.run(config, workdir=args.workdir or default_workdir(args.config))


def _cmd_plan(args: argparse.Namespace) -> None:
    config = load_config(args)
    target = args.target or config.mesh.target
    if target is None:
        raise UserError(f"{args.config} names no mesh.target; pass --target, e.g. v5p-8")
    if target != "cpu":
        # Compile-only TPU devices: JAX must not look for a real accelerator first.
        os.environ["JAX_PLATFORMS"] = "cpu"
    from mlm_jax.planning import plan

    plan.run(config, target, json_out=args.json, hlo_out=args.hlo)


def _cmd_eval(args: argparse.Namespace) -> None:
    from mlm_jax.training import pretrain

    start_distributed(args)
    pretrain.evaluate_run(
        args.workdir, step=args.step, batches=args.batches, mask_rate=args.mask_rate
    )


def _cmd_export(args: argparse.Namespace) -> None:
    from mlm_jax import export

    start_distributed(args)
    export.export_run(
        args.workdir, out=args.out, step=args.step, force=args.force, verify=not args.no_verify
    )


def _cmd_predict(args: argparse.Namespace) -> None:
    from mlm_jax.inference import fill_mask as inference

    inference.print_fill_mask(args.model, args.text, top_k=args.top_k)


def _cmd_finetune(args: argparse.Namespace) -> None:
    from mlm_jax.training import finetune

    config = load_config(args)
    start_distributed(args)
    finetune.run(config, workdir=args.workdir or default_workdir(args.config))


def _cmd_report(args: argparse.Namespace) -> None:
    from mlm_jax.training import report

    report.plot_run(args.workdir, out=args.out)


def add_run_parsers(commands) -> None:
    train = commands.add_parser("train", help="pretrain (resumes from the workdir)")
    add_config_args(train)
    train.add_argument("--workdir", help="run directory (default runs/CONFIG_NAME)")
    train.add_argument(
        "--plan", action="store_true",
        help="first compile the step for this run's devices and stop (exit 2) if it cannot fit",
    )  # fmt: skip
    add_distributed_args(train)
    train.set_defaults(handler=_cmd_train)

    plan = commands.add_parser(
        "plan", help="compile a run for a TPU slice on this host: memory, FLOPs, collectives"
    )
    add_config_args(plan)
    plan.add_argument(
        "--target",
        help="a TPU slice (v5p-8, v5p-64, v4-32, v5e-16, v6e-256, v5p:4x4x2) or cpu (this "
        "host); default: the config's mesh.target",
    )
    plan.add_argument("--json", help="also write the plan as JSON to this file")
    plan.add_argument("--hlo", help="write the train step's optimized HLO text to this file")
    plan.set_defaults(handler=_cmd_plan)

    evaluate = commands.add_parser("eval", help="MLM loss/accuracy/perplexity on validation")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--step", type=int, help="checkpoint step (default newest)")
    evaluate.add_argument("--batches", type=int, help="validation batches (default from config)")
    evaluate.add_argument(
        "--mask-rate", type=float,
        help="score at this mask rate instead of the run's own (compare recipes at one rate)",
    )  # fmt: skip
    add_distributed_args(evaluate)
    evaluate.set_defaults(handler=_cmd_eval)

    export = commands.add_parser("export", help="write a Hugging Face model directory")
    export.add_argument("--workdir", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--step", type=int, help="checkpoint step (default newest)")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.add_argument("--no-verify", action="store_true", help="skip the transformers check")
    add_distributed_args(export)
    export.set_defaults(handler=_cmd_export)

    predict = commands.add_parser("predict", help="fill-mask predictions")
    predict.add_argument("--model", required=True, help="a run directory or an export")
    predict.add_argument("text", help='text containing [MASK], e.g. "To be or not to [MASK]."')
    predict.add_argument("--top-k", type=int, default=5)
    predict.set_defaults(handler=_cmd_predict)

    finetune = commands.add_parser("finetune", help="fine-tune a classifier or reranker")
    add_config_args(finetune)
    finetune.add_argument("--workdir", help="run directory (default runs/CONFIG_NAME)")
    add_distributed_args(finetune)
    finetune.set_defaults(handler=_cmd_finetune)

    report = commands.add_parser("report", help="plot a run's curves into a PNG")
    report.add_argument("--workdir", required=True)
    report.add_argument("--out", help="PNG path (default WORKDIR/report.png)")
    report.set_defaults(handler=_cmd_report)
