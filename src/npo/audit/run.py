"""`run_audit`: one deletion request audited end to end, written atomically into one directory.

    AUDIT_DIR/manifest.json   what was audited: item, file, model and tokenizer hashes, runs, environment,
                              settings, the chain link to the previous audit
              items.json      per-item numbers of every probe and model (no forget text by default)
              eval/ROLE/      the TOFU eval logs of each model (official format)
              results.json    metrics with bootstrap intervals, verdicts, overall verdict
              audit.md, audit.html, *.png   the report
              SHA256SUMS      every file above; its SHA-256 is the audit's hash

Everything is written into a temporary directory next to AUDIT_DIR and renamed at the end, so an
error leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from npo.audit import chain, manifest
from npo.audit.analysis import analyse, jsonable
from npo.audit.collect import Context, collect_model, relearn_items
from npo.audit.request import Request, load_request
from npo.audit.settings import AuditSettings, check
from npo.errors import NpoError

log = logging.getLogger("npo")
FORMAT = "npo-audit/1"
EVAL_SPLITS = {"retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
               "world_facts": "world_facts_perturbed"}


def _tokenizers(paths: dict[str, str]) -> dict[str, str]:
    """Each model's tokenizer fingerprint; models whose tokenizers differ are refused."""
    from npo.modeling import load_tokenizer

    prints = {role: manifest.tokenizer_fingerprint(load_tokenizer(p)) for role, p in paths.items()}
    for role, fp in prints.items():
        if fp != prints["before"]:
            raise NpoError(f"the {role} model ({paths[role]}) has a different tokenizer from the model before "
                           f"unlearning ({paths['before']}): vocabulary, special tokens or chat template differ")
    return prints


def _revert(records: dict) -> dict:
    """How the request can be undone, and whether an adapter's base is exactly BEFORE."""
    after, before = records["after"], records["before"]
    if after["kind"] != "adapter":
        return {"exact_by_removal": False,
                "how": "the change is merged into the weights: revert by restoring the model before unlearning, "
                       f"whose weights are recorded here (weights sha256 {before['weights_sha256']})"}
    return {"exact_by_removal": True, "adapter_files": sorted(p for p in after["files"]
                                                              if manifest.file_kind(p) == "weights"),
            "how": "the request's change is the LoRA adapter alone; the base weights are those of the model before "
                   "unlearning, unchanged: drop the adapter (or serve the base) to revert exactly"}


def _check_adapter(records: dict, paths: dict[str, str]) -> dict[str, str | None]:
    """role -> base directory of a LoRA adapter; AFTER's base must be BEFORE itself."""
    bases: dict[str, str | None] = {}
    for role, rec in records.items():
        if rec["kind"] != "adapter":
            bases[role] = None
            continue
        base = rec.get("adapter_base")
        if not base or not Path(base).expanduser().is_dir():
            raise NpoError(f"{paths[role]}: a LoRA adapter whose base model '{base}' is not a local directory")
        bases[role] = str(Path(base).expanduser())
    if bases.get("after"):
        base_weights = manifest.model_record(bases["after"])["weights_sha256"]
        if base_weights != records["before"]["weights_sha256"]:
            raise NpoError(f"{paths['after']}: a LoRA adapter on {bases['after']}, whose weights are not those of the "
                           f"model before unlearning ({paths['before']})")
    return bases


def _data_files(req: Request, holdout_source: str) -> dict:
    from npo.data.qa import resolve

    files = {"forget": req.source, "forget_perturbed": str(resolve(req.data, f"{req.forget_split}_perturbed")),
             **{k: str(resolve(req.data, v)) for k, v in EVAL_SPLITS.items()}, "holdout": holdout_source}
    return {k: {"path": str(Path(p).resolve()), "sha256": manifest.file_sha256(p)} for k, p in files.items()}


def _lists(x):
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return [None if not math.isfinite(v) else float(v) for v in x.tolist()]
    return x


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(obj), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _environment(s: AuditSettings) -> dict:
    from npo.modeling import choose_dtype
    from npo.runtime import env_info

    device = _device()
    dtype, _, reason = choose_dtype("auto", device.type)
    env = env_info(s.seed, device, dtype, reason, 1)
    return {**env, **manifest.git_state(), "packages": manifest.package_versions()}


def run_audit(request: str | Path, before: str | Path, after: str | Path, out: str | Path, *,
              retain_model: str | Path | None = None, holdout: str | None = None, previous: str | Path | None = None,
              settings: AuditSettings | None = None, overwrite: bool = False) -> dict:
    """Audit one deletion request; returns {"dir", "audit_sha256", "overall", "verdicts"}."""
    from npo.probes.run import holdout_records

    t0 = time.time()
    s = check(settings or AuditSettings())
    out = Path(out)
    if out.exists() and not overwrite:
        raise NpoError(f"{out} already exists; pass --overwrite to replace it")
    req = load_request(request, holdout)
    holdout_source, holdout_recs = holdout_records(req.data, req.holdout)
    if not Path(holdout_source).is_file():  # a split name in the data directory
        from npo.data.qa import resolve

        holdout_source = str(resolve(req.data, req.holdout))
    holdout_hashes = [manifest.item_sha256(r.question, r.answer) for r in holdout_recs]
    shared = set(holdout_hashes) & set(req.hashes)
    if shared:
        raise NpoError(f"{holdout_source}: {len(shared)} holdout item(s) are also forget items of the request")
    paths = {"before": str(before), "after": str(after), **({"retain": str(retain_model)} if retain_model else {})}
    for role, p in paths.items():
        if not Path(p).expanduser().is_dir():
            raise NpoError(f"the {role} model directory does not exist: {p}")
    prints = _tokenizers(paths)
    records = {role: {**manifest.model_record(p), "tokenizer_fingerprint": prints[role]} for role, p in paths.items()}
    bases = _check_adapter(records, paths)
    prev = Path(previous) if previous else chain.find_previous(out, records["before"]["weights_sha256"])
    link = chain.link_to(prev, records["before"]["weights_sha256"]) if prev else None

    from npo.data.qa import load_qa
    from npo.data.templates import default_template
    from npo.modeling import load_tokenizer

    template = s.template or default_template(load_tokenizer(paths["after"]))
    eval_sets = {"retain": load_qa(req.data, EVAL_SPLITS["retain"]), "forget": req.records,
                 "real_authors": load_qa(req.data, EVAL_SPLITS["real_authors"]),
                 "world_facts": load_qa(req.data, EVAL_SPLITS["world_facts"])}
    ctx = Context(s, template, _device(), eval_sets, {"forget": req.records, "holdout": holdout_recs})

    logs, scores = {}, {}
    for role, p in paths.items():
        logs[role], scores[role] = collect_model(p, role, ctx)
    split = None
    if "relearn" in s.probes:
        if len(req.records) < 2:
            raise NpoError(f"relearning needs at least 2 forget items, the request names {len(req.records)}")
        relearned, split = relearn_items(paths, bases, ctx)
        for role, sets in relearned.items():
            for name, cols in sets.items():
                scores[role][name].update(cols)

    from npo.eval.logs import parse_log

    parsed = {role: {name: parse_log(lg, source=f"eval/{role}/{name}") for name, lg in raw.items()}
              for role, raw in logs.items()}
    items = {"forget": {"n": len(req.records)}, "holdout": {"n": len(holdout_recs)},
             "relearn_split": split, "scores": _lists(scores)}
    items = json.loads(json.dumps(jsonable(items)))  # exactly what verify will read back
    results = analyse(items, parsed, s)

    record = {
        "format": FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "request": {"id": req.id, "path": req.path, "sha256": req.sha256, "benchmark": req.benchmark,
                    "data": str(Path(req.data).resolve()), "forget_split": req.forget_split, "metadata": req.metadata},
        "normalisation": manifest.NORMALISATION,
        "forget_items": {"source": str(Path(req.source).resolve()), "n": len(req.rows),
                         "set_sha256": manifest.set_sha256(req.hashes),
                         "items": [{"row": r + 1, "sha256": h} for r, h in zip(req.rows, req.hashes, strict=True)]},
        "holdout": {"source": str(Path(holdout_source).resolve()), "n": len(holdout_recs),
                    "set_sha256": manifest.set_sha256(holdout_hashes)},
        "data_files": _data_files(req, holdout_source),
        "models": records,
        "lineage": {"previous": link, "revert": _revert(records)},
        "settings": {**s.to_dict(), "template": template},
        "environment": _environment(s),
    }
    return _write(out, record, items, logs, results, s, t0)


def _write(out: Path, record: dict, items: dict, logs: dict, results: dict, s: AuditSettings,
           t0: float) -> dict:
    from npo.audit.report import write_report
    from npo.eval.logs import write_log_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for role, raw in logs.items():
            if not s.include_texts:  # the forget prompts, answers and generations stay out of the record
                raw = {**raw, "forget": {k: v for k, v in raw["forget"].items() if k != "generated_text"}}
            write_log_dir(raw, tmp / "eval" / role)
        write_json(tmp / "manifest.json", record)
        write_json(tmp / "items.json", items)
        write_json(tmp / "results.json", results)
        write_report(tmp, record, results, items)
        digest = chain.write_sums(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("audit written to %s in %.0fs", out, time.time() - t0)
    return {"dir": str(out), "audit_sha256": digest, "overall": results["overall"], "verdicts": results["verdicts"]}
