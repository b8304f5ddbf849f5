"""TOFU exactly as the NPO authors ran it (docs/tofu.md): their schedule, retain pairing and loss
reductions, and TOFU's evaluator, each against an independent re-implementation of the original
code written here from its description (no code of theirs is run)."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from helpers import qa_rows, require_tofu, save_tiny_model, write_jsonl, write_tofu_layout
from npo.cli import main as cli_main
from npo.config import build
from npo.methods import METHODS
from npo.train import Trainer, split_window

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tofu"
PAPER = [str(CONFIGS / "npo_rt.yaml"), str(CONFIGS / "paper.yaml")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    return root, save_tiny_model(root / "model")


def hf_linear_lrs(lr: float, warmup: int, total: int) -> list[float]:
    """The lr of every optimizer step under transformers' get_linear_schedule_with_warmup, as the NPO
    authors' Trainer applies it (the scheduler steps after each optimizer step)."""
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_linear_schedule_with_warmup(opt, warmup, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("n_forget", [40, 200, 400, 2000])  # forget01, 05, 10, 50
def test_paper_preset_schedule_equals_the_official_one(tiny, tmp_path, n_forget):
    root, model = tiny
    forget = write_jsonl(tmp_path / "forget.jsonl", qa_rows(n_forget))
    retain = write_jsonl(tmp_path / "retain.jsonl", qa_rows(64, offset=n_forget))
    cfg = build(PAPER, {"model": str(model), "forget": str(forget), "retain": str(retain), "data": None,
                        "out": str(tmp_path / "run"), "template": "qa", "max_length": 64, "eval_every_epochs": 0,
                        "gradient_checkpointing": False})
    trainer = Trainer(cfg, METHODS[cfg.method])
    # the NPO authors' forget.py at effective batch 32 (4 x 8 here, 4 x 4 x 2 GPUs there), 10 epochs
    per_epoch, total = n_forget // 32, 10 * n_forget // 32
    assert (trainer.steps_per_epoch, trainer.total_steps) == (per_epoch, total)  # forget01: 1, 12
    factor = trainer.scheduler.lr_lambdas[0]
    ours = [cfg.lr * factor(k) for k in range(total)]
    assert ours == pytest.approx(hf_linear_lrs(cfg.lr, per_epoch, total), abs=1e-18)
    assert ours[0] == 0.0
    if n_forget == 40:  # forget01 trains end to end: 12 steps of 32, the logged lrs the official ones
        run = trainer.run()
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(1, 13))
        assert [r["lr"] for r in records] == pytest.approx(hf_linear_lrs(cfg.lr, 1, 12), abs=1e-18)


def _seeded_draw(i, high):
    """torch.manual_seed(i); torch.randint(0, high, (1,)) on the global generator, as their data module."""
    state = torch.get_rng_state()
    try:
        torch.manual_seed(i)
        return int(torch.randint(0, high, (1,)))
    finally:
        torch.set_rng_state(state)


def test_fixed_pairing_is_the_authors_manual_seed_draw(tiny, tmp_path):
    from npo.data.sets import fixed_partners, idk_answers

    want = [(i + _seeded_draw(i, 3600)) % 3600 for i in range(10)]
    want_idk = [_seeded_draw(i, 100) for i in range(10)]
    assert fixed_partners(10, 3600) == want
    assert want == [44, 2246, 650, 1789, 1934, 616, 2336, 1222, 3131, 3079]  # forget10 -> retain90, as published
    pool = [f"refusal {k}" for k in range(100)]
    (tmp_path / "idk.txt").write_text("\n".join(pool))
    cfg = build(None, {"model": "m", "out": "o", "idk": str(tmp_path / "idk.txt"), "retain_pairing": "fixed"})
    assert idk_answers(cfg, 10, seed=0) == [pool[k] for k in want_idk]


# ----------------------------------------------------------------------------- the original objectives


def official_example(tok, question, answer, max_length):
    """convert_raw_data_to_model_format of the TOFU / NPO code, llama2 tags: padded to max_length with
    EOS, one EOS label, the question's tokens (counted by tokenizing it alone) masked."""
    new_question = f"[INST] {question} [/INST]"
    n_question = len(tok.tokenize(new_question, add_special_tokens=True))
    enc = tok(new_question + answer, add_special_tokens=True, max_length=max_length, truncation=True)
    pad = max_length - len(enc["input_ids"])
    ids = enc["input_ids"] + [tok.eos_token_id] * pad
    mask = enc["attention_mask"] + [0] * pad
    labels = enc["input_ids"] + [tok.eos_token_id] + [-100] * (pad - 1) if pad else list(enc["input_ids"])
    labels[:n_question] = [-100] * n_question
    return ids, mask, labels


def official_batch(tok, pairs, max_length):
    rows = [official_example(tok, q, a, max_length) for q, a in pairs]
    return tuple(torch.tensor([r[k] for r in rows]) for k in range(3))


def hf_loss(model, ids, mask, labels):
    """transformers' causal LM loss: token mean of the shifted cross-entropy over the batch."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def batch_sums(model, ids, mask, labels):
    """get_batch_loss: summed cross-entropy per sequence, and the label count."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    return ce.sum(-1), (labels[:, 1:] != -100).sum(-1)


def _model(model_dir, trainable=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if trainable is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in load_file(str(trainable)).items():
                params[name].copy_(value)
    return model


@pytest.mark.parametrize("method", ["idk_rt", "npo_kl", "simnpo"])
def test_paper_objectives_equal_the_original_formulas(tiny, tmp_path, method):
    from transformers import AutoTokenizer

    root, model_dir = tiny
    forget = write_jsonl(tmp_path / "forget.jsonl", qa_rows(8))
    retain = write_jsonl(tmp_path / "retain.jsonl", qa_rows(12, offset=8))
    (tmp_path / "idk.txt").write_text("I do not know.\nNo idea at all.\nI cannot say who that is.\n")
    max_length, beta, gamma = 48, 2.5, 0.2
    cfg = build(None, {"model": str(model_dir), "forget": str(forget), "retain": str(retain), "method": method,
                       "idk": str(tmp_path / "idk.txt"), "out": str(tmp_path / "run"), "template": "llama2-tofu",
                       "max_length": max_length, "batch_size": 4, "grad_accum": 2, "epochs": 2, "lr": 5e-3,
                       "warmup_epochs": 0, "beta": beta, "gamma": gamma, "retain_pairing": "fixed",
                       "token_mean": "micro", "kl": "official", "save_every_steps": 1})
    trainer = Trainer(cfg, METHODS[method])
    windows = []
    draw = trainer._windows
    trainer._windows = lambda: windows.append(draw()) or windows[-1]
    run = trainer.run()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(model_dir)
    f_rows = [json.loads(x) for x in forget.read_text().splitlines()]
    r_rows = [json.loads(x) for x in retain.read_text().splitlines()]
    pool = (tmp_path / "idk.txt").read_text().splitlines()
    ref = _model(model_dir)
    after_one = _model(model_dir, run / "checkpoint" / "trainable.safetensors")
    for record, window, now in zip(records, windows, (ref, after_one), strict=True):
        micro = []  # the objective of each micro-batch of 4, as the authors' compute_loss returns it
        for f_idx, r_idx in zip(split_window(window["forget"], 2), split_window(window["retain"], 2), strict=True):
            fq = [(f_rows[i]["question"], f_rows[i]["answer"]) for i in f_idx]
            rq = [(r_rows[i]["question"], r_rows[i]["answer"]) for i in r_idx]
            with torch.no_grad():
                if method == "idk_rt":  # NLL_mean(cat([idk, retain])): one token mean over both halves
                    answers = [pool[_seeded_draw(i, len(pool))] for i in f_idx]
                    idk = official_batch(tok, [(q, a) for (q, _), a in zip(fq, answers, strict=True)], max_length)
                    both = official_batch(tok, rq, max_length)
                    micro.append(float(hf_loss(now, *(torch.cat([a, b]) for a, b in zip(idk, both, strict=True)))))
                elif method == "npo_kl":  # kl_div(log p_now, log p_ref, batchmean) over B x max_length rows
                    ids, mask, _ = official_batch(tok, rq, max_length)
                    p_ref = F.log_softmax(ref(input_ids=ids, attention_mask=mask).logits.float(), -1)
                    p_now = F.log_softmax(now(input_ids=ids, attention_mask=mask).logits.float(), -1)
                    micro.append(float(F.kl_div(p_now.flatten(0, 1), p_ref.flatten(0, 1), reduction="batchmean",
                                                log_target=True)))
                else:  # -(2/b) mean logsigmoid(b (S/|y| - gamma)), S the summed NLL
                    s, n = batch_sums(now, *official_batch(tok, fq, max_length))
                    micro.append(float(-F.logsigmoid(beta * (s / n - gamma)).mean() * 2 / beta))
        official = sum(micro) / len(micro)  # DeepSpeed averages the micro-batch losses of a step
        logged = {"idk_rt": record["forget_loss"] + record["retain_loss"], "npo_kl": record["retain_loss"],
                  "simnpo": record["forget_loss"]}[method]
        assert logged == pytest.approx(official, rel=1e-5, abs=1e-6)
    if method == "npo_kl":
        assert records[1]["retain_loss"] > 1e-6  # the second step's KL is not trivially 0


# ----------------------------------------------------------------------------- TOFU's evaluator


def test_legacy300_logs_equal_tofus_official_evaluator(tiny, tmp_path):
    """Under legacy300, `npo eval` writes what TOFU's evaluator would: texts cut at 200 tokens, greedy
    generation in batches of 30 in dataset order, 200 tokens per batch in total, from the prompt alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, model_dir = tiny
    data = write_tofu_layout(tmp_path / "tofu", n_forget=40, n_retain=12)
    rows = [json.loads(x) for x in (data / "forget10_perturbed.json").read_text().splitlines()]
    for i in (3, 17, 33):  # prompts of different lengths, so that batch composition decides the cap
        rows[i]["question"] += " Answer in one short sentence, please, with the city" + " and the year" * (i % 4)
    write_jsonl(data / "forget10_perturbed.json", rows)
    out = tmp_path / "eval"
    assert cli_main(["eval", "--model", str(model_dir), "--data", str(data), "--forget-split", "forget10",
                     "--protocol", "legacy300", "--template", "llama2-tofu", "--out", str(out)]) == 0
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    logged = json.loads((out / "eval_log_forget.json").read_text())
    gens = []
    tok.padding_side = "left"
    for start in range(0, len(rows), 30):
        prompts = [f"[INST] {r['question']} [/INST]" for r in rows[start:start + 30]]
        enc = tok(prompts, add_special_tokens=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            out_ids = model.generate(**enc, max_length=200, do_sample=False, pad_token_id=tok.eos_token_id)
        gens += tok.batch_decode(out_ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [g[1] for g in logged["generated_text"]] == [g.strip() for g in gens]
    assert max(len(tok(g)["input_ids"]) for g in gens) > 100  # a random model runs to the cap
    with torch.no_grad():
        sums, counts = batch_sums(model, *official_batch(tok, [(r["question"], r["answer"]) for r in rows], 200))
    assert logged["gt_loss"] == pytest.approx(sums.tolist(), rel=1e-4)
    assert logged["num_token_gt"] == counts.tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["caps"].startswith("official")


def test_tofu_qa_template_labels_the_answer_tag_and_generates_from_the_question(tokenizer):
    from npo.data.batches import tokenize_qa
    from npo.data.templates import render_prompt

    ex = tokenize_qa(tokenizer, "tofu-qa", "Where was Ana Varga born?", "Ana Varga was born in Lisbon.", 64)
    labelled = tokenizer.decode(list(ex.input_ids[ex.n_prompt:]), skip_special_tokens=True)
    assert labelled == "Answer: Ana Varga was born in Lisbon."
    assert render_prompt("tofu-qa", "Where was Ana Varga born?") == "Question: Where was Ana Varga born?\n"


def test_forget50_is_evaluated_on_the_forget10_proxy_against_retain50(tiny, tmp_path):
    """TOFU's proxy for forget20 and up: the first 300 items of forget10_perturbed, with Forget Quality
    against the retain50 model's published log (which is in the 2-process layout)."""
    from scipy.stats import ks_2samp

    from npo.eval.logs import load_log_dir
    from npo.eval.metrics import truth_ratios

    tofu = require_tofu()
    logs = tofu.parent / "tofu_retain_logs" / "llama2-7b_retain50"
    root, model_dir = tiny
    out = tmp_path / "eval50"
    assert cli_main(["eval", "--model", str(model_dir), "--data", str(tofu), "--forget-split", "forget50",
                     "--protocol", "legacy300", "--template", "llama2-tofu", "--retain-logs", str(logs),
                     "--batch-size", "64", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["forget_eval_split"] == "forget10_perturbed" and summary["items"]["forget"] == 300
    ours = json.loads((out / "eval_log_forget.json").read_text())
    first = [json.loads(x)["question"] for x in (tofu / "forget10_perturbed.json").read_text().splitlines()[:300]]
    assert [g[0] for g in ours["generated_text"]] == [f"[INST] {q} [/INST]" for q in first]
    retain = load_log_dir(logs, sets=("forget",))["forget"]
    want = ks_2samp(truth_ratios(ours["avg_paraphrased_loss"], ours["average_perturb_loss"]),
                    truth_ratios(retain["avg_paraphrased_loss"], retain["average_perturb_loss"])).pvalue
    assert summary["forget_quality"] == pytest.approx(float(want), rel=1e-12)


def test_two_process_logs_are_read_in_dataset_order():
    """The NPO authors' retain10/50/70/80 logs come from 2 processes (300 and 308 values per key). Read
    in dataset order, their token counts equal those of the 1-process retain90 log item by item (same
    items, same tokenizer), and on real authors / world facts the paraphrase counts equal the answer
    counts (the base answer there is the answer itself): both fail for any other order."""
    from npo.eval.logs import load_log_dir

    root = require_tofu().parent / "tofu_retain_logs"
    one = load_log_dir(root / "llama2-7b_retain90")
    for name in ("llama2-7b_retain10", "llama2-7b_retain50", "llama2-7b_retain70", "llama2-7b_retain80"):
        two = load_log_dir(root / name)
        for s in ("retain", "real_authors", "world_facts", "forget"):
            assert len(two[s]) == len(one[s]), (name, s)
        for s in ("retain", "real_authors", "world_facts"):
            assert two[s]["num_token_gt"] == one[s]["num_token_gt"], (name, s)
            assert two[s]["num_token_perturb"] == one[s]["num_token_perturb"], (name, s)
        for s in ("real_authors", "world_facts"):
            assert two[s]["num_token_paraphrased"] == two[s]["num_token_gt"], (name, s)
    assert math.isfinite(one["retain"]["avg_gt_loss"][0])


def test_eval_uses_the_template_a_run_was_trained_with(tmp_path):
    from npo.commands.evaluate import choose_template
    from npo.config import save

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    save(build(None, {"model": "m", "out": str(run), "template": "llama2-tofu"}), run / "config.yaml")
    assert choose_template(None, str(run / "model"), object()) == ("llama2-tofu", f"the template {run / 'config.yaml'} "
                                                                   "was trained with")
    assert choose_template("qa", str(run / "model"), object())[0] == "qa"
    template, why = choose_template(None, str(tmp_path / "elsewhere"), object())
    assert template == "qa" and "no chat template" in why


def test_official_data_order_and_weight_decay_groups():
    """schedule=official draws windows as the authors' DataLoader(shuffle=True) orders the examples,
    and decay_norms_and_biases=false groups parameters as transformers' Trainer does."""
    from torch.utils.data import DataLoader
    from transformers import Trainer as HFTrainer

    from helpers import make_model
    from npo.data.batches import ShuffledStream
    from npo.optim import param_groups

    stream = ShuffledStream(10, 4, seed=1001)
    loader = DataLoader(range(10), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1001))
    assert sum((stream.next() for _ in range(6)), []) == [int(i) for _ in range(3) for b in loader for i in b][:24]
    model = make_model(400)
    decayed = {id(p) for p in param_groups(model, 0.01, decay_all=False)[0]["params"]}
    names = sorted(n for n, p in model.named_parameters() if id(p) in decayed)
    assert names == sorted(HFTrainer.get_decay_parameter_names(None, model))
    assert len(names) < len(list(model.parameters()))  # the norm weights are left out


@pytest.mark.parametrize("pairing", ["fixed", "cyclic"])
def test_paired_retain_windows_follow_the_forget_window(tiny, tmp_path, pairing):
    """fixed (the NPO authors) and cyclic (MUSE: window i meets retain i mod R) retain partners."""
    root, model = tiny
    forget = write_jsonl(tmp_path / "forget.jsonl", qa_rows(6))
    retain = write_jsonl(tmp_path / "retain.jsonl", qa_rows(4, offset=6))
    cfg = build(None, {"model": str(model), "forget": str(forget), "retain": str(retain), "out": str(tmp_path / "r"),
                       "method": "npo_rt", "template": "qa", "max_length": 64, "batch_size": 3,
                       "retain_pairing": pairing})
    trainer = Trainer(cfg, METHODS["npo_rt"])
    for _ in range(3):
        window = trainer._windows()
        want = [(i + _seeded_draw(i, 4)) % 4 if pairing == "fixed" else i % 4 for i in window["forget"]]
        assert window["retain"] == want
