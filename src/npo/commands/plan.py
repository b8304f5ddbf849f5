"""`npo plan`: the memory each training setting needs for a model and method, and which fit."""

from __future__ import annotations

COMPONENTS = ("weights", "gradients", "optimizer", "reference", "activations", "logits", "overhead")


def add_arguments(parser) -> None:
    from npo.methods import METHODS
    from npo.plan import KNOWN

    parser.add_argument("--model", required=True,
                        help=f"model directory, its config.json, or a known shape ({', '.join(KNOWN)})")
    parser.add_argument("--method", choices=tuple(METHODS), default="npo_rt")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the LoRA settings (default 16)")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--gpu-mem", default="40GB", help="memory of each GPU (default 40GB)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step per GPU (default 8, npo's)")
    parser.add_argument("--length", type=int, default=256, help="tokens per example, padded (default 256)")
    parser.add_argument("--answer-tokens", type=int, default=64, help="labelled tokens per example (default 64)")
    parser.add_argument("--cpu", action="store_true", help="size a CPU run instead (fp32 throughout, no GPU overhead)")
    parser.epilog = ("Estimates from the model's shape (npo/plan.py says how each part is counted); the "
                     "measured check is benchmarks/bench_plan.py.")


def main(args) -> int:
    from npo.errors import NpoError
    from npo.methods import METHODS
    from npo.plan import GIB, estimate, load_shape, parameters, parse_size, settings

    for name in ("lora_r", "gpus", "batch_size", "length", "answer_tokens"):
        if getattr(args, name) <= 0:
            raise NpoError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.answer_tokens > args.length:
        raise NpoError(f"--answer-tokens ({args.answer_tokens}) cannot exceed --length ({args.length})")
    shape = load_shape(args.model)
    budget = None if args.cpu else parse_size(args.gpu_mem)
    needs = METHODS[args.method].needs
    # an online reference is a frozen copy of the weights and full next-token distributions (KL,
    # UNDIAL); RMU's frozen activations keep only its few trained matrices, left out
    online = "online_ref" in needs
    n = parameters(shape)["total"]
    where = "CPU, fp32" if args.cpu else f"{args.gpus} GPU(s) of {budget / GIB:g} GiB, bf16"
    print(f"{args.model}: {n / 1e9:.3g}B parameters; method {args.method}; batch {args.batch_size} x "
          f"{args.length} tokens ({args.answer_tokens} labelled) per step per device; {where}\n")
    modes = [("", False)] + ([(" (sharded)", True)] if args.gpus > 1 else [])
    header = ["setting", *COMPONENTS, "total GiB", *([] if args.cpu else ["fits"])]
    rows = []
    for setting in settings(args.lora_r, four_bit=not args.cpu):
        for suffix, sharded in modes:
            if sharded and setting.lora_r:
                continue  # LoRA's trained state is small: replicas
            est = estimate(shape, setting, online_ref=online, kl=online, batch=args.batch_size, length=args.length,
                           answer=args.answer_tokens, gpu=not args.cpu, gpus=args.gpus, sharded=sharded)
            row = [setting.name + suffix, *(f"{est[c] / GIB:.2f}" for c in COMPONENTS), f"{est['total'] / GIB:.2f}"]
            if budget is not None:
                row.append("yes" if est["total"] <= budget else "no")
            rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print("\nGiB per device. reference: a frozen copy for online-reference (KL) methods without LoRA; "
          "cached log-probs and LoRA (adapter off) need none.")
    return 0
