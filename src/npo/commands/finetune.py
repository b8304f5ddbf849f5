"""`npo finetune`: plain NLL training on QA sets (the model to unlearn from, or a retain-only model)."""

from npo.commands.train_args import command

add_arguments, main = command("finetune")
