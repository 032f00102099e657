"""What several ``mlm-jax`` subcommands share: the parser class, the config and multi-process
arguments, and turning them into a config or a started ``jax.distributed``."""

from __future__ import annotations

import argparse
import os

from mlm_jax.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse prints usage and exits 2 on bad arguments; we want our one-line form."""

    def error(self, message: str) -> None:
        raise UserError(f"{self.prog}: {message}; see `{self.prog} --help`")


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.learning_rate=1e-4 (repeatable)",
    )


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process (jax.distributed)")
    group.add_argument("--coordinator", help="HOST:PORT of process 0 (env MLM_JAX_COORDINATOR)")
    group.add_argument(
        "--num-processes", type=int, help="process count (env MLM_JAX_NUM_PROCESSES)"
    )
    group.add_argument("--process-id", type=int, help="this process (env MLM_JAX_PROCESS_ID)")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="initialise jax.distributed with JAX's cluster auto-detection (TPU VM, SLURM, MPI)",
    )


def load_config(args: argparse.Namespace):
    from mlm_jax import config

    return config.load(args.config, args.overrides)


def start_distributed(args: argparse.Namespace) -> None:
    from mlm_jax import distributed

    distributed.initialize(
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        auto=args.distributed,
    )


def default_workdir(config_path: str) -> str:
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", stem)
