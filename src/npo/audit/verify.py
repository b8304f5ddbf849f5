"""`verify_audit`: recompute every hash and every deterministic number of an audit directory.

Checks, one line each: the audit's files against SHA256SUMS; every file of every model (the unlearned
one at `model` when given, e.g. the copy that is deployed); the forget items and data files; the
request file; the chain of previous audits; the metrics, intervals and verdicts recomputed from
items.json and the eval logs; audit.md re-rendered. With `rescore`, the unlearned model is loaded
and its forget-answer losses recomputed. A data file that is absent is skipped, not failed: the
forget data may itself have been deleted; its hashes stay in the manifest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from npo.audit import chain, manifest
from npo.errors import NpoError

OK, FAIL, SKIP = "ok", "FAIL", "skip"


def _compare(a, b, path: str = "") -> str | None:
    """The first place where two JSON values differ (numbers within 1e-9 relative), else None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}{k} (present in only one)"
            diff = _compare(a[k], b[k], f"{path}{k}.")
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path[:-1]} (lengths {len(a)} and {len(b)})"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = _compare(x, y, f"{path}{i}.")
            if diff:
                return diff
        return None
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return None if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else f"{path[:-1]} ({b} recomputed, {a} recorded)"
    return None if a == b else f"{path[:-1]} ({b!r} recomputed, {a!r} recorded)"


def _items(record: dict) -> list[tuple[str, str]]:
    fi = record["forget_items"]
    src = Path(fi["source"])
    if not src.is_file():
        return [(SKIP, f"forget items: {src} absent; their {fi['n']} hashes stay in the manifest")]
    from npo.data.qa import load_file

    try:
        recs = load_file(src)
    except NpoError as err:
        return [(FAIL, f"forget items: {err}")]
    lines = []
    for item in fi["items"]:
        r = item["row"]
        if r > len(recs):
            lines.append((FAIL, f"forget item row {r} of {src}: no longer in the file"))
        elif manifest.item_sha256(recs[r - 1].question, recs[r - 1].answer) != item["sha256"]:
            lines.append((FAIL, f"forget item row {r} of {src}: changed (its normalised question and answer hash "
                                "differs from the manifest)"))
    return lines or [(OK, f"forget items: all {fi['n']} rows of {src} hash as recorded")]


def _files(record: dict) -> list[tuple[str, str]]:
    out = []
    for name, f in [("request", {"path": record["request"]["path"], "sha256": record["request"]["sha256"]}),
                    *record["data_files"].items()]:
        p = Path(f["path"])
        if not p.is_file():
            out.append((SKIP, f"data {name}: {p} absent"))
        elif manifest.file_sha256(p) != f["sha256"]:
            out.append((FAIL, f"data {name}: {p} changed since the audit"))
        else:
            out.append((OK, f"data {name}: {p} matches"))
    return out


def _recompute(directory: Path, record: dict) -> list[tuple[str, str]]:
    from npo.audit.analysis import analyse, jsonable
    from npo.audit.report import blocks, markdown
    from npo.audit.settings import AuditSettings
    from npo.eval.logs import load_log_dir

    s = AuditSettings.from_dict({k: v for k, v in record["settings"].items() if k != "template"})
    items = json.loads((directory / "items.json").read_text(encoding="utf-8"))
    logs = {role: load_log_dir(directory / "eval" / role) for role in items["scores"]}
    recorded = json.loads((directory / "results.json").read_text(encoding="utf-8"))
    again = json.loads(json.dumps(jsonable(analyse(items, logs, s))))
    out = []
    for section, what in (("tofu", "TOFU metrics and intervals"), ("measures", "probe measures and intervals"),
                          ("verdicts", "verdicts"), ("overall", "overall verdict")):
        diff = _compare(recorded.get(section), again[section])
        out.append((FAIL, f"{what}: differ at {section}.{diff}") if diff else
                   (OK, f"{what}: recomputed from items.json and eval/, match"))
    md = markdown(blocks(record, recorded))
    same = (directory / "audit.md").read_text(encoding="utf-8") == md
    out.append((OK, "audit.md: re-rendered, matches") if same else (FAIL, "audit.md: differs from the recorded results"))
    return out


def _rescore(directory: Path, record: dict, model: str | None) -> list[tuple[str, str]]:
    """The unlearned model's per-token loss of each forget answer, recomputed and compared with eval/after."""
    import torch

    from npo.data.qa import load_file
    from npo.eval.logs import read_log
    from npo.eval.scoring import score_texts
    from npo.modeling import load_for_scoring as load

    src = Path(record["forget_items"]["source"])
    if not src.is_file():
        return [(SKIP, f"rescore: forget data {src} absent")]
    recs = load_file(src)
    pairs = [(recs[i["row"] - 1].question, recs[i["row"] - 1].answer) for i in record["forget_items"]["items"]]
    s = record["settings"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m, tok = load(model or record["models"]["after"]["path"], device)
    scores = score_texts(m, tok, s["template"], pairs, s["max_length"], s["batch_size"], device)
    recorded = read_log(directory / "eval" / "after" / "eval_log_forget.json")["avg_gt_loss"]
    worst = max(abs(-scores[p][0] / scores[p][1] - x) for p, x in zip(pairs, recorded, strict=True))
    tol = 1e-4 if device.type == "cpu" else 1e-2
    return [(OK if worst <= tol else FAIL, f"rescore: the unlearned model's forget-answer losses "
                                           f"{'reproduce' if worst <= tol else 'do not reproduce'} "
                                           f"(max |difference| {worst:.2g}, tolerance {tol:g})")]


def verify_audit(directory: str | Path, model: str | Path | None = None, rescore: bool = False
                 ) -> list[tuple[str, str]]:
    """(status, line) per check; status ok, FAIL or skip."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NpoError(f"not a directory: {directory}")
    if not (directory / chain.SUMS).is_file() and not (directory / chain.MANIFEST).is_file():
        raise NpoError(f"{directory}: not an audit directory (no {chain.SUMS}, no {chain.MANIFEST})")
    lines = [(OK if ok else FAIL, f"audit files: {line}") for ok, line in chain.check_sums(directory)]
    try:
        record = chain.load_manifest(directory)
    except NpoError as err:
        return [*lines, (FAIL, f"manifest: {err}")]
    try:
        for role, rec in record["models"].items():
            path = model if role == "after" and model else None
            lines += [(OK if ok else FAIL, f"model {role}: {line}") for ok, line in manifest.check_model_files(rec, path)]
        lines += _items(record)
        lines += _files(record)
        lines += [(OK if ok else FAIL, line) for ok, line in chain.check_chain(directory, record)]
        lines += _recompute(directory, record)
    except (KeyError, TypeError, ValueError, NpoError, json.JSONDecodeError, OSError) as err:
        lines.append((FAIL, f"audit unreadable: {type(err).__name__}: {err}"))
        return lines
    if rescore:
        lines += _rescore(directory, record, str(model) if model else None)
    return lines
