"""TOFU metrics (hand-computed values), the official log format, and `npo metrics`.

Hand values use losses that are logs of powers of two, so every probability is a simple fraction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from npo.cli import main as cli_main
from npo.errors import NpoError
from npo.eval import metrics as M
from npo.eval.logs import (
    LOG_FILES,
    SET_NAMES,
    EvalLog,
    apply_protocol,
    load_log_dir,
    parse_log,
    read_log,
    write_log,
    write_log_dir,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
RETAIN_LOGS = SHARED / "data" / "tofu_retain_logs"
L2, L4, L8 = math.log(2), math.log(4), math.log(8)

# r_i = p(para) / geometric mean p(perturbed):
#   item 0: p(para) = 1/2, perturbed 1/2 and 1/8 -> gm 1/4 -> r = 2   (arithmetic mean 5/16 would give 1.6)
#   item 1: p(para) = 1/4, perturbed 1/2 and 1/2 -> gm 1/2 -> r = 1/2
#   item 2: p(para) = 1/4, perturbed 1/4 and 1/4 -> r = 1
PARA = [L2, L4, L4]
PERTURB = [[L2, L8], [L2, L2], [L4, L4]]


def tiny_log(source: str = "<memory>", n: int = 3) -> EvalLog:
    return parse_log({
        "avg_gt_loss": [L2, L4, L2][:n], "avg_paraphrased_loss": PARA[:n],
        "average_perturb_loss": PERTURB[:n], "rougeL_recall": [1.0, 0.5, 0.0][:n],
        "rouge1_recall": [1.0, 1.0, 0.5][:n], "generated_text": [["q", "g", "a"]] * n,
    }, source)


# ---------------------------------------------------------------- pure metrics, by hand

def test_probability_is_mean_length_normalised_probability():
    assert M.item_probabilities([L2, L4]) == pytest.approx([0.5, 0.25])
    assert M.probability([L2, L4]) == pytest.approx(0.375)  # (1/2 + 1/4) / 2


def test_probability_normalised_against_perturbed_answers():
    # item 0: 1/2 / (1/2 + 1/4 + 1/4 + 1/2) = 1/3;  item 1: 1/4 / (1/4 + 1/4 + 1/2 + 1/4) = 1/5
    perturbed = [[L4, L4, L2], [L4, L2, L4]]
    assert M.probability([L2, L4], perturbed) == pytest.approx((1 / 3 + 1 / 5) / 2)


def test_truth_ratio_uses_geometric_mean():
    assert M.truth_ratios(PARA, PERTURB) == pytest.approx([2.0, 0.5, 1.0])


def test_truth_ratio_scores():
    r = [2.0, 0.5, 1.0]
    assert M.truth_ratio_score(r, forget=True) == pytest.approx(2 / 3)  # min(r, 1/r): 1/2, 1/2, 1
    assert M.truth_ratio_score(r, forget=False) == pytest.approx(1 / 6)  # max(0, 1-1/r): 1/2, 0, 0
    # a collapsed model: r = 0 or inf stays finite
    assert M.truth_ratio_score([0.0, math.inf], forget=True) == 0.0
    assert M.truth_ratio_score([0.0, math.inf], forget=False) == pytest.approx(0.5)


def test_rouge_and_model_utility_by_hand():
    assert M.rouge([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    # 9 / (3 * (1 + 2 + 4)) = 3/7
    assert M.model_utility([1, 0.5, 0.25] * 3) == pytest.approx(3 / 7)
    with pytest.raises(NpoError, match="9 numbers"):
        M.model_utility([1, 0.5])


def test_forget_quality_is_ks_pvalue():
    assert M.forget_quality([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    # D = 1 with 3 vs 3 samples: exact p = 2 / C(6, 3) = 0.1
    assert M.forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)


def test_rouge_recalls_stemmed_recall_against_answer():
    r1, rl = M.rouge_recalls(["The cats sat on the mat", "sat the cat"], ["cat sat", "cat sat"])
    assert r1 == pytest.approx([1.0, 1.0])  # "cats" stems to "cat"; recall ignores the extra words
    assert rl == pytest.approx([1.0, 0.5])  # longest common subsequence of "sat the cat" and "cat sat": 1
    with pytest.raises(NpoError, match="2 generations but 1 answers"):
        M.rouge_recalls(["a", "b"], ["a"])


def test_tofu_metrics_from_four_logs():
    logs = {name: tiny_log(name) for name in SET_NAMES}
    out = M.tofu_metrics(logs)
    assert set(M.METRIC_NAMES) <= set(out) and len(M.METRIC_NAMES) == 12
    assert out["retain_prob"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    # item probabilities 1/2, 1/4, 1/2 over sums with their perturbed answers
    ra = (0.5 / (0.5 + 0.5 + 0.125) + 0.25 / (0.25 + 1.0) + 0.5 / (0.5 + 0.5)) / 3
    assert out["real_authors_prob"] == pytest.approx(ra)
    assert out["world_facts_rouge"] == pytest.approx(0.5)
    assert out["forget_truth_ratio"] == pytest.approx(2 / 3)
    assert out["retain_truth_ratio"] == pytest.approx(1 / 6)
    utility = [out[k] for k in M.UTILITY_METRICS]
    assert out["model_utility"] == pytest.approx(len(utility) / sum(1 / v for v in utility))
    assert out["items"] == {name: 3 for name in SET_NAMES}
    assert out["forget_quality"] is None and "retain" in out["forget_quality_reason"]
    assert M.tofu_metrics(logs, {"forget": tiny_log()})["forget_quality"] == pytest.approx(1.0)


def test_forget_quality_count_mismatch_names_counts_and_files():
    logs = {name: tiny_log(f"run/{name}.json") for name in SET_NAMES}
    with pytest.raises(NpoError, match=r"3 items \(run/forget.json\).*2 \(ref/forget.json\)"):
        M.tofu_metrics(logs, {"forget": tiny_log("ref/forget.json", n=2)})


# ---------------------------------------------------------------- log format

def test_round_trip_list_and_dict_variants(tmp_path):
    log = tiny_log()
    for variant in ("list", "dict"):
        path = write_log(log, tmp_path / variant / "eval_log.json", variant=variant)
        raw = json.loads(path.read_text())
        assert isinstance(raw["avg_gt_loss"], list if variant == "list" else dict)
        back = read_log(path)
        assert back.columns == log.columns and back.source == str(path)


def test_dict_variant_is_ordered_by_integer_index():
    values = {str(i): float(i) for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)}
    log = parse_log({"avg_gt_loss": values, "avg_paraphrased_loss": values,
                     "average_perturb_loss": {k: [v] for k, v in values.items()}, "rougeL_recall": values})
    assert log["avg_gt_loss"] == [float(i) for i in range(11)]


def test_foreign_files_extra_keys_ignored_optional_keys_optional():
    log = parse_log({"avg_gt_loss": [L2], "avg_paraphrased_loss": [L2], "average_perturb_loss": [[L2]],
                     "rougeL_recall": [1.0], "some_other_tool": {"x": 1}})
    assert "some_other_tool" not in log and "generated_text" not in log and len(log) == 1


@pytest.mark.parametrize("obj, message", [
    ({"avg_gt_loss": [1.0], "average_perturb_loss": [[1.0]], "rougeL_recall": [1.0]},
     "missing required key 'avg_paraphrased_loss'"),
    ({"avg_gt_loss": [1.0, 2.0], "avg_paraphrased_loss": [1.0], "average_perturb_loss": [[1.0]],
      "rougeL_recall": [1.0]}, "'avg_paraphrased_loss' has 1 items"),
    ({"avg_gt_loss": [1.0, 2.0], "avg_paraphrased_loss": [1.0, 2.0], "average_perturb_loss": [[1.0], [1, 2]],
      "rougeL_recall": [1.0, 1.0]}, "item 1: 2 perturbed answers"),
    ({"avg_gt_loss": ["x"], "avg_paraphrased_loss": [1.0], "average_perturb_loss": [[1.0]],
      "rougeL_recall": [1.0]}, "'avg_gt_loss', item 0: not a number"),
    ({"avg_gt_loss": {"a": 1.0}, "avg_paraphrased_loss": [1.0], "average_perturb_loss": [[1.0]],
      "rougeL_recall": [1.0]}, "not item indices"),
    ([1, 2], "expected a JSON object"),
])
def test_invalid_logs_name_file_and_key(obj, message):
    with pytest.raises(NpoError, match="bad.json: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_log(obj, "bad.json")


def test_malformed_json_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "eval_log.json"
    bad.write_text('{"avg_gt_loss": [1.0,')
    with pytest.raises(NpoError, match=f"{bad}: malformed JSON"):
        read_log(bad)
    with pytest.raises(NpoError, match="nope.json: file not found"):
        read_log(tmp_path / "nope.json")


def test_load_log_dir_lists_every_missing_file(tmp_path):
    write_log_dir({"retain": tiny_log(), "forget": tiny_log()}, tmp_path)
    with pytest.raises(NpoError, match="eval_real_author_wo_options.json.*eval_real_world_wo_options.json"):
        load_log_dir(tmp_path)
    assert set(load_log_dir(tmp_path, sets=("forget",))) == {"forget"}
    with pytest.raises(NpoError, match="not a directory"):
        load_log_dir(tmp_path / "absent")


def test_protocols():
    logs = {"forget": tiny_log()}
    assert len(apply_protocol(logs, "full")["forget"]) == 3
    big = parse_log({k: v * 200 for k, v in tiny_log().columns.items()})
    assert len(apply_protocol({"forget": big}, "legacy300")["forget"]) == 300
    with pytest.raises(NpoError, match="unknown protocol"):
        apply_protocol(logs, "ds400")


# ---------------------------------------------------------------- published retain-model logs

needs_logs = pytest.mark.skipif(not RETAIN_LOGS.is_dir(), reason=f"{RETAIN_LOGS} absent (shared data)")


@needs_logs
@pytest.mark.parametrize("split, utility", [("retain90", 0.6203), ("retain95", 0.6176), ("retain99", 0.6220)])
def test_model_utility_of_published_retain_logs(split, utility):
    """These logs are the NPO authors' copies (licong-lin/negative-preference-optimization,
    TOFU/data/retainXX_llama_wd0.01, 300-item protocol). SPEC quotes MU 0.6137 for the retain90 model;
    these files give 0.6203 under SPEC's formulas, with either protocol and with every variant of them
    tried (arithmetic truth ratio, paraphrased losses for Probability, rouge1, ...): 0.6137 must come from
    another retain90 run's logs (locuslab/tofu's retain90 logs hold different per-item values)."""
    logs = load_log_dir(RETAIN_LOGS / f"llama2-7b_{split}")
    for protocol in ("full", "legacy300"):
        out = M.tofu_metrics(apply_protocol(logs, protocol), apply_protocol(logs, protocol))
        assert round(out["model_utility"], 4) == utility
        assert out["forget_quality"] == pytest.approx(1.0)  # a model against itself


@needs_logs
def test_published_retain90_components():
    out = M.tofu_metrics(load_log_dir(RETAIN_LOGS / "llama2-7b_retain90"))
    assert out["items"] == {"retain": 300, "real_authors": 100, "world_facts": 117, "forget": 300}
    got = np.round([out[k] for k in M.METRIC_NAMES], 4)
    assert got.tolist() == [0.9898, 0.9822, 0.4719, 0.4445, 0.918, 0.5868,
                            0.4187, 0.9088, 0.5468, 0.1436, 0.3984, 0.6694]


# ---------------------------------------------------------------- `npo metrics`

@needs_logs
def test_command_json(capsys):
    d = RETAIN_LOGS / "llama2-7b_retain90"
    assert cli_main(["metrics", str(d), "--json", "--retain-logs", str(d)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["model_utility"], 4) == 0.6203 and out["forget_quality"] == pytest.approx(1.0)
    assert out["protocol"] == "full" and out["items"]["forget"] == 300 and out["retain_forget_items"] == 300
    assert set(M.METRIC_NAMES) <= set(out)


def test_command_table_without_retain_logs(tmp_path, capsys):
    write_log_dir({name: tiny_log() for name in SET_NAMES}, tmp_path, variant="dict")
    assert cli_main(["metrics", str(tmp_path), "--protocol", "legacy300"]) == 0
    text = capsys.readouterr().out
    assert "Model Utility" in text and "Forget Quality  n/a (no retain-model" in text
    assert "protocol legacy300" in text
    assert cli_main(["metrics", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["forget_quality"] is None and out["forget_quality_reason"]


def test_command_bad_dirs_exit_2(tmp_path, capsys):
    assert cli_main(["metrics", str(tmp_path / "absent")]) == 2
    assert "npo metrics: error:" in capsys.readouterr().err
    assert cli_main(["metrics", str(tmp_path)]) == 2
    assert "missing TOFU eval log(s): eval_log.json (retain)" in capsys.readouterr().err
    write_log_dir({name: tiny_log() for name in SET_NAMES}, tmp_path / "run")
    write_log_dir({"forget": tiny_log(n=2)}, tmp_path / "ref")
    assert cli_main(["metrics", str(tmp_path / "run"), "--retain-logs", str(tmp_path / "ref")]) == 2
    err = capsys.readouterr().err
    assert "3 items" in err and "has 2" in err and str(tmp_path / "ref") in err


def test_log_file_names_are_the_official_ones():
    assert LOG_FILES == {"retain": "eval_log.json", "real_authors": "eval_real_author_wo_options.json",
                         "world_facts": "eval_real_world_wo_options.json", "forget": "eval_log_forget.json"}
