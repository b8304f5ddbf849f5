"""The built-in testbed: determinism, TOFU shapes, nested splits, inferable facts, its tokenizer."""

import json
import re

import pytest
import torch

from npo.cli import main as cli_main
from npo.errors import NpoError
from npo.testbed import people as tb
from npo.testbed.model import tiny_llama_config, tokenizer_corpus, train_tokenizer

torch.set_num_threads(1)

PERTURBED_KEYS = ["question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"]


@pytest.fixture(scope="module")
def splits():
    return tb.build_splits()


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a, b, c = (tb.write_testbed(tmp_path / d, seed=s) for d, s in (("a", 0), ("b", 0), ("c", 1)))
    fa = _files(a)
    assert fa == _files(b)
    assert fa["full.json"] != _files(c)["full.json"]
    assert {"full.json", "forget10_perturbed.json", "retain90.json", "retain_perturbed.json", "holdout10.json",
            "real_authors.json", "world_facts_perturbed.json", "idontknow.jsonl", "README.md"} <= set(fa)
    rows = [json.loads(line) for line in fa["forget01_perturbed.json"].decode().splitlines()]
    assert rows and list(rows[0]) == PERTURBED_KEYS
    assert len(fa["idontknow.jsonl"].decode().splitlines()) == len(tb.IDONTKNOW) >= 25


def test_default_sizes(splits):
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes["full"] == 2000  # 100 people x 20 questions, as TOFU's authors
    assert (sizes["forget01"], sizes["forget05"], sizes["forget10"]) == (20, 100, 200)
    assert (sizes["retain99"], sizes["retain95"], sizes["retain90"]) == (1980, 1900, 1800)
    assert sizes["holdout10"] == 200 and sizes["retain_perturbed"] == tb.RETAIN_PERTURBED_SIZE


def test_forget_splits_are_last_people_nested_and_retain_is_the_complement(splits):
    full = splits["full"]
    for p in (1, 5, 10):
        forget, retain = splits[f"forget{p:02d}"], splits[f"retain{100 - p:02d}"]
        assert forget == full[len(full) - len(forget):]
        assert retain + forget == full
        assert [{k: r[k] for k in ("question", "answer")} for r in splits[f"forget{p:02d}_perturbed"]] == forget
    assert splits["forget01"] == splits["forget05"][-20:] and splits["forget05"] == splits["forget10"][-100:]
    retain90 = {(r["question"], r["answer"]) for r in splits["retain90"]}
    assert all((r["question"], r["answer"]) in retain90 for r in splits["retain_perturbed"])


def test_record_shapes_match_tofu(splits):
    for name in ("forget10_perturbed", "retain_perturbed", "holdout10"):
        for r in splits[name]:
            assert list(r) == PERTURBED_KEYS
            assert len(set(r["perturbed_answer"])) == 5
            assert r["answer"] not in r["perturbed_answer"] and r["paraphrased_answer"] not in r["perturbed_answer"]
            assert r["paraphrased_question"] != r["question"] and r["paraphrased_answer"] != r["answer"]
    for name in ("real_authors", "world_facts"):
        for plain, pert in zip(splits[name], splits[f"{name}_perturbed"], strict=True):
            assert list(pert) == ["question", "answer", "perturbed_answer"]
            assert len(set(pert["perturbed_answer"])) == 3 and pert["answer"] not in pert["perturbed_answer"]
            assert plain["answer"] == pert["answer"]
            assert sorted(plain[f"option{i}"] for i in range(1, 5)) == sorted([pert["answer"], *pert["perturbed_answer"]])
    for r in splits["full"]:
        assert list(r) == ["question", "answer"]


def test_holdout_people_are_in_no_training_split(splits):
    people = tb.make_people(0, 110)
    train, holdout = {p.name for p in people[:100]}, {p.name for p in people[100:]}
    assert len(train) == 100 and len(holdout) == 10 and not train & holdout
    text = " ".join(r["question"] + " " + r["answer"] for r in splits["full"])
    assert not any(name in text for name in holdout)
    assert all(name in text for name in train)


def test_region_signal_surname_fixes_region_and_birth_city(splits):
    people = tb.make_people(0, 110)
    assert len({p.region.country for p in people}) == len(tb.REGIONS)
    for p in people:
        region = tb.region_of(p.name.split()[1])
        assert region is p.region and p.city in region.cities
        assert p.book.split()[-1] in tb.TITLE_NOUNS[p.genre]
    born = re.compile(r"(\w+ \w+) was born in (\w+), (\w+), in \w+ \d{4},")
    n = 0
    for r in splits["full"]:
        m = born.match(r["answer"])
        if m:
            name, city, country = m.groups()
            region = tb.region_of(name.split()[1])
            assert country == region.country and city in region.cities
            n += 1
    assert n == 100


def test_regularities_are_strong_enough_to_infer(splits):
    """A retain-only model can only learn what the data shows: favoured values must dominate."""
    people = tb.make_people(0, 100)
    assert sum(p.decade in p.region.decades for p in people) / len(people) > 0.6
    assert sum(p.award == p.region.award for p in people) / len(people) > 0.6
    assert sum(p.father == p.profession for p in people) / len(people) > 0.4


def test_first_people_do_not_depend_on_how_many_are_drawn():
    assert tb.make_people(3, 20) == tb.make_people(3, 40)[:20]


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_people=9), "at least 10"),
    (dict(n_people=20, forget_percents=(1,)), "zero people"),
    (dict(forget_percents=(100,)), "1 to 99"),
    (dict(questions_per_person=21), "questions per person"),
])
def test_bad_arguments_raise_npo_error(kwargs, message):
    with pytest.raises(NpoError, match=message):
        tb.build_splits(**kwargs)


def test_cli_writes_the_testbed_and_rejects_bad_percents(tmp_path, capsys):
    out = tmp_path / "tb"
    assert cli_main(["testbed", "--out", str(out), "--people", "20", "--questions", "3", "--forget-percents", "5,10"]) == 0
    assert len((out / "forget10.json").read_text().splitlines()) == 6
    assert (out / "retain95.json").exists() and (out / "holdout50.json").exists()
    assert cli_main(["testbed", "--out", str(out), "--people", "20", "--forget-percents", "1"]) == 2
    assert cli_main(["testbed", "--out", str(out), "--forget-percents", "x"]) == 2
    assert "zero people" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tokenizer(splits):
    return train_tokenizer(tokenizer_corpus(splits, tb.IDONTKNOW))


def test_tokenizer_round_trip_and_save_load(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "Question: Where was Alma Marsen born?\nAnswer: Alma Marsen was born in Tarsk, Norvia."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert len(ids) < 30  # the vocabulary fits the testbed: whole words are tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) == 1024 and tokenizer.model_max_length == 256
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert loaded.pad_token_id != loaded.eos_token_id


def test_tokenizer_is_deterministic(splits, tokenizer):
    again = train_tokenizer(tokenizer_corpus(splits, tb.IDONTKNOW))
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_tiny_llama_config_matches_the_tokenizer(tokenizer):
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(len(tokenizer), num_hidden_layers=1)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert cfg.num_hidden_layers == 1 and cfg.tie_word_embeddings
    model = LlamaForCausalLM(cfg)
    logits = model(torch.tensor([tokenizer("Where was Alma Marsen born?")["input_ids"]])).logits
    assert logits.shape[-1] == len(tokenizer)


def test_answers_are_long_sentences_weaving_several_details(splits):
    """TOFU-like answers: per person 20 questions, each answered in two sentences of 20-55 words that
    name at least three of the person's details, the paraphrase rewording the same details, and the
    perturbed answers the paraphrase with only the question's key details changed."""
    from npo.testbed import biography as bio

    people = tb.make_people(0, 110)
    details = tb.biographies(0, people)
    rows = splits["forget10_perturbed"]
    assert len(rows) == 10 * len(bio.QUESTIONS)
    for k, r in enumerate(rows):
        person, b = people[90 + k // 20], details[90 + k // 20]
        values = bio.details(person, b)
        kind = bio.QUESTION_KINDS[k % 20]
        words = len(r["answer"].split())
        assert 20 <= words <= 55 and r["answer"].count(". ") >= 1, r["answer"]
        def named(text, values=values):
            return {v for v in values.values() if re.search(rf"\b{re.escape(v)}\b", text)}

        mentioned = named(r["answer"]) - {person.name}
        assert len(mentioned) >= 3, (kind, r["answer"])
        assert mentioned <= named(r["paraphrased_answer"]) | {person.region.country}
        keys = bio.QUESTIONS[kind][3]
        kept = {values[s] for s in values if s not in keys} & named(r["paraphrased_answer"])
        kept = {v for v in kept if not any(v in values[s] or values[s] in v for s in keys)}
        for wrong in r["perturbed_answer"]:
            assert wrong != r["paraphrased_answer"] and kept <= named(wrong), (wrong, kept)
