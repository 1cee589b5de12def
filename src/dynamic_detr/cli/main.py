"""Entry point of the `dynamic-detr` console script.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func`; handlers import
heavy modules lazily so that `--help` stays fast. A `UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import UserError

# command modules, in the order `--help` lists them
COMMAND_MODULES = [
    "dynamic_detr.cli.demo",
    "dynamic_detr.cli.data",
    "dynamic_detr.cli.info",
    "dynamic_detr.cli.train",
    "dynamic_detr.cli.evaluate",
    "dynamic_detr.cli.predict",
    "dynamic_detr.cli.explain",
    "dynamic_detr.cli.export",
    "dynamic_detr.cli.serve",
    "dynamic_detr.cli.config",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamic-detr",
        description="Dynamic DETR (Dai et al., ICCV 2021): train, evaluate, predict, explain, export, serve.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
