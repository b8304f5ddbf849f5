"""A small TOFU-layout subset of TOFU itself, for studies sized to a CPU: k forget authors and 9k
retain authors, so the forget set is 10% as in forget10.

TOFU publishes paraphrased and perturbed answers for its last 20 authors (forget10_perturbed) and
its first ~20 (retain_perturbed) only, so the forget authors are the last k of TOFU and the retain
authors the first 9k; the utility sets (real authors, world facts) keep their first `eval_items`
rows, and the retain-side evaluation the first `eval_items` of retain_perturbed.
"""

from __future__ import annotations

import json
from pathlib import Path

from npo.data.qa import load_lines, load_qa
from npo.errors import NpoError

PER_AUTHOR = 20


def _write(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records), encoding="utf-8")


def tofu_subset(src: str | Path, out: Path, forget_authors: int = 1, eval_items: int = 20) -> Path:
    """Write the subset into `out` (TOFU layout: full, forget10, retain90, forget10_perturbed,
    retain_perturbed, real_authors/world_facts and their _perturbed files, idontknow.jsonl)."""
    src = Path(src)
    if not 1 <= forget_authors <= 2:
        raise NpoError(f"--subset takes 1 or 2 forget authors (TOFU's perturbed answers cover authors "
                       f"180-199 and retain_perturbed about the first 20), got {forget_authors}")
    full = load_qa(src, "full")
    if len(full) % PER_AUTHOR:
        raise NpoError(f"{src}: 'full' has {len(full)} rows, not 20 per author as TOFU")
    retain_rows = full[:9 * forget_authors * PER_AUTHOR]
    forget_rows = full[-forget_authors * PER_AUTHOR:]
    perturbed = load_qa(src, "forget10_perturbed")[-len(forget_rows):]
    if [r.question for r in perturbed] != [r.question for r in forget_rows]:
        raise NpoError(f"{src}: forget10_perturbed does not end with the last authors of 'full'")
    retain_questions = {r.question for r in retain_rows}
    retain_eval = [r for r in load_qa(src, "retain_perturbed") if r.question in retain_questions][:eval_items]
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "full.json", retain_rows + forget_rows)
    _write(out / "forget10.json", forget_rows)
    _write(out / "retain90.json", retain_rows)
    _write(out / "forget10_perturbed.json", perturbed)
    _write(out / "retain_perturbed.json", retain_eval)
    for name in ("real_authors", "world_facts"):
        _write(out / f"{name}_perturbed.json", load_qa(src, f"{name}_perturbed")[:eval_items])
        _write(out / f"{name}.json", load_qa(src, name)[:eval_items])
    (out / "idontknow.jsonl").write_text("\n".join(load_lines(src / "idontknow.jsonl")) + "\n", encoding="utf-8")
    return out
