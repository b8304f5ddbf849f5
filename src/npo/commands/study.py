"""`npo study`: the demo's pipeline on a model and data of your choice: fine-tune the target on all
the data and a retain model on the retain split, unlearn with each method per seed evaluating every
epoch, and write the report (tables over seeds, plots, answers)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the pretrained model to fine-tune (directory or hub id)")
    parser.add_argument("--gguf-file", help="a GGUF file inside --model")
    parser.add_argument("--data", required=True, help="a TOFU-layout directory")
    parser.add_argument("--subset", type=int, metavar="K",
                        help="study K of TOFU's forget authors and 9K of its retain authors (a 10%% forget set) "
                             "instead of the whole of --data")
    parser.add_argument("--eval-items", type=int, default=20,
                        help="with --subset: items kept of retain_perturbed, real authors, world facts (default 20)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--methods", default="npo_rt,ga_rt,ga,npo,idk_rt", help="comma-separated methods")
    parser.add_argument("--forget-split", default="forget10", help="forgetXX of --data (default forget10)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    parser.add_argument("--template", default="qa", help="prompt format (default qa)")
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank for fine-tuning and unlearning (0: full)")
    parser.add_argument("--target-epochs", type=int, default=5)
    parser.add_argument("--target-lr", type=float, default=1e-3)
    parser.add_argument("--unlearn-epochs", type=int, default=5)
    parser.add_argument("--unlearn-lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--protocol", choices=["full", "legacy300"], default="full",
                        help="TOFU protocol: every item (full) or the first 300 with the official caps (legacy300)")
    parser.add_argument("--probes", action="store_true", help="also probe every final model (slow)")
    parser.add_argument("--audit", action="store_true",
                        help="also npo audit the first method's model (needs holdout*.json in --data: non-members)")
    parser.add_argument("--workers", type=int, help="jobs side by side (default: one per core, at most 4)")


def main(args) -> int:
    from dataclasses import replace

    from npo.demo.run import DemoSettings, run_demo
    from npo.demo.subset import tofu_subset
    from npo.errors import NpoError
    from npo.methods import METHODS

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise NpoError(f"unknown method(s) {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    data = args.data
    if args.subset:
        data = str(tofu_subset(args.data, Path(args.out) / "data", args.subset, args.eval_items))
    if args.subset and args.forget_split != "forget10":
        raise NpoError("--subset studies a 10% forget set: leave --forget-split at forget10")
    # dtype auto: fp32 on a CPU; on a bf16 GPU fp32 master weights under bf16 autocast (LoRA: a bf16 base)
    lora = {"dtype": "auto", **({"lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r} if args.lora_r else {})}
    settings = replace(
        DemoSettings(), seeds=tuple(range(args.seeds)), methods=methods, base_model=args.model,
        gguf_file=args.gguf_file, data=data, forget_split=args.forget_split, train_extra=(), template=args.template,
        max_length=args.max_length,
        target_epochs=args.target_epochs, target_lr=args.target_lr, target_batch=args.batch_size,
        unlearn_epochs=args.unlearn_epochs, unlearn_lr=args.unlearn_lr, unlearn_batch=args.batch_size,
        max_new_tokens=args.max_new_tokens, probes=args.probes, audit=args.audit, eval_batch=16, protocol=args.protocol,
        finetune=lora, unlearn=lora)
    report = run_demo(args.out, settings, workers=args.workers)
    print(f"report: {report}")
    return 0
