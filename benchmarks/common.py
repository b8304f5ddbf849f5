"""Shared pieces of the benchmarks: the bench model and tokenizer, machine facts, memory probes, and
the statistics every script prints (medians with min-max, ratios paired within a repetition).

The bench model is a random-weight Llama (hidden 256, 4 layers, 8 heads, vocabulary 32,000,
intermediate 672, untied head: 19.5M parameters). Its tokenizer is a byte-level BPE trained here on
the TOFU text with the `tokenizers` library (no hub); the TOFU corpus only supports 24.5k tokens, so
the vocabulary is padded to 32,000 with reserved tokens, as Llama 3 does.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOFU = Path(os.environ.get("NPO_BENCH_TOFU", ROOT.parent / "shared" / "data" / "tofu"))
VOCAB = 32_000
BENCH_MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                   intermediate_size=672, vocab_size=VOCAB, max_position_embeddings=1024,
                   tie_word_embeddings=False)
TEXT_SPLITS = ("full", "retain_perturbed", "forget10_perturbed", "real_authors_perturbed", "world_facts_perturbed")


# ----------------------------------------------------------------------------- model and tokenizer


def require_tofu(data: Path = TOFU) -> Path:
    if not (data / "forget10.json").exists():
        sys.exit(f"TOFU data not found at {data} (set NPO_BENCH_TOFU to a TOFU-layout directory)")
    return data


def tofu_texts(data: Path) -> list[str]:
    from npo.data.qa import load_qa

    texts = []
    for split in TEXT_SPLITS:
        for r in load_qa(str(data), split):
            texts += [r.question, r.answer, *r.perturbed_answer]
            texts += [x for x in (r.paraphrased_answer, r.paraphrased_question) if x]
    return texts


def bench_tokenizer(data: Path):
    """Byte-level BPE trained on the TOFU text, vocabulary padded to 32,000 with reserved tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tofu_texts(data), trainer)
    learned = tok.get_vocab_size()
    tok.add_tokens([f"<reserved_{i}>" for i in range(VOCAB - learned)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>")
    return hf, learned


def save_bench_model(out: Path, data: Path, seed: int = 0) -> dict:
    """Tokenizer + random-weight bench model saved like a hub model (safetensors); returns facts."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, learned = bench_tokenizer(data)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**BENCH_MODEL, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"params": sum(p.numel() for p in model.parameters()), "learned_vocab": learned, "vocab": len(tok)}


TRAINED_RECIPE = dict(train=["forget10", "retain10"], epochs=6, batch_size=16, lr=2e-3, template="qa",
                      max_length=512, warmup_epochs=0.5, seed=0)


def trained_bench_model(out: Path, data: Path) -> Path:
    """The bench model after a short `npo finetune` on 800 TOFU pairs (TRAINED_RECIPE, 300 steps): it has
    learnt to end an answer with EOS, as every model that is evaluated has, so generation stops where a
    real evaluation's would. Kept under `out` (reused when present: the recipe is deterministic)."""
    import npo
    from npo.config import build

    model = out / "model"
    if (out / "done.json").exists():
        return model
    save_bench_model(out / "init", data)
    cfg = build(None, {**TRAINED_RECIPE, "model": str(out / "init"), "data": str(data), "out": str(out),
                       "dtype": "float32", "overwrite": True})
    npo.finetune(cfg)
    return model


# ----------------------------------------------------------------------------- measurement


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(threads: int | None = None) -> str:
    import torch
    import transformers

    threads = threads or torch.get_num_threads()
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')} | {os.cpu_count()} CPUs ({cpu_model()}), "
            f"torch {torch.__version__} ({threads} thread{'s' if threads > 1 else ''} per process), "
            f"transformers {transformers.__version__}, "
            f"Python {platform.python_version()} | load average {os.getloadavg()[0]:.1f}")


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """VmHWM of this process in MiB (the peak since start or since the last `reset_peak_rss`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def max_rss_mib() -> float:
    """ru_maxrss: the whole process's peak, never reset (set-up included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Process CPU time (all threads) and wall time of a block."""

    def __enter__(self):
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu, self.wall = time.process_time() - self.cpu0, time.perf_counter() - self.wall0
        return False


def run_worker(script: Path, args: list[str], timeout: float = 1800) -> dict:
    """Run `script --worker ARGS` in a fresh interpreter; its last stdout line is a JSON record."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script), "--worker", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- statistics


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    """median [min-max] (n)."""
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{fmt.format(med)} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def paired_ratios(new: list[float], naive: list[float]) -> list[float]:
    """new/naive within each repetition (the two ran back to back, so they saw the same machine load)."""
    return [a / b for a, b in zip(new, naive, strict=True)]


def verdict(ratio: float, target: float) -> str:
    return f"target <= {target:g}x: {'met' if ratio <= target else 'NOT met'}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
