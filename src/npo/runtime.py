"""Process-level set-up: Accelerate, seeding, run-environment record, logging."""

from __future__ import annotations

import json
import logging
import platform
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("npo")


def setup_logging(libraries: bool = True) -> None:
    """npo's one-line messages on stderr; `libraries`: also quiet transformers (which it imports)."""
    if libraries:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-file load/save bars drown npo's own progress
        hf_logging.set_verbosity_error()
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("npo: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # a root handler set up by a library would print every line twice


def make_accelerator(mixed_precision: str | None = None):
    """Accelerate reads the launcher's environment (torchrun, accelerate launch) for DDP/FSDP/DeepSpeed;
    a plain process gets one device: the GPU if there is one, else the CPU."""
    from accelerate import Accelerator

    # without CUDA, Accelerate only sets up multi-process (gloo) training when told it runs on the CPU
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision or "no")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # tensors and plain values only, so checkpoints load with torch.load(weights_only=True)
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(seed: int, device, dtype, dtype_reason: str, world_size: int) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import accelerate
    import transformers

    try:  # the version alone: importing peft costs ~14 MiB and a second when LoRA is not used
        peft_version = version("peft")
    except PackageNotFoundError:
        peft_version = None
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        "peft": peft_version, "platform": platform.platform(), "git_revision": git_revision(),
        "seed": seed, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "dtype_reason": dtype_reason, "world_size": world_size, "threads": torch.get_num_threads(),
    }


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def progress(total: int, desc: str, show: bool, initial: int = 0):
    """A tqdm bar on a terminal for the main process; silent otherwise (logs, CI, other ranks)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not (show and sys.stderr.isatty()),
                dynamic_ncols=True)
