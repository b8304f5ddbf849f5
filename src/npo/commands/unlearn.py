"""`npo unlearn`: remove a forget set from a model."""

from npo.commands.train_args import command

add_arguments, main = command("unlearn")
