"""The audit as a person reads it: `audit.md` and a self-contained `audit.html` (plots inlined as base64
PNG), both rendered from the same blocks, from manifest.json, results.json and items.json."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np

from npo.audit.bootstrap import nanmean
from npo.audit.verdicts import CRITERIA

ROLE_TITLES = {"before": "before unlearning", "after": "unlearned", "retain": "retain (never saw the items)"}
PROBE_ROWS = {  # measure key -> what it is
    "prob": "answer probability (question as asked)",
    "paraphrase_prob": "answer probability, paraphrased question",
    "jailbreak_prob": "answer probability, jailbreak-style prefix",
    "multiple_choice_share": "multiple choice: share of the true option",
    "multiple_choice_top": "multiple choice: true option ranked first",
    "fill_blank_share": "fill in the blank: share of the true fact",
    "fill_blank_top": "fill in the blank: true fact ranked first",
    "paraphrase_rouge_l": "ROUGE-L, paraphrased question",
    "jailbreak_rouge_l": "ROUGE-L, jailbreak-style prefix",
}
TOFU_ROWS = ("model_utility", "forget_quality", "ks_statistic", "forget_prob", "forget_rouge", "forget_truth_ratio",
             "retain_prob", "retain_rouge", "retain_truth_ratio", "real_authors_prob", "real_authors_rouge",
             "real_authors_truth_ratio", "world_facts_prob", "world_facts_rouge", "world_facts_truth_ratio")


def _f(x, fmt=".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def ci(m: dict | None, fmt: str = ".3f") -> str:
    if not m:
        return ""
    return f"{_f(m['value'], fmt)} [{_f(m['lo'], fmt)}, {_f(m['hi'], fmt)}]"


def _model_line(rec: dict) -> str:
    run = rec.get("run")
    text = f"`{rec['path']}`; {rec['kind']} model, weights sha256 `{rec['weights_sha256']}` ({len(rec['files'])} files hashed)"
    if rec.get("adapter_base"):
        text += f"; LoRA adapter on `{rec['adapter_base']}`"
    if run:
        cfg = run.get("config") or {}
        how = f"npo unlearn, method {cfg.get('method')}" if cfg.get("forget") else "npo finetune"
        text += (f"; made by {how} (`{run['dir']}`, config.yaml sha256 `{run['config_sha256'][:16]}...`, "
                 f"seed {run.get('seed')})")
    return text


def blocks(record: dict, results: dict) -> list[tuple]:
    req, fi, env = record["request"], record["forget_items"], record["environment"]
    ov = results["overall"]
    models = record["models"]
    b: list[tuple] = [("h1", f"Deletion audit: request {req['id']}")]
    b.append(("p", f"**Verdict: {ov['status'].upper()}** — {len(ov['passed'])} criteria passed, {len(ov['failed'])} "
                   f"failed{' (' + ', '.join(ov['failed']) + ')' if ov['failed'] else ''}, "
                   f"{len(ov['not_applicable'])} not applicable. Reference for \"never trained on the items\": "
                   f"{results['reference']}. Created {record['created']}."))
    b.append(("p", "Check it: `npo verify AUDIT_DIR` recomputes every hash and number below; `sha256sum -c SHA256SUMS` "
                   "checks the files without npo. The audit's own hash is the SHA-256 of `SHA256SUMS`."))
    link = record["lineage"]["previous"]
    rows = [["request", f"`{req['path']}` (sha256 `{req['sha256'][:16]}...`), benchmark {req['benchmark']}, split "
                        f"`{req['forget_split']}`" + "".join(f"; {k}: {v}" for k, v in req["metadata"].items())],
            ["forget items", f"{fi['n']} items, rows {_rows(fi['items'])} of `{fi['source']}`; set sha256 "
                             f"`{fi['set_sha256']}`"],
            ["holdout items", f"{record['holdout']['n']} items of `{record['holdout']['source']}`, never trained on"],
            *[[f"model {ROLE_TITLES[r]}", _model_line(m)] for r, m in models.items()],
            ["tokenizer", f"same for all models (fingerprint `{models['before']['tokenizer_fingerprint'][:16]}...`)"],
            ["previous audit", f"`{link['path']}` (request '{link['request_id']}', audit sha256 `{link['audit_sha256']}`)"
                               if link else "none: the first audit of this model lineage"],
            ["revert", record["lineage"]["revert"]["how"]],
            ["software", f"npo {env['packages'].get('npo')} (git {env.get('git_revision') or 'n/a'}"
                         f"{', uncommitted changes' if env.get('git_dirty') else ''}), torch {env['torch']}, "
                         f"transformers {env['transformers']}, on {env['device']} ({env['dtype']})"]]
    b += [("h2", "What was removed, from which model"), ("table", ["", ""], rows),
          ("p", f"Item hashes: {record['normalisation']}.")]
    b += [("h2", "Verdicts"),
          ("table", ["criterion", "verdict", "rule", "numbers"],
           [[v["title"], v["status"].upper(), v["rule"], v["detail"]] for v in results["verdicts"]]),
          ("img", "criteria.png", "each criterion's value (dot) against its reference interval (bar)")]
    b += tofu_blocks(results)
    b += probe_blocks(results, record)
    b += [("h2", "Distributions"), ("img", "mia_scores.png", "LOSS scores of forget and holdout answers")]
    b += [("h2", "Settings"), ("p", ", ".join(f"{k} {v}" for k, v in record["settings"].items()))]
    return b


def _rows(items: list[dict]) -> str:
    rows = [i["row"] for i in items]
    return ", ".join(map(str, rows)) if len(rows) <= 12 else f"{', '.join(map(str, rows[:10]))}, ... ({len(rows)})"


def tofu_blocks(results: dict) -> list[tuple]:
    tofu = results["tofu"]
    roles = [r for r in ("before", "after", "retain") if r in tofu]
    rows = [[name.replace("_", " ")] + [ci(tofu[r].get(name), ".3g" if name == "forget_quality" else ".3f")
                                        for r in roles] for name in TOFU_ROWS if any(name in tofu[r] for r in roles)]
    n = next(iter(tofu[roles[0]].values()))["n_resamples"]
    return [("h2", "TOFU metrics (95% bootstrap intervals)"),
            ("table", ["metric", *(ROLE_TITLES[r] for r in roles)], rows),
            ("p", f"Each interval: {n} resamples of the items (seeded), percentiles 2.5 and 97.5. Model Utility "
                  "resamples the three utility sets together. Forget Quality is a p-value (KS test of the forget "
                  "truth ratios against the retain model's): its interval, with the forget items resampled in pairs "
                  "for both models, shows how far it would move with another draw of as many items; it is not an "
                  "interval for a true parameter, and with n items the KS statistic moves in steps of 1/n.")]


def probe_blocks(results: dict, record: dict) -> list[tuple]:
    m = results["measures"]
    roles = [r for r in ("before", "after", "retain") if f"{r}.auc.min_k" in m]
    head = ["forget items", *(ROLE_TITLES[r] for r in roles), "unlearned, on holdout items"]
    rows = [[what, *(ci(m.get(f"{r}.forget.{key}")) for r in roles), ci(m.get(f"after.holdout.{key}"))]
            for key, what in PROBE_ROWS.items() if f"after.forget.{key}" in m]
    for bits in record["settings"]["quant_bits"]:
        if f"after.forget.q{bits}_prob" in m:
            rows.append([f"answer probability, {bits}-bit weights", *(ci(m.get(f"{r}.forget.q{bits}_prob")) for r in roles),
                         ci(m.get(f"after.holdout.q{bits}_prob"))])
    out = [("h2", "Probes"), ("table", head, rows)]
    attacks = {"loss": "LOSS", "zlib": "zlib", "min_k": "Min-K%", "min_k_pp": "Min-K%++"}
    out += [("h3", "Membership inference (AUC, forget vs holdout; 0.5 = indistinguishable)"),
            ("table", ["attack", *(ROLE_TITLES[r] for r in roles)],
             [[name, *(ci(m[f"{r}.auc.{a}"]) for r in roles)] for a, name in attacks.items()]
             + [[f"share of forget answers below the holdout's {record['settings']['tail']:.0%} quantile",
                 *(ci(m[f"{r}.trace"]) for r in roles)]])]
    if "after.held.relearned_prob" in m:
        rl = [["held-back forget items, before relearning", ci(m.get("after.held.prob")), ci(m.get("retain.held.prob")),
               ci(m.get("before.held.prob"))],
              ["held-back forget items, after relearning", ci(m.get("after.held.relearned_prob")),
               ci(m.get("retain.held.relearned_prob")), ""],
              ["holdout items, after relearning", ci(m.get("after.holdout.relearned_prob")),
               ci(m.get("retain.holdout.relearned_prob")), ""],
              ["fraction of the removed probability recovered", ci(m.get("after.recovered"), ".2f"), "", ""]]
        s = record["settings"]
        out += [("h3", f"Relearning ({s['relearn_epochs']} epochs at lr {s['relearn_lr']:g} on "
                       f"{s['relearn_fraction']:.0%} of the forget items; probabilities)"),
                ("table", ["", "unlearned", "retain (control)", "before unlearning"], rl)]
    return out


# ----------------------------------------------------------------------------- rendering

def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in [head, *rows]]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in esc[1:])]


def markdown(bl: list[tuple]) -> str:
    lines: list[str] = []
    for kind, *rest in bl:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "table":
            lines += [*_md_table(*rest), ""]
        elif kind == "img":
            lines += [f"![{rest[1]}]({rest[0]})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
         "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
         "vertical-align:top;text-align:left}th{background:#f4f4f4}code{font-size:.85em;word-break:break-all}"
         "td:nth-child(2){white-space:nowrap}img{max-width:100%}")


def to_html(bl: list[tuple], images: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(bl[0][1])}</title>"
             f"<style>{STYLE}</style></head><body>"]
    for kind, *rest in bl:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{_inline(rest[0])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(rest[0])}</p>")
        elif kind == "table":
            head, rows = rest
            parts.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
        elif kind == "img" and rest[0] in images:
            data = base64.b64encode(images[rest[0]]).decode("ascii")
            parts.append(f"<p><img alt='{html.escape(rest[1])}' src='data:image/png;base64,{data}'></p>")
    return "".join(parts) + "</body></html>\n"


# ----------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_criteria(results: dict, path: Path) -> None:
    rows = [v for v in results["verdicts"] if v["status"] != "n/a" and v.get("value") is not None]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2))
    for y, v in enumerate(rows[::-1]):
        ref = v.get("reference")
        if ref and ref.get("lo") is not None:
            ax.plot([ref["lo"], ref["hi"]], [y, y], color="0.7", lw=6, solid_capstyle="butt")
        if v.get("threshold") is not None:
            ax.plot([v["threshold"]], [y], "|", color="0.3", ms=14, mew=2)
        colour = {"pass": "tab:green", "fail": "tab:red"}[v["status"]]
        ax.plot([v["value"]], [y], "o", color=colour)
    ax.set_yticks(range(len(rows)), [CRITERIA[v["criterion"]].title for v in rows[::-1]], fontsize=8)
    ax.set_xlabel("value (dot: unlearned model; bar: reference 95% interval; tick: threshold)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(items: dict, path: Path) -> None:
    scores = items["scores"]
    plt = _plt()
    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 2.8), squeeze=False)
    for ax, (role, sets) in zip(axes[0], scores.items(), strict=True):
        f = np.array([x for x in sets["forget"]["loss"] if x is not None])
        h = np.array([x for x in sets["holdout"]["loss"] if x is not None])
        bins = np.histogram_bin_edges(np.concatenate([f, h]), bins=20)
        ax.hist(h, bins=bins, alpha=0.6, label=f"holdout (mean {nanmean(h):.2f})")
        ax.hist(f, bins=bins, alpha=0.6, label=f"forget (mean {nanmean(f):.2f})")
        ax.set(title=ROLE_TITLES[role], xlabel="mean token log-prob of the answer")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(directory: Path, record: dict, results: dict, items: dict) -> None:
    plot_criteria(results, directory / "criteria.png")
    plot_scores(items, directory / "mia_scores.png")
    bl = blocks(record, results)
    (directory / "audit.md").write_text(markdown(bl), encoding="utf-8")
    images = {name: (directory / name).read_bytes() for name in ("criteria.png", "mia_scores.png")}
    (directory / "audit.html").write_text(to_html(bl, images), encoding="utf-8")
