"""Arguments shared by `npo unlearn` and `npo finetune`: a preset, flags for common fields, and
`key=value` overrides of any config key. Flag help and defaults come from TrainConfig's fields."""

from __future__ import annotations

import argparse

from npo.commands.config import HelpConfig
from npo.config import TrainConfig, build, from_dict, key_help, load_preset, parse_overrides, show
from npo.methods import METHODS
from npo.resume import RESUME_SAFE

_TYPES = {"str": str, "int": int, "float": float}
_METAVARS = {"model": "DIR", "data": "DIR", "out": "RUN_DIR", "forget": "SET", "retain": "SET", "method": "METHOD"}


def _flags(keys: tuple[str, ...]) -> dict[str, tuple[str, type, str]]:
    """flag -> (config key, type, help with the default); the help is the key's own."""
    info = key_help()
    out = {}
    for key in keys:
        typ, default, help_, _ = info[key]
        shown = "" if default in (None, "") else f" (default: {show(default)})"
        out[f"--{key.replace('_', '-')}"] = (key, _TYPES[typ.removesuffix(' or null')], help_ + shown)
    return out


FLAGS = _flags(("model", "data", "out", "epochs", "lr", "batch_size", "lora_r", "seed"))
UNLEARN_FLAGS = _flags(("method", "forget", "retain", "beta"))


def add(parser: argparse.ArgumentParser, unlearn: bool) -> None:
    n_keys = len(key_help())
    parser.epilog = (f"Every one of the {n_keys} config keys can be set as key=value (anywhere on the line), in a "
                     "--config preset, or with the flag above where one exists: --help-config lists them with "
                     "their types, defaults and help. Later settings win: presets in order, then flags and key=value.")
    parser.add_argument("--config", action="append", metavar="PRESET",
                        help="YAML preset (see configs/); several apply in order, each over the previous one")
    flags = {**FLAGS, **(UNLEARN_FLAGS if unlearn else {})}
    for flag, (key, typ, help_) in flags.items():
        choices = tuple(METHODS) if key == "method" else None
        parser.add_argument(flag, dest=f"flag_{key}", type=typ, help=help_, choices=choices,
                            metavar=_METAVARS.get(key, key.upper()))
    if not unlearn:
        parser.add_argument("--train", dest="flag_train", metavar="SET[,SET...]",
                            help="training set(s), comma-separated")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run from its last checkpoint; of its settings only "
                             f"{', '.join(RESUME_SAFE)} may change (they cannot change the weights)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--help-config", action=HelpConfig, help="list every config key with its type, default and "
                                                                 "help, and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")


def _requested(args) -> dict:
    overrides = parse_overrides(args.overrides)
    for name, value in vars(args).items():
        if name.startswith("flag_") and value is not None:
            overrides[name[5:]] = value
    return overrides


def config_from_args(args) -> tuple[TrainConfig, bool]:
    from npo.api import resume_config
    from npo.config import validate
    from npo.errors import NpoError

    if args.resume:
        if args.overwrite:
            raise NpoError("--resume continues the run in RUN_DIR and --overwrite replaces it: give one of them")
        cfg = resume_config(args.resume)  # then what this command asks for, which the resume checks
        for path in args.config or []:
            values, name = load_preset(path)
            cfg = from_dict(values, where=f"{name}: ", base=cfg)
        cfg = from_dict(_requested(args), base=cfg)
        cfg.out = args.resume
        validate(cfg)
        return cfg, True
    overrides = _requested(args)
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
