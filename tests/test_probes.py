"""Probes: pure functions by hand, then the probes the quick demo wrote (membership signal,
relearning, quantization) and the `npo probe` command on its models."""

import json
import math

import numpy as np
import pytest
import torch

from npo.probes.mia import attack_scores, auroc, min_k, privleak, zlib_length
from npo.probes.robustness import quantize_rtn, recovered, split_for_relearning


def naive_auc(members, nonmembers):
    pairs = [(a > b) + 0.5 * (a == b) for a in members for b in nonmembers]
    return sum(pairs) / len(pairs)


def test_auroc_matches_naive_pair_count():
    rng = np.random.default_rng(0)
    for _ in range(50):  # small integer scores: many ties, within and across the two groups
        m = rng.integers(0, 6, rng.integers(1, 30)).astype(float)
        n = rng.integers(0, 6, rng.integers(1, 30)).astype(float)
        assert auroc(m, n) == pytest.approx(naive_auc(m, n), abs=1e-12)
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1, 2], [3, 4]) == 0.0 and auroc([1, 1], [1]) == 0.5


def test_min_k_zlib_and_min_k_pp_by_hand():
    assert min_k([-1, -2, -3, -4, -5], 0.4) == -4.5  # the lowest 2 of 5
    assert min_k([-1, -2], 0.2) == -2  # at least one token
    text = "the cat sat on the mat"
    logp = np.array([-0.5, -1.0, -3.0, -0.5])
    mu, sigma = np.array([-1.0, -1.0, -1.0, -1.0]), np.array([1.0, 2.0, 0.5, 1.0])
    s = attack_scores([logp], [mu], [sigma], [text], k=0.5)
    assert s["loss"][0] == pytest.approx(-1.25)
    assert s["zlib"][0] == pytest.approx(-1.25 / zlib_length(text))
    assert s["min_k"][0] == pytest.approx(-2.0)  # mean of -3.0 and -1.0
    assert s["min_k_pp"][0] == pytest.approx(-2.0)  # z = 0.5, 0, -4, 0.5: mean of -4 and 0
    assert privleak(0.6, 0.5) == pytest.approx(20.0)


def test_quantize_rtn_by_hand():
    w = torch.tensor([[0.7, -0.33, 0.12], [0.0, 0.0, 0.0], [-2.1, 0.9, 0.31]])
    # 4 bits: levels -7..7; row scales 0.1 and 0.3; the zero row stays zero
    want4 = torch.tensor([[7, -3, 1], [0, 0, 0], [-7, 3, 1]]) * torch.tensor([[0.1], [0.0], [0.3]])
    assert torch.allclose(quantize_rtn(w, 4), want4, atol=1e-6)
    # 8 bits: levels -127..127, row 0 scale 0.7/127: -0.33 -> -60 steps, 0.12 -> 22 steps
    assert torch.allclose(quantize_rtn(w, 8)[0], torch.tensor([127, -60, 22]) * 0.7 / 127, atol=1e-6)
    assert quantize_rtn(w.to(torch.bfloat16), 4).dtype == torch.bfloat16


def test_relearning_split_and_recovered_fraction():
    learn, held = split_for_relearning(10, 0.5, seed=0)
    assert len(learn) == 5 and sorted(learn + held) == list(range(10))
    assert split_for_relearning(10, 0.5, seed=0) == (learn, held)
    assert recovered(0.1, 0.4, 0.7) == pytest.approx(0.5)
    assert math.isnan(recovered(0.5, 0.6, 0.5)) and math.isnan(recovered(0.5, 0.6, 0.4))


@pytest.fixture(scope="module")
def ga_probes(quick_demo):
    """Every probe of the GA-unlearned model, as the quick demo wrote them (target as reference, and
    the retain model)."""
    return json.loads((quick_demo / "seed0" / "ga" / "probes" / "probes.json").read_text())


def test_membership_signal_target_vs_retain(ga_probes):
    auc = ga_probes["mia"]["auc"]
    assert auc["reference"]["loss"] > 0.9  # the target memorised the forget people (measured: 0.97)
    # the retain model never saw them, but the quick testbed has only 4 forget people against 10 holdout
    # people and one person's items move together, so its AUC is far from a clean 0.5 (measured 0.65
    # and 0.82 on two builds); what must hold is that memorisation adds a clear signal on top of it
    assert auc["reference"]["loss"] - auc["retain"]["loss"] > 0.1
    leak = ga_probes["mia"]["privleak"]["min_k"]
    assert leak == pytest.approx((auc["model"]["min_k"] - auc["retain"]["min_k"]) / auc["retain"]["min_k"] * 100)


def test_relearning_brings_back_part_of_what_ga_removed(ga_probes):
    rl = ga_probes["relearn"]
    assert rl["n_relearn"] + rl["n_heldout"] == ga_probes["forget"]["model"]["n"]
    assert rl["model"]["after"]["prob"] > rl["model"]["before"]["prob"]
    assert set(rl) >= {"reference", "recovered", "retain"}
    para = ga_probes["paraphrase"]
    assert para["n"] + para["skipped"] == ga_probes["forget"]["model"]["n"]


def test_cli_probe_on_target(quick_demo, tmp_path):
    from npo.cli import main

    seed, out = quick_demo / "seed0", tmp_path / "probe"
    args = ["probe", "--model", str(seed / "target" / "model"), "--reference", str(seed / "target" / "model"),
            "--data", str(quick_demo / "data"), "--forget-split", "forget10", "--out", str(out),
            "--template", "qa", "--max-length", "128", "--max-new-tokens", "40", "--batch-size", "64"]
    assert main([*args, "--probes", "mia,quant,paraphrase", "--quant-bits", "8"]) == 0
    result = json.loads((out / "probes.json").read_text())
    assert {"forget", "mia", "quant", "paraphrase"} <= set(result) and "relearn" not in result
    assert result["mia"]["privleak"] is None  # no retain model given
    assert abs(result["quant"]["int8"]["delta_prob"]) < 0.02  # 8 bits barely move an untouched model
    assert (out / "probes.md").read_text().startswith("## Probes")
    assert main([*args, "--probes", "mia,jailbreak"]) == 2
