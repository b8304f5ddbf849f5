"""npo: unlearning for language models with Negative Preference Optimization.

The public API: `npo.unlearn(cfg)`, `npo.finetune(cfg)`, `npo.config.build(...)`; the loss family
in `npo.losses`; the one log-prob function in `npo.logprobs`.
"""

from npo import config
from npo.api import finetune, resume_config, unlearn
from npo.config import TrainConfig

__all__ = ["TrainConfig", "config", "finetune", "resume_config", "unlearn"]
__version__ = "0.1.0"
