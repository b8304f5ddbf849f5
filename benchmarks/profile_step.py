"""Where one training step's CPU time goes, against its FLOP floor: the real Trainer, torch.profiler.

    .venv/bin/python benchmarks/profile_step.py [--method ga] [--batch-size 4] [--steps 5] [--model DIR]

Runs `--steps` steps after two warm-up steps of `npo.train.Trainer` (TOFU forget10/retain90, template
qa, one thread) under torch.profiler and groups the operators: matrix products (forward and backward),
the LM head's log-softmax, attention, the optimizer, the gradient norm, zero-fills and the rest.
The floor is the matrix products a step cannot avoid: 6 x N_body x T_pad (forward + backward of the
blocks on every padded position) + 6 x N_head x T_lab (the LM head on labelled positions only; a
full-logits head costs 6 x N_head x T_pad), N_body the blocks' linear weights, N_head vocab x hidden;
the profiler's own count of the products' FLOPs is printed next to it, with the rate achieved.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TOFU, machine_line, require_tofu, save_bench_model  # noqa: E402

GROUPS = (("matrix products", ("aten::mm", "aten::addmm", "aten::bmm")),
          ("LM-head log-softmax (fwd + bwd)", ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::exp_",
                                              "aten::scatter_add_", "aten::nll_loss")),
          ("attention (SDPA fwd + bwd)", ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                          "aten::_scaled_dot_product_flash_attention_for_cpu_backward")),
          ("optimizer (fused AdamW)", ("aten::_fused_adamw_", "aten::_foreach_", "aten::addcdiv_", "aten::lerp_",
                                       "aten::sqrt", "aten::addcmul_")),
          ("gradient norm", ("aten::linalg_vector_norm", "aten::_foreach_norm")),
          ("zero-fills", ("aten::fill_", "aten::zero_")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="ga")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--model", type=Path, help="default: the bench model, built here")
    p.add_argument("--data", type=Path, default=TOFU)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from torch.profiler import ProfilerActivity, profile

    from npo.config import build
    from npo.methods import METHODS
    from npo.plan import load_shape, parameters
    from npo.train import Trainer

    require_tofu(args.data)
    print("profile_step:", machine_line(1))
    tmp = Path(tempfile.mkdtemp(prefix="npo-profile-"))
    try:
        model = args.model or (save_bench_model(tmp / "model", args.data) and tmp / "model")
        cfg = build(None, {"model": str(model), "data": str(args.data), "forget": "forget10", "retain": "retain90",
                           "method": args.method, "template": "qa", "batch_size": args.batch_size, "max_steps": 100,
                           "lr": 1e-5, "out": str(tmp / "run")})
        trainer = Trainer(cfg, METHODS[cfg.method])
        for _ in range(2):
            trainer.train_step()
        drawn = []
        for name, stream in trainer.streams.items():
            def recorded(nxt=stream.next, examples=trainer.sets[name]):
                window = nxt()
                drawn.append((len(window) * max(len(examples[i].input_ids) for i in window),
                              sum(examples[i].n_labels for i in window)))
                return window
            stream.next = recorded
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for _ in range(args.steps):
                trainer.train_step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
        by_group = collections.OrderedDict((g, 0.0) for g, _ in GROUPS)
        for e in events:
            for g, names in GROUPS:
                if any(e.key == n or (n.endswith("_") and e.key.startswith(n)) for n in names):
                    by_group[g] += e.self_cpu_time_total / 1e3 / args.steps
                    break
        mm_flops = sum(e.flops for e in events if e.key in GROUPS[0][1] and e.flops) / args.steps
        shape = load_shape(str(model))
        counts = parameters(shape)
        n_head, n_body = shape.vocab * shape.hidden, counts["linear"]
        t_pad = sum(p for p, _ in drawn) / args.steps
        t_lab = sum(n for _, n in drawn) / args.steps
        floor = 6 * n_body * t_pad + 6 * n_head * t_lab
        full = 6 * (n_body + n_head) * t_pad
        print(f"method {args.method}, batch {args.batch_size}, {args.steps} profiled steps; per step: {t_pad:.0f} padded "
              f"positions, {t_lab:.0f} labelled tokens (all terms)\n")
        for g, ms in by_group.items():
            print(f"  {g:34s} {ms:7.1f} ms  {100 * ms / total:4.0f}%")
        rest = total - sum(by_group.values())
        print(f"  {'everything else':34s} {rest:7.1f} ms  {100 * rest / total:4.0f}%")
        print(f"  {'step (profiled operators)':34s} {total:7.1f} ms\n")
        mm_ms = by_group["matrix products"]
        print(f"FLOP floor 6 N_body T_pad + 6 N_head T_lab = {floor / 1e9:.2f} GFLOP (N_body {n_body / 1e6:.2f}M, "
              f"N_head {n_head / 1e6:.2f}M); a full-logits head: {full / 1e9:.2f} GFLOP")
        print(f"matrix products as counted by the profiler: {mm_flops / 1e9:.2f} GFLOP in {mm_ms:.0f} ms = "
              f"{mm_flops / mm_ms / 1e6:.0f} GFLOP/s; the floor at that rate: {floor / (mm_flops / mm_ms) :.0f} ms "
              f"= {100 * floor / (mm_flops / mm_ms) / total:.0f}% of the step")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
