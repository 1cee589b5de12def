"""`dynamic-detr config show | diff`: a preset or YAML config resolved in full, or the fields two differ in."""

from __future__ import annotations

import argparse
import sys

from ..config import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config", help="print a resolved preset or config, or the fields two differ in",
        description="Read the presets (docs/presets.md) and YAML configs: `show` prints one in full, `diff` the "
                    "fields where two differ.")
    sub = parser.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    spec_help = f"a preset ({', '.join(PRESETS)}) or a YAML config file"

    show = sub.add_parser(
        "show", help="print a preset or YAML config, resolved, as YAML",
        description="Print the config a preset or YAML file (plus key=value overrides) resolves to, as the YAML "
                    "a run folder's config.yaml holds, under a header line naming the preset and the presets "
                    "it builds on.")
    show.add_argument("spec", metavar="PRESET|FILE", help=spec_help)
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="config overrides, e.g. train.lr=2e-4 model.decoder.num_stages=2")
    show.set_defaults(func=_show)

    diff = sub.add_parser(
        "diff", help="print the fields two presets or configs differ in",
        description="Print one line per field that differs, `key: A's value -> B's value`, in the schema's "
                    "order; nothing when they are the same. Exit code 0 either way.")
    diff.add_argument("a", metavar="A", help=spec_help)
    diff.add_argument("b", metavar="B", help=spec_help)
    diff.set_defaults(func=_diff)


def _show(args: argparse.Namespace) -> int:
    from ..config import resolve, show

    cfg, what = resolve(args.spec, args.overrides)
    print(show(cfg, what), end="")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from ..config import diff, resolve

    (a, _), (b, _) = resolve(args.a), resolve(args.b)
    lines = diff(a, b)
    for line in lines:
        print(line)
    if not lines:
        print(f"{args.a} and {args.b} resolve to the same config", file=sys.stderr)
    return 0
