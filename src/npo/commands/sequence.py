"""`npo sequence`: several deletion requests, chained (MUSE's sustainability) or each from the original
model (its scalability), each evaluated, with a table and a plot over requests."""

from __future__ import annotations

import argparse

from npo.commands.train_args import FLAGS, UNLEARN_FLAGS
from npo.methods import METHODS
from npo.sequence import MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Each request runs in OUT/request_k (its parent.json links it to the model it started "
                     "from and the previous run); rerunning the command reuses finished requests.")
    parser.add_argument("--config", help="YAML preset (see configs/)")
    parser.add_argument("--forget", required=True, metavar="SET,SET,...",
                        help="the forget sets of the requests, in order (e.g. sust/forget_1,...,sust/forget_4)")
    parser.add_argument("--mode", choices=tuple(MODES), default="chain",
                        help="; ".join(f"{k}: {v}" for k, v in MODES.items()) + " (default: chain)")
    parser.add_argument("--no-eval", action="store_true", help="train only; no benchmark, table or plot")
    for flag, (key, typ, help_) in {**FLAGS, **UNLEARN_FLAGS}.items():
        if key != "forget":
            parser.add_argument(flag, dest=f"flag_{key}", type=typ, help=help_, metavar=key.upper(),
                                choices=tuple(METHODS) if key == "method" else None)
    parser.add_argument("--overwrite", action="store_true", help="replace request runs of another sequence")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")


def main(args) -> int:
    from npo.config import build, parse_overrides
    from npo.errors import NpoError
    from npo.sequence import run_sequence

    overrides = parse_overrides(args.overrides)
    overrides.update({name[5:]: v for name, v in vars(args).items() if name.startswith("flag_") and v is not None})
    if args.overwrite:
        overrides["overwrite"] = True
    forgets = [f.strip() for f in args.forget.split(",") if f.strip()]
    if not forgets:
        raise NpoError("--forget needs at least one set")
    cfg = build(args.config, {**overrides, "forget": forgets[0]})
    if not cfg.out:
        raise NpoError("no output directory given (pass --out)")
    out = run_sequence(cfg, forgets, cfg.out, args.mode, evaluate=not args.no_eval)
    print(f"{len(forgets)} requests ({args.mode}): {out / 'sequence.md'}")
    return 0
