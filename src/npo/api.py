"""The Python API; the CLI only wraps these functions.

    import npo
    cfg = npo.config.build("configs/tofu/forget10_npo_rt.yaml", {"model": "path/to/model", "out": "runs/x"})
    run_dir = npo.unlearn(cfg)
"""

from __future__ import annotations

import logging
from pathlib import Path

from npo.config import TrainConfig, validate

log = logging.getLogger("npo")


def _default_hook(cfg: TrainConfig):
    if not cfg.eval_every_epochs:
        return None
    from npo.eval.hook import EvalHook

    return EvalHook(cfg)


def _train(cfg: TrainConfig, method, resume: bool, eval_hook) -> Path:
    """Resume checks first (changed settings are refused, a finished run is left as it is), then train."""
    from npo import resume as resuming
    from npo.runtime import setup_logging
    from npo.train import Trainer

    validate(cfg)
    if resume:
        resuming.changes(cfg.out, cfg)
        done = resuming.finished(cfg.out)
        if done is not None:
            setup_logging(libraries=False)
            log.info("%s is finished (%s steps); nothing to resume", cfg.out, done.get("steps", "all"))
            return Path(cfg.out)
    return Trainer(cfg, method, resume, eval_hook or _default_hook(cfg)).run()


def unlearn(cfg: TrainConfig, resume: bool = False, eval_hook=None) -> Path:
    """Unlearn `cfg.forget` from `cfg.model` with `cfg.method`; returns the run directory
    (the final model is in `RUN/model`). `resume`: continue the run in `cfg.out` from its checkpoint."""
    from npo.methods import METHODS

    return _train(cfg, METHODS[cfg.method], resume, eval_hook)


def finetune(cfg: TrainConfig, resume: bool = False, eval_hook=None) -> Path:
    """Plain NLL fine-tuning on `cfg.train` (the model to unlearn from, or a retain-only model)."""
    from npo.methods import FINETUNE

    return _train(cfg, FINETUNE, resume, eval_hook)


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run was started with, for `--resume`."""
    from npo.resume import stored_config

    cfg = stored_config(run_dir)
    validate(cfg)
    return cfg
