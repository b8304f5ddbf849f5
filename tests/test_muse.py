"""The MUSE path end to end on the MUSE-layout testbed: unlearn NPO+RT on raw text with the training-time
hook, `npo eval --benchmark muse`, and four chained deletion requests; every criterion is recomputed
here from the logs and the model (rouge_score directly, naive greedy decoding, naive token log-probs,
Min-K% and AUC by loops, PrivLeak by hand, bootstrap by a resampling loop)."""

import json
import math

import numpy as np
import pytest
import torch
from rouge_score.rouge_scorer import RougeScorer

from npo.cli import main

N_NEW = 10  # new tokens for VerbMem and KnowMem (a cap on MUSE's 128 and 32)
COMMON = ["--lr", "1e-3", "--batch-size", "8", "--epochs", "1", "data_format=text", "max_length=64",
          "dtype=float32", "warmup_epochs=0", "eval_benchmark=muse", f"eval_max_new_tokens={N_NEW}"]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("muse")
    assert main(["testbed", "--layout", "muse", "--out", str(root / "data"), "--fold-people", "1", "--init-model"]) == 0
    return root


@pytest.fixture(scope="module")
def unlearned(bed):
    data, run = bed / "data", bed / "npo_rt"
    assert main(["unlearn", "--model", str(data / "init_model"), "--data", str(data), "--method", "npo_rt",
                 "--forget", "forget", "--retain", "retain1", "--out", str(run), *COMMON, "eval_every_epochs=1"]) == 0
    return run


def _model(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def _greedy(model, tok, prompt: str, n: int) -> str:
    """Token by token, batch of one, no cache: the independent path to the logged generations."""
    ids = tok(prompt)["input_ids"]
    new = []
    for _ in range(n):
        nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        new.append(nxt)
        if nxt == tok.eos_token_id:
            break
    return _clean(tok.decode(new, skip_special_tokens=True))


def _clean(text: str) -> str:
    """transformers 4's clean_up_tokenization, which MUSE's decode applied."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


@torch.no_grad()
def _min40(model, tok, text: str) -> float:
    ids = torch.tensor([tok(text)["input_ids"]])
    logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0].tolist()
    k = int(len(logp) * 0.4)
    assert k >= 1
    return -sum(sorted(logp)[:k]) / k


def _auc(forget: list[float], holdout: list[float]) -> float:
    """ROC AUC, forget label 0, holdout label 1, on -score: pair by pair."""
    return sum((-h > -f) + 0.5 * (-h == -f) for f in forget for h in holdout) / (len(forget) * len(holdout))


def _ci(values: list[float]) -> list[float]:
    rng = np.random.default_rng(0)
    v = np.asarray(values)
    means = [v[rng.integers(0, len(v), size=len(v))].mean() for _ in range(9999)]
    return [100 * x for x in np.percentile(means, [2.5, 97.5])]


def test_unlearn_then_eval_reports_every_criterion_as_computed_here(bed, unlearned, tmp_path, capsys):
    data = bed / "data"
    # the training-time hook evaluated before and after the epoch
    history = [json.loads(x) for x in (unlearned / "eval" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1] and {"knowmem_f", "knowmem_r", "verbmem_f", "privleak"} <= set(history[0])
    assert (unlearned / "eval" / "curves.png").exists()

    # a retain model's own AUC as the PrivLeak reference: here the untrained model's evaluation
    ref_dir = tmp_path / "ref"
    assert main(["eval", "--benchmark", "muse", "--model", str(data / "init_model"), "--data", str(data),
                 "--max-new-tokens", str(N_NEW), "--out", str(ref_dir)]) == 0
    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(["eval", "--benchmark", "muse", "--model", str(unlearned / "model"), "--data", str(data),
                 "--max-new-tokens", str(N_NEW), "--batch-size", "3", "--retain-logs", str(ref_dir),
                 "--out", str(out)]) == 0
    assert "VerbMem_f" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.md").read_text().startswith("**MUSE**")
    model, tok = _model(unlearned / "model")
    scorer = RougeScorer(["rougeL"], use_stemmer=False)

    # VerbMem: ground truth cut to N_NEW tokens (BOS included), greedy continuation, ROUGE-L F1
    verbmem = json.loads((data / "verbmem" / "forget.json").read_text())
    log = json.loads((out / "verbmem_f" / "log.json").read_text())
    assert len(log) == len(verbmem) == summary["items"]["verbmem_f"]
    f1 = []
    for item, row in zip(verbmem, log, strict=True):
        gt = _clean(tok.decode(tok(item["gt"])["input_ids"][:N_NEW], skip_special_tokens=True))
        assert row["prompt"] == item["prompt"] and row["gt"] == gt
        assert row["response"] == _greedy(model, tok, item["prompt"], N_NEW)
        f1.append(scorer.score(gt, row["response"])["rougeL"].fmeasure)
        assert row["rougeL"] == pytest.approx(f1[-1])
    assert summary["verbmem_f"] == pytest.approx(100 * np.mean(f1))
    assert summary["verbmem_f_ci"] == pytest.approx(_ci(f1))

    # KnowMem: the ICL prompt rebuilt from the files, the answer cut at the stop words
    for side, key in (("forget", "knowmem_f"), ("retain", "knowmem_r")):
        qa = json.loads((data / "knowmem" / f"{side}_qa.json").read_text())
        icl = json.loads((data / "knowmem" / f"{side}_qa_icl.json").read_text())
        prefix = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)
        log = json.loads((out / key / "log.json").read_text())
        f1 = []
        for item, row in zip(qa, log, strict=True):
            prompt = prefix + f"Question: {item['question']}\nAnswer: "
            answer = _greedy(model, tok, prompt, N_NEW).split("\n\n")[0].split("\nQuestion")[0].split("Question:")[0]
            assert (row["prompt"], row["gt"], row["response"]) == (prompt, item["answer"], answer)
            f1.append(scorer.score(item["answer"], answer)["rougeL"].fmeasure)
        assert summary[key] == pytest.approx(100 * np.mean(f1)) and summary[f"{key}_ci"] == pytest.approx(_ci(f1))
    assert summary["utility"] == summary["knowmem_r"]

    # PrivLeak: Min-40% of every text, forget-vs-holdout AUC, relative gap to the reference model's AUC
    scores = {s: [_min40(model, tok, t) for t in json.loads((data / "privleak" / f"{s}.json").read_text())]
              for s in ("forget", "holdout")}
    logged = json.loads((out / "privleak" / "log.json").read_text())
    for s in scores:
        assert [r["Min-40%"] for r in logged[s]] == pytest.approx(scores[s], abs=1e-4)
    auc = _auc(scores["forget"], scores["holdout"])
    assert summary["privleak_auc"] == pytest.approx(auc)
    assert json.loads((out / "privleak" / "auc.json").read_text())["forget_holdout_Min-40%"] == pytest.approx(auc)
    ref = json.loads((ref_dir / "summary.json").read_text())["privleak_auc"]
    assert summary["privleak_auc_retrain"] == ref
    assert summary["privleak"] == pytest.approx((auc - ref) / ref * 100)
    # MUSE's fixed News AUC when asked for
    news = tmp_path / "news"
    assert main(["eval", "--benchmark", "muse", "--model", str(unlearned / "model"), "--data", str(data),
                 "--max-new-tokens", "2", "--retain-logs", "news", "--out", str(news)]) == 0
    pl = json.loads((news / "summary.json").read_text())["privleak"]
    assert pl == pytest.approx((auc - 0.47719999999999996) / 0.47719999999999996 * 100)


def test_sharded_evaluation_equals_one_process(bed, tmp_path):
    """Two ranks in two threads (their own model and tokenizer) with an all-gather through a barrier:
    rank 0's files equal a single process's, rank 1 writes nothing."""
    import threading

    from npo.eval import muse
    from npo.eval.benchmarks import EvalSpec
    from npo.eval.scoring import Dist

    spec = EvalSpec(data=str(bed / "data"), template="qa", max_new_tokens=4, batch_size=2)
    one = muse.evaluate(*_model(bed / "data" / "init_model"), spec, tmp_path / "one")
    barrier, slots, results = threading.Barrier(2, timeout=120), [None, None], {}
    models = [_model(bed / "data" / "init_model") for _ in (0, 1)]  # loading is not thread-safe

    def run(rank):
        def gather(items):
            slots[rank] = items
            barrier.wait()
            everyone = slots[0] + slots[1]
            barrier.wait()
            return everyone

        dist = Dist(rank, 2)
        dist.gather = gather
        results[rank] = muse.evaluate(*models[rank], spec, tmp_path / f"rank{rank}", dist)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[1] is None and not (tmp_path / "rank1").exists()
    assert results[0] == one
    for name in ("verbmem_f/log.json", "knowmem_f/log.json", "knowmem_r/log.json", "privleak/auc.json"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "rank0" / name).read_text()
    # token log-probs of texts batched differently agree to float32 rounding
    a, b = (json.loads((tmp_path / d / "privleak" / "log.json").read_text()) for d in ("one", "rank0"))
    for split in a:
        assert [r["text"] for r in a[split]] == [r["text"] for r in b[split]]
        assert [r["Min-40%"] for r in a[split]] == pytest.approx([r["Min-40%"] for r in b[split]], abs=1e-5)


def _first(run, key):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])[key]


def test_four_sustainability_requests_chain_and_each_is_reported(bed, tmp_path):
    data = bed / "data"
    out = tmp_path / "sust"
    folds = [f"sust/forget_{k}" for k in range(1, 5)]
    args = ["sequence", "--model", str(data / "init_model"), "--data", str(data), "--method", "npo_rt",
            "--forget", ",".join(folds), "--retain", "retain1", "--out", str(out), *COMMON]
    assert main(args) == 0
    rows = json.loads((out / "sequence.json").read_text())["requests"]
    assert [r["request"] for r in rows] == [0, 1, 2, 3, 4] and [r["forget"] for r in rows[1:]] == folds
    table = (out / "sequence.md").read_text()
    for k in range(1, 5):
        run = out / f"request_{k}"
        parent = json.loads((run / "parent.json").read_text())
        prev_model = str(data / "init_model") if k == 1 else str(out / f"request_{k - 1}" / "model")
        assert parent["start_model"] == prev_model and parent["forget"] == folds[k - 1]
        assert parent["parent_run"] == (None if k == 1 else str(out / f"request_{k - 1}"))
        # NPO's reference is the model the request started from: at the first step logp = logp_ref,
        # so each forget window contributes (2 / beta) log 2
        assert _first(run, "forget_loss") == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)
        # ...and that model is the previous request's: its mean window log-prob of this fold
        model, tok = _model(prev_model)
        from npo.data.text import corpus_windows

        windows = corpus_windows(tok, (data / f"{folds[k - 1]}.txt").read_text(), 64)
        with torch.no_grad():
            lp = [torch.log_softmax(model(torch.tensor([w.input_ids])).logits[0, :-1], -1)
                  .gather(-1, torch.tensor(w.input_ids[1:])[:, None]).sum() for w in windows]
        assert _first(run, "forget_logp") == pytest.approx(float(sum(lp)) / len(windows), rel=1e-4)
        summary = json.loads((run / "benchmark" / "summary.json").read_text())
        assert rows[k]["summary"]["knowmem_f"] == summary["knowmem_f"] and summary["model"] == str(run / "model")
        assert f"| {k} | `{folds[k - 1]}` |" in table and f"{summary['verbmem_f']:.2f}" in table
    assert (out / "sequence.png").stat().st_size > 0
    # rerunning reuses every finished request
    before = (out / "request_4" / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "request_4" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_independent_requests_all_start_from_the_original_model(bed, tmp_path):
    data = bed / "data"
    out = tmp_path / "scal"
    assert main(["sequence", "--model", str(data / "init_model"), "--data", str(data), "--method", "npo",
                 "--forget", "scal/forget_1,scal/forget_2", "--mode", "independent", "--no-eval", "--out", str(out),
                 *COMMON]) == 0
    for k in (1, 2):
        parent = json.loads((out / f"request_{k}" / "parent.json").read_text())
        assert parent["start_model"] == str(data / "init_model") and parent["mode"] == "independent"
        assert (out / f"request_{k}" / "model").is_dir() and not (out / f"request_{k}" / "benchmark").exists()
    assert "| 2 | `scal/forget_2` |" in (out / "sequence.md").read_text()


def test_testbed_layout_is_deterministic_and_nested(tmp_path):
    from npo.testbed.news import build_layout, write_layout

    a = write_layout(tmp_path / "a", seed=3, fold_people=2)
    b = write_layout(tmp_path / "b", seed=3, fold_people=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    layout = build_layout(seed=3, fold_people=2)
    assert layout["raw/forget.json"] == layout["sust/forget_1.json"] == layout["scal/forget_1.json"]
    for k in range(2, 5):
        assert layout[f"scal/forget_{k}.json"] == layout[f"scal/forget_{k - 1}.json"] + layout[f"sust/forget_{k}.json"]
    assert layout["raw/forget.txt"] == "\n\n".join(layout["raw/forget.json"])
    forget_text = layout["raw/forget.txt"]
    assert all(r["answer"] in forget_text and r["question"] in forget_text for r in layout["knowmem/forget_qa.json"])
    assert all(forget_text.count(v["prompt"] + v["gt"]) == 1 for v in layout["verbmem/forget.json"])
    holdout = set(layout["privleak/holdout.json"])
    trained = "\n\n".join(layout[k] for k in ("scal/forget_4.txt", "raw/retain1.txt", "raw/retain2.txt"))
    assert holdout and not any(h in trained for h in holdout if not h.startswith("Reader questions"))
