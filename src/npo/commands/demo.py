"""`npo demo`: the whole pipeline offline on the built-in testbed, with a report."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--methods", help="comma-separated methods (default: npo_rt,npo,ga,ga_rt; quick: npo_rt,ga)")
    parser.add_argument("--forget-split", help="forgetXX (default: forget10)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: 3; quick: 1)")
    parser.add_argument("--quick", action="store_true", help="one seed, two methods, a smaller testbed: ~2 minutes")
    parser.add_argument("--workers", type=int, help="jobs side by side, one thread each (default: one per core, at "
                                                    "most 4); the numbers do not depend on it")


def main(args) -> int:
    from npo.demo.run import run_demo, settings_from_args

    settings = settings_from_args(args.quick, args.methods, args.forget_split, args.seeds)
    report = run_demo(args.out, settings, workers=args.workers)
    print(f"report: {report}")
    return 0
