"""Run directories and atomic checkpoints.

A checkpoint is written into a temporary directory and renamed into place, so a crash during a
save leaves the previous checkpoint intact. It holds the trainable weights (safetensors), the
optimizer and scheduler, RNG states, the data-stream positions and the reference cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from npo.errors import NpoError

RUN_MARKER = "config.yaml"
DONE_MARKER = "done.json"


def prepare_run_dir(out: str, overwrite: bool, resume: bool) -> Path:
    """Create (or reuse, with overwrite/resume) the run directory; fail early if it is not writable."""
    if not out:
        raise NpoError("no output directory given (set 'out' or pass --out)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NpoError(f"output path exists and is not a directory: {path}")
    is_run = (path / RUN_MARKER).exists()
    if resume:
        if not is_run:
            raise NpoError(f"cannot resume: {path} holds no run ({RUN_MARKER} missing)")
        return path
    if is_run and not overwrite:
        raise NpoError(f"{path} already holds a run; pass --overwrite to replace it or --resume to continue it")
    if is_run and overwrite:
        for name in ("model", "checkpoint", "eval", DONE_MARKER, "metrics.jsonl"):
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise NpoError(f"cannot write to output directory {path}: {err.strerror or err}") from None
    return path


def trainable_state(model) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: dict, rng: dict,
                    cache: dict[str, torch.Tensor] | None) -> None:
    final = run_dir / "checkpoint"
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=run_dir))
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               tmp / "optimizer.pt")
    if cache:
        save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp / "reference.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    old = run_dir / ".checkpoint-old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Path | None:
    for name in ("checkpoint", ".checkpoint-old"):  # the old one survives a crash between renames
        path = run_dir / name
        if (path / "state.json").exists():
            return path
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[dict, dict, dict | None]:
    """Restore weights, optimizer and scheduler in place; return (state, rng, reference cache)."""
    tensors = load_file(str(path / "trainable.safetensors"))
    target = getattr(model, "module", model)
    expected = {n for n, p in target.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        raise NpoError(f"checkpoint {path} does not match the model: {len(set(tensors) ^ expected)} "
                       "parameter names differ")
    with torch.no_grad():
        params = dict(target.named_parameters())
        for name, value in tensors.items():
            params[name].copy_(value)
    blob = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    cache_path = path / "reference.safetensors"
    cache = load_file(str(cache_path)) if cache_path.exists() else None
    return json.loads((path / "state.json").read_text()), blob["rng"], cache
