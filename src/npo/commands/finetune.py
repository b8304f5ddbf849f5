"""`npo finetune`: plain NLL training on QA sets (the model to unlearn from, or a retain-only model)."""

from npo.commands import train_args


def add_arguments(parser) -> None:
    train_args.add(parser, unlearn=False)


def main(args) -> int:
    from npo.api import finetune

    cfg, resume = train_args.config_from_args(args)
    run_dir = finetune(cfg, resume=resume)
    print(f"fine-tuned model: {run_dir / 'model'}")
    return 0
