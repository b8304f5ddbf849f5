"""Probes that expose shallow unlearning: membership inference (LOSS, zlib, Min-K%, Min-K%++ AUCs and
MUSE's PrivLeak) and robustness to relearning, weight quantization and paraphrased questions.
`run_probes` runs them on one model; docs/probes.md says how to read the numbers."""

from npo.probes.run import PROBES, run_probes

__all__ = ["PROBES", "run_probes"]
