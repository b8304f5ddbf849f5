"""`npo` command line: thin dispatch to the modules that implement each command.

Each command module exposes `add_arguments(parser)` and `main(args) -> int`. Modules are imported
only for the command that runs, so `npo --help` stays fast and does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from npo.errors import NpoError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "unlearn": ("npo.commands.unlearn", "unlearn a forget set from a causal LM (NPO, GA, DPO, ...)"),
    "finetune": ("npo.commands.finetune", "fine-tune a causal LM on a QA set (plain NLL)"),
    "eval": ("npo.commands.evaluate", "TOFU evaluation of a model: per-item logs and aggregate metrics"),
    "metrics": ("npo.commands.metrics", "TOFU aggregates (Model Utility, Forget Quality) from existing logs"),
    "testbed": ("npo.commands.testbed", "write the built-in dataset of fictitious people in the TOFU layout"),
    "demo": ("npo.commands.demo", "the whole pipeline offline on the built-in testbed, with a report"),
    "synthetic": ("npo.commands.synthetic", "the paper's synthetic experiment (Figures 3, 4 and 9)"),
    "probe": ("npo.commands.probe", "membership-inference and robustness probes of an unlearned model"),
    "methods": ("npo.commands.methods", "the unlearning methods: forget term, retain term, reference (a table)"),
    "audit": ("npo.commands.audit", "a verifiable record of one deletion request: hashes, intervals, verdicts"),
    "verify": ("npo.commands.verify", "recompute an audit's hashes and numbers; exit 1 when anything differs"),
    "plan": ("npo.commands.plan", "the memory each training setting needs for a model and method, and which fit"),
    "sequence": ("npo.commands.sequence", "deletion requests in sequence or each from the original model, each evaluated"),
}


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, like every other error of `npo`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _top_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="npo", description="Unlearning for language models with NPO.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND",
                        help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] not in COMMANDS:
        top.parse_args(argv[:1])  # prints the usage error and exits 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = _Parser(prog=f"npo {name}", description=COMMANDS[name][1])
    parser.add_argument("--debug", action="store_true", default=debug, help="show tracebacks on errors")
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as stop:  # --help, or a usage error already printed
        return int(stop.code or 0)
    try:
        return int(module.main(args) or 0)
    except NpoError as err:
        if args.debug:
            raise
        print(f"npo {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npo {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
