"""What `--resume` may change, and the records that keep a resumed run unmixed.

A resumed run ends with the weights of an uninterrupted run with the same settings. So a resume
compares the settings it is given with the run's config.yaml key by key: a key in RESUME_SAFE (none
of them changes what a step computes) is applied and recorded in RUN/resumes.jsonl and config.yaml;
any other change is refused, naming the key and both values. In particular `epochs`, `max_steps`
and `lr` are refused even for a finished run: the linear schedule decays to 0 at the planned last
step, so a longer run would not be any uninterrupted run; train a new run from RUN/model instead.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from npo.checkpoint import DONE_MARKER, RUN_MARKER
from npo.config import TrainConfig, from_dict, load_yaml, save, show, to_dict
from npo.errors import NpoError

log = logging.getLogger("npo")

# key -> why changing it on resume cannot change the trained weights
RESUME_SAFE: dict[str, str] = {
    "save_every_steps": "checkpoint cadence only",
    "nonfinite": "acts only on a non-finite step (a run stopped by one may continue with nonfinite=skip)",
    "max_skipped_steps": "acts only on non-finite steps",
    "gradient_checkpointing": "recomputes the same activations to save memory",
    "save_merged": "how the final model is written",
    "eval_*": "evaluation only (its batch size also sets the reference pass, which a checkpoint stores)",
}
IGNORED = ("out", "overwrite")  # where the run lives, not how it trains
RESUMES = "resumes.jsonl"


def is_safe(key: str) -> bool:
    return key in RESUME_SAFE or any(k.endswith("*") and key.startswith(k[:-1]) for k in RESUME_SAFE)


def stored_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / RUN_MARKER
    if not path.exists():
        raise NpoError(f"cannot resume: {run_dir} holds no run ({RUN_MARKER} missing)")
    return from_dict(load_yaml(path), where=f"{path}: ")


def changes(run_dir: str | Path, cfg: TrainConfig) -> dict[str, tuple]:
    """The keys a resume with `cfg` would change, as key -> (old, new); refuses any unsafe one."""
    old, new = to_dict(stored_config(run_dir)), to_dict(cfg)
    changed = {k: (old[k], new[k]) for k in old if k not in IGNORED and old[k] != new[k]}
    refused = {k: v for k, v in changed.items() if not is_safe(k)}
    if refused:
        shown = "; ".join(f"{k}: {show(a)} in the run, {show(b)} now" for k, (a, b) in refused.items())
        safe = ", ".join(RESUME_SAFE)
        raise NpoError(f"cannot resume {run_dir} with changed settings ({shown}): a resumed run continues the run "
                       f"it was started as; only {safe} may change. Resume without them, or start a new run "
                       "with another --out")
    return changed


def finished(run_dir: str | Path) -> dict | None:
    """done.json of a finished run, or None."""
    path = Path(run_dir) / DONE_MARKER
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def record(run_dir: Path, cfg: TrainConfig, changed: dict[str, tuple], step: int) -> None:
    """Append this resume to resumes.jsonl; the applied changes also go into config.yaml, so it
    always holds the settings the run continues with."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_step": step,
             "changed": {k: {"old": a, "new": b} for k, (a, b) in changed.items()}}
    with (run_dir / RESUMES).open("a") as f:
        f.write(json.dumps(entry) + "\n")
    if changed:
        save(cfg, run_dir / RUN_MARKER)
        log.info("resume: %s", ", ".join(f"{k} {show(a)} -> {show(b)}" for k, (a, b) in changed.items()))


def keep_steps(path: Path, last: int) -> int:
    """Rewrite a JSON-lines record file keeping the records of steps up to `last` (those a resumed run
    does not train again) and dropping a torn last line; atomic. Returns the records dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if isinstance(step, int) and step <= last:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        tmp.replace(path)
    return dropped
