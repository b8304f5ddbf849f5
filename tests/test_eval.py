"""Model-side TOFU evaluation: every file of `npo eval`, values that agree with the log-prob
function, the trainer's evaluation hook, and refusals."""

import json

import pytest
import torch

from helpers import make_tokenizer, save_tiny_model, write_tofu_layout
from npo.cli import main
from npo.config import build
from npo.data.batches import collate, tokenize_qa
from npo.data.qa import load_qa
from npo.eval.logs import LOG_FILES, load_log_dir
from npo.eval.metrics import METRIC_NAMES
from npo.logprobs import sequence_logprobs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return save_tiny_model(root / "model"), write_tofu_layout(root / "data")


def test_npo_eval_writes_official_logs_and_summary(tiny, tmp_path, capsys):
    model_dir, data = tiny
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(model_dir), "--forget-split", "forget10", "--data", str(data),
                 "--template", "qa", "--max-new-tokens", "8", "--batch-size", "3", "--out", str(out)])
    assert code == 0
    assert "Forget Quality n/a" in capsys.readouterr().out
    for name in [*LOG_FILES.values(), "summary.json", "summary.md"]:
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(METRIC_NAMES) <= set(summary) and summary["protocol"] == "full"
    assert summary["forget_quality"] is None and "retain" in summary["forget_quality_reason"]
    assert summary["items"] == {"retain": 10, "real_authors": 4, "world_facts": 4, "forget": 6}
    # the logged losses are the log-prob function's numbers, item by item
    from transformers import AutoModelForCausalLM

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), make_tokenizer()
    records = load_qa(data, "forget10_perturbed")
    logs = load_log_dir(out)
    with torch.no_grad():
        lp, n = sequence_logprobs(model, collate([tokenize_qa(tok, "qa", r.question, r.answer, 512) for r in records],
                                                 tok.pad_token_id))
    assert logs["forget"]["gt_loss"] == pytest.approx((-lp).tolist(), abs=1e-4)
    assert logs["forget"]["num_token_gt"] == n.long().tolist()
    assert len(logs["forget"]["average_perturb_loss"][0]) == 5
    # real authors / world facts have no paraphrase: the base answer is the answer itself
    ra = logs["real_authors"]
    assert ra["avg_paraphrased_loss"] == pytest.approx(ra["avg_gt_loss"])
    # Forget Quality against our own logs: identical truth ratios give p = 1
    capsys.readouterr()
    assert main(["metrics", str(out), "--retain-logs", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forget_quality"] == pytest.approx(1.0)


def test_eval_refuses_retain_logs_of_another_size(tiny, tmp_path, capsys):
    model_dir, data = tiny
    retain = tmp_path / "retain_logs"
    retain.mkdir()
    log = {"avg_gt_loss": [1.0] * 3, "avg_paraphrased_loss": [1.0] * 3, "average_perturb_loss": [[1.0]] * 3,
           "rougeL_recall": [1.0] * 3}
    (retain / "eval_log_forget.json").write_text(json.dumps(log))
    code = main(["eval", "--model", str(model_dir), "--forget-split", "forget10", "--data", str(data),
                 "--retain-logs", str(retain), "--out", str(tmp_path / "e")])
    assert code == 2
    err = capsys.readouterr().err
    assert "3 items" in err and "6" in err and not (tmp_path / "e").exists()


def test_trainer_hook_evaluates_every_epoch(tiny, tmp_path):
    model_dir, data = tiny
    cfg = build(None, dict(model=str(model_dir), data=str(data), forget="forget10", retain="retain90",
                           method="npo_rt", epochs=2, batch_size=3, lr=1e-3, template="qa", out=str(tmp_path / "run"),
                           eval_every_epochs=1, eval_max_new_tokens=4, warmup_epochs=0))
    import npo

    run = npo.unlearn(cfg)
    history = [json.loads(x) for x in (run / "eval" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["step"] for h in history] == [0, 2, 4]
    assert (run / "eval" / "epoch_02" / "summary.json").exists() and (run / "eval" / "curves.png").exists()
