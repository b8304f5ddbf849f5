"""The benchmarks `npo eval --benchmark NAME` and the training-time hook (`eval_benchmark`) can run.

Each benchmark is a module exposing
- `evaluate(model, tok, spec: EvalSpec, out: Path, dist: Dist) -> dict | None`: per-item logs and
  `summary.json` / `summary.md` written under `out` by the main process, the summary returned
  (None on other processes);
- `headline(summary) -> str`: one line for logs and the CLI;
- `CURVES`: plot label -> (summary key, "log" | "linear"), the numbers followed across epochs;
- optionally `default_max_length(model, tok) -> int`: the token limit of `npo eval` when
  --max-length is not given (otherwise DEFAULT_MAX_LENGTH).
Modules are imported only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from npo.errors import NpoError

# name -> (module, one line)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "tofu": ("npo.eval.tofu", "TOFU: fictitious authors' QA; Model Utility and Forget Quality (Maini et al. 2024)"),
    "muse": ("npo.eval.muse", "MUSE: news/books text; VerbMem, KnowMem, PrivLeak, utility (Shi et al. 2025)"),
    "mcq": ("npo.eval.mcq", "multiple choice (WMDP, MMLU): zero-shot accuracy per subject, as lm-evaluation-harness"),
}
DEFAULT_MAX_LENGTH = 512
# texts scored and prompts generated per batch: on a CPU 16 -> 64 halves generation time and larger
# gains little (BENCHMARKS.md section 2); one value for npo eval, the training hook and the API
EVAL_BATCH = 64


@dataclass(frozen=True)
class EvalSpec:
    """What one evaluation is asked to do: `npo eval` flags, or the trainer's `eval_*` keys."""

    data: str
    template: str
    forget_split: str | None = None
    retain_logs: str | None = None  # the retain model's logs (TOFU: its eval folder; MUSE: also news|books)
    protocol: str = "full"
    max_new_tokens: int = 200
    batch_size: int = EVAL_BATCH
    max_length: int = 512
    generation: str = "greedy"  # greedy | sampled
    identity: dict = field(default_factory=dict)  # written into the summary (model, epoch, ...)
    limit: int | None = None  # mcq: the first N questions of each subject
    mcq_convention: str = "current"  # mcq: which lm-eval version's prompt and BOS (eval/mcq.py CONVENTIONS)


def load(name: str):
    if name not in BENCHMARKS:
        raise NpoError(f"unknown benchmark '{name}' (choose from {', '.join(BENCHMARKS)})")
    return importlib.import_module(BENCHMARKS[name][0])


def max_length_for(bench, model, tok, given: int | None) -> int:
    """The token limit: the one given, else the benchmark's default for this model, else DEFAULT_MAX_LENGTH."""
    if given:
        return given
    default = getattr(bench, "default_max_length", None)
    return default(model, tok) if default else DEFAULT_MAX_LENGTH
