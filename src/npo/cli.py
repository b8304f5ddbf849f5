"""`npo` command line: thin dispatch to the modules that implement each command.

Each command module exposes `add_arguments(parser)` and `main(args) -> int`. Modules are imported
only for the command that runs, so `npo --help` stays fast and does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from npo import __version__
from npo.errors import NpoError, Stopped

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "unlearn": ("npo.commands.unlearn", "unlearn a forget set from a causal LM (NPO, GA, DPO, ...)"),
    "finetune": ("npo.commands.finetune", "fine-tune a causal LM on a QA set (plain NLL)"),
    "eval": ("npo.commands.evaluate", "evaluate a model on a benchmark (TOFU, MUSE, multiple choice): logs and metrics"),
    "metrics": ("npo.commands.metrics", "TOFU aggregates (Model Utility, Forget Quality) from existing logs"),
    "testbed": ("npo.commands.testbed", "write the built-in dataset of fictitious people in the TOFU layout"),
    "demo": ("npo.commands.demo", "the whole pipeline offline on the built-in testbed, with a report"),
    "study": ("npo.commands.study", "the demo's pipeline on a model and TOFU-layout data of your choice"),
    "synthetic": ("npo.commands.synthetic", "the paper's synthetic experiment (Figures 3, 4 and 9)"),
    "probe": ("npo.commands.probe", "membership-inference and robustness probes of an unlearned model"),
    "methods": ("npo.commands.methods", "the unlearning methods: forget term, retain term, reference (a table)"),
    "audit": ("npo.commands.audit", "a verifiable record of one deletion request: hashes, intervals, verdicts"),
    "verify": ("npo.commands.verify", "recompute an audit's hashes and numbers; exit 1 when anything differs"),
    "plan": ("npo.commands.plan", "the memory each training setting needs for a model and method, and which fit"),
    "sequence": ("npo.commands.sequence", "deletion requests in sequence or each from the original model, each evaluated"),
    "config": ("npo.commands.config", "every config key of unlearn/finetune: type, default, help; a preset's values"),
}


class _Formatter(argparse.HelpFormatter):
    """Each option's default in its help, where it has one and the help does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and default not in (None, False, [], argparse.SUPPRESS)
                and "default" not in text and not isinstance(action, argparse._HelpAction)):
            text += f" (default: {default})"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, like every other error of `npo`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_Formatter, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _top_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="npo", description="Unlearning for language models with NPO.",
                     epilog="`npo COMMAND --help` shows a command's options; `npo config` lists every config key.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"npo {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND",
                        help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    return parser


def _terminated(signum, frame):
    """SIGTERM outside a training loop (which stops at a step boundary instead): one line, exit 143."""
    raise Stopped(f"stopped by {signal.Signals(signum).name}", 128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        print(f"npo {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        top.parse_args(argv[:1])  # prints the usage error and exits 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = _Parser(prog=f"npo {name}", description=COMMANDS[name][1])
    parser.add_argument("--debug", action="store_true", default=debug, help="show tracebacks on errors")
    module.add_arguments(parser)
    try:  # intermixed: key=value overrides may sit between flags
        args = parser.parse_intermixed_args(argv[1:])
    except SystemExit as stop:  # --help, or a usage error already printed
        return int(stop.code or 0)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return int(module.main(args) or 0)
    except Stopped as err:
        if args.debug:
            raise
        print(f"npo {name}: {err}", file=sys.stderr)
        return err.code
    except NpoError as err:
        if args.debug:
            raise
        print(f"npo {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npo {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
