"""What the optimizer updates and how fast: AdamW (its kernel and parameter groups), the parameters a method trains,
and the learning-rate schedules (npo's, and the NPO authors' HF Trainer's)."""

from __future__ import annotations

import logging
import math
import re

import torch

from npo.errors import NpoError

log = logging.getLogger("npo")


def param_groups(model, weight_decay: float, decay_all: bool) -> list[dict]:
    """AdamW's parameter groups: weight decay on every trainable parameter, or, as transformers'
    Trainer groups them (the NPO authors' runs), none on biases and normalisation weights."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay_all:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    norm = {f"{m}.{n}" if m else n for m, mod in model.named_modules()
            if isinstance(mod, torch.nn.LayerNorm) or type(mod).__name__.endswith("Norm")
            for n, _ in mod.named_parameters(recurse=False)}
    skip = {n for n, _ in params if n in norm or "bias" in n}
    return [{"params": [p for n, p in params if n not in skip], "weight_decay": weight_decay},
            {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}]


def adamw(groups: list[dict], lr: float, eps: float, impl: str) -> torch.optim.AdamW:
    """torch's AdamW with the kernel `impl` names. fused updates every tensor in one pass without
    temporaries (on a CPU ~4x faster than the per-tensor loop, a third of a small model's step, and
    less heap churn); it rounds differently in the last bit of some updates (~1e-9 absolute after 5
    steps at lr 1e-3). Where the device has no fused kernel, foreach."""
    kwargs = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]
    try:
        return torch.optim.AdamW(groups, lr=lr, eps=eps, **kwargs)
    except RuntimeError:
        if impl != "fused":
            raise
        log.info("no fused AdamW for these parameters: foreach")
        return torch.optim.AdamW(groups, lr=lr, eps=eps, foreach=True)


def linear_schedule(warmup: int, total: int, decay: bool = True):
    """Linear warm-up to the peak lr over `warmup` steps, then linear decay to 0 at `total`
    (`decay=False`: constant after the warm-up)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup)) if decay else 1.0
    return factor


def hf_linear_schedule(warmup: int, total: int, decay: bool = True):
    """transformers' get_linear_schedule_with_warmup, as the NPO authors ran it: the first optimizer
    step has lr 0 (AdamW's moments still update), the last lr/(total - warmup)."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup)) if decay else 1.0
    return factor


def schedule(kind: str, n: int, window: int, epochs: int, warmup_epochs: float, max_steps: int = 0,
             decay: bool = True):
    """(steps per epoch, total steps, warm-up steps, lr factor per step).

    epochs: every pass over the n examples is ceil(n / window) steps (the last window shorter);
    official (the NPO authors' forget.py): floor(n / window) steps per epoch, floor(epochs n / window)
    in total, windows running on across passes, warm-up int(warmup_epochs x steps per epoch) of HF's
    linear schedule. On TOFU forget01 at window 32 over 10 epochs: 20 steps against 12.
    `max_steps` replaces the total when set; `decay=False` keeps the peak lr after the warm-up.
    """
    if kind == "official":
        per_epoch, total = n // window, max_steps or epochs * n // window
        if per_epoch == 0:
            raise NpoError(f"schedule=official: the {n} examples are fewer than one window of {window} "
                           "(batch_size x grad_accum x processes), so no step would run")
        warmup = int(warmup_epochs * per_epoch)
        return per_epoch, total, warmup, hf_linear_schedule(warmup, total, decay)
    per_epoch = math.ceil(n / window)
    total = max_steps or epochs * per_epoch
    warmup = round(warmup_epochs * per_epoch)
    return per_epoch, total, warmup, linear_schedule(warmup, total, decay)


def train_only(model, pattern: str, key: str) -> None:
    """Train only the parameters whose names match `pattern` (a method's choice, e.g. RMU's)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    rx = re.compile(pattern)
    for name, p in model.named_parameters():
        p.requires_grad_(p.requires_grad and rx.search(name) is not None)
    if not any(p.requires_grad for p in model.parameters()):
        raise NpoError(f"'{key}' ({pattern!r}) matches none of the {len(names)} trainable parameters "
                       f"(their names look like '{names[0] if names else '?'}')")
