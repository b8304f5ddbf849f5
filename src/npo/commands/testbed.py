"""`npo testbed --out DIR`: write the built-in dataset of fictitious people in the TOFU layout, or
(`--layout muse`) news articles about them in MUSE's layout."""

from __future__ import annotations

import argparse

from npo.errors import NpoError

LAYOUTS = {"tofu": "QA records in TOFU's layout (npo/testbed/people.py)",
           "muse": "news articles in MUSE's layout: raw/, knowmem/, verbmem/, privleak/, scal/, sust/ (npo/testbed/news.py)"}


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
    parser.add_argument("--questions", type=int, default=20, help="questions per person (default 20, the most)")
    parser.add_argument("--forget-percents", default="1,5,10", metavar="P,P,...",
                        help="forget split sizes in percent of the people (default 1,5,10)")
    parser.add_argument("--holdout-people", type=int, default=10,
                        help="extra people in no training split, for membership inference (default 10)")
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="tofu",
                        help="; ".join(f"{k}: {v}" for k, v in LAYOUTS.items()) + " (default: tofu)")
    parser.add_argument("--fold-people", type=int, default=4,
                        help="muse: people per forget fold (4 folds), per retain corpus and in the holdout (default 4)")
    parser.add_argument("--init-model", action="store_true",
                        help="muse: also write DIR/init_model, the testbed's tokenizer and an untrained tiny Llama")


def _muse(args: argparse.Namespace) -> int:
    from npo.testbed.news import build_layout, write_init_model, write_layout

    n = args.fold_people
    kwargs = dict(seed=args.seed, fold_people=n, retain_people=n, holdout_people=n)
    out = write_layout(args.out, **kwargs)
    layout = build_layout(**kwargs)
    sizes = ", ".join(f"{p.removesuffix('.json')} {len(v)}" for p, v in layout.items() if p.endswith(".json"))
    print(f"wrote the MUSE-layout testbed to {out}: {sizes}")
    if args.init_model:
        print(f"untrained tiny model and tokenizer: {write_init_model(out / 'init_model', layout, args.seed)}")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.layout == "muse":
        return _muse(args)
    from npo.testbed.people import build_splits, write_testbed

    kwargs = dict(seed=args.seed, n_people=args.people, questions_per_person=args.questions,
                  forget_percents=_percents(args.forget_percents), n_holdout_people=args.holdout_people)
    out = write_testbed(args.out, **kwargs)
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in build_splits(**kwargs).items())
    print(f"wrote the testbed to {out}: {sizes}")
    return 0
