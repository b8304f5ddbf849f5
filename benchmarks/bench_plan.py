"""`npo plan`'s estimates against measured peaks on this CPU (fp32): the bench model and SmolLM2-135M,
full fine-tuning and LoRA, through the real Trainer.

    .venv/bin/python benchmarks/bench_plan.py [--steps 3] [--batch-sizes 4,16] [--smollm2 DIR]

One process per measurement. Before the run it imports npo and transformers and trains a tiny Llama for
one step (forward, backward, fused AdamW), so that libraries (peft too) and their kernels' code are resident; the
RSS then is the baseline. Measured = peak RSS (VmHWM) over model loading, the reference pass and the
steps, minus that baseline: what the model, its training state and the steps add. Predicted =
`npo.plan.estimate` (cpu: fp32) with the batch's padded length and labelled tokens of the largest step
the run drew, for the method's terms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    TOFU,
    machine_line,
    peak_rss_mib,
    require_tofu,
    rss_mib,
    run_worker,
    save_bench_model,
    table,
)

SMOLLM2 = Path.home() / ".cache" / "npo-tests" / "smollm2-135m-instruct"


def warm_up() -> None:
    import peft  # noqa: F401  (imported in the baseline, so LoRA runs are compared like the others)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import npo.train  # noqa: F401

    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    model(input_ids=torch.ones(2, 8, dtype=torch.long), labels=torch.ones(2, 8, dtype=torch.long)).loss.backward()
    opt.step()


def worker(args) -> dict:
    import torch

    torch.set_num_threads(1)
    warm_up()
    from npo.config import build
    from npo.methods import METHODS
    from npo.train import Trainer

    base = rss_mib()
    Path("/proc/self/clear_refs").write_text("5")
    out = Path(tempfile.mkdtemp(prefix="npo-bench-plan-"))
    try:
        cfg = build(None, {"model": args.model, "data": str(args.data), "forget": "forget10", "retain": "retain90",
                           "method": args.method, "template": "qa", "batch_size": args.batch_size, "max_steps": 10,
                           "lr": 1e-5, "lora_r": args.lora_r, "out": str(out / "run")})
        trainer = Trainer(cfg, METHODS[cfg.method])
        drawn = []
        for name, stream in trainer.streams.items():
            examples, nxt = trainer.sets[name], stream.next

            def recorded(nxt=nxt, examples=examples):
                window = nxt()
                drawn.append((len(window) * max(len(examples[i].input_ids) for i in window),
                              sum(examples[i].n_labels for i in window)))
                return window
            stream.next = recorded
        for _ in range(args.steps):
            trainer.train_step()
        return {"model": args.model, "lora_r": args.lora_r, "batch": args.batch_size, "method": args.method,
                "base_mib": base, "delta_mib": peak_rss_mib() - base,
                "padded_tokens": max(p for p, _ in drawn), "labelled": max(n for _, n in drawn)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def predict(rec: dict) -> float:
    from npo.methods import METHODS
    from npo.plan import Setting, estimate, load_shape

    needs = METHODS[rec["method"]].needs
    est = estimate(load_shape(rec["model"]), Setting("x", rec["lora_r"]), online_ref="online_ref" in needs,
                   kl="online_ref" in needs, batch=rec["batch"], length=max(1, rec["padded_tokens"] // rec["batch"]),
                   answer=max(1, rec["labelled"] // rec["batch"]), gpu=False)
    return est["total"] / 2**20, est


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-sizes", default="4,16")
    p.add_argument("--method", default="npo_rt")
    p.add_argument("--smollm2", type=Path, default=SMOLLM2, help="a SmolLM2-135M directory (skipped if absent)")
    p.add_argument("--data", type=Path, default=TOFU)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--lora-r", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    require_tofu(args.data)
    print("bench_plan:", machine_line(1))
    tmp = Path(tempfile.mkdtemp(prefix="npo-bench-plan-model-"))
    try:
        save_bench_model(tmp / "bench", args.data)
        models = [("bench model (19.5M)", tmp / "bench")]
        if (args.smollm2 / "config.json").exists():
            models.append(("SmolLM2-135M", args.smollm2))
        rows = []
        for label, model in models:
            for lora_r in (0, 16):
                for batch in [int(b) for b in args.batch_sizes.split(",")]:
                    rec = run_worker(Path(__file__), ["--model", str(model), "--lora-r", str(lora_r), "--batch-size",
                                                      str(batch), "--steps", str(args.steps), "--method", args.method,
                                                      "--data", str(args.data)])
                    pred, est = predict(rec)
                    rows.append([label, "full" if not lora_r else f"LoRA r={lora_r}", str(batch),
                                 f"{rec['padded_tokens']}/{rec['labelled']}", f"{pred:.0f}", f"{rec['delta_mib']:.0f}",
                                 f"{pred / rec['delta_mib']:.2f}",
                                 " ".join(f"{k[:4]} {v / 2**20:.0f}" for k, v in est.items() if v and k != "total")])
                    print("  ", rows[-1], flush=True)
        print(f"\nmethod {args.method}, CPU fp32, {args.steps} steps; MiB above the warmed-up libraries\n")
        print(table(rows, ["model", "setting", "batch", "max padded/labelled tokens", "predicted MiB",
                           "measured MiB", "predicted/measured", "predicted parts (MiB)"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
