"""`npo demo --quick` end to end (shared fixture): every file of the report, every number finite."""

import json
import math

from npo.demo_report import numbers_in


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
