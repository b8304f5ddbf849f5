"""`npo unlearn`: remove a forget set from a model."""

from npo.commands import train_args


def add_arguments(parser) -> None:
    train_args.add(parser, unlearn=True)


def main(args) -> int:
    from npo.api import unlearn

    cfg, resume = train_args.config_from_args(args)
    run_dir = unlearn(cfg, resume=resume)
    print(f"unlearned model: {run_dir / 'model'}")
    return 0
