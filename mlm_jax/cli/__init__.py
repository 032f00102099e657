"""The ``mlm-jax`` command: parses arguments and hands each subcommand to one library call.

Library modules are imported inside the handlers so ``mlm-jax --help`` and the
cheap commands start fast and never import JAX. A :class:`UserError` anywhere
becomes one line on stderr and exit code 2. The subcommands live by concern:
``data_commands`` (tokenizer, data), ``run_commands`` (train, plan, eval, export, predict,
finetune, report), ``ranking_commands`` (score, search, fuse); ``arguments`` holds what
they share.
"""

from __future__ import annotations

import argparse
import sys

from mlm_jax.backends import cpu_unless_accelerator
from mlm_jax.cli.arguments import Parser, add_config_args, load_config
from mlm_jax.cli.data_commands import add_data_parser, add_tokenizer_parser
from mlm_jax.cli.ranking_commands import add_ranking_parsers
from mlm_jax.cli.run_commands import add_run_parsers
from mlm_jax.errors import UserError


def _cmd_config_show(args: argparse.Namespace) -> None:
    from mlm_jax import config

    sys.stdout.write(config.dump(load_config(args)))


def _cmd_config_schema(args: argparse.Namespace) -> None:
    from mlm_jax import config

    print("\n".join(config.schema_lines()))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mlm-jax",
        description="Pretrain BERT-style encoders with masked-language modelling on JAX.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    config = commands.add_parser("config", help="show the resolved config or the schema")
    config_commands = config.add_subparsers(dest="action", required=True)
    show = config_commands.add_parser("show", help="print the resolved YAML")
    add_config_args(show, required=False)
    show.set_defaults(handler=_cmd_config_show)
    schema = config_commands.add_parser("schema", help="list every field")
    schema.set_defaults(handler=_cmd_config_schema)
    add_tokenizer_parser(commands)
    add_data_parser(commands)
    add_run_parsers(commands)
    add_ranking_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        cpu_unless_accelerator()
        args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
