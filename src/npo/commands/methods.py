"""`npo methods`: the unlearning methods of `npo.methods.METHODS` as a Markdown table."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.epilog = "The README's method table is this output."


def main(args) -> int:
    from npo.methods import method_table

    print(method_table())
    return 0
