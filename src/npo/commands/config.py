"""`npo config`: every config key of `npo unlearn` / `npo finetune` with its type, default and help;
with presets or overrides, the values a run would use."""

from __future__ import annotations

import argparse


def key_table(values=None) -> str:
    """One line per key: name, type, default (or the given config's value, `*` where it differs),
    help and the allowed values. Generated from TrainConfig's fields."""
    from npo.config import key_help, show

    rows = [(key, typ, show(default) if values is None else show(getattr(values, key))
             + ("*" if getattr(values, key) != default else ""),
             help_ + (f" [{'|'.join(map(str, choices))}]" if choices else ""))
            for key, (typ, default, help_, choices) in key_help().items()]
    head = ("key", "type", "default" if values is None else "value", "help")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
             for row in [head, *rows]]
    note = ("Set any key with key=value after the command (e.g. lr=1e-4 lora_r=8), in a --config preset, "
            "or with a flag where one exists.")
    if values is not None:
        note += " *: differs from the default."
    return "\n".join([*lines, "", note])


class HelpConfig(argparse.Action):
    """`--help-config`: print the key table and exit, like --help."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(key_table())
        parser.exit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Without arguments: every key and its default. `npo unlearn --help-config` prints the same."
    parser.add_argument("--config", action="append", metavar="PRESET",
                        help="YAML preset(s) to resolve, each over the previous one")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides to resolve")


def main(args: argparse.Namespace) -> int:
    from npo.config import build, parse_overrides

    if not args.config and not args.overrides:
        print(key_table())
        return 0
    print(key_table(build(args.config, parse_overrides(args.overrides))))
    return 0
