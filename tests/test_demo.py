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
        assert all(0 <= v <= 1 for row in curve["mu"] for v in row)  # a collapsed model scores 0
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
    data = {"curves": curves, "target_mu": {0: 0.5, 1: 0.5}, "target_fq": {0: 1e-3, 1: 1e-3}}
    assert matched_per_seed(curves["npo_rt"], data, settings) == [0.3, 0.2]
    assert matched_per_seed(curves["ga"], data, settings) == [0.1, 0.05]
    none = {"mu": [[0.5, 0.5], [0.1, 0.1]], "fq": [[0.1, 0.1], [0.9, 0.9]]}
    assert matched_per_seed(none, data, settings) == [None, None]
    text = findings(data, settings)
    assert "beats ga on 2 of 2 seeds (0 tied)" in text
    assert f"geo-mean ratio {math.sqrt(12):.2g}x" in text
    # (0.1 + 0.0) / 2 / 0.5 = 0.1; seed 1 at 0x is collapsed (< 0.2x), seed 0 at exactly 0.2x degraded
    assert "ga at the last epoch keeps 0.1x of the target's Model Utility (collapsed on 1 of 2 seeds, degraded on 1" in text
    # npo_rt: 0.41/0.5 = 0.82 (useful), 0.3/0.5 = 0.6 (degraded); FQ sqrt(0.3 * 0.9) = 0.52, both above 0.05
    assert "npo_rt at the last epoch keeps 0.7x" in text and "(degraded on 1 of 2 seeds, useful on 1 of 2 seeds)" in text
    assert "Forget Quality 0.52, above 0.05 on 2 of 2 seeds" in text
    assert "Forget Quality is 0.001 (geo-mean over seeds; far below 0.05)" in text
    assert findings({**data, "curves": {"ga": curves["ga"]}}, settings) == ""


def test_readme_quotes_the_quick_demos_headline(quick_demo):
    """The README's quick-demo lines are the ones `npo demo --quick` prints at this commit."""
    from pathlib import Path

    report = (quick_demo / "report.md").read_text()
    section = report.split("## What this run shows", 1)[1].split("\n## ", 1)[0]
    lines = [x for x in section.splitlines() if x.startswith("- ")]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert len(lines) >= 4
    missing = [x for x in lines if x not in readme]
    assert not missing, "README's quick-demo lines differ from this run's; paste:\n" + "\n".join(lines)


def test_study_runs_the_pipeline_on_a_given_model_and_data(tmp_path):
    from helpers import save_tiny_model, write_tofu_layout
    from npo.cli import main

    model = save_tiny_model(tmp_path / "base")
    data = write_tofu_layout(tmp_path / "tofu", n_forget=4, n_retain=8)
    (data / "full.json").write_text((data / "retain90.json").read_text() + (data / "forget10.json").read_text())
    out = tmp_path / "study"
    assert main(["study", "--model", str(model), "--data", str(data), "--out", str(out), "--methods", "npo_rt,ga",
                 "--target-epochs", "1", "--unlearn-epochs", "1", "--lora-r", "4", "--workers", "1",
                 "--max-length", "64", "--max-new-tokens", "8", "--target-lr", "1e-3", "--unlearn-lr", "1e-3"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith(f"# npo study: unlearning {data} from {model}")
    for run in ("target", "retain", "npo_rt", "ga"):
        assert (out / "seed0" / run / "done.json").exists(), run
    import yaml

    config = yaml.safe_load((out / "seed0" / "npo_rt" / "config.yaml").read_text())
    assert config["lora_r"] == 4 and config["model"] == str(out / "seed0" / "target" / "model")


def test_tofu_subset_keeps_tofus_perturbed_authors():
    import tempfile

    from helpers import require_tofu
    from npo.data.qa import load_qa
    from npo.demo.subset import tofu_subset

    tofu = require_tofu()
    with tempfile.TemporaryDirectory() as tmp:
        out = tofu_subset(tofu, __import__("pathlib").Path(tmp), forget_authors=1, eval_items=10)
        full = load_qa(tofu, "full")
        assert [r.question for r in load_qa(out, "forget10")] == [r.question for r in full[-20:]]
        assert [r.question for r in load_qa(out, "retain90")] == [r.question for r in full[:180]]
        perturbed = load_qa(out, "forget10_perturbed")
        assert [r.answer for r in perturbed] == [r.answer for r in full[-20:]] and perturbed[0].perturbed_answer
        retain_eval = load_qa(out, "retain_perturbed")
        assert len(retain_eval) == 10 and {r.question for r in retain_eval} <= {r.question for r in full[:180]}
        assert len(load_qa(out, "real_authors_perturbed")) == len(load_qa(out, "world_facts_perturbed")) == 10
