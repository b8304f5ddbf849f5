"""NPO+RT steps of a Llama-3.2-1B-shaped model on one GPU: tokens/s and model FLOPs utilisation.

    .venv/bin/python benchmarks/bench_gpu.py [--steps 20] [--warmup 3] [--batch 16] [--reference cached|online]
        [--attn sdpa|flash_attention_2] [--grouping length|random] [--precision bf16|autocast] [--adamw fused|foreach]
        [--compile]
    .venv/bin/python benchmarks/bench_gpu.py --dry-run     # tiny model on CPU: checks the logic, no GPU needed

Model: random-initialised Llama-3.2-1B configuration (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 8192, vocabulary 128,256, tied embeddings: 1.236B parameters); `--precision bf16` (default)
keeps bf16 weights, `autocast` npo's trainer default on a GPU (fp32 master weights, bf16 autocast);
SDPA attention (`--attn flash_attention_2` if the flash-attn package is installed); fused AdamW
(npo's default, `adamw_impl`).
Data: synthetic token ids of TOFU-like length (uniform in [--min-len, --max-len], default 120-200; the
first quarter of each sequence is the unlabelled prompt), --batch forget + --batch retain sequences per
step, each batch padded to its longest sequence. `--grouping length` (default, as npo's BatchStream)
draws each step's sequences from a pool sorted by length, so little is padding; `random` pads random
draws. Each step is the project's NPO+RT step: the product's `npo.logprobs.Scorer` (LM head on labelled
positions only) on the forget and the retain batch, `npo.losses.npo_loss` against reference log-probs
and `nll_loss`, each term backpropagated as soon as it is computed (as npo's trainer does), one
optimizer step.
With `--reference cached` (the project's design, default) the reference log-probs come from one no-grad
pass before the timed steps; `--reference online` recomputes them every step with a frozen copy.

FLOPs counted per step (multiply-add = 2 FLOPs; training = forward + backward = 3 x forward):
  training   6 * N_body * T_pad  +  6 * N_head * T_lab  +  6 * A      (forget and retain batches)
  reference  2 * N_body * T_pad,f + 2 * N_head * T_lab,f + 2 * A_f    (online only; cached: once, not per step)
where N_body = non-embedding parameters of the transformer blocks (973M), N_head = vocab x hidden (263M,
the tied LM head), T_pad = positions computed (padding included: the GPU does that work), T_lab = labelled
positions (the head runs only there), and A = n_layers * 2 * hidden * sum(s_i^2) is causal attention's
QK^T and AV work (half of the full s^2 matrices). Checkpoint recomputation is not counted (it is not model
work). MFU = counted FLOPs / step time / peak; peak = 989 TFLOP/s (H100 SXM bf16 dense; --peak-tflops to
change). The conventional 6 * N_all * tokens figure is printed next to it for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time

LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=128_256, tie_word_embeddings=True, max_position_embeddings=4096,
                rope_theta=500_000.0, head_dim=64)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=512, head_dim=16)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # bf16 dense, SXM


def synthetic_lengths(n_batches: int, n: int, min_len: int, max_len: int, generator, grouping: str) -> list[list[int]]:
    """Sequence lengths of `n_batches` batches of `n`: uniform draws, either batched as drawn (random)
    or sorted and cut into consecutive batches, whose order is then shuffled (length grouping)."""
    import torch

    lengths = torch.randint(min_len, max_len + 1, (n_batches * n,), generator=generator).tolist()
    if grouping == "length":
        lengths.sort()
    batches = [lengths[i * n:(i + 1) * n] for i in range(n_batches)]
    order = torch.randperm(n_batches, generator=generator).tolist()
    return [batches[i] for i in order]


def synthetic_batch(lengths: list[int], vocab: int, generator, device) -> dict:
    """Right-padded random token ids; the first quarter of each sequence is the unlabelled prompt."""
    import torch

    from npo.data.batches import IGNORE

    n = len(lengths)
    width = max(lengths)
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    for i, s in enumerate(lengths):
        row = torch.randint(3, vocab, (s,), generator=generator)
        ids[i, :s], mask[i, :s] = row, 1
        labels[i, s // 4:s] = row[s // 4:]
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
            "lengths": lengths}


def param_counts(model) -> tuple[int, int, int]:
    """(all parameters, transformer-block parameters, LM-head parameters) of a Llama."""
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    emb = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    body = total - emb - (0 if tied else head)
    return total, body, head


def batch_flops(batch: dict, n_body: int, n_head: int, n_layers: int, hidden: int, passes: int) -> float:
    """passes = 3 for forward + backward, 1 for forward only (see the module docstring)."""
    t_pad = batch["input_ids"].numel()
    t_lab = int((batch["labels"][:, 1:] != -100).sum())
    attn = n_layers * 2 * hidden * sum(s * s for s in batch["lengths"])
    return 2 * passes * (n_body * t_pad + n_head * t_lab + attn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="forget sequences per step (and as many retain)")
    p.add_argument("--min-len", type=int, default=120)
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--reference", choices=("cached", "online"), default="cached")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2, eager)")
    p.add_argument("--grouping", choices=("length", "random"), default="length")
    p.add_argument("--precision", choices=("bf16", "autocast"), default="bf16")
    p.add_argument("--adamw", choices=("fused", "foreach"), default="fused")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (optional)")
    p.add_argument("--peak-tflops", type=float, help="peak bf16 dense TFLOP/s (default: 989 for H100/H200 SXM)")
    p.add_argument("--dry-run", action="store_true", help="tiny model, fp32, on CPU: checks the logic only")
    args = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from npo import losses
    from npo.logprobs import Scorer

    if args.dry_run:
        torch.set_num_threads(1)
        device, dtype, shape = torch.device("cpu"), torch.float32, TINY
        args.steps, args.warmup, args.batch = min(args.steps, 2), min(args.warmup, 1), min(args.batch, 4)
        args.min_len, args.max_len = min(args.min_len, 24), min(args.max_len, 40)
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_gpu: no CUDA device found. This benchmark needs one GPU (written for an H100); "
                     "run it with --dry-run to check its logic on a CPU.")
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, LLAMA_1B
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), 989.0)
    print(f"bench_gpu: {time.strftime('%Y-%m-%d %H:%M %Z')} | {name} | torch {torch.__version__} | "
          f"peak {peak:g} TFLOP/s{' (nominal; dry run)' if args.dry_run else ''}")

    torch.manual_seed(0)
    config = LlamaConfig(**shape, attn_implementation=args.attn)
    weight_dtype = torch.float32 if args.precision == "autocast" else dtype
    default = torch.get_default_dtype()
    torch.set_default_dtype(weight_dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # random init directly on the device, in `dtype`
    torch.set_default_dtype(default)
    model.train()
    total, n_body, n_head = param_counts(model)
    print(f"model: hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads "
          f"({config.num_key_value_heads} KV), intermediate {config.intermediate_size}, vocab {config.vocab_size:,}, "
          f"tied: {total / 1e6:,.1f}M parameters (blocks {n_body / 1e6:,.1f}M, head {n_head / 1e6:,.1f}M), {dtype}")
    print(f"step: NPO+RT, {args.batch} forget + {args.batch} retain sequences of {args.min_len}-{args.max_len} "
          f"tokens ({args.grouping} grouping), reference {args.reference}, {args.adamw} AdamW lr {args.lr:g}, "
          f"attention {args.attn}, precision {args.precision}{', compiled' if args.compile else ''}")

    scorer = Scorer(torch.compile(model) if args.compile else model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=0.01, **({"fused": True} if args.adamw == "fused" else {"foreach": True}))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "autocast"
                else contextlib.nullcontext())
    g = torch.Generator().manual_seed(0)
    n_steps = args.warmup + args.steps
    forget = [synthetic_batch(lengths, config.vocab_size, g, device) for lengths in
              synthetic_lengths(n_steps, args.batch, args.min_len, args.max_len, g, args.grouping)]
    retain = [synthetic_batch(lengths, config.vocab_size, g, device) for lengths in
              synthetic_lengths(n_steps, args.batch, args.min_len, args.max_len, g, args.grouping)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    online = None
    t0 = time.perf_counter()
    if args.reference == "cached":
        model.eval()
        with torch.no_grad(), autocast:
            refs = [scorer(b)[0].float() for b in forget]
        model.train()
        sync()
        ref_time = time.perf_counter() - t0
        ref_flops = sum(batch_flops(b, n_body, n_head, config.num_hidden_layers, config.hidden_size, 1)
                        for b in forget)
        print(f"reference cache: {len(forget)} batches in {ref_time:.2f} s "
              f"({ref_flops / ref_time / 1e12:.1f} TFLOP/s, forward only; once per run, not per step)")
    else:
        online = Scorer(copy.deepcopy(model).eval().requires_grad_(False))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, flops, real_tokens, padded_tokens = [], [], [], []
    for step in range(n_steps):
        fb, rb = forget[step], retain[step]
        sync()
        start = time.perf_counter()
        if online is not None:
            with torch.no_grad(), autocast:
                ref = online(fb)[0].float()
        else:
            ref = refs[step]
        with autocast:  # each term backpropagated at once, freeing its graph (npo.train._Terms)
            forget_loss = losses.npo_loss(scorer(fb)[0], ref, args.beta)
        forget_loss.backward()
        with autocast:
            logp_r, n_r = scorer(rb)
            retain_loss = losses.nll_loss(logp_r, n_r)
        retain_loss.backward()
        loss = forget_loss.detach() + retain_loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        elapsed = time.perf_counter() - start
        if not torch.isfinite(loss):
            sys.exit(f"bench_gpu: non-finite loss at step {step}")
        if step < args.warmup:
            continue
        f = sum(batch_flops(b, n_body, n_head, config.num_hidden_layers, config.hidden_size, 3) for b in (fb, rb))
        if online is not None:
            f += batch_flops(fb, n_body, n_head, config.num_hidden_layers, config.hidden_size, 1)
        times.append(elapsed)
        flops.append(f)
        real_tokens.append(sum(fb["lengths"]) + sum(rb["lengths"]))
        padded_tokens.append(fb["input_ids"].numel() + rb["input_ids"].numel())

    med = statistics.median(times)
    tflops = [f / t / 1e12 for f, t in zip(flops, times, strict=True)]
    conv = [6 * total * n / t / 1e12 for n, t in zip(padded_tokens, times, strict=True)]
    tok_s = [n / t for n, t in zip(real_tokens, times, strict=True)]
    padding = 1 - statistics.mean(real_tokens) / statistics.mean(padded_tokens)
    print(f"\n{len(times)} timed steps after {args.warmup} warm-up; median [min-max]; padding {100 * padding:.1f}% of "
          "the positions computed")
    print(f"  step time            {med:.4f} s [{min(times):.4f}-{max(times):.4f}]")
    print(f"  tokens/s (real)      {statistics.median(tok_s):,.0f} [{min(tok_s):,.0f}-{max(tok_s):,.0f}] "
          f"({statistics.mean(real_tokens):.0f} real of {statistics.mean(padded_tokens):.0f} padded tokens per step)")
    print(f"  model TFLOP/s        {statistics.median(tflops):.1f} [{min(tflops):.1f}-{max(tflops):.1f}]")
    print(f"  MFU                  {100 * statistics.median(tflops) / peak:.1f}% "
          f"[{100 * min(tflops) / peak:.1f}-{100 * max(tflops) / peak:.1f}] of {peak:g} TFLOP/s")
    print(f"  6*N*tokens MFU       {100 * statistics.median(conv) / peak:.1f}% (conventional: all {total / 1e6:,.1f}M "
          "parameters on every padded token, head included everywhere)")
    if device.type == "cuda":
        print(f"  peak GPU memory      {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB reserved")
    if args.dry_run:
        print("dry run: logic checked on a tiny model; the numbers above mean nothing")


if __name__ == "__main__":
    main()
