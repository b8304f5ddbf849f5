"""`npo demo --quick` end to end (shared fixture): every file of the report, every number finite."""

import json
import math

from npo.demo.report import numbers_in


def test_quick_demo_report(quick_demo):
    report = (quick_demo / "report.md").read_text()
    for name in ("curves.png", "tradeoff.png", "results.json", "settings.json"):
        assert (quick_demo / name).stat().st_size > 0, name
    for heading in ("fixed stopping rule", "an oracle", "matched utility", "before and after"):
        assert heading in report
    assert "nan" not in report.lower() and "inf " not in report.lower()
    assert len(numbers_in(report)) > 20 and all(math.isfinite(x) for x in numbers_in(report))
    results = json.loads((quick_demo / "results.json").read_text())
    for curve in results["curves"].values():
        assert len(curve["epoch"]) == len(curve["mu"]) == len(curve["fq"]) >= 2
        assert all(0 < v <= 1 for row in curve["mu"] for v in row)
        assert all(v is not None and 0 <= v <= 1 for row in curve["fq"] for v in row)


def test_quick_demo_runs_the_whole_pipeline(quick_demo):
    seed = quick_demo / "seed0"
    for run in ("target", "retain", "npo_rt", "ga"):
        assert (seed / run / "model" / "model.safetensors").exists(), run
        assert (seed / run / "done.json").exists(), run
    assert (seed / "retain" / "eval" / "eval_log_forget.json").exists()
    history = [json.loads(x) for x in (seed / "npo_rt" / "eval" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(len(history)))


def test_demo_refuses_bad_arguments(capsys):
    from npo.cli import main

    assert main(["demo", "--methods", "npo_rt,forget_everything", "--out", "/tmp/npo-never"]) == 2
    assert "forget_everything" in capsys.readouterr().err
    assert main(["demo", "--forget-split", "forget200", "--out", "/tmp/npo-never"]) == 2


def test_matched_utility_and_findings_on_hand_made_curves():
    """Two seeds, epochs 0-2, target MU 0.5 on both (0.8x floor = 0.4). By hand: npo_rt keeps MU >= 0.4 at
    epochs 1 and 2 on seed 0 (best FQ 0.3) and only at epoch 1 on seed 1 (0.2); ga keeps it at epoch 1
    on both (0.1, 0.05). Wins 2 of 2; geo-mean ratio sqrt(0.3 * 0.2) / sqrt(0.1 * 0.05) = sqrt(12)."""
    from npo.demo.report import findings, matched_per_seed
    from npo.demo.run import DemoSettings

    settings = DemoSettings(seeds=(0, 1), methods=("npo_rt", "ga"))
    curves = {
        "npo_rt": {"mu": [[0.5, 0.5], [0.45, 0.42], [0.41, 0.3]], "fq": [[1e-3, 1e-3], [0.1, 0.2], [0.3, 0.9]]},
        "ga": {"mu": [[0.5, 0.5], [0.42, 0.45], [0.1, 0.0]], "fq": [[1e-3, 1e-3], [0.1, 0.05], [0.8, 0.9]]},
    }
    data = {"curves": curves, "target_mu": {0: 0.5, 1: 0.5}}
    assert matched_per_seed(curves["npo_rt"], data, settings) == [0.3, 0.2]
    assert matched_per_seed(curves["ga"], data, settings) == [0.1, 0.05]
    none = {"mu": [[0.5, 0.5], [0.1, 0.1]], "fq": [[0.1, 0.1], [0.9, 0.9]]}
    assert matched_per_seed(none, data, settings) == [None, None]
    text = findings(data, settings)
    assert "beats ga on 2 of 2 seeds (0 tied)" in text
    assert f"geo-mean ratio {math.sqrt(12):.2g}x" in text
    assert "ga at the last epoch keeps 0.10x" in text and "(collapsed)" in text  # (0.1 + 0.0) / 2 / 0.5
    assert findings({**data, "curves": {"ga": curves["ga"]}}, settings) == ""
