"""Run directories, their lock, and atomic checkpoints.

A checkpoint is written into a temporary directory and renamed into place, so a crash during a
save leaves the previous checkpoint intact; a failed save (a full disk) removes its temporary
directory. It holds the trainable weights (safetensors), the optimizer and scheduler, RNG states,
the data-stream positions and the reference cache.

A run directory is locked (an advisory `flock` on RUN/.lock) by the process that trains in it, so a
second run on the same --out is refused; the kernel drops the lock when the process ends, however it
ends, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from npo.errors import NpoError
from npo.runtime import check_out_dir

RUN_MARKER = "config.yaml"
DONE_MARKER = "done.json"
LOCK_FILE = ".lock"
TMP_PREFIX = ".checkpoint-tmp-"
OLD = ".checkpoint-old"
# what --overwrite removes of an earlier run (config.yaml and env.json are rewritten)
RUN_FILES = ("model", "checkpoint", OLD, "eval", DONE_MARKER, "metrics.jsonl", "resumes.jsonl")


class RunLock:
    """An exclusive flock on RUN/.lock for this process's life; the file records the holder's pid."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        try:
            self.file = open(self.path, "a+")  # noqa: SIM115 (held open until release)
        except OSError as err:
            raise NpoError(f"cannot write to output directory {run_dir}: {err.strerror or err}") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            if holder == str(os.getpid()):
                raise NpoError(f"{run_dir} is in use by a trainer of this process that was neither run nor "
                               "closed (Trainer.run() and Trainer.close() release it)") from None
            raise NpoError(f"{run_dir} is in use by another npo process (pid {holder}); wait for it to end or "
                           "stop it, or choose another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def prepare_run_dir(out: str, overwrite: bool, resume: bool) -> tuple[Path, RunLock, bool]:
    """Create (or reuse, with overwrite/resume) and lock the run directory; fail early if it is not
    writable. Returns (path, lock, whether this call created the directory)."""
    if not out:
        raise NpoError("no output directory given (set 'out' or pass --out)")
    path = check_out_dir(out)
    _check_run(path, overwrite, resume)  # before creating anything
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NpoError(f"cannot write to output directory {path}: {err.strerror or err}") from None
    try:
        lock = RunLock(path)
    except NpoError:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        _check_run(path, overwrite, resume)  # again under the lock: another process may have started one
        if overwrite and (path / RUN_MARKER).exists() and not resume:
            for name in RUN_FILES:
                target = path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        sweep_temporary(path)
    except BaseException:
        lock.release()
        raise
    return path, lock, created


def _check_run(path: Path, overwrite: bool, resume: bool) -> None:
    is_run = (path / RUN_MARKER).exists()
    if resume and not is_run:
        raise NpoError(f"cannot resume: {path} holds no run ({RUN_MARKER} missing)")
    if is_run and not overwrite and not resume:
        raise NpoError(f"{path} already holds a run; pass --overwrite to replace it or --resume to continue it")


def sweep_temporary(run_dir: Path) -> None:
    """Remove the temporary directories of saves that never finished (a kill during a save); keep
    .checkpoint-old, which is the last checkpoint after a crash between the two renames."""
    for tmp in run_dir.glob(".checkpoint-*"):
        if tmp.name != OLD and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
    for tmp in run_dir.glob(".model-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def trainable_state(model) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: dict, rng: dict,
                    cache: dict[str, torch.Tensor] | None) -> None:
    """Write into a temporary directory, then rename it into place. Any failure (a full disk, an
    interrupt) removes the temporary directory, leaves the previous checkpoint as it was and is
    raised again (the trainer words it: `write_failure`)."""
    final = run_dir / "checkpoint"
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=run_dir))
    try:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
                   tmp / "optimizer.pt")
        if cache:
            save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp / "reference.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # at every point one complete checkpoint is in place: `checkpoint`, or `.checkpoint-old` (which a
    # run resumed after a crash between the renames starts from, so it goes only once replaced)
    old = run_dir / OLD
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_failure(err: OSError, what: str, run_dir: Path) -> str:
    """One line for a failed write: the cause (a full disk said plainly) and what is left."""
    cause = ("no space left on device" if err.errno == errno.ENOSPC else
             "disk quota exceeded" if err.errno == errno.EDQUOT else err.strerror or str(err))
    kept = checkpoint_step(run_dir)
    left = (f"the checkpoint of step {kept} is intact" if kept is not None else "no checkpoint was written yet")
    return f"cannot write {what} in {run_dir}: {cause}; its temporary files are removed and {left}"


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the checkpoint a resume would start from, or None."""
    try:
        path = find_checkpoint(run_dir)
        return json.loads((path / "state.json").read_text())["step"] if path else None
    except (NpoError, OSError, ValueError, KeyError, TypeError):
        return None


def find_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint (the old one survives a crash between the renames), or None when no
    save ever finished; a checkpoint directory without its state file is refused, not skipped."""
    for name in ("checkpoint", OLD):
        path = run_dir / name
        if (path / "state.json").exists():
            return path
    if (run_dir / "checkpoint").exists():
        raise NpoError(f"checkpoint {run_dir / 'checkpoint'} is incomplete (no state.json); it was not written by "
                       "npo's atomic save; remove it to start the run again, or restore it from a copy")
    return None


def _corrupt(path: Path, err: Exception) -> NpoError:
    detail = " ".join(str(err).split())[:200]
    return NpoError(f"checkpoint file {path} is truncated or corrupted ({type(err).__name__}: {detail}); "
                    "restore it from a copy, or start the run again with --overwrite")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _corrupt(path, err) from None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[dict, dict, dict | None]:
    """Restore weights, optimizer and scheduler in place; return (state, rng, reference cache).
    Every file is read (and refused if unreadable) before anything is restored."""
    state_path, blob_path = path / "state.json", path / "optimizer.pt"
    try:
        state = json.loads(state_path.read_text())
        state["step"], state["skipped"], state["streams"]  # noqa: B018 (the keys a resume needs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _corrupt(state_path, err) from None
    tensors = _read_tensors(path / "trainable.safetensors")
    try:
        blob = torch.load(blob_path, weights_only=True, map_location="cpu")
        blob["optimizer"], blob["scheduler"], blob["rng"]  # noqa: B018
    except pickle.UnpicklingError:
        raise NpoError(f"checkpoint file {blob_path} holds objects other than tensors, which torch refuses to "
                       "load (weights_only=True) because they can run code; it was not written by npo") from None
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError) as err:
        raise _corrupt(blob_path, err) from None
    cache_path = path / "reference.safetensors"
    cache = _read_tensors(cache_path) if cache_path.exists() else None
    target = getattr(model, "module", model)
    expected = {n for n, p in target.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        raise NpoError(f"checkpoint {path} does not match the model: {len(set(tensors) ^ expected)} "
                       "parameter names differ")
    with torch.no_grad():
        params = dict(target.named_parameters())
        for name, value in tensors.items():
            params[name].copy_(value)
    try:
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise _corrupt(blob_path, err) from None
    return state, blob["rng"], cache
