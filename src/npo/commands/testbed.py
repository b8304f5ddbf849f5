"""`npo testbed --out DIR`: write the built-in dataset of fictitious people in the TOFU layout."""

from __future__ import annotations

import argparse

from npo.errors import NpoError


def _percents(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise NpoError(f"--forget-percents must be comma-separated integers, got '{text}'") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("forgetXX holds the last XX% of the people (nested splits), retainYY the rest; "
                     "see the README.md written into DIR. The same arguments give byte-identical files.")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the JSON-lines files to")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--people", type=int, default=100, help="training people (default 100, at least 10)")
    parser.add_argument("--facts", type=int, default=10, help="facts per person (default 10, at most 12)")
    parser.add_argument("--forget-percents", default="1,5,10", metavar="P,P,...",
                        help="forget split sizes in percent of the people (default 1,5,10)")
    parser.add_argument("--holdout-people", type=int, default=10,
                        help="extra people in no training split, for membership inference (default 10)")


def main(args: argparse.Namespace) -> int:
    from npo.testbed.people import build_splits, write_testbed

    kwargs = dict(seed=args.seed, n_people=args.people, facts_per_person=args.facts,
                  forget_percents=_percents(args.forget_percents), n_holdout_people=args.holdout_people)
    out = write_testbed(args.out, **kwargs)
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in build_splits(**kwargs).items())
    print(f"wrote the testbed to {out}: {sizes}")
    return 0
