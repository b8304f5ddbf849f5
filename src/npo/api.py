"""The Python API; the CLI only wraps these functions.

    import npo
    cfg = npo.config.build("configs/tofu/forget10_npo_rt.yaml", {"model": "path/to/model", "out": "runs/x"})
    run_dir = npo.unlearn(cfg)
"""

from __future__ import annotations

from pathlib import Path

from npo.checkpoint import RUN_MARKER
from npo.config import TrainConfig, from_dict, load_yaml, validate
from npo.errors import NpoError


def _default_hook(cfg: TrainConfig):
    if not cfg.eval_every_epochs:
        return None
    from npo.eval.hook import EvalHook

    return EvalHook(cfg)


def unlearn(cfg: TrainConfig, resume: bool = False, eval_hook=None) -> Path:
    """Unlearn `cfg.forget` from `cfg.model` with `cfg.method`; returns the run directory
    (the final model is in `RUN/model`)."""
    from npo.methods import METHODS
    from npo.train import Trainer

    validate(cfg)
    return Trainer(cfg, METHODS[cfg.method], resume, eval_hook or _default_hook(cfg)).run()


def finetune(cfg: TrainConfig, resume: bool = False, eval_hook=None) -> Path:
    """Plain NLL fine-tuning on `cfg.train` (the model to unlearn from, or a retain-only model)."""
    from npo.methods import FINETUNE
    from npo.train import Trainer

    validate(cfg)
    return Trainer(cfg, FINETUNE, resume, eval_hook or _default_hook(cfg)).run()


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run was started with, for `--resume`."""
    path = Path(run_dir) / RUN_MARKER
    if not path.exists():
        raise NpoError(f"cannot resume: {run_dir} holds no run ({RUN_MARKER} missing)")
    cfg = from_dict(load_yaml(path), where=f"{path}: ")
    validate(cfg)
    return cfg
