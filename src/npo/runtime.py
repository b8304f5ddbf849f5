"""Process-level set-up: Accelerate, seeding, run-environment record, logging."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("npo")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a caller or a test may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(libraries: bool = True) -> None:
    """npo's one-line messages on stderr; `libraries`: also quiet transformers (which it imports)."""
    if libraries:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-file load/save bars drown npo's own progress
        hf_logging.set_verbosity_error()
    if not log.handlers:
        handler = _Stderr()
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
    """Written atomically (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def check_out_dir(out: str | Path, what: str = "output directory") -> Path:
    """Refuse an output path that cannot become a directory, before any slow work and without
    writing anything: an existing file, a dangling link, a parent that is a file or read-only."""
    from npo.errors import NpoError

    path = Path(out).expanduser()
    if path.is_symlink() and not path.exists():
        raise NpoError(f"{what} {path} is a symbolic link to nothing (dangling, or a loop)")
    if path.exists() and not path.is_dir():
        raise NpoError(f"{what} {path} exists and is not a directory")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NpoError(f"{what} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NpoError(f"cannot write to {what} {path}: {parent} is not writable")
    return path


class StopSignals:
    """While training: the first SIGTERM or SIGINT only sets `received` (the loop stops at the next
    step boundary and saves a checkpoint; schedulers send SIGTERM some time before SIGKILL); a second
    one calls `now(signum)`, which raises. Installed only in the main thread; the previous handlers
    come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, now, step=lambda: 0):
        self.now, self.step, self.received, self.previous = now, step, 0, {}

    def _handle(self, signum, frame):
        if self.received:
            self.now(signum)
            return
        self.received = signum
        log.warning("%s received: stopping after step %d, with a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name, self.step() + 1)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False
