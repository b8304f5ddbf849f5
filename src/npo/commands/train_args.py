"""Arguments shared by `npo unlearn` and `npo finetune`: a preset, flags for common fields, and
`key=value` overrides of any config key."""

from __future__ import annotations

import argparse

from npo.config import build, parse_overrides
from npo.methods import METHODS

FLAGS = {  # flag -> (config key, type, help)
    "--model": ("model", str, "model directory or hub id"),
    "--data": ("data", str, "TOFU-layout directory in which split names are resolved"),
    "--out": ("out", str, "run directory"),
    "--epochs": ("epochs", int, "training epochs"),
    "--lr": ("lr", float, "peak learning rate"),
    "--batch-size": ("batch_size", int, "examples per step per process"),
    "--lora-r": ("lora_r", int, "LoRA rank (0: full fine-tuning)"),
    "--seed": ("seed", int, "random seed"),
}
UNLEARN_FLAGS = {
    "--method": ("method", str, "unlearning method (`npo methods` describes each)"),
    "--forget": ("forget", str, "forget set: file or split name"),
    "--retain": ("retain", str, "retain set: file or split name"),
    "--beta": ("beta", float, "NPO/DPO inverse temperature"),
}


def add(parser: argparse.ArgumentParser, unlearn: bool) -> None:
    parser.add_argument("--config", action="append", metavar="PRESET",
                        help="YAML preset (see configs/); several apply in order, each over the previous one")
    flags = {**FLAGS, **(UNLEARN_FLAGS if unlearn else {})}
    for flag, (key, typ, help_) in flags.items():
        choices = tuple(METHODS) if key == "method" else None
        parser.add_argument(flag, dest=f"flag_{key}", type=typ, help=help_, choices=choices)
    if not unlearn:
        parser.add_argument("--train", dest="flag_train", help="training set(s), comma-separated")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")


def config_from_args(args):
    from npo.api import resume_config

    if args.resume:
        cfg = resume_config(args.resume)
        cfg.out = args.resume
        return cfg, True
    overrides = parse_overrides(args.overrides)
    for name, value in vars(args).items():
        if name.startswith("flag_") and value is not None:
            overrides[name[5:]] = value
    if args.overwrite:
        overrides["overwrite"] = True
    return build(args.config, overrides), False


def command(task: str):
    """`add_arguments` and `main` of `npo unlearn` / `npo finetune`, which differ only in the task."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add(parser, unlearn=task == "unlearn")

    def main(args) -> int:
        import npo

        cfg, resume = config_from_args(args)
        run_dir = getattr(npo, task)(cfg, resume=resume)
        print(f"{'unlearned' if task == 'unlearn' else 'fine-tuned'} model: {run_dir / 'model'}")
        return 0

    return add_arguments, main
