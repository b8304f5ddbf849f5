"""`npo audit`: a verifiable record of one deletion request, with intervals and verdicts (docs/audit.md)."""

from __future__ import annotations

from npo.audit.settings import PROBES, AuditSettings
from npo.data.templates import TEMPLATES

_D = AuditSettings()


def add_arguments(parser) -> None:
    parser.epilog = ("REQUEST.json names the benchmark, the data, the forget split and the items to forget "
                     "(docs/audit.md). Writes AUDIT_DIR atomically; `npo verify AUDIT_DIR` checks it.")
    parser.add_argument("--request", required=True, metavar="REQUEST.json", help="the deletion request")
    parser.add_argument("--model", required=True, metavar="BEFORE", help="the model before unlearning (a directory)")
    parser.add_argument("--unlearned", required=True, metavar="AFTER", help="the unlearned model (a directory; "
                        "RUN/model of an npo run, or a LoRA adapter saved with save_merged=false)")
    parser.add_argument("--retain-model", metavar="R", help="a model trained without the forget items: the reference "
                        "for every verdict (default: holdout items never trained on)")
    parser.add_argument("--holdout", metavar="H", help="items no model was trained on: a file or a split name in the "
                        "request's data (default: the request's 'holdout', else the one holdout*.json there)")
    parser.add_argument("--previous", metavar="PREV_AUDIT_DIR", help="the audit of the request before this one "
                        "(default: a sibling of AUDIT_DIR whose unlearned model is BEFORE, if any)")
    parser.add_argument("--out", required=True, metavar="AUDIT_DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing AUDIT_DIR")
    parser.add_argument("--probes", default=",".join(PROBES),
                        help="comma-separated optional probes: " + "; ".join(f"{k}: {v}" for k, v in PROBES.items()))
    parser.add_argument("--template", choices=TEMPLATES, help="prompt format (default: the tokenizer's)")
    parser.add_argument("--max-length", type=int, default=_D.max_length)
    parser.add_argument("--max-new-tokens", type=int, default=_D.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=_D.batch_size)
    parser.add_argument("--resamples", type=int, default=_D.resamples, help="bootstrap resamples per interval")
    parser.add_argument("--seed", type=int, default=_D.seed)
    parser.add_argument("--quant-bits", default=",".join(map(str, _D.quant_bits)), help="comma-separated bit widths")
    parser.add_argument("--relearn-fraction", type=float, default=_D.relearn_fraction)
    parser.add_argument("--relearn-epochs", type=int, default=_D.relearn_epochs)
    parser.add_argument("--relearn-lr", type=float, default=_D.relearn_lr,
                        help=f"default {_D.relearn_lr:g} (real models); the testbed's tiny models need ~3e-4")
    parser.add_argument("--relearn-batch-size", type=int, default=_D.relearn_batch_size)
    parser.add_argument("--include-texts", action="store_true",
                        help="keep the forget questions, answers and generations in the audit (off: numbers only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for the relearning fine-tune (e.g. lora_r=16)")


def settings_from_args(args) -> AuditSettings:
    from npo.audit.settings import check
    from npo.config import parse_overrides
    from npo.errors import NpoError

    try:
        bits = tuple(int(b) for b in args.quant_bits.split(",") if b.strip())
    except ValueError:
        raise NpoError(f"--quant-bits must be comma-separated integers, got '{args.quant_bits}'") from None
    return check(AuditSettings(
        template=args.template, max_length=args.max_length, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, probes=tuple(p.strip() for p in args.probes.split(",") if p.strip()),
        quant_bits=bits, relearn_fraction=args.relearn_fraction, relearn_epochs=args.relearn_epochs,
        relearn_lr=args.relearn_lr, relearn_batch_size=args.relearn_batch_size,
        relearn_overrides=parse_overrides(args.overrides), resamples=args.resamples, seed=args.seed,
        include_texts=args.include_texts))


def main(args) -> int:
    from npo.audit.run import run_audit
    from npo.runtime import setup_logging

    setup_logging()
    result = run_audit(args.request, args.model, args.unlearned, args.out, retain_model=args.retain_model,
                       holdout=args.holdout, previous=args.previous, settings=settings_from_args(args),
                       overwrite=args.overwrite)
    ov = result["overall"]
    print(f"verdict {ov['status'].upper()}: {len(ov['passed'])} passed, {len(ov['failed'])} failed"
          + (f" ({', '.join(ov['failed'])})" if ov["failed"] else "") + f", {len(ov['not_applicable'])} n/a")
    print(f"audit {result['dir']}: sha256 {result['audit_sha256']} (of SHA256SUMS); report {result['dir']}/audit.html")
    return 0
