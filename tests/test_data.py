"""QA loading, validation errors, templates and the answer-only label mask."""

import json

import pytest

from helpers import require_tofu
from npo.data.batches import IGNORE, BatchStream, collate, ensure_pad_token, tokenize_qa
from npo.data.qa import load_lines, load_qa
from npo.data.templates import default_template, render_prompt
from npo.errors import DataError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_json_array_and_jsonl(tmp_path):
    rows = [{"question": "Q1?", "answer": "A1.", "perturbed_answer": ["B", "C"]}, {"question": "Q2?", "answer": "A2."}]
    a = load_qa(write(tmp_path, "a.json", json.dumps(rows)))
    b = load_qa(write(tmp_path, "b.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert a == b and a[0].perturbed_answer == ("B", "C") and a[1].paraphrased_answer is None


def test_tofu_directory_split():
    tofu = require_tofu()
    assert len(load_qa(tofu, "forget01")) == 40
    perturbed = load_qa(tofu, "forget01_perturbed")
    assert len(perturbed[0].perturbed_answer) == 5 and perturbed[0].paraphrased_question
    assert len(load_qa(tofu, "world_facts_perturbed")[0].perturbed_answer) == 3


def test_hf_loader_on_local_dataset_card():
    tofu = require_tofu()
    records = load_qa(f"hf:{tofu}:forget01")
    assert records == load_qa(tofu, "forget01")


@pytest.mark.parametrize("text, row, field, words", [
    ('[{"question": "Q?", "answer": "A."}, {"question": "Q?"', None, None, "malformed JSON"),
    ('{"question": "Q?", "answer": "A."}\n{"question": "Q?", "answer": \n', 2, None, "malformed JSON-lines"),
    ('{"question": "Q?", "answer": "A."}\n{"answer": "A."}', 2, "question", "missing"),
    ('{"question": "Q?"}', 1, "answer", "missing"),
    ('{"question": "", "answer": "A."}', 1, "question", "empty"),
    ('{"question": "Q?", "answer": 3}', 1, "answer", "expected a string"),
    ('{"question": "Q?", "answer": "A.", "perturbed_answer": "B"}', 1, "perturbed_answer", "list"),
    ('{"question": "Q?", "answer": "A.", "perturbed_answer": ["B", 2]}', 1, "perturbed_answer[1]", "string"),
    ('[1]', 1, None, "JSON object"),
])
def test_errors_name_file_row_field(tmp_path, text, row, field, words):
    path = write(tmp_path, "bad.json", text)
    with pytest.raises(DataError) as info:
        load_qa(path)
    msg = str(info.value)
    assert str(path) in msg and words in msg
    assert info.value.row == row and info.value.field == field


def test_empty_set_and_unknown_split(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_qa(write(tmp_path, "e.json", "[]"))
    (tmp_path / "forget10.json").write_text('{"question": "Q?", "answer": "A."}')
    with pytest.raises(DataError, match="no split 'forget99'.*forget10"):
        load_qa(tmp_path, "forget99")
    with pytest.raises(DataError, match="no such file"):
        load_qa(tmp_path / "missing.json")
    with pytest.raises(DataError, match="empty"):
        load_lines(write(tmp_path, "idk.txt", "\n\n"))


def test_templates(chat_tokenizer, tokenizer):
    assert render_prompt("llama2-tofu", "Q?") == "[INST] Q? [/INST]"
    assert render_prompt("qa", "Q?") == "Question: Q?\nAnswer: "
    assert render_prompt("chat", "Q?", chat_tokenizer) == "<|user|> Q?\n<|assistant|> "
    assert default_template(chat_tokenizer) == "chat" and default_template(tokenizer) == "qa"


@pytest.mark.parametrize("template", ["qa", "llama2-tofu", "chat", "raw"])
def test_label_mask_is_answer_plus_eos(chat_tokenizer, template):
    tok = chat_tokenizer
    answer = "Ana Varga was born in Lisbon."
    ex = tokenize_qa(tok, template, "Where was Ana Varga born?", answer, 128)
    batch = collate([ex], tok.pad_token_id)
    labels = batch["labels"][0]
    labelled = labels[labels != IGNORE].tolist()
    assert labelled[-1] == tok.eos_token_id
    assert tok.decode(labelled[:-1]).strip() == answer
    prompt = tok.decode(ex.input_ids[:ex.n_prompt], skip_special_tokens=True)
    assert prompt == render_prompt(template, "Where was Ana Varga born?", tok).rstrip(" ") or prompt.endswith(" ")


def test_truncation_keeps_prompt_and_cuts_answer(tokenizer):
    full = tokenize_qa(tokenizer, "qa", "Where was Ana Varga born?", "Ana Varga was born in Lisbon. " * 5, 512)
    cut = tokenize_qa(tokenizer, "qa", "Where was Ana Varga born?", "Ana Varga was born in Lisbon. " * 5,
                      full.n_prompt + 4)
    assert not full.truncated and cut.truncated
    assert cut.input_ids == full.input_ids[:full.n_prompt + 4] and cut.n_labels == 4
    with pytest.raises(DataError, match="max_length"):
        tokenize_qa(tokenizer, "qa", "Where was Ana Varga born?", "A.", full.n_prompt)


def test_missing_pad_token_is_handled():
    from helpers import make_tokenizer

    tok = make_tokenizer()
    tok.pad_token = None
    ensure_pad_token(tok)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


def test_batch_stream_is_seeded_and_resumable():
    lengths = [5, 9, 3, 12, 7, 8, 2, 11, 4, 6]
    a, b = BatchStream(lengths, 3, seed=1), BatchStream(lengths, 3, seed=1)
    seq = [a.next() for _ in range(9)]
    assert seq == [b.next() for _ in range(9)]
    assert sorted(i for batch in seq[:4] for i in batch) == list(range(10))  # one epoch covers all
    c = BatchStream(lengths, 3, seed=1)
    for _ in range(5):
        c.next()
    d = BatchStream(lengths, 3, seed=1)
    d.load_state(c.state())
    assert [c.next() for _ in range(4)] == [d.next() for _ in range(4)]
