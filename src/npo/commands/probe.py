"""`npo probe`: membership-inference and robustness probes of an unlearned model (docs/probes.md)."""

from __future__ import annotations

from npo.data.templates import TEMPLATES
from npo.eval.mcq import CONVENTIONS


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the unlearned model (directory or hub id)")
    parser.add_argument("--reference", required=True, help="the model before unlearning")
    parser.add_argument("--retain-model", help="a model trained without the forget set (for PrivLeak and the "
                                               "relearning control)")
    parser.add_argument("--forget-split", help="e.g. forget10 (required without --mcq)")
    parser.add_argument("--data", help="TOFU-layout directory holding the forget split (required without --mcq)")
    parser.add_argument("--mcq", metavar="TASK", help="probe multiple-choice accuracy instead (relearn, quant): "
                                                      "any `npo eval --benchmark mcq` data, e.g. a WMDP file")
    parser.add_argument("--mcq-convention", choices=tuple(CONVENTIONS), default="current",
                        help="with --mcq: the lm-eval version's prompt and BOS (see npo eval --help)")
    parser.add_argument("--limit", type=int, help="with --mcq: only the first N questions of each subject")
    parser.add_argument("--holdout", help="non-members for mia: a file or a split name in --data "
                                          "(default: the one holdout*.json in --data)")
    parser.add_argument("--out", required=True, help="output directory for probes.json and probes.md")
    parser.add_argument("--probes", help="comma-separated subset of mia,relearn,quant,paraphrase (default: all; "
                                         "with --mcq: relearn,quant)")
    parser.add_argument("--template", choices=TEMPLATES,
                        help="prompt format (default: chat if the tokenizer has a template, else qa)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--k", type=float, default=0.2, help="Min-K%% fraction of lowest tokens (default 0.2)")
    parser.add_argument("--relearn-fraction", type=float, default=0.5, help="share of the forget set relearned")
    parser.add_argument("--relearn-epochs", type=int, default=2)
    parser.add_argument("--relearn-lr", type=float, default=1e-5)
    parser.add_argument("--relearn-batch-size", type=int, default=8)
    parser.add_argument("--quant-bits", default="8,4", help="comma-separated bit widths (default 8,4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-relearned", action="store_true", help="keep the relearned models' weights")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for the relearning fine-tune (e.g. lora_r=16 dtype=bfloat16)")


def main(args) -> int:
    from npo.config import parse_overrides
    from npo.errors import NpoError
    from npo.probes.run import PROBES, check_probes, run_probes
    from npo.runtime import setup_logging

    setup_logging()
    if args.mcq:
        return _main_mcq(args)
    if not args.forget_split or not args.data:
        raise NpoError("--forget-split and --data are required (or --mcq TASK for multiple-choice probes)")
    if args.limit or args.mcq_convention != "current":
        raise NpoError("--limit and --mcq-convention apply to --mcq only")
    probes = check_probes(args.probes or PROBES)
    if min(args.max_length, args.max_new_tokens, args.batch_size, args.relearn_epochs, args.relearn_batch_size) <= 0:
        raise NpoError("--max-length, --max-new-tokens, --batch-size, --relearn-epochs and --relearn-batch-size "
                       "must be positive")
    bits = _bits(args.quant_bits)
    result = run_probes(
        args.model, args.reference, args.data, args.forget_split, args.out, retain_model_dir=args.retain_model,
        holdout=args.holdout, probes=probes, template=args.template, max_length=args.max_length,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, k=args.k,
        relearn_fraction=args.relearn_fraction, relearn_epochs=args.relearn_epochs, relearn_lr=args.relearn_lr,
        relearn_batch_size=args.relearn_batch_size, relearn_overrides=parse_overrides(args.overrides),
        keep_relearned=args.keep_relearned, quant_bits=bits, seed=args.seed)
    print(f"probes ({', '.join(result['probes'])}) in {result['elapsed_s']:.0f}s: {args.out}/probes.json, "
          f"{args.out}/probes.md")
    return 0


def _bits(text: str) -> tuple[int, ...]:
    from npo.errors import NpoError

    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise NpoError(f"--quant-bits must be comma-separated integers, got '{text}'") from None


def _main_mcq(args) -> int:
    from npo.config import parse_overrides
    from npo.errors import NpoError
    from npo.probes.mcq import PROBES, run_mcq_probes

    if args.forget_split or args.data or args.holdout:
        raise NpoError("--mcq replaces --forget-split, --data and --holdout")
    if min(args.max_length, args.batch_size, args.relearn_epochs, args.relearn_batch_size, args.limit or 1) <= 0:
        raise NpoError("--max-length, --batch-size, --relearn-epochs, --relearn-batch-size and --limit must be positive")
    result = run_mcq_probes(
        args.model, args.reference, args.mcq, args.out, retain_model_dir=args.retain_model,
        probes=args.probes or PROBES, mcq_convention=args.mcq_convention, limit=args.limit,
        max_length=args.max_length, batch_size=args.batch_size, relearn_fraction=args.relearn_fraction,
        relearn_epochs=args.relearn_epochs, relearn_lr=args.relearn_lr, relearn_batch_size=args.relearn_batch_size,
        relearn_overrides=parse_overrides(args.overrides), keep_relearned=args.keep_relearned,
        quant_bits=_bits(args.quant_bits), seed=args.seed)
    print(f"mcq probes ({', '.join(result['probes'])}) in {result['elapsed_s']:.0f}s: {args.out}/probes.json, "
          f"{args.out}/probes.md")
    return 0
