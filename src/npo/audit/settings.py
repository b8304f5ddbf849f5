"""What an audit does besides the request: prompt settings, which probes run, their strength, and the
bootstrap. Recorded in the manifest; `npo verify` recomputes the numbers with the recorded values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from npo.errors import NpoError

# optional probes (membership inference, the unlearning-trace check and TOFU always run)
PROBES = {
    "paraphrase": "the forget questions reworded (paraphrased_question)",
    "multiple_choice": "the forget question as multiple choice (probes/formats.py)",
    "fill_blank": "the forget answer as fill-in-the-blank (probes/formats.py)",
    "jailbreak": "the forget question after a jailbreak-style prefix (probes/formats.py)",
    "quant": "weight quantization (round-to-nearest per output channel)",
    "relearn": "a short fine-tune on part of the forget items, measured on the rest",
}


@dataclass(frozen=True)
class AuditSettings:
    template: str | None = None  # default: the tokenizer's (chat if it has a template, else qa)
    max_length: int = 512
    max_new_tokens: int = 200
    batch_size: int = 16
    k: float = 0.2  # Min-K% fraction
    probes: tuple[str, ...] = tuple(PROBES)
    quant_bits: tuple[int, ...] = (8, 4)  # the verdict uses the fewest bits
    relearn_fraction: float = 0.5
    relearn_epochs: int = 2
    relearn_lr: float = 1e-5
    relearn_batch_size: int = 8
    relearn_overrides: dict = field(default_factory=dict)
    resamples: int = 1000  # bootstrap resamples per interval
    level: float = 0.95
    seed: int = 0  # relearning split and fine-tune, option order, bootstrap
    tail: float = 0.05  # the unlearning-trace check: share of forget answers below this holdout quantile
    recovery_threshold: float = 0.25  # relearning may bring back less than this share of what was removed
    include_texts: bool = False  # keep the forget questions, answers and generations in the audit

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["probes"], d["quant_bits"] = list(self.probes), list(self.quant_bits)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AuditSettings:
        d = dict(d)
        d["probes"], d["quant_bits"] = tuple(d["probes"]), tuple(d["quant_bits"])
        return cls(**d)


# what the testbed's tiny models need (npo demo): short prompts and answers, a stronger relearning step
TESTBED = AuditSettings(template="qa", max_length=256, max_new_tokens=32, batch_size=64, relearn_lr=3e-4)


def check(s: AuditSettings) -> AuditSettings:
    unknown = [p for p in s.probes if p not in PROBES]
    if unknown:
        raise NpoError(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
    for name in ("max_length", "max_new_tokens", "batch_size", "relearn_epochs", "relearn_batch_size", "resamples"):
        if getattr(s, name) <= 0:
            raise NpoError(f"{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    for name in ("k", "level"):
        if not 0 < getattr(s, name) <= 1 or (name == "level" and s.level == 1):
            raise NpoError(f"{name} must be in (0, 1), got {getattr(s, name)}")
    for name in ("relearn_fraction", "tail", "recovery_threshold"):
        if not 0 < getattr(s, name) < 1:
            raise NpoError(f"{name.replace('_', '-')} must be between 0 and 1, got {getattr(s, name)}")
    if "quant" in s.probes and (not s.quant_bits or any(not 2 <= b <= 16 for b in s.quant_bits)):
        raise NpoError(f"quant bits must be integers from 2 to 16, got {list(s.quant_bits)}")
    if s.relearn_lr <= 0:
        raise NpoError(f"relearn-lr must be positive, got {s.relearn_lr}")
    return s
