"""`npo verify AUDIT_DIR`: recompute an audit's hashes and numbers; exit 1 when anything differs."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.epilog = "Prints one line per check (ok, FAIL or skip); exit code 0 when nothing failed, 1 otherwise."
    parser.add_argument("audit_dir", metavar="AUDIT_DIR")
    parser.add_argument("--model", metavar="AFTER", help="check this copy of the unlearned model instead of the "
                                                         "recorded path")
    parser.add_argument("--rescore", action="store_true", help="also load the unlearned model and recompute its "
                                                               "losses on the forget answers")


def main(args) -> int:
    from npo.audit.verify import FAIL, verify_audit
    from npo.runtime import setup_logging

    setup_logging()
    lines = verify_audit(args.audit_dir, model=args.model, rescore=args.rescore)
    for status, line in lines:
        print(f"{status:<4}  {line}")
    failed = sum(status == FAIL for status, _ in lines)
    print(f"{'FAILED' if failed else 'verified'}: {len(lines) - failed} of {len(lines)} checks passed"
          + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0
