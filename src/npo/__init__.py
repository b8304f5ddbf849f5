"""npo: unlearning for language models with Negative Preference Optimization.

The public API: `npo.unlearn(cfg)`, `npo.finetune(cfg)`, `npo.config.build(...)`; the loss family
in `npo.losses`; the one log-prob function in `npo.logprobs`. Submodules load on first use, so
`import npo` (and `npo --help`) does not import torch.
"""

import importlib

__all__ = ["TrainConfig", "config", "finetune", "resume_config", "unlearn"]
__version__ = "0.1.0"

_LAZY = {"unlearn": "npo.api", "finetune": "npo.api", "resume_config": "npo.api", "TrainConfig": "npo.config"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ("config", "losses", "logprobs"):
        return importlib.import_module(f"npo.{name}")
    raise AttributeError(f"module 'npo' has no attribute {name!r}")
