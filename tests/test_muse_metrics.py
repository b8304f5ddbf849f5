"""MUSE's pure criteria against values derived by hand, naive loops and scipy."""

import math

import numpy as np
import pytest

from npo.eval import muse_metrics as mm
from npo.probes.mia import privleak


def test_rouge_l_f1_unstemmed_target_first():
    # "the cat sat on the mat" vs "the cat on the mat": LCS 5, P = 5/5, R = 5/6, F1 = 10/11 (ROUGE-1 too)
    s = mm.rouge_scores(["the cat sat on the mat"], ["the cat on the mat"])[0]
    assert s["rougeL"] == pytest.approx(10 / 11) and s["rouge1"] == pytest.approx(10 / 11)
    assert s["rougeL_recall"] == pytest.approx(5 / 6)
    # no stemming: "running dogs" shares no token with "run dog" (a stemmer would make it 1.0)
    assert mm.rouge_scores(["running dogs"], ["run dog"])[0]["rougeL"] == 0
    # recall is against the target (first argument): a long output keeps recall 1 and loses precision
    long = mm.rouge_scores(["a b"], ["a b c d e f"])[0]
    assert long["rougeL_recall"] == 1.0 and long["rougeL"] == pytest.approx(2 * (2 / 6) / (1 + 2 / 6))


def test_knowmem_prompt_and_answer_cut():
    prefix = mm.icl_prefix([("Q1?", "A1"), ("Q2?", "A2")])
    assert mm.knowmem_prompt(prefix, "Q3?") == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    assert mm.cut_answer("Velmora, Norvia\n\nQuestion: more") == "Velmora, Norvia"
    assert mm.cut_answer("judge\nQuestion: x") == "judge"
    assert mm.cut_answer("judgeQuestion: x") == "judge"
    assert mm.cut_answer(" a\nb ") == " a\nb "  # nothing stripped


def test_clean_up_spaces_as_transformers_4():
    assert mm.clean_up_spaces("it 's done . Is it ? yes , we do n't") == "it's done. Is it? yes, we don't"


def test_min_k_and_auc_by_hand():
    # token log-probs -1..-5: Min-40% keeps int(5 * 0.4) = 2 lowest, -(-5 - 4) / 2 = 4.5; Min-60%: 3 -> 4.0
    s = mm.min_k_scores([-1.0, -2.0, -3.0, -4.0, -5.0])
    assert s["Min-40%"] == pytest.approx(4.5) and s["Min-60%"] == pytest.approx(4.0)
    # int(5 * 0.05) = 0: MUSE's mean of nothing is NaN; at least one token is kept here
    assert s["Min-5%"] == pytest.approx(5.0)
    # forget scores [1, 2, 3] (label 0), holdout [2, 4] (label 1), ROC on -score: of the 6 pairs a holdout
    # text is more familiar in (2 vs 3) and ties in (2 vs 2): AUC = 1.5 / 6
    assert mm.split_auc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(0.25)
    # PrivLeak against News' retrained AUC: (0.25 - 0.4772) / 0.4772 x 100
    assert privleak(0.25, mm.RETRAIN_AUC["news"]) == pytest.approx(-47.61106454)
    assert (mm.RETRAIN_AUC["news"], mm.RETRAIN_AUC["books"]) == pytest.approx((0.4772, 0.5393))


def test_split_auc_against_a_naive_pair_loop():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=17).round(1), rng.normal(0.5, size=11).round(1)  # rounding makes ties
    wins = sum((-y > -x) + 0.5 * (-y == -x) for x in a for y in b)
    assert mm.split_auc(a, b) == pytest.approx(wins / (len(a) * len(b)))


def test_bootstrap_against_a_naive_resampling_loop_and_scipy():
    values = np.random.default_rng(5).uniform(size=23)
    lo, hi = mm.bootstrap_ci(values, seed=7)
    rng = np.random.default_rng(7)
    means = [values[rng.integers(0, len(values), size=len(values))].mean() for _ in range(9999)]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert lo < values.mean() < hi
    from scipy.stats import bootstrap

    ref = bootstrap((values,), np.mean, confidence_level=0.95, method="percentile", n_resamples=9999,
                    rng=np.random.default_rng(1)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.01) and hi == pytest.approx(ref.high, abs=0.01)


def test_aggregate_keys_as_muse_agg_json():
    items = [{"rougeL": x, "rougeL_recall": x, "rouge1": x, "rouge1_recall": x} for x in (0.0, 0.5, 1.0)]
    agg = mm.aggregate(items)
    assert agg["mean_rougeL"] == pytest.approx(0.5) and agg["max_rouge1"] == 1.0
    assert {f"{k}_ci_lo" for k in mm.ROUGE_KEYS} <= set(agg) and not any(math.isnan(v) for v in agg.values())


def test_reference_auc_sources(tmp_path):
    from npo.errors import NpoError
    from npo.eval.muse import reference_auc

    assert reference_auc("books", str(tmp_path))[0] == mm.RETRAIN_AUC["books"]
    assert reference_auc(None, "hf:muse-bench/MUSE-News")[0] == mm.RETRAIN_AUC["news"]
    auc, reason = reference_auc(None, str(tmp_path))
    assert auc is None and "retain_logs" in reason
    (tmp_path / "summary.json").write_text('{"privleak_auc": 0.31}')
    assert reference_auc(str(tmp_path), "x")[0] == 0.31
    (tmp_path / "summary.json").write_text('{"forget_quality": 0.3}')
    with pytest.raises(NpoError, match="no 'privleak_auc'"):
        reference_auc(str(tmp_path), "x")
