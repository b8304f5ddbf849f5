"""The audit's pure parts against independent computations: item and file hashes against hashlib on
hand-written canonical bytes, bootstrap intervals against a naive loop with the same generator and a
closed form, verdict rules on hand-made measures, the format-shift probes and request checks by hand."""

import hashlib
import json
import math
import re
import zlib

import numpy as np
import pytest

from helpers import write_jsonl, write_tofu_layout
from npo.audit import manifest
from npo.audit.analysis import tail_share, tofu_section
from npo.audit.bootstrap import bootstrap
from npo.audit.request import load_request
from npo.audit.settings import AuditSettings
from npo.audit.verdicts import CRITERIA, judge, overall
from npo.data.qa import QARecord
from npo.errors import NpoError
from npo.probes import formats

# ----------------------------------------------------------------------------- hashes


def test_item_hash_is_sha256_of_the_documented_canonical_bytes():
    # NFC composes "a" + U+0301 into U+00E1; whitespace runs become one space; the ends are stripped
    q, a = " Where  was\tAna\u0301 born?\n", "She was born in  Lisbon. "
    canonical = '{"answer":"She was born in Lisbon.","question":"Where was Aná born?"}'.encode()
    assert manifest.item_canonical(q, a) == canonical
    assert manifest.item_sha256(q, a) == hashlib.sha256(canonical).hexdigest()
    assert manifest.item_sha256(q, a) == manifest.item_sha256("Where was Aná born?", "She was born in Lisbon.")
    assert manifest.item_sha256(q, a) != manifest.item_sha256(q.lower(), a)  # case is kept
    h = ["b" * 64, "a" * 64]
    assert manifest.set_sha256(h) == manifest.set_sha256(h[::-1]) == hashlib.sha256(
        ("a" * 64 + "\n" + "b" * 64 + "\n").encode()).hexdigest()


def test_file_and_listing_hashes_match_hashlib_and_sha256sum_format(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"\x00\x01weights")
    (tmp_path / "sub" / "tokenizer.json").write_text("{}")
    hw, ht = hashlib.sha256(b"\x00\x01weights").hexdigest(), hashlib.sha256(b"{}").hexdigest()
    files = manifest.tree_files(tmp_path)
    assert files == {"sub/tokenizer.json": ht, "w.safetensors": hw}
    text = f"{ht}  sub/tokenizer.json\n{hw}  w.safetensors\n"  # what `sha256sum` prints, sorted by path
    assert manifest.listing(files) == text
    assert manifest.listing_sha256(files) == hashlib.sha256(text.encode()).hexdigest()
    assert manifest.parse_listing(text, "x") == files
    assert [manifest.file_kind(p) for p in sorted(files)] == ["tokenizer", "weights"]


# ----------------------------------------------------------------------------- bootstrap


def naive_percentile(values, q):
    """Linear interpolation between order statistics, written out."""
    v = sorted(values)
    pos = q / 100 * (len(v) - 1)
    lo = math.floor(pos)
    return v[lo] + (pos - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def naive_auc(m, n):
    return sum((a > b) + 0.5 * (a == b) for a in m for b in n) / (len(m) * len(n))


def test_bootstrap_mean_matches_a_naive_loop_with_the_same_generator():
    x = np.random.default_rng(1).normal(size=37)
    got = bootstrap(lambda i: float(x[i["forget"]].mean()), {"forget": 37}, name="m", seed=7, n_resamples=300)
    rng = np.random.default_rng([7, zlib.crc32(b"m")])
    means = []
    for _ in range(300):
        idx = rng.integers(0, 37, size=37)
        means.append(sum(x[j] for j in idx) / 37)
    assert got.value == pytest.approx(sum(x) / 37)
    assert got.lo == pytest.approx(naive_percentile(means, 2.5), abs=1e-12)
    assert got.hi == pytest.approx(naive_percentile(means, 97.5), abs=1e-12)
    assert got.n_finite == 300


def test_bootstrap_two_groups_draws_in_sorted_group_order():
    rng0 = np.random.default_rng(3)
    members, nonmembers = rng0.normal(0.5, 1, 12), rng0.normal(0, 1, 9)
    from npo.probes.mia import auroc

    got = bootstrap(lambda i: auroc(members[i["forget"]], nonmembers[i["holdout"]]),
                    {"holdout": 9, "forget": 12}, name="auc", seed=0, n_resamples=200)
    rng = np.random.default_rng([0, zlib.crc32(b"auc")])
    aucs = []
    for _ in range(200):
        f = rng.integers(0, 12, size=12)  # "forget" sorts before "holdout"
        h = rng.integers(0, 9, size=9)
        aucs.append(naive_auc(members[f], nonmembers[h]))
    assert got.value == pytest.approx(naive_auc(members, nonmembers))
    assert (got.lo, got.hi) == pytest.approx((naive_percentile(aucs, 2.5), naive_percentile(aucs, 97.5)), abs=1e-12)


def test_bootstrap_interval_of_a_mean_is_close_to_the_normal_closed_form():
    x = np.random.default_rng(5).normal(2.0, 3.0, size=400)
    got = bootstrap(lambda i: float(x[i["g"]].mean()), {"g": 400}, name="n", seed=0, n_resamples=2000)
    half = 1.96 * x.std(ddof=1) / math.sqrt(400)  # 0.29 here
    assert got.lo == pytest.approx(x.mean() - half, abs=0.04) and got.hi == pytest.approx(x.mean() + half, abs=0.04)


def test_paired_resampling_and_non_finite_resamples():
    x = np.arange(10.0)
    same = bootstrap(lambda i: float(x[i["f"]].mean() - x[i["f"]].mean()), {"f": 10}, name="d", seed=0, n_resamples=50)
    assert (same.lo, same.hi) == (0.0, 0.0)
    nan_half = bootstrap(lambda i: float("nan") if i["f"][0] < 5 else 1.0, {"f": 10}, name="h", seed=0, n_resamples=100)
    assert 0 < nan_half.n_finite < 100 and nan_half.lo == nan_half.hi == 1.0


def test_tail_share_by_hand():
    holdout = np.arange(21.0)  # 5% quantile = 1.0 (linear: position 0.05 * 20 = 1)
    assert tail_share(np.array([0.5, 0.9, 1.0, 3.0]), holdout, 0.05) == 0.5


# ----------------------------------------------------------------------------- verdicts


def iv(value, lo, hi, **extra):
    return {"value": value, "lo": lo, "hi": hi, **extra}


def hand_measures(after_prob=0.05):
    m = {}
    for key in ("prob", "paraphrase_prob", "jailbreak_prob", "multiple_choice_share", "fill_blank_share",
                "q4_prob"):
        m[f"after.forget.{key}"] = iv(after_prob, after_prob - 0.01, after_prob + 0.01)
        m[f"retain.forget.{key}"] = iv(0.10, 0.08, 0.12)
        m[f"after.holdout.{key}"] = iv(0.02, 0.01, 0.03)
    m["after.auc.min_k"], m["retain.auc.min_k"] = iv(0.62, 0.45, 0.80), iv(0.55, 0.40, 0.70)
    m["after.trace"], m["retain.trace"] = iv(0.3, 0.1, 0.5, binomial_p=0.01), iv(0.1, 0.0, 0.2, binomial_p=0.4)
    m["after.held.relearned_prob"], m["retain.held.relearned_prob"] = iv(0.2, 0.1, 0.3), iv(0.15, 0.1, 0.25)
    m["after.holdout.relearned_prob"] = iv(0.05, 0.04, 0.06)
    m["after.recovered"] = iv(0.3, 0.1, 0.5)
    return m


def hand_tofu():
    return {"after": {"model_utility": iv(0.50, 0.45, 0.55), "forget_quality": iv(0.07, 0.01, 0.4)},
            "before": {"model_utility": iv(0.60, 0.52, 0.66)}, "retain": {"model_utility": iv(0.58, 0.49, 0.63)}}


def by_name(found):
    return {v["criterion"]: v["status"] for v in found}


def test_verdict_rules_against_the_retain_model():
    s = AuditSettings(quant_bits=(8, 4))
    got = by_name(judge(hand_measures(), hand_tofu(), s, has_retain=True))
    assert set(got) == set(CRITERIA)
    assert got["forget_quality"] == "pass"  # 0.07 >= 0.05
    assert got["model_utility"] == "pass"  # 0.50 >= 0.49, the retain model's lower end
    for name in ("probability", "paraphrase", "multiple_choice", "fill_blank", "jailbreak", "quantization"):
        assert got[name] == "pass"  # 0.05 <= 0.12
    assert got["membership"] == "pass"  # 0.62 inside [0.40, 0.70]
    assert got["trace"] == "fail"  # 0.3 > 0.2, the retain model's upper end
    assert got["relearning"] == "pass"  # 0.2 <= 0.25
    assert got["relearning_recovery"] == "fail"  # 0.3 >= 0.25
    high = by_name(judge(hand_measures(after_prob=0.125), hand_tofu(), s, has_retain=True))
    assert high["probability"] == high["jailbreak"] == "fail"  # 0.125 > 0.12
    tofu = hand_tofu()
    tofu["after"]["model_utility"] = iv(0.48, 0.4, 0.5)
    tofu["after"]["forget_quality"] = iv(0.049, 0.0, 0.2)
    got = by_name(judge(hand_measures(), tofu, s, has_retain=True))
    assert got["model_utility"] == "fail" and got["forget_quality"] == "fail"


def test_verdict_rules_against_holdout_items():
    m = hand_measures()
    tofu = hand_tofu()
    del tofu["retain"], tofu["after"]["forget_quality"]
    found = judge(m, tofu, AuditSettings(), has_retain=False)
    got = by_name(found)
    assert got["forget_quality"] == "n/a"
    assert got["model_utility"] == "fail"  # 0.50 < 0.52, the lower end before unlearning
    assert got["probability"] == "fail"  # 0.05 > 0.03, the upper end on holdout items
    assert got["membership"] == "pass"  # 0.5 inside [0.45, 0.80]
    assert got["trace"] == "fail"  # binomial p 0.01 < 0.05
    assert got["relearning"] == "fail"  # 0.2 > 0.06
    m["after.auc.min_k"] = iv(0.3, 0.2, 0.45)
    assert by_name(judge(m, tofu, AuditSettings(), has_retain=False))["membership"] == "fail"
    ov = overall(found)
    assert ov["status"] == "fail" and "probability" in ov["failed"] and ov["not_applicable"] == ["forget_quality"]
    skipped = by_name(judge(m, tofu, AuditSettings(probes=("quant",)), has_retain=False))
    assert skipped["paraphrase"] == skipped["relearning"] == "n/a" and skipped["quantization"] == "fail"


def test_trace_binomial_p_by_hand():
    from scipy.stats import binomtest

    # P(X >= 3), X ~ Binomial(10, 0.05) = 1 - sum_{k<3} C(10,k) 0.05^k 0.95^(10-k)
    p = 1 - sum(math.comb(10, k) * 0.05 ** k * 0.95 ** (10 - k) for k in range(3))
    assert binomtest(3, 10, 0.05, alternative="greater").pvalue == pytest.approx(p)


def test_tofu_section_point_values_equal_npo_eval_metrics():
    from npo.eval.metrics import tofu_metrics

    rng = np.random.default_rng(0)

    def log(n):
        return {"avg_gt_loss": list(rng.uniform(0.1, 3, n)), "avg_paraphrased_loss": list(rng.uniform(0.1, 3, n)),
                "average_perturb_loss": [list(rng.uniform(0.1, 3, 3)) for _ in range(n)],
                "rougeL_recall": list(rng.uniform(0, 1, n))}

    logs = {r: {"retain": log(9), "real_authors": log(5), "world_facts": log(6), "forget": log(8)}
            for r in ("before", "after", "retain")}
    got = tofu_section(logs, AuditSettings(resamples=20))
    want = tofu_metrics(logs["after"], {"forget": logs["retain"]["forget"]})
    for key in ("model_utility", "forget_quality", "forget_truth_ratio", "real_authors_prob", "retain_rouge"):
        assert got["after"][key]["value"] == pytest.approx(want[key], rel=1e-12)
        assert got["after"][key]["lo"] <= got["after"][key]["hi"]


# ----------------------------------------------------------------------------- format-shift probes


def rec(answer, para, wrong, q="Where was Ana Varga born?"):
    return QARecord(q, answer, para, None, tuple(wrong))


def test_fill_blank_blanks_where_the_wrong_answers_differ():
    r = rec("Ana Varga was born in Lisbon.", "The birthplace of Ana Varga is Lisbon.",
            ["The birthplace of Ana Varga is Oslo.", "The birthplace of Ana Varga is Quito.",
             "The birthplace of Ana Varga is Lisbon."])  # a "wrong" answer equal to the true one is dropped
    assert formats.true_sentence(r) == r.paraphrased_answer  # the wrong answers perturb the paraphrase
    c = formats.fill_blank(r)
    assert c.question == "Fill in the blank: The birthplace of Ana Varga is ___"
    assert c.options == ("Lisbon.", "Oslo.", "Quito.") and c.true == 0
    mid = formats.blank("In 1990 she won the prize.", ["In 1984 she won the prize.", "In 1971 she won the prize."])
    assert mid == ("In", "she won the prize.", "1990", ["1984", "1971"])
    assert formats.blank("Lisbon.", ["Oslo."]) is None  # nothing frames the blank
    assert formats.fill_blank(rec("x", None, [])) is None


def test_multiple_choice_options_and_shares_by_hand():
    r = rec("Ana Varga was born in Lisbon.", None,
            ["Ana Varga was born in Oslo.", "Ana Varga was born in Quito.", "Ana Varga was born in Lima.",
             "Ana Varga was born in Riga."])
    c = formats.multiple_choice(r, seed=0)
    assert len(c.options) == 4 and c.options[c.true] == r.answer and set(c.options) - {r.answer} <= set(r.perturbed_answer)
    assert formats.multiple_choice(r, seed=0) == c  # seeded
    assert "A. " in c.question and "D. " in c.question and c.question.startswith(r.question)
    # per-token probabilities: the true option exp(-1/2) (log-prob -1 over 2 tokens), the wrong ones
    # exp(-1), exp(-2), exp(-3) (one token each)
    wrong = [o for o in c.options if o != r.answer]
    scores = {(c.question, r.answer): (-1.0, 2), **{(c.question, o): (-float(k + 1), 1) for k, o in enumerate(wrong)}}
    share, top = formats.shares(scores, [c, None])
    p = [math.exp(-0.5), math.exp(-1), math.exp(-2), math.exp(-3)]
    assert share[0] == pytest.approx(p[0] / sum(p)) and top[0] == 1.0
    scores[(c.question, wrong[0])] = (-0.1, 1)  # now a wrong option is the most probable
    assert formats.shares(scores, [c])[1][0] == 0.0
    assert math.isnan(share[1]) and math.isnan(top[1])
    assert formats.jailbreak(r).question == formats.JAILBREAK_PREFIX + r.question


# ----------------------------------------------------------------------------- requests


@pytest.fixture()
def layout(tmp_path):
    return write_tofu_layout(tmp_path / "data")


def request_file(tmp_path, **kw):
    obj = {"id": "r1", "benchmark": "tofu", "data": "data", "forget_split": "forget10", **kw}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(obj))
    return path


def test_request_resolves_rows_and_items_by_normalised_text(layout, tmp_path):
    first = json.loads((layout / "forget10.json").read_text().splitlines()[0])
    messy = {"question": "  " + first["question"].replace(" ", "  "), "answer": first["answer"] + "\n"}
    req = load_request(request_file(tmp_path, items=[3, messy]))
    assert req.rows == [2, 0] and req.records[1].perturbed_answer  # taken from forget10_perturbed
    assert req.hashes[1] == manifest.item_sha256(first["question"], first["answer"])
    assert len(load_request(request_file(tmp_path)).rows) == 6  # items default to the whole split
    write_jsonl(tmp_path / "items.jsonl", [first])
    assert load_request(request_file(tmp_path, items_file="items.jsonl")).rows == [0]


@pytest.mark.parametrize("kw, message", [
    ({"items": [{"question": "Who is Nobody?", "answer": "No one."}]}, "items[0]: the item (question 'Who is Nobody?') is not in the forget split"),
    ({"items": [7]}, "items[0]: row 7 is not in the forget split (rows 1 to 6)"),
    ({"items": [1, 1]}, "items[1]: row 1 of the forget split is named twice"),
    ({"itemz": "all"}, "unknown key 'itemz' (did you mean 'items'?)"),
    ({"benchmark": "muse"}, "benchmark 'muse' cannot be audited"),
    ({"forget_split": "forget99"}, "no split 'forget99'"),
])
def test_bad_requests_are_refused_with_the_place(layout, tmp_path, kw, message):
    with pytest.raises(NpoError, match=re.escape(message)):
        load_request(request_file(tmp_path, **kw))


def test_docs_state_every_verdict_rule_and_probe():
    from pathlib import Path

    from npo.audit.settings import PROBES

    text = (Path(__file__).resolve().parents[1] / "docs" / "audit.md").read_text()
    assert all(f"| `{name}` |" in text for name in CRITERIA)
    assert all(CRITERIA[c].probe in PROBES for c in CRITERIA if CRITERIA[c].probe)
    example = manifest.item_canonical(" Where  was\tAna born? ", "Lisbon.").decode()  # the docs' worked example
    assert example == '{"answer":"Lisbon.","question":"Where was Ana born?"}' and f"`{example}`" in text
